"""The shared adapter of every release consumer: level-triggered, conflict-safe, fail-closed.

Each consumer subscribes (durably) to every event on every release. For each one
it waits until the process's world view includes that event, then decides on the
release's *current* state. Deciding on state rather than on the single trigger
makes restarts, redeliveries, pause/resume and a second instance all converge:
the same state gives the same derived event ids (dropped as duplicates), and a
lost optimistic-concurrency race is re-decided on the newer state.

The consumer contract (one for every lifecycle consumer):
- `acts_in`: the phases it decides in. The reactor applies this guard, and subscribes
  only to the events that lead into them.
- `observe(world, release, ctx)`: the IO (pack store, health, readiness), returning the
  consumer's facts (a small dataclass), or a `Failed` that names why it could not.
- `decide(world, release, facts, ctx)`: pure (not async: it cannot do IO), the outputs.
- `fail_closed(world, release, failed, ctx)`: pure, the event that leaves the release in a
  fail-closed state saying why ([] where the lifecycle has no room for one). The default
  escalates (the release holds for an operator) wherever the lifecycle allows `escalated`.
The reactor runs them: phase guard, observe, decide (or fail_closed on a named failure),
emit, and decides again on a lost race. An unexpected exception is retried by the Worker;
on its last delivery the reactor applies `fail_closed` instead of a silent dead letter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Generic, TypeVar

from nats.aio.msg import Msg

from events.codec import DecodeError
from events.model import Escalated
from projections.releases import TRANSITIONS, ReleaseState, triggers_for
from projections.world import World
from services.consumers.fast_path import Part, extend, joined
from services.consumers.outputs import Chain, Ctx, Failed, Output, event_ids, release_event
from services.consumers.port import Port
from services.consumers.step import Step, decided
from services.jetstream.log import AppendConflict, AppendFailed
from services.jetstream.worker import Poison, Worker
from services.observability import tracing
from services.observability.logs import log_context
from services.observability.metrics import count_fast_path, count_processed

log = logging.getLogger(__name__)
MAX_CONFLICTS = 8
MAX_DELIVER = 10  # the Worker's deliveries of one trigger before the reactor fails the release closed
RECONCILE_EVERY_S = 5.0
CONCURRENCY = 32  # releases decided on at once per consumer (I/O-bound: reads of packs and health, appends)

F = TypeVar("F")
T = TypeVar("T")


def hold(release: ReleaseState, failed: Failed, ctx: Ctx) -> list[Output]:
    """`escalated`: the release holds for an operator, saying why; [] where the lifecycle has no
    room for one (a release about to close: it is left as it is, and the failure is a dead letter)."""
    if "escalated" not in TRANSITIONS.get(release.phase, set()):
        return []
    contact = (
        release.prepared.escalation
        if release.prepared is not None
        else release.requested.escalation
        if release.requested is not None
        else ""
    )
    held = Escalated(
        code=failed.code,
        message=f"{ctx.service} could not act on phase {release.phase}: {failed.message}",
        escalation=contact,
    )
    return [Chain((release_event(ctx, release, "escalated", held, f"fail-closed/{release.phase}"),))]


async def until_stored(
    attempt: Callable[[], Awaitable[T]],
    what: str,
    catch_up: Callable[[], Awaitable[None]] | None = None,
    attempts: int = MAX_CONFLICTS,
) -> T:
    """Run `attempt` (decide on the current state, then append) until it stores without a conflict.

    A lost optimistic-concurrency race is decided again on the newer state (`catch_up` first
    brings the world view up to it). Shared by every consumer that appends with an expected
    sequence: the reactor, the pinner, the guard's flags, the notifier's records.
    """
    for n in range(attempts):
        try:
            return await attempt()
        except AppendConflict as exc:
            log.info("%s lost a race (%s); deciding again", what, exc)
            if catch_up is not None:
                await catch_up()
            await asyncio.sleep(0.01 * n)
    raise RuntimeError(f"{what} kept conflicting after {attempts} attempts")


@dataclass(frozen=True)
class _Recorded(Generic[F]):
    """A step whose observation is a failure already known (the Worker gave up): fail closed."""

    step: Step[F]
    failed: Failed

    async def observe(self, world: World, release: ReleaseState, ctx: Ctx) -> Failed:
        return self.failed

    def decide(
        self, world: World, release: ReleaseState, facts: F, ctx: Ctx
    ) -> list[Output]:  # pragma: no cover - never observed
        return []

    def fail_closed(self, world: World, release: ReleaseState, failed: Failed, ctx: Ctx) -> list[Output]:
        return self.step.fail_closed(world, release, failed, ctx)


def _decision_spans(
    spans: ExitStack, release: ReleaseState, parts: list[Part], started: int
) -> tuple[dict[str, dict[str, str]], list]:
    """One span per decision that stores something (from observe on), each the child of the trace context
    of the event it follows from: the release's last event for the first, the one before it decided for
    the next (the fast path's). Each stored event carries its own decision's span (the returned map:
    event id -> trace headers, where tracing is on), and each part's span is returned (None: tracing
    off) so a batch that fails can say so on the later parts'. Deciding that nothing is due leaves no span."""
    by_event: dict[str, dict[str, str]] = {}
    opened = []
    cause = release.last_event_id
    parent = tracing.headers_of(release.release_id, cause)
    for n, part in enumerate(parts):
        span = spans.enter_context(
            tracing.decision_span(
                f"{part.step.name} decide", release.release_id, cause, parent, start_ns=started if n == 0 else None
            )
        )
        emitted = event_ids(part.outputs)
        if span is not None:
            span.set_attribute("kx.consumer", part.step.name)
            span.set_attribute(tracing.ATTR_EMITTED, emitted)
        opened.append(span)
        parent = tracing.current_headers()
        by_event.update(dict.fromkeys(emitted, parent))
        cause = emitted[-1] if emitted else cause
    return by_event, opened


