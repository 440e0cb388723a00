"""Keeps a process's view of the world: the log folded, live, in order.

Every consumer in a process shares one follower. Before a consumer decides on a
message at sequence S it waits until the follower has applied S, so decisions are
made on a state at least as new as their trigger.

A hole in the log (an entry deleted from the stream, confirmed by its leader:
services/jetstream/reader.py `MissingEntries`) stops the follower: it folds state from every
entry (pointers, last-known-good, the sequences appends are conflict-checked against), so a
fold past an entry it never saw is a state nobody can vouch for, and skipping it silently
would let consumers decide on it. It logs one error naming the hole, keeps it in `halted`
(this process's readiness: None while it follows, else why it stopped), fails every wait on it
(`wait_for`, start-up's `catch_up_from_start`) with the same error, and ends `run` with it:
the service stops with one line (`kxr: error: …`) instead of spinning on the gap. A hole
below a snapshot the process starts from is never read. A gap the leader does not confirm (a
lagging replica) is read again, as before, for as long as it takes.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from dataclasses import replace

from nats.js import JetStreamContext

from events.codec import DecodeError
from events.model import Event
from events.service_signing import OwnAppends, OwnSigned, ServiceKeys, SignatureChecker
from events.subjects import Subjects
from projections.invariants import ignored_reason
from projections.position import Position
from projections.snapshot import Noted, undecodable_why
from projections.world import World, apply, apply_undecodable, archive_closed, needs_history, restore, tombstone
from services.jetstream.log_reads import READ_BACK_FIRST_DELAY_S, READ_BACK_TRIES, decode_entry, position_of, read_back
from services.jetstream.reader import MissingEntries, OrderedReader, RawEntry
from services.observability import tracing
from services.reads.shapes import IGNORED_SHOWN
from services.tasks import Turns

log = logging.getLogger(__name__)

UNDECODABLE_KEPT = 10_000  # entries that did not count (`undecodable`) a follower remembers
# restoring a tombstoned release (log_reads.read_back): a read that fails is tried again this many times
# in all, 0.5 s, 1 s, 2 s, 4 s apart (~8 s), then the follower stops (and the service with it, to be
# restarted): it cannot skip the entry, and waiting forever hid the fault (one reader per try)
RESTORE_TRIES = READ_BACK_TRIES
RESTORE_FIRST_DELAY_S = READ_BACK_FIRST_DELAY_S
EMPTY_READS = 3  # reads that find none of its events before "no such release" is believed
BATCH_STALL_S = 0.5  # a batch's entries not followed by its last this long are shown all the same


def mid_batch(entry: RawEntry) -> bool:
    """Whether more of this entry's atomic batch follows it: a batch is stored all at once, and only its
    last entry keeps `Nats-Batch-Commit`. Readers are shown the fold only at the batch's last entry
    (`Follower._show`): no consumer decides on half a batch — a pointer without its `release.activated`,
    or the fast path's `prepared` without the steps stored with it (which it would decide again, and
    whose duplicate would fail the group commit it joined: services/jetstream/log.py). The consumer's
    pending count cannot say it: an entry of a batch may be delivered before the rest is stored (seen
    on 2.15.1: num_pending 0 inside a batch). A batch whose last stored entry has no commit header
    (`Nats-Batch-Commit: eob` stores none) is shown when an entry of another batch (or none) comes,
    or after `BATCH_STALL_S` if none does."""
    headers = entry.headers
    return bool(headers.get("Nats-Batch-Id")) and not headers.get("Nats-Batch-Commit")


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
        own_appends: OwnAppends | None = None,
    ) -> None:
        self._js = js
        self._subjects = subjects
        self._world = world or World()  # the fold, entry by entry
        # what readers see (`world`, `position`, the listeners): the fold at a whole position, never half an
        # atomic batch (`mid_batch`); the entries folded since, not shown yet
        self._view = self._world
        self.position = self._world.applied_seq
        self._unshown: list[tuple[Position, Event | None]] = []
        self._stalled: asyncio.TimerHandle | None = None  # shows a batch whose last entry does not come
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
        # seq -> why that log entry is not a valid event, for the consumers it triggers (they dead-letter
        # it): the newest UNDECODABLE_KEPT, in log order — anyone who may append can make such entries
        self.undecodable: dict[int, DecodeError] = {}
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
        # seq -> why that entry counts for nothing (undecodable ones too): the newest IGNORED_SHOWN and
        # how many in all (`total`); kept in the snapshot, so a restart lists what a whole fold lists
        self.ignored: Noted = Noted(IGNORED_SHOWN)
        # what this process appended itself (services.jetstream.log): no Ed25519 verification again,
        # where the keys this fold trusts hold the very key it signed with
        known = own_appends is not None and service_keys is not None and own_appends.known_to(service_keys)
        self._own_appends = own_appends if known else None
        # why this fold stopped for good (a hole in the log), None while it follows: see the module docstring
        self.halted: MissingEntries | None = None
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
        turn = Turns()
        try:
            async for entry in reader.read(follow=True):
                await turn.maybe()  # a batch of a thousand entries is folded without awaiting anything
                position = position_of(entry)
                if self._unshown and self._unshown[-1][0].batch_id != position.batch_id:
                    # the batch before ended without its last entry (`eob`): shown now, before this
                    # entry is folded, so a new batch's first entries never show with it
                    self._show(self._unshown[-1][0].seq)
                try:
                    event = decode_entry(entry, self._subjects)
                except DecodeError as exc:
                    self._note_undecodable(entry.seq, exc, entry.subject)
                    self.ignored[entry.seq] = undecodable_why(str(exc))
                    self._world = apply_undecodable(self._world, position, self._subjects, str(exc))
                    self._keep_dead_letter(entry, exc)
                    event = None
                else:
                    event = self._signed_or_none(entry, position, event)
                if event is not None:
                    tracing.remember(event, entry.headers)  # the parent of decisions that follow
                    # a tombstone (an archiving world's, or one a reader started from: start_world) changes
                    if event.release_id is not None and needs_history(self._world, event):
                        await self._restore(event.release_id, entry.seq)
                    self._world = apply(self._world, position, event)
                    if self._archive_closed:
                        self._world = archive_closed(self._world, event)
                self._unshown.append((position, event))
                if not mid_batch(entry):
                    self._show(entry.seq)
                elif self._stalled is None:
                    self._stalled = asyncio.get_running_loop().call_later(BATCH_STALL_S, self._show_stalled)
                if (
                    self._snapshots is not None
                    and entry.pending == 0
                    and self.position - self._saved_at >= self._snapshot_every
                    and time.monotonic() - self._saved_time >= self._snapshot_min_interval_s
                ):
                    await self.save_snapshot()
        except MissingEntries as exc:
            self._halt(exc)
            raise
        finally:
            await reader.close()

    def _halt(self, hole: MissingEntries) -> None:
        """Stop for good at a hole in the log: say so once, and fail whoever waits for what lies past it."""
        self.halted = hole
        log.error(
            "the log fold stopped at seq %d and follows no more: %s (kxr audit replay lists every hole)",
            self.position,
            hole,
        )
        for _, _, future in self._waiters:
            if not future.done():
                future.set_exception(hole)
        self._waiters.clear()

    def _note_undecodable(self, seq: int, problem: DecodeError, subject: str) -> None:
        """Kept for the consumers an entry triggers, which look it up soon after the fold (a flood of junk
        must not grow every process's memory: one older than the newest UNDECODABLE_KEPT is forgotten
        here, still dead-lettered and counted in `ignored`; a consumer that meets it that late finds no
        release it names, or fails to decode it itself and dead-letters it)."""
        problem.subject = subject  # which request a junk entry was (the preparer answers those: first_open_seq)
        self.undecodable[seq] = problem
        while len(self.undecodable) > UNDECODABLE_KEPT:
            del self.undecodable[next(iter(self.undecodable))]  # in log order: the oldest first

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
        service_keys = self._service_keys
        keys: SignatureChecker | None = service_keys
        own = self._own_appends
        if service_keys is not None and own is not None and own.vouches(entry.subject, entry.data, entry.headers):
            keys = OwnSigned(service_keys)
        why = ignored_reason(self._world, keys, position, event, entry.data, entry.headers)
        if why is None:
            return event
        log.warning("log seq %d (%s): ignored, %s", entry.seq, entry.subject, why)
        self.ignored[entry.seq] = why
        self._note_undecodable(entry.seq, DecodeError(why), entry.subject)
        self._world = apply_undecodable(self._world, position, self._subjects, why)
        self._keep_dead_letter(entry, DecodeError(why))
        return None

    async def _restore(self, release_id: str, seq: int) -> None:
        """A tombstoned release about to change (say, rolled back after it closed): whole again first.

        Whole as its own events before `seq` say, judged with this fold's keys: what a whole fold
        says about it. A tombstone that disagrees with them (a snapshot of another history) is not
        a transient fault: the log's word is taken, with a warning (retrying it forever, every 0.5 s,
        piled up a reader per try). A read that fails is tried again with backoff, then raised
        (log_reads.read_back): the follower cannot skip the entry, and a release folded from a
        partial read would be wrong.
        """
        # a tombstone has events: "none" is believed only after EMPTY_READS reads that found none
        state = await read_back(
            self._js,
            self._subjects,
            release_id,
            seq,
            self._service_keys,
            believe_empty_after=EMPTY_READS,
            tries=RESTORE_TRIES,
            first_delay=RESTORE_FIRST_DELAY_S,
        )
        stone = self._world.tombstones.get(release_id)
        if state is None:  # none of its events before seq: a whole fold knows no such release there
            log.warning(
                "release %s: a tombstone (last seq %s) but no events of it in the log before seq %d; "
                "taking the log's word (no such release)",
                release_id,
                stone.last_seq if stone else "?",
                seq,
            )
            self._world = replace(self._world, tombstones=self._world.tombstones.discard(release_id))
            return
        if stone is not None and stone.last_seq != state.last_seq:
            log.warning(
                "release %s: the tombstone says its last seq is %d, its own events end at %d; taking the log's word",
                release_id,
                stone.last_seq,
                state.last_seq,
            )
            self._world = replace(
                self._world,
                tombstones=self._world.tombstones.insert(release_id, tombstone(state.last_seq, stone.outcome)),
            )
        self._world = restore(self._world, state)
        log.info("release %s restored from the log (closed, changed again at seq %d)", release_id, seq)

    async def start_from_snapshot(self) -> bool:
        """Before `run`: start from the saved snapshot (the world, what its fold noted as counting for
        nothing) if there is one this fold may trust (`Snapshots.read`); False: from sequence 1."""
        if self._snapshots is None or self.position:
            return False
        snapshot = await self._snapshots.read(self._service_keys)
        if snapshot is None:
            return False
        self._world = self._view = snapshot.world
        self.position = self.started_from = self._saved_at = snapshot.world.applied_seq
        self.ignored = Noted(IGNORED_SHOWN, snapshot.ignored, snapshot.ignored_total)
        return True

    async def save_snapshot(self) -> None:
        """Persist the world with the sequence it has applied (caught up, so it is a whole state)."""
        if self._snapshots is None or self.position == self._saved_at:
            return
        try:
            await self._snapshots.save(self.world, self._service_keys, self.ignored)
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

    @property
    def world(self) -> World:
        """The fold at `position`: a whole state, never half an atomic batch."""
        return self._view

    def _show(self, seq: int) -> None:
        """Readers see the fold at `seq`: the world and position, the listeners every entry folded since
        (the projector writes the read models at this position, and its history must hold them by then;
        given before anything awaits), and the waiters up to it are woken."""
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None
        self._view = self._world
        self.position = seq
        for item in self._unshown:
            for queue in self._listeners:
                queue.put_nowait(item)
        self._unshown.clear()
        self._wake()

    def _show_stalled(self) -> None:
        """The entries of a batch whose last entry did not come (a writer's `eob` commit, or a batch not
        written by this service): shown, rather than keeping every reader waiting for the next entry."""
        self._stalled = None
        if self._unshown:
            seq = self._unshown[-1][0].seq
            log.info("log seq %d: the rest of its atomic batch did not come within %.1fs; shown", seq, BATCH_STALL_S)
            self._show(seq)

    def _wake(self) -> None:
        # only the waiters whose sequence is now applied: no herd of re-checks per entry
        while self._waiters and self._waiters[0][0] <= self.position:
            future = heapq.heappop(self._waiters)[2]
            if not future.done():
                future.set_result(None)

    async def wait_for(self, seq: int, timeout: float | None = 30.0) -> None:
        if self.position >= seq:
            return
        if self.halted is not None:  # nothing past the hole is ever applied: not waited for
            raise self.halted
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
                await self.wait_for(target, timeout=report_every_s)  # a hole in the log: raised, at once
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
