"""The fast path: one release's next steps decided at once, stored in one atomic batch.

A release goes requested -> prepared -> distributed -> verified -> activated, one consumer per
step. Step by step, each hop costs a delivery, a wait for the fold, an append and an ack (about
2 ms of this process's CPU and latency here: issue 18), although the four consumers usually run
in the same `kxr serve`. When they do (services/bootstrap.py `chain_steps`), the consumer that
decides a step goes on: it applies its own events to a copy of the world (the same pure fold the
follower runs, at positions that are not yet stored), lets the next consumer observe and decide on
that, and so on, then stores every step's events together, in their order, in one atomic batch.

Nothing is decided differently. Each step is that consumer's own `observe` and `decide`, on
exactly the state it would have found had the events before it been stored one by one (no
decision depends on the stream sequence, only on the events); each event keeps the id, actor and
signature it would have had. The batch carries the release's last sequence as its expectation, so
it is stored only if nothing else happened to the release meanwhile, and then all of it or none
of it: the log never holds a `verified` without the `distributed` it came from, nor those without
the pointer switch (the auditor checks each as before). A lost race decides again, as any step. A
batch the server refuses for anything else stores the deciding step alone (services/consumers/
reactor.py): each later step is then its own consumer's, to retry and, if it must, fail closed on.

A step that cannot observe (a verification past its deadline, a store it cannot read) fails
closed as its consumer would, on that one observation: its fail-closed event ends the batch (step
by step, too, a failed observation is written at once, not tried again; before, the consumer's own
delivery observed again, and a verification that timed out paid its 30 s deadline twice).
Otherwise it stops, leaving the rest to the next consumer's own delivery as before, at the first
step that does not act (its phase guard), does not join (`joins`: the verifier, for a pack over
64 MiB, whose read would keep the steps before it unstored for seconds), raises, or decides
anything but release events and one pointer switch (a timer goes with the batch; a new release
does not). The durable consumers stay: their
deliveries of the stored events find the release past their phase and ack them; after a restart,
a redelivery or a split deployment (`kxr serve --only`), the steps run one by one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from events.model import Event
from events.subjects import Subjects
from projections.position import positions
from projections.releases import ReleaseState
from projections.world import World, fold
from services.consumers.outputs import Atomic, Chain, Output, Timer
from services.consumers.port import Port
from services.consumers.step import Step, decided
from services.observability.metrics import count_fast_path


class PathStep(Step[Any], Protocol):
    """What the fast path uses of a consumer (services/consumers/reactor.py's ReleaseReactor)."""

    name: str
    port: Port

    def may_act(self, release: ReleaseState | None) -> bool: ...

    def joins(self, world: World, release: ReleaseState) -> bool: ...

    def emitted(self, outputs: list[Output]) -> None: ...


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Part:
    """What one step decided on the way (handed to its consumer's `emitted` once stored)."""

    step: PathStep
    outputs: list[Output]


def _chained(outputs: Sequence[Output]) -> bool:
    """Whether a step's outputs can go on to the next step: release events in order, nothing else."""
    return bool(outputs) and all(isinstance(out, Chain) for out in outputs)


def _joinable(outputs: Sequence[Output]) -> bool:
    """Whether a step's outputs can end the batch: release events, at most one pointer switch, timers."""
    kinds = [type(out) for out in outputs]
    return bool(outputs) and set(kinds) <= {Chain, Atomic, Timer} and kinds.count(Atomic) <= 1


def ahead(world: World, outputs: Sequence[Output], subjects: Subjects) -> World:
    """`world` with `outputs`' release events folded in, at the positions after its last one (pure).

    Their real sequences are known only once stored; no decision reads them (they only order the
    fold), and what is stored carries the release's real last sequence as its expectation."""
    events = [event for out in outputs if isinstance(out, Chain) for event in out.events]
    return fold(positions(events, world.applied_seq + 1, subjects), world)


def joined(parts: Sequence[Part]) -> list[Output]:
    """Every part's outputs as one atomic batch (plus its timers): the release events in the order
    they were decided, the pointer switch of the last part, if any, after the events that earned it."""
    lead: list[Event] = []
    switch: Atomic | None = None
    timers: list[Timer] = []
    for part in parts:
        for out in part.outputs:
            if isinstance(out, Chain):
                lead.extend(out.events)
            elif isinstance(out, Atomic):
                switch = out
            elif isinstance(out, Timer):
                timers.append(out)
    if switch is not None:
        batch: Output = Atomic(switch.scope_writes, switch.release_events, switch.batch_id, tuple(lead))
    else:
        batch = Atomic((), (), "", tuple(lead))
    return [batch, *timers]


async def extend(world: World, release: ReleaseState, outputs: list[Output], steps: Sequence[PathStep]) -> list[Part]:
    """The steps after a decision (`outputs`, on `release` in `world`) that can be decided now, each
    on the state the ones before it leave; [] when not even the first can."""
    parts: list[Part] = []
    current = outputs
    for step in steps:
        if not _chained(current):
            break
        try:
            world = ahead(world, current, step.port.subjects)
            release_now = world.release(release.release_id)
            if not step.may_act(release_now):
                count_fast_path(step.name, "not_acting")
                break
            assert release_now is not None
            if not step.joins(world, release_now):  # its own delivery decides it (a long read, say)
                count_fast_path(step.name, "not_joining")
                break
            ctx = step.port.ctx(step.name)  # one `now` for what it observes and decides, as its reactor does
            made, failed = await decided(step, step.name, world, release_now, ctx)
        except Exception as exc:  # the step's own consumer decides it from its delivery, as before
            count_fast_path(step.name, "raised")
            log.info(
                "fast path: %s left %s to its consumer: %s: %s",
                step.name,
                release.release_id,
                exc.__class__.__name__,
                exc,
            )
            break
        if not _joinable(made):
            count_fast_path(step.name, "not_joinable")
            break
        parts.append(Part(step, made))
        if failed is not None:  # what its own consumer would write on its delivery, written now: the end
            count_fast_path(step.name, "failed_closed")
            break
        count_fast_path(step.name, "joined")
        current = made
    return parts
