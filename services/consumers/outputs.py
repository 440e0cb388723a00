"""What a decide function returns: facts to append, atomically or in order, and timers.

Decide functions are pure; they return these values and the adapter performs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

from pydantic import BaseModel

from events.codec import make_event
from events.ids import derived_event_id
from events.model import Actor, Event, Scope
from projections.releases import ReleaseState

INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True)
class Failed:
    """Why a consumer could not observe (or decide): the fail-closed event says exactly this.

    `step` names where it failed in the consumer's own terms (the verifier's gate, say).
    """

    code: str
    message: str
    step: str = "internal"

    @classmethod
    def of(cls, exc: BaseException, code: str = INTERNAL_ERROR, step: str = "internal", prefix: str = "") -> Failed:
        return cls(code, f"{prefix}{exc.__class__.__name__}: {exc}", step)


@dataclass(frozen=True)
class Chain:
    """Events on one release, appended in order after the release's current last sequence."""

    events: tuple[Event, ...]


@dataclass(frozen=True)
class ScopeWrite:
    event: Event
    expected_seq: int


@dataclass(frozen=True)
class Atomic:
    """Scope pointer switches plus release events, stored all together or not at all."""

    scope_writes: tuple[ScopeWrite, ...]
    release_events: tuple[Event, ...]
    # the Nats-Batch-Id, recorded by the release event too; committed in a group with other releases'
    # switches (EventLog's group commit, services/jetstream/log.py), the stored header is the group's id
    batch_id: str = ""
    # release events stored first, in order: the steps that earned the switch, decided at once by the
    # fast path (services/consumers/fast_path.py)
    lead: tuple[Event, ...] = ()


@dataclass(frozen=True)
class Promotion:
    """A release's `promoted` and the linked release's `requested`, stored as one atomic batch: the
    `promoted` expecting its release's last sequence, the request a release id that does not exist
    yet. A promotion is recorded exactly when its linked release exists: two appends left, when the
    second lost a race (an abort, a pause) or failed, a linked release its source never promoted."""

    promoted: Event
    request: Event


@dataclass(frozen=True)
class Timer:
    key: str  # tokens joined by '.', e.g. "<release_id>.<stage>"
    at: datetime
    payload: dict[str, Any] = field(default_factory=dict)
    msg_id: str = ""


Output = Chain | Atomic | Promotion | Timer


def appended(outputs: list[Output]) -> list[Event]:
    """The events `outputs` append, in the order they are stored (an atomic batch: its lead, its
    scope writes, then its release events, as App.emit stores them)."""
    events: list[Event] = []
    for out in outputs:
        if isinstance(out, Chain):
            events += out.events
        elif isinstance(out, Atomic):
            events += [*out.lead, *(w.event for w in out.scope_writes), *out.release_events]
        elif isinstance(out, Promotion):
            events += [out.promoted, out.request]
    return events


def event_ids(outputs: list[Output]) -> list[str]:
    """The ids of the events `outputs` append, in order (what a decision span records)."""
    return [e.event_id for e in appended(outputs)]


@dataclass(frozen=True)
class Ctx:
    """Everything a decision may depend on besides the world and the trigger."""

    now: datetime
    service: str

    @property
    def actor(self) -> Actor:
        return _service_actor(self.service)


@lru_cache(maxsize=64)
def _service_actor(service: str) -> Actor:
    """One Actor per service name, shared by every event it writes (it is frozen): a model built per
    event was 15% of the activator's decision samples (py-spy, session 14)."""
    return Actor(kind="service", id=service)


def release_event(ctx: Ctx, release: ReleaseState, suffix: str, data: BaseModel | dict, step: str = "") -> Event:
    """An event on a release, its id derived from the event that put the release where it is.

    Deciding again on the same state (a redelivery, a second instance) derives the same
    id, so JetStream drops the duplicate.
    """
    cause = release.last_event_id or release.release_id
    return make_event(
        f"release.{suffix}",
        data,
        actor=ctx.actor,
        release_id=release.release_id,
        causation_id=release.last_event_id,
        correlation_id=release.release_id,
        event_id=derived_event_id(cause, ctx.service, step or suffix),
        occurred_at=ctx.now,
    )


def scope_event(ctx: Ctx, release: ReleaseState, scope: Scope, suffix: str, data: BaseModel | dict, step: str) -> Event:
    cause = release.last_event_id or release.release_id
    return make_event(
        f"scope.{suffix}",
        data,
        actor=ctx.actor,
        release_id=release.release_id,
        scope=scope,
        causation_id=release.last_event_id,
        correlation_id=release.release_id,
        event_id=derived_event_id(cause, ctx.service, f"{step}/{scope.env}/{scope.channel}/{scope.cohort}"),
        occurred_at=ctx.now,
    )
