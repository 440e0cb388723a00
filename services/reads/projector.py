"""The projector: keeps the operator's read models (services/reads/read_models.py) in their KV bucket.

It rides in the activator's process (services/bootstrap.py), beside the follower that folds the
log for the consumers: the process that moves scope pointers publishes where they point, and
`kxr serve --only …` without the activator writes nothing. It reads the follower's world and
never sits on a consumer's path: it takes the follower's entries from a listener queue, and
writes at most every `interval_s` (and at once when the follower has caught up), in the
background.

Releases: the service's world keeps a closed release only as a tombstone, too little for its
history line, so the projector keeps its own `HistoryFold` (services/reads/history.py) of the
release events, started from the log (batch by batch) and fed by the follower's listener. A
closed release leaves it once its value is written (a release that changes again after it closed
is read back whole from its own events, as the follower restores a tombstone), so its memory grows
with the releases in flight, plus a 16-byte fingerprint and an index row per release.

Several writers (two `kxr serve` processes) never make a value go backwards: each value carries
the log sequence it reflects and is written with the key's expected revision (KV compare and
set); a writer that finds a newer value leaves it. Before a fold's keys, the writer checks that
the bucket holds only its own last writes (its last revision is the bucket's last); if another
writer wrote since, it reads the bucket again instead of trusting what it wrote. `position` is
written last. After a restart the model is rewritten from the follower's world: values that did
not change are left as they are. The release history resumes from the bucket (`_resume`): only
the log's tail after `position` is read, plus the releases in flight there from their own events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from nats.js.errors import KeyWrongLastSequenceError, NotFoundError

from services.jetstream.direct import SubjectStream, connection_of, last_per_subject
from services.jetstream.log_reads import READ_BACK_TRIES, read_back, release_history
from services.reads import read_models as rm
from services.reads.history import HistoryFold, HistoryItem
from services.reads.model_reads import keys_id
from services.tasks import Turns

if TYPE_CHECKING:
    from events.model import Event
    from projections.position import Position

log = logging.getLogger(__name__)
INTERVAL_S = 0.15
MAX_SPACING_S = 0.5
RETRY_S = 1.0
WRITES_AT_ONCE = 256
RESTORES_AT_ONCE = 16  # releases in flight read back at once when resuming
FOLLOWER_WAIT_S = 10.0  # at a resume, how long the follower may take to reach the bucket's position


class Projector:
    def __init__(self, app, interval_s: float = INTERVAL_S) -> None:
        self._app = app
        self._interval_s = interval_s
        self._stored: dict[str, tuple[int, int, bytes]] = {}  # key -> (revision, seq, fingerprint of the content)
        self._last_revision = 0  # the bucket's last revision this writer made (or read)
        self._bucket_last = 0  # the bucket's last revision when last asked
        self._scopes: dict[Any, Any] = {}  # the world's state objects written (persistent: `is` means unchanged)
        self._channels: dict[Any, Any] = {}
        self._dirty: set[str] = set()  # release ids with events since the last write
        self._releases: dict[str, tuple[Any, Any]] = {}  # release id -> (history item, world state) written
        # closed releases, once written, leave the history (memory grows with releases in flight, as the
        # follower's does): (first seq, closed at), to put one back whole if it changes again
        self._evicted: dict[str, tuple[int, Any]] = {}
        self.history = HistoryFold()
        self._index: dict[int, dict[str, list[Any]]] = {}  # shard -> release id -> its row in the list index
        self._index_dirty: set[int] = set()
        self.newest: tuple[int, str] | None = None  # (first seq, id) of the newest release seen (benches)
        self.releases = 0  # how many releases the model holds
        self.write_s = 0.0  # how long the last write took (it spaces the next)
        self.position = -1  # the log sequence the model reflects (written); -1: nothing yet, not even an empty log
        self.flushed = asyncio.Event()  # set after every write of `position` (tests, benches)
        self.last_error: Exception | None = None  # why it last started over
        self.resumed_at: int | None = None  # the bucket's position the last start resumed from (None: from seq 1)

    def runners(self) -> list:
        return [self.run()]

    async def run(self) -> None:
        """Until cancelled. A failure (the server busy, a write timed out) starts it over after a pause,
        from the log and the bucket: meanwhile readers find `position` behind the log and fold."""
        queue = self._app.follower.listen()
        try:
            while True:
                try:
                    await self._run(queue)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.last_error = exc
                    log.warning("read models: %s: %s; starting over in %.0fs", type(exc).__name__, exc, RETRY_S)
                    await asyncio.sleep(RETRY_S)
                    self._forget()
        finally:
            self._app.follower.unlisten(queue)

    def _forget(self) -> None:
        self.history = HistoryFold()
        self.resumed_at = None
        for cache in (self._evicted, self._index, self._releases, self._scopes, self._channels, self._stored):
            cache.clear()
        self._index_dirty.clear()
        self._dirty.clear()

    async def _run(self, queue: asyncio.Queue) -> None:
        app = self._app
        self._kv = await app.js.key_value(app.subjects.read_bucket)
        await self._load(await self._resume(await self._read_bucket()))
        first = None
        while True:
            await self._drain(queue, first)
            await self.write()
            # something new: wait for it, then gather more. The entry waited for is folded first: put
            # back on the queue it went behind whatever the follower had queued with it (a batch folded
            # in one turn), and those entries, folded before it, made it look folded already: skipped
            # (a release's `monitoring_failed`, `closed` or `requested` missing from its history line)
            first = await queue.get()
            # at most every interval_s and, when writes are long (a burst of releases), about a fifth of
            # the event loop's time; never so long apart that a reader (who waits a second) gives up
            await asyncio.sleep(max(self._interval_s, min(4 * self.write_s, MAX_SPACING_S)))

    async def _drain(self, queue: asyncio.Queue, first: tuple[Position, Event | None] | None = None) -> None:
        """Fold into the history `first` (an entry already taken off the queue), then everything the
        follower has queued, in its order. The event loop may turn while a long backlog is folded, but
        never after the last entry: the write that follows takes the follower's position and world at
        once, and they must be the history's own."""
        turn = Turns()
        backlog = queue.qsize()
        while True:
            if first is not None:
                (position, event), first = first, None
            else:
                try:
                    position, event = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
            if backlog > 0:  # only within what was queued at the start: the rest is folded without a turn
                backlog -= 1
                await turn.maybe()
            if event is None or position.seq <= self.history.applied_seq:
                # already folded (the start-up load read it too): a closed release it names must not
                # be "restored" as of this older entry — that dropped it from memory, and its next
                # event then started a release with no request (no target, no pack) in the model
                continue
            release_id = event.release_id
            if release_id in self._evicted and event.family == "release":
                await self._restore(release_id, position.seq)
            self.history.apply(position, event)
            if release_id is not None:
                self._dirty.add(release_id)

    async def _resume(self, kept: dict[str, tuple[int, dict[str, Any]]]) -> int:
        """Where the release history's load starts: after the bucket's `position` when the bucket holds a
        whole fold (its index and the releases open there, read back from their own events), else 1.

        A restart then reads the log's tail, not its whole history (which held the activator's event
        loop for seconds at 100k events). Values written after `position` by a writer that stopped
        before writing it are harmless: the tail is folded again from `position`, and a release the
        index already calls closed is read back whole when the tail changes it."""
        app, keys = self._app, self._app.follower.service_keys
        stored = kept.get(rm.POSITION)
        if stored is None:
            return 1
        seq, position = stored
        last = (await app.js.stream_info(app.subjects.releases_stream)).state.last_seq
        if position.get("keys") != keys_id(keys) or seq > last:
            # folded under other service keys, or the log is not the one it folded: fold it all again
            log.info("read models: not resumed at seq %d (other keys or another log); folding the log", seq)
            return 1
        if any(
            len(row) < rm.INDEX_COLUMNS
            for key, (_, doc) in kept.items()
            if key.startswith("index.")
            for row in doc["rows"]
        ):
            log.info("read models: not resumed at seq %d (an older writer's index); folding the log", seq)
            return 1
        open_rows: list[list[Any]] = []
        for key, (_, doc) in kept.items():
            if not key.startswith("index."):
                continue
            shard = int(key.removeprefix("index."))
            for row in doc["rows"]:
                self._index.setdefault(shard, {})[row[1]] = row
                if row[3]:  # closed: out of memory, read back whole if it changes again (as after a write)
                    self._evicted[row[1]] = (row[0], rm.index_closed_at(row))
                else:
                    open_rows.append(row)
                self._note_newest(row[0], row[1])
        open_rows, taken = await self._from_follower(open_rows, seq)
        for i in range(0, len(open_rows), RESTORES_AT_ONCE):
            rows = open_rows[i : i + RESTORES_AT_ONCE]
            states = await asyncio.gather(
                *(release_history(app.js, app.subjects, row[1], seq + 1, keys) for row in rows)
            )
            for row, state in zip(rows, states):
                if state is not None:
                    self.history.items[row[1]] = HistoryItem(state, row[0])
                elif row[0] <= seq:  # its first event is at or before `position`: the read came back short
                    raise LookupError(f"release {row[1]} (first seq {row[0]}) read back with no events; reading again")
                # else first written after `position` by a writer that stopped: its events are in the tail
        self.history.applied_seq = seq
        self.resumed_at = seq
        log.info(
            "read models: resumed at seq %d (releases in flight: %d from the follower's world, %d read back)",
            seq,
            taken,
            len(open_rows),
        )
        return seq + 1

    async def _from_follower(self, open_rows: list[list[Any]], seq: int) -> tuple[list[list[Any]], int]:
        """The releases open at `seq` whose state the follower's world already holds, put in the history
        from it; the rows left are read back from their own events, and how many were taken.

        The follower folds the same signed entries the same way (`fold_signed_entry`), so once it has
        applied `seq`, a release whose last event is at or before `seq` is in its world exactly as at
        `seq`. Reading each back instead (a stream info, a read and a signature check per event) was a
        quarter of a restarted activator's work with 200 releases in flight (py-spy, bench.throughput).
        A release the follower holds only as a tombstone, or that changed after `seq`, is read back."""
        follower = self._app.follower
        with contextlib.suppress(TimeoutError):  # a follower still far behind: read them all back, as before
            await follower.wait_for(seq, timeout=FOLLOWER_WAIT_S)
        if follower.position < seq:
            return open_rows, 0
        world, left = follower.world, []
        for row in open_rows:
            state = world.release(row[1])
            if state is not None and state.last_seq <= seq and row[0] <= seq:
                self.history.items[row[1]] = HistoryItem(state, row[0])
            else:
                left.append(row)
        return left, len(open_rows) - len(left)

    async def _load(self, start_seq: int = 1) -> None:
        """The release history from the log (from `start_seq`), at start-up: release events only, batch
        by batch; each batch's closed releases are written (if they changed) and leave memory at once, so
        a long history is never held whole. What is still open is written with the first whole write."""
        from projections.invariants import signature_problem
        from services.jetstream.log_reads import log_batches

        app, keys = self._app, self._app.follower.service_keys
        filters = [f"{app.subjects.prefix}.release.*.*"]
        async for batch in log_batches(app.js, app.subjects, filters, start_seq=start_seq):
            started = time.monotonic()
            touched: set[str] = set()
            turn = Turns()
            for entry, position, event in batch:
                # this runs in the activator's event loop: a batch folded in one go (a signature
                # check per service event) held the loop for hundreds of ms after a restart
                await turn.maybe()
                if event is None or not event.release_id:
                    continue
                if keys is not None and signature_problem(keys, position.subject, event, entry.data, entry.headers):
                    continue  # as the follower: an unsigned service event counts for nothing
                if event.release_id in self._evicted:
                    await self._restore(event.release_id, position.seq)
                self.history.apply(position, event)
                touched.add(event.release_id)
            closed = [r for r in touched if self.history.items[r].state.closed]
            values = {rm.release_key(r): rm.release_value(self.history.items[r]) for r in closed}
            for value in list(values.values()):
                self._indexed(value)
            values.update(rm.pack_values(list(values.values())))
            values.update(self._index_values())
            await self._put_changed(values, self._app.follower.position)
            for release_id in closed:
                item = self.history.items[release_id]
                self._note_newest(item.first_seq, release_id)
                self._evict_closed([release_id])
            # about half of the loop at most: a long history loads in the background, activations first
            await asyncio.sleep(min(time.monotonic() - started, MAX_SPACING_S))
        self._dirty.update(self.history.items)  # in flight (or reopened): written whole with the world

    def _indexed(self, value: dict[str, Any]) -> None:
        row = rm.index_row(value)
        shard = rm.shard_of(row[0])
        if self._index.setdefault(shard, {}).get(row[1]) != row:
            self._index[shard][row[1]] = row
            self._index_dirty.add(shard)

    def _index_values(self) -> dict[str, dict[str, Any]]:
        out = {rm.index_key(n): rm.index_value(self._index[n].values()) for n in self._index_dirty}
        self._index_dirty.clear()
        return out

    def _note_newest(self, first_seq: int, release_id: str) -> None:
        if self.newest is None or first_seq > self.newest[0]:
            self.newest = (first_seq, release_id)

    async def _put_changed(self, values: dict[str, dict[str, Any]], seq: int) -> None:
        """Write each value whose content the bucket does not hold yet (as of `seq`)."""
        prints: dict[str, bytes] = {}
        turn = Turns()
        for k, v in values.items():
            prints[k] = rm.fingerprint(v)
            await turn.maybe()
        changed = [k for k, v in prints.items() if k not in self._stored or self._stored[k][2] != v]
        if changed and await self._others_wrote():
            await self._read_keys(list(values))
            changed = [k for k, v in prints.items() if k not in self._stored or self._stored[k][2] != v]
        for i in range(0, len(changed), WRITES_AT_ONCE):
            await asyncio.gather(*(self._put(k, values[k], seq, prints[k]) for k in changed[i : i + WRITES_AT_ONCE]))

    async def _restore(self, release_id: str, seq: int) -> None:
        """A closed (evicted) release changes again: whole from its own events first, as the follower does."""
        first_seq, closed_at = self._evicted.pop(release_id)
        # it has events before seq unless this is its first (a stopped writer indexed it ahead of `position`):
        # "none" is then a short read, read again; a read back that gives up starts the projector over
        never = READ_BACK_TRIES + 1
        state = await read_back(
            self._app.js,
            self._app.subjects,
            release_id,
            seq,
            self._app.follower.service_keys,
            believe_empty_after=1 if first_seq >= seq else never,
        )
        if state is not None:  # None: this is its first event (a stopped writer indexed it ahead of `position`)
            self.history.items[release_id] = HistoryItem(state, first_seq, closed_at)

    def _evict_closed(self, written: list[str]) -> None:
        for release_id in written:
            item = self.history.items.get(release_id)
            if item is not None and item.state.closed:
                del self.history.items[release_id]
                self._releases.pop(release_id, None)
                self._evicted[release_id] = (item.first_seq, item.closed_at)

    async def _read_bucket(self) -> dict[str, tuple[int, dict[str, Any]]]:
        """What the bucket holds now (after a restart, or when another writer wrote): every key is
        compared with it again. Returns `position` and the index shards ((seq, value) each): what a
        restart resumes from."""
        stream = f"KV_{self._app.subjects.read_bucket}"
        prefix = f"$KV.{self._app.subjects.read_bucket}."
        self._stored.clear()
        self._scopes.clear()
        self._channels.clear()
        self._releases.clear()
        kept: dict[str, tuple[int, dict[str, Any]]] = {}
        info = await self._app.js.stream_info(stream)
        # one value per key (history 1): the bucket's messages in order are its values. Not
        # confirmed with the leader (the service may only direct-get the bucket): a value a lagging
        # replica lacks or has older is taken for another writer's (`_put`: the compare and set is refused,
        # the value read again), and an older `position` only means more of the log is read again
        reader = SubjectStream(connection_of(self._app.js), stream, f"{prefix}>", batch=1024, confirm=False)
        async for stored in reader:
            key = stored.subject.removeprefix(prefix)
            if not stored.data:  # a delete marker
                self._stored.pop(key, None)
                continue
            seq, doc = rm.content(stored.data)
            self._stored[key] = (stored.seq, seq, rm.fingerprint(doc))
            if key == rm.POSITION or key.startswith("index."):
                kept[key] = (seq, doc)
        # what was written before the read began (a write meanwhile is seen as another writer's)
        self._last_revision = info.state.last_seq
        return kept

    async def write(self) -> None:
        """One write of the model at the follower's position: its values are built from the world of
        that position (immutable), letting the event loop turn every few milliseconds meanwhile."""
        follower = self._app.follower
        seq, world = follower.position, follower.world
        if seq <= self.position and not self._dirty:
            return
        started = time.perf_counter()
        try:
            await self._write(seq, world)
        finally:
            self.write_s = time.perf_counter() - started

    async def _write(self, seq: int, world) -> None:
        follower = self._app.follower
        values: dict[str, dict[str, Any]] = {}
        turn = Turns()
        for key, s in world.scopes.items():
            if self._scopes.get(key) is not s:
                self._scopes[key] = s
                values[rm.scope_key(*key)] = rm.scope_value(key, s)
                await turn.maybe()
        for env_channel in {*world.channels.keys(), *world.channel_problems.keys()}:
            now = (world.channels.get(env_channel), world.channel_problems.get(env_channel))
            if self._channels.get(env_channel) != now:
                self._channels[env_channel] = now
                values[rm.channel_key(*env_channel)] = rm.channel_value(world, *env_channel)
                await turn.maybe()
        dirty = self._dirty | set(world.in_flight)
        self._dirty = set()
        written: list[str] = []
        for release_id in dirty:
            await turn.maybe()
            item, state = self.history.items.get(release_id), world.releases.get(release_id)
            if item is None:
                continue
            seen = self._releases.get(release_id)
            if seen is not None and seen[0] is item and seen[1] is state:
                continue  # neither the history nor the world changed it since the last write
            self._releases[release_id] = (item, state)
            values[rm.release_key(release_id)] = value = rm.release_value(item, state)
            self._indexed(value)
            written.append(release_id)
            self._note_newest(item.first_seq, release_id)
        values.update(rm.pack_values([values[rm.release_key(r)] for r in written]))
        values.update(self._index_values())
        await self._put_changed(values, seq)
        position = rm.position_value(
            world,
            follower.ignored,
            keys_id(follower.service_keys),
            {n: self._stored.get(rm.index_key(n), (0, 0, b""))[1] for n in self._index},
            sum(len(rows) for rows in self._index.values()),
        )
        printed = rm.fingerprint(position)
        if seq > self.position or self._stored.get(rm.POSITION, (0, 0, b""))[2] != printed:
            await self._put(rm.POSITION, position, seq, printed)
        self._evict_closed(written)
        self.releases = position["releases"]
        self.position = max(self.position, seq)
        self.flushed.set()
        self.flushed = asyncio.Event()

    async def _others_wrote(self) -> bool:
        info = await self._app.js.stream_info(f"KV_{self._app.subjects.read_bucket}")
        self._bucket_last = info.state.last_seq
        return info.state.last_seq != self._last_revision

    async def _read_keys(self, keys: list[str]) -> None:
        """What the bucket holds now for `keys` (another writer wrote since our last write): those are
        compared with it again. Only the keys of this write: reading the whole bucket at every write
        while two `kxr serve` processes write (each sees the other's writes) took ~10 ms per 100 keys of
        the activator's event loop every ~200 ms, and grows with the releases the bucket holds. A key
        left stale here is caught by its compare-and-set when it is next written."""
        bucket = self._app.subjects.read_bucket
        prefix = f"$KV.{bucket}."
        seen: set[str] = set()
        for i in range(0, len(keys), WRITES_AT_ONCE):
            subjects = [prefix + k for k in keys[i : i + WRITES_AT_ONCE]]
            async for stored in last_per_subject(connection_of(self._app.js), f"KV_{bucket}", subjects):
                key = stored.subject.removeprefix(prefix)
                seen.add(key)
                if stored.data:
                    seq, doc = rm.content(stored.data)
                    self._stored[key] = (stored.seq, seq, rm.fingerprint(doc))
                else:
                    self._stored.pop(key, None)  # a delete marker
        for key in set(keys) - seen:
            self._stored.pop(key, None)
        self._last_revision = max(self._last_revision, self._bucket_last)

    async def _put(self, key: str, value: dict[str, Any], seq: int, printed: bytes) -> None:
        """Write `value` as of `seq` unless the bucket holds a value as new or newer (compare and set);
        `printed` is its `rm.fingerprint`, already taken by the caller (a JSON encoding less per key)."""
        data = rm.encode(value, seq)
        for _ in range(10):
            stored = self._stored.get(key)
            if stored is not None and stored[1] > seq:
                return  # another writer is further along: never backwards
            try:
                if stored is None:
                    revision = await self._kv.create(key, data)
                else:
                    revision = await self._kv.update(key, data, last=stored[0])
            except (KeyWrongLastSequenceError, NotFoundError) as exc:  # someone else wrote: look again
                log.debug("read model %s: %s; reading it again", key, exc)
                try:
                    entry = await self._kv.get(key)
                except NotFoundError:
                    self._stored.pop(key, None)
                    continue
                if entry.value:
                    theirs, doc = rm.content(entry.value)
                    self._stored[key] = (entry.revision or 0, theirs, rm.fingerprint(doc))
                continue
            self._stored[key] = (revision, seq, printed)
            self._last_revision = max(self._last_revision, revision)
            return
        log.warning("read model %s not written after 10 tries (others keep writing it)", key)


async def project_once(app, timeout: float = 60.0) -> Projector:
    """A model written once at the follower's position (benches and tests: a log with no service)."""
    projector = Projector(app)
    task = asyncio.get_running_loop().create_task(projector.run())
    deadline = time.monotonic() + timeout
    try:
        while projector.position < app.follower.position:
            flushed = asyncio.ensure_future(projector.flushed.wait())
            done, _ = await asyncio.wait({task, flushed}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            flushed.cancel()
            if task in done:
                task.result()  # its error
                raise RuntimeError("the projector stopped")
            if projector.last_error is not None:  # a bench or test wants the error, not a retry
                raise projector.last_error
            if not done and time.monotonic() > deadline:
                raise TimeoutError(f"read models not written within {timeout:.0f}s")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return projector
