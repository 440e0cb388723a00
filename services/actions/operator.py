"""Operator actions on a release: each one an event with actor and rationale.

Pure: given the world (rebuilt from the log), an action and its arguments, return the
event to append and the sequence it must follow — or an OperatorError saying why the
action does not apply to the release as it stands. The CLI appends with that expected
sequence, so an action decided on a stale view is refused, never misapplied.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from events.codec import make_event
from events.model import Actor, Closed, Event, MonitoringStarted, MonitoringVerdict, OperatorNote, RollbackStarted
from projections.releases import TRANSITIONS, ReleaseState
from projections.rollback import rollback_targets
from projections.world import World
from services.errors import OperatorError

ROLLBACK_TRIGGERS = ("operator", "policy_violation", "tenant_impact")
CLOSE_OUTCOMES = ("failed", "aborted")  # what an operator may close a held release as: never a success
# closed releases that still run their pack somewhere (an operator may roll them back)
_RUNNING_OUTCOMES = ("success", "promoted_by_override")


@dataclass(frozen=True)
class Action:
    event: Event
    expected_seq: int


def _release(world: World, release_id: str) -> ReleaseState:
    release = world.release(release_id)
    if release is None:
        raise OperatorError(f"no release {release_id} in the log")
    return release


def _event(release: ReleaseState, suffix: str, data, actor: Actor, now: datetime) -> Action:
    # the one guard every verb shares: an operator event the lifecycle does not allow here is
    # refused, never appended (the auditor would flag it as an illegal transition)
    if suffix not in TRANSITIONS.get(release.phase, ()):
        raise OperatorError(
            f"release {release.release_id} is {release.phase or 'not requested'}: {suffix} does not apply to it now"
        )
    event = make_event(
        f"release.{suffix}",
        data,
        actor=actor,
        release_id=release.release_id,
        causation_id=release.last_event_id,
        occurred_at=now,
    )
    return Action(event, release.last_seq)


def _require_rationale(rationale: str) -> str:
    if not rationale.strip():
        raise OperatorError("a rationale is required: every operator decision is recorded with its reason")
    return rationale


def pause(world: World, release_id: str, rationale: str, actor: Actor, now: datetime) -> Action:
    r = _release(world, release_id)
    if not r.in_flight or r.paused:
        raise OperatorError(f"release {release_id} is {'already paused' if r.paused else r.phase}: nothing to pause")
    return _event(r, "paused", OperatorNote(rationale=_require_rationale(rationale)), actor, now)


def resume(world: World, release_id: str, rationale: str, actor: Actor, now: datetime) -> Action:
    r = _release(world, release_id)
    if not r.paused or not r.in_flight:
        raise OperatorError(
            f"release {release_id} is not paused"
            if not r.paused
            else f"release {release_id} is {r.phase}: nothing to resume"
        )
    return _event(r, "resumed", OperatorNote(rationale=_require_rationale(rationale)), actor, now)


def abort(world: World, release_id: str, rationale: str, actor: Actor, now: datetime) -> Action:
    r = _release(world, release_id)
    if not r.in_flight or r.phase in ("rolling_back", "aborting", "rolled_back"):
        raise OperatorError(f"release {release_id} is {r.phase}: it cannot be aborted")
    return _event(r, "aborted", OperatorNote(rationale=_require_rationale(rationale)), actor, now)


def annotate(
    world: World, release_id: str, rationale: str, incident: str | None, actor: Actor, now: datetime
) -> Action:
    r = _release(world, release_id)
    if not rationale.strip() and not incident:
        raise OperatorError("an annotation needs a note or an --incident link")
    return _event(r, "annotated", OperatorNote(rationale=rationale, incident=incident), actor, now)


def _refuse_if_aborted(r: ReleaseState, what: str) -> None:
    """A release that was aborted, or whose rollback was decided (a held one may be an escalated
    rollback, even of a release that had closed), never moves forward again."""
    if r.aborted:
        raise OperatorError(
            f"release {r.release_id} was aborted and abort is final: it cannot be {what}; "
            f"roll it back or close it (kxr release close {r.release_id} --outcome aborted -m ...)"
        )
    if r.rollback is not None:
        raise OperatorError(
            f"release {r.release_id} is being rolled back ({r.rollback.trigger}): it cannot be {what}; "
            f"close it (kxr release close {r.release_id} --outcome failed -m ...)"
        )


def promote(world: World, release_id: str, rationale: str, actor: Actor, now: datetime) -> Action:
    """Pass a held (inconclusive) window on an operator's word, recorded as such.

    The verdict carries `override`: the release moves on, but closes `promoted_by_override`,
    is never promoted to the next channel, and its pack never becomes last-known-good.
    """
    r = _release(world, release_id)
    _refuse_if_aborted(r, "promoted")
    if r.phase != "held" or r.monitoring is None:
        raise OperatorError(
            f"release {release_id} is {r.phase}: only a held (inconclusive) window can be promoted by hand"
        )
    verdict = MonitoringVerdict(
        stage=r.monitoring.stage,
        reason=f"operator override by {actor.id}: {_require_rationale(rationale)}",
        override=True,
    )
    return _event(r, "monitoring_passed", verdict, actor, now)


def extend(world: World, release_id: str, window_s: int, rationale: str, actor: Actor, now: datetime) -> Action:
    """Open a new window for the held stage (e.g. to gather the samples it lacked), no shorter than the channel's."""
    r = _release(world, release_id)
    _refuse_if_aborted(r, "extended")
    if r.phase != "held" or r.monitoring is None:
        raise OperatorError(f"release {release_id} is {r.phase}: only a held window can be extended")
    if r.prepared is not None:
        minimum = world.channel_config(r.prepared.target.env, r.prepared.target.channel).monitoring.window_s
        if window_s < minimum:
            raise OperatorError(f"a window of {window_s}s is shorter than the channel's minimum of {minimum}s")
    m = r.monitoring
    monitoring = m.monitoring.model_copy(update={"window_s": window_s})
    started = MonitoringStarted(
        stage=m.stage,
        cohorts=m.cohorts,
        digest=m.digest,
        starts_at=now,
        ends_at=now + timedelta(seconds=window_s),
        monitoring=monitoring,
    )
    _require_rationale(rationale)
    return _event(r, "monitoring_started", started, actor, now)