def _not_stored(spans: list, why: AppendFailed) -> None:
    """The later parts' spans of a batch that failed: they list no event (none of theirs was stored)."""
    for span in spans:
        if span is not None:
            span.set_attribute(tracing.ATTR_EMITTED, [])
            span.set_attribute(tracing.ATTR_NOT_STORED, f"the fast path's batch failed: {why}"[:500])


class ReleaseReactor(Generic[F]):
    name = "reactor"
    # The phases this consumer decides in. Its durable consumer only receives the events
    # that lead into them (`triggers_for`): most events concern one or two consumers, and a
    # delivery that cannot change a decision still costs a fetch, a wait and an ack. The
    # reconcile sweep would still catch anything a narrower filter missed.
    acts_in: frozenset[str] = frozenset()
    concurrency = CONCURRENCY  # releases decided on at once (the Worker's slots)
    # the consumers of the release's next steps when they run in this process, in order (set by
    # services/bootstrap.py): what they decide on this one's outcome is stored with it (fast_path.py)
    then: tuple[ReleaseReactor, ...] = ()

    def __init__(self, port: Port) -> None:
        self.port = port
        # one decision at a time per release in this process: its lock and how many want it
        self._deciding: dict[str, tuple[asyncio.Lock, int]] = {}

    # -- the contract: what each consumer declares ------------------------------------------------
    async def observe(self, world: World, release: ReleaseState, ctx: Ctx) -> F | Failed:
        raise NotImplementedError

    def decide(self, world: World, release: ReleaseState, facts: F, ctx: Ctx) -> list[Output]:
        raise NotImplementedError

    def fail_closed(self, world: World, release: ReleaseState, failed: Failed, ctx: Ctx) -> list[Output]:
        return hold(release, failed, ctx)

    def emitted(self, outputs: list[Output]) -> None:
        """Called once `outputs` are stored (for consumers that remember what they did)."""

    def joins(self, world: World, release: ReleaseState) -> bool:
        """Whether the fast path may decide this step in the batch of the steps before it (fast_path.py);
        False leaves it to this consumer's own delivery, after those steps are stored."""
        return True

    # -- running it ---------------------------------------------------------------------------------
    def runners(self) -> list:
        worker = Worker(
            self.port.js,
            self.port.subjects.releases_stream,
            f"kxr-{self.name}",
            self.trigger_subjects(),
            self.handle,
            self.port.deadletters,
            ack_wait=self.port.settings.ack_wait_s,
            concurrency=self.concurrency,
            max_deliver=MAX_DELIVER,
            start_at=self.first_open_seq,
        )
        return [worker.run(), self.reconcile()]

    def first_open_seq(self) -> int:
        """Where a brand-new durable of this consumer starts: the oldest entry that may still need it.

        A reactor decides on a release's state, not on the message that woke it, and its reconcile
        round decides on every release in flight at start. So a new durable (a consumer added to a
        deployment with a long log, or one removed and created again) skips closed releases and
        starts at the last entry of the oldest release in flight, or of the oldest entry that did
        not decode and that this consumer still answers (`answers_junk`), else after the log as
        folded. Without this, a new consumer on a 1M-event log first walked ~733k no-op deliveries
        (262 s); so did one behind any junk entry, answered or not, that the follower remembered.
        """
        follower = self.port.follower
        world = follower.world
        open_seqs = [r.last_seq for rid in world.in_flight if (r := world.release(rid)) is not None]
        junk = [seq for seq, problem in follower.undecodable.items() if self.answers_junk(world, problem)]
        return min([*open_seqs, *junk], default=world.applied_seq + 1)

    def answers_junk(self, world: World, problem: DecodeError) -> bool:
        """Whether this consumer would still act on that undecodable entry (most only dead-letter one,
        which the follower has done already: a new durable need not see it again)."""
        return False

    def trigger_subjects(self) -> list[str]:
        p = self.port.subjects.prefix
        if not self.acts_in:
            return [f"{p}.release.*.*"]
        return [f"{p}.release.*.{event_type}" for event_type in triggers_for(self.acts_in)]

    async def reconcile(self, every: float = RECONCILE_EVERY_S) -> None:
        """Decide on every release in flight: at start-up, then now and then.

        A message a crashed process had fetched but not acked only comes back after the
        ack deadline; deciding on the state directly means nothing waits for it.
        """
        while True:
            world = self.port.follower.world
            for release_id in sorted(world.in_flight):
                # a decision that finds nothing due awaits nothing: without this, a round over
                # thousands of releases in flight would hold the event loop (and every activation
                # waiting on it) for the whole round
                await asyncio.sleep(0)
                if self.busy(release_id) or not self.may_act(world.release(release_id)):
                    continue
                try:
                    with log_context(release_id=release_id):
                        await self.settle(release_id)
                except Exception as exc:  # the worker's retry and the next round cover it
                    log.info("%s: reconcile of %s deferred: %s", self.name, release_id, exc)
            await asyncio.sleep(every)

    def may_act(self, release: ReleaseState | None) -> bool:
        """The phase guard: is the release in a phase this consumer decides in?"""
        return release is not None and (not self.acts_in or release.phase in self.acts_in)

    async def handle(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        await self.port.follower.wait_for(seq)
        family, tokens = self.port.subjects.parse(msg.subject)
        if family != "release" or len(tokens) != 2:
            raise Poison(f"not a release subject: {msg.subject}")
        release_id = tokens[0]
        problem = self.port.follower.undecodable.get(seq)
        if problem is not None:
            await self.on_undecodable(msg, release_id, problem)
            return
        try:
            await self.settle(release_id)
        except Poison:
            raise
        except Exception as exc:
            deliveries = msg.metadata.num_delivered
            if deliveries < MAX_DELIVER or not await self.give_up(release_id, exc, deliveries):
                raise  # retried by the Worker; on the last delivery, a dead letter

    async def give_up(self, release_id: str, exc: Exception, deliveries: int) -> bool:
        """The Worker's last delivery failed too: leave the release fail-closed, saying why.

        True when an event now records it (the trigger is then done with); False when the
        lifecycle has no room for one, or it could not be written: the trigger is kept as a
        dead letter, and this is logged as an error.
        """
        failed = Failed.of(exc, prefix=f"{self.name} gave up after {deliveries} deliveries: ")
        try:
            stored = await self.settle(release_id, _Recorded(self, failed))
        except Exception as again:
            log.error("%s: %s could not be failed closed (%r) after: %s", self.name, release_id, again, failed.message)
            return False
        if not stored:
            log.error(
                "%s: %s left as it is, no fail-closed event fits its phase: %s", self.name, release_id, failed.message
            )
            return False
        log.error("%s: %s failed closed: %s", self.name, release_id, failed.message)
        count_processed(self.port.subjects.releases_stream, f"kxr-{self.name}", "failed_closed")
        return True

    async def on_undecodable(self, msg: Msg, release_id: str, problem: DecodeError) -> None:
        raise Poison(str(problem))

    def busy(self, release_id: str) -> bool:
        return release_id in self._deciding

    async def settle(self, release_id: str, step: Step | None = None) -> list[Output]:
        """Decide on the release's current state and perform the result, re-deciding on conflict.

        `step`: how to decide (default: this consumer's own contract). Returns what was stored.
        """
        lock, users = self._deciding.get(release_id, (asyncio.Lock(), 0))
        self._deciding[release_id] = (lock, users + 1)
        try:
            async with lock:
                return await until_stored(
                    lambda: self._settle_once(release_id, step or self),
                    f"{self.name}: {release_id}",
                    self.port.follower.catch_up,
                )
        finally:
            lock, users = self._deciding[release_id]
            if users == 1:
                del self._deciding[release_id]  # the map holds only releases being decided on
            else:
                self._deciding[release_id] = (lock, users - 1)

    async def _settle_once(self, release_id: str, step: Step) -> list[Output]:
        world = self.port.follower.world
        release = world.release(release_id)
        if not self.may_act(release):
            return []
        assert release is not None
        started = time.time_ns()
        outputs = await self.decision(world, release, self.port.ctx(self.name), step)
        if not outputs:
            return outputs
        # the next steps, when their consumers run here, decided now and stored with this one (fast_path.py)
        parts = [Part(self, outputs)]
        if step is self and self.then:
            parts += await extend(world, release, outputs, self.then)
        stored = joined(parts) if len(parts) > 1 else outputs
        with ExitStack() as spans:
            decided_by, opened = _decision_spans(spans, release, parts, started)
            with tracing.decided_by(decided_by):
                try:
                    await self.port.emit(stored, release)
                except AppendFailed as exc:
                    if len(parts) == 1:
                        raise
                    # The batch failed, not necessarily this step: its own outputs alone, as step by
                    # step. Each later step's consumer decides from its own delivery, so a failure that
                    # is a later step's is that step's to retry and to fail closed on, in its own words
                    # (before, this consumer retried the whole batch and, giving up, wrote its own
                    # fail-closed event: a pre-flight `rejected` for a pointer batch the server refused).
                    count_fast_path(self.name, "batch_failed")
                    log.warning(
                        "fast path: %s's batch for %s failed (%s); storing its own step alone",
                        self.name,
                        release_id,
                        exc,
                    )
                    _not_stored(opened[1:], exc)
                    parts, stored = parts[:1], outputs
                    await self.port.emit(stored, release)
            for part in parts:
                part.step.emitted(part.outputs)
        return stored

    async def decision(self, world: World, release: ReleaseState, ctx: Ctx, step: Step | None = None) -> list[Output]:
        """What `step` decides on this state (observe, then decide or fail closed), not performed."""
        outputs, _ = await decided(step or self, self.name, world, release, ctx)
        return outputs
