"""Keeps a process's view of the world: the log folded, live, in order.

Every consumer in a process shares one follower. Before a consumer decides on a
message at sequence S it waits until the follower has applied S, so decisions are
made on a state at least as new as their trigger.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time

from nats.js import JetStreamContext

from events.codec import DecodeError, decode_event
from events.model import Event
from events.service_signing import ServiceKeys
from events.subjects import Subjects
from projections.invariants import ignored_reason
from projections.position import Position
from projections.world import World, apply, apply_undecodable, archive_closed, needs_history, restore
from services.jetstream.log_reads import position_of, release_history
from services.jetstream.reader import OrderedReader
from services.observability import tracing

log = logging.getLogger(__name__)


class Follower:
    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        world: World | None = None,
        snapshots=None,
        snapshot_every: int = 1000,
        snapshot_min_interval_s: float = 10.0,
        archive_closed: bool = False,
        deadletters=None,
        service_keys: ServiceKeys | None = None,
    ) -> None:
        self._js = js
        self._subjects = subjects
        self.world = world or World()
        self.position = self.world.applied_seq
        self._snapshots = snapshots
        self._snapshot_every = snapshot_every
        # a service keeps closed releases as tombstones (projections.world.archive_closed): its
        # memory, snapshots and restarts then grow with the releases in flight, not with history
        self._archive_closed = archive_closed
        # a snapshot serialises the whole world on the event loop: at most this often, so a busy
        # log does not pay for it every 1000 events (a restart replays at most this much tail)
        self._snapshot_min_interval_s = snapshot_min_interval_s
        self._saved_at = self.position
        self._saved_time = time.monotonic()
        self.started_from = self.position  # 0: a full replay; else the snapshot's sequence
        self.undecodable: dict[int, DecodeError] = {}  # seq -> why that log entry is not a valid event
        # a service's follower keeps every undecodable entry as a dead letter (`kxr deadletter`):
        # junk on a subject no consumer reads (a channel's, say) is visible too, never just skipped
        self._deadletters = deadletters
        self._keeping: set[asyncio.Task] = set()
        # Trust only signed, fresh state: with the service keys, a pointer or service event that
        # no service key trusted for its role signed, and (keys or not) a pointer that breaks its
        # scope's chain (a replay), is folded as junk (its subject's sequence moves, nothing
        # else), kept here with why, and listed in `undecodable` too so a consumer it triggers
        # dead-letters it instead of acting on it.
        self._service_keys = service_keys
        self.ignored: dict[int, str] = {}  # seq -> why that entry counts for nothing
        self._waiters: list[tuple[int, int, asyncio.Future]] = []  # heap of (seq, tie-break, future)
        self._waiter_count = 0
        self._listeners: list[asyncio.Queue] = []

    @property
    def service_keys(self) -> ServiceKeys | None:
        """The keys this fold trusts service events by (None: signatures not checked)."""
        return self._service_keys

    async def run(self) -> None:
        reader = OrderedReader(
            self._js, self._subjects.releases_stream, self._subjects.log_subjects(), self.position + 1, contiguous=True
        )
        try:
            async for entry in reader.read(follow=True):
                position = position_of(entry)
                try:
                    event = decode_event(entry.data, entry.subject, self._subjects)
                except DecodeError as exc:
                    self.undecodable[entry.seq] = exc
                    self.world = apply_undecodable(self.world, position, self._subjects, str(exc))
                    self._keep_dead_letter(entry, exc)
                    event = None
                else:
                    event = self._signed_or_none(entry, position, event)
                if event is not None:
                    tracing.remember(event, entry.headers)  # the parent of decisions that follow
                    # a tombstone (an archiving world's, or one a reader started from: start_world) changes
                    if event.release_id is not None and needs_history(self.world, event):
                        await self._restore(event.release_id, entry.seq)
                    self.world = apply(self.world, position, event)
                    if self._archive_closed:
                        self.world = archive_closed(self.world, event)
                self.position = entry.seq
                if (
                    self._snapshots is not None
                    and entry.pending == 0
                    and self.position - self._saved_at >= self._snapshot_every
                    and time.monotonic() - self._saved_time >= self._snapshot_min_interval_s
                ):
                    await self.save_snapshot()
                for queue in self._listeners:
                    queue.put_nowait((position, event))
                self._wake()
        finally:
            await reader.close()

    def _keep_dead_letter(self, entry, problem: DecodeError) -> None:
        """In the background: the fold never waits on (nor stops for) a dead-letter write."""
        if self._deadletters is None:
            return

        async def keep() -> None:
            try:
                await self._deadletters.record_undecodable(
                    self._subjects.releases_stream, entry.seq, entry.subject, entry.data, str(problem)
                )
            except Exception as exc:
                log.warning("undecodable log entry at seq %d not dead-lettered: %s", entry.seq, exc)

        task = asyncio.get_running_loop().create_task(keep(), name=f"dead-letter seq {entry.seq}")
        self._keeping.add(task)
        task.add_done_callback(self._keeping.discard)

    def _signed_or_none(self, entry, position: Position, event: Event | None) -> Event | None:
        """The event, or None (folded as junk, recorded) if it is not signed, fresh state (`ignored_reason`)."""
        if event is None:  # an entry that is no event of ours (a subject outside the layout)
            return None
        why = ignored_reason(self.world, self._service_keys, position, event, entry.data, entry.headers)
        if why is None:
            return event
        log.warning("log seq %d (%s): ignored, %s", entry.seq, entry.subject, why)
        self.ignored[entry.seq] = why
        self.undecodable[entry.seq] = DecodeError(why)
        self.world = apply_undecodable(self.world, position, self._subjects, why)
        self._keep_dead_letter(entry, DecodeError(why))
        return None

    async def _restore(self, release_id: str, seq: int) -> None:
        """A tombstoned release about to change (say, rolled back after it closed): whole again first.

        Retried until the log answers: the follower cannot skip an entry, and a release
        folded from a partial read would be wrong (restore checks the sequence matches).
        """
        while True:
            try:
                state = await release_history(
                    self._js, self._subjects, release_id, before_seq=seq, service_keys=self._service_keys
                )
                if state is None:
                    raise LookupError(f"no events for release {release_id} before seq {seq}")
                self.world = restore(self.world, state)
                log.info("release %s restored from the log (closed, changed again at seq %d)", release_id, seq)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("release %s not restored yet (%s); retrying", release_id, exc)
                await asyncio.sleep(0.5)

    async def save_snapshot(self) -> None:
        """Persist the world with the sequence it has applied (caught up, so it is a whole state)."""
        if self._snapshots is None or self.position == self._saved_at:
            return
        try:
            await self._snapshots.save(self.world)
            self._saved_at = self.position
            self._saved_time = time.monotonic()
        except Exception as exc:  # a snapshot is an optimisation: never stop following for it
            log.warning("snapshot at seq %d not saved: %s", self.position, exc)

    def listen(self) -> asyncio.Queue:
        """A queue of (Position, Event | None) for every entry applied from now on."""
        queue: asyncio.Queue = asyncio.Queue()
        self._listeners.append(queue)
        return queue

    def unlisten(self, queue: asyncio.Queue) -> None:
        if queue in self._listeners:
            self._listeners.remove(queue)

    def _wake(self) -> None:
        # only the waiters whose sequence is now applied: no herd of re-checks per entry
        while self._waiters and self._waiters[0][0] <= self.position:
            future = heapq.heappop(self._waiters)[2]
            if not future.done():
                future.set_result(None)

    async def wait_for(self, seq: int, timeout: float | None = 30.0) -> None:
        if self.position >= seq:
            return
        future = asyncio.get_running_loop().create_future()
        self._waiter_count += 1
        heapq.heappush(self._waiters, (seq, self._waiter_count, future))
        try:
            await asyncio.wait_for(future, timeout)
        finally:
            future.cancel()  # a timed-out waiter stays in the heap until its sequence comes, done

    async def catch_up(self, timeout: float | None = 60.0) -> None:
        """Wait until everything stored in the log right now has been applied."""
        info = await self._js.stream_info(self._subjects.releases_stream)
        await self.wait_for(info.state.last_seq, timeout)

    async def catch_up_from_start(self, stall_s: float = 60.0, report_every_s: float = 10.0) -> None:
        """At start-up: as long as it takes while the fold moves (a cold start on a long log
        takes minutes), failing only if nothing is applied for `stall_s`; logs how far it is."""
        target = (await self._js.stream_info(self._subjects.releases_stream)).state.last_seq
        started, start_pos = time.monotonic(), self.position
        last_pos, last_move = self.position, time.monotonic()
        while self.position < target:
            try:
                await self.wait_for(target, timeout=report_every_s)
            except TimeoutError:
                pass
            now = time.monotonic()
            if self.position != last_pos:
                last_pos, last_move = self.position, now
            elif now - last_move >= stall_s:
                raise TimeoutError(f"the log fold stalled at seq {self.position} of {target} for {stall_s:.0f}s")
            if self.position < target:
                rate = (self.position - start_pos) / max(now - started, 1e-9)
                log.info(
                    "catching up with the log: seq %d of %d (%.0f entries/s, about %.0fs left)",
                    self.position,
                    target,
                    rate,
                    (target - self.position) / rate if rate else float("inf"),
                )