def rollback(world: World, release_id: str, trigger: str, reason: str, actor: Actor, now: datetime) -> Action:
    """Roll a release's cohorts back now (policy violation, tenant impact, or judgement), to the
    targets of the release's own rollback strategy (projections/rollback.py)."""
    r = _release(world, release_id)
    if trigger not in ROLLBACK_TRIGGERS:
        raise OperatorError(f"trigger must be one of {', '.join(ROLLBACK_TRIGGERS)}")
    if not r.activated:
        raise OperatorError(f"release {release_id} never activated anything: nothing to roll back (abort it instead)")
    if r.phase in ("rolling_back", "rolled_back") or (r.closed and r.outcome not in _RUNNING_OUTCOMES):
        raise OperatorError(
            f"release {release_id} is {r.phase} ({r.outcome or 'in flight'}): it is not running anywhere to roll back"
        )
    started = RollbackStarted(
        trigger=trigger, reason=_require_rationale(reason), targets=rollback_targets(world, r, now)
    )
    return _event(r, "rollback_started", started, actor, now)


def close(world: World, release_id: str, outcome: str, rationale: str, actor: Actor, now: datetime) -> Action:
    """End a held release (escalated or inconclusive, aborted or not) as a failure, on the record.

    The way out for a release that cannot roll back (no usable target) or that an operator
    gives up on: its cohorts stay where they are, and nothing about it counts as known-good.
    """
    r = _release(world, release_id)
    if outcome not in CLOSE_OUTCOMES:
        raise OperatorError(f"--outcome must be one of {', '.join(CLOSE_OUTCOMES)}")
    if r.phase != "held":
        raise OperatorError(
            f"release {release_id} is {r.phase or 'unknown'}: only a held release can be closed by hand"
        )
    why = _require_rationale(rationale)
    summary = f"closed {outcome} by operator {actor.id} while held ({r.failure or 'held'}): {why}"
    return _event(r, "closed", Closed(outcome=outcome, summary=summary), actor, now)
