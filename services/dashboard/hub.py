"""One live view of the log per process, shared by every browser.

The hub listens to the process's `Follower` (the same live fold the consumers use) and
keeps the evidence records of the releases someone looked at, updated as their events
arrive. For the open monitoring windows someone is looking at, it re-reads the health
samples stored so far every few seconds, so the figures move between log events. Browsers
never read NATS themselves: a change bumps `version`, which wakes the SSE streams, and
they render from what the hub holds in memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import Any

from events.model import MonitoringStarted
from events.subjects import Subjects
from projections.evidence import EvidenceRecord, apply_evidence
from projections.releases import ReleaseState
from projections.world import World, restore
from services.actions.pins import find_pack
from services.dashboard.model import HISTORY_LIMIT, channels_of, history_rows, history_view
from services.jetstream.direct import connection_of, last_per_subject
from services.jetstream.log_reads import load_evidence, load_world, release_history
from services.monitoring.judge import window_span
from services.reads.fleet import FleetTail, digest_versions
from services.reads.follower import Follower
from services.reads.health_reads import samples_between
from services.reads.history import Filter, HistoryFold, load_fold
from services.reads.model_reads import keys_id, read_view, release_matches
from services.reads.model_world import releases_of
from services.reads.read_models import pack_key

log = logging.getLogger(__name__)

SAMPLES_EVERY_S = 2.0  # how often an open window's figures are recomputed
SAMPLES_READ_TIMEOUT_S = 5.0
HEALTH_RETRY_S = 60.0  # after a failed health read (e.g. the auditor's user may not read health)
WANTED_FOR_S = 30.0  # a window's samples are kept fresh this long after a page last showed it
FLEET_EVERY_S = 2.0  # how often a change of the fleet (health reports) wakes the pages
CLOSED_WINDOWS_CACHED = 256  # closed windows' samples kept for the release pages' charts
MODEL_HISTORY_EVERY_S = 1.0  # /history from the read models: read again at most this often per filter
MODEL_HISTORY_KEPT = 64  # filters whose last answer is kept
PACKS_KEPT = 4096  # digests the read models were asked about and do not name

WindowKey = tuple[str, int, datetime]  # release id, stage, start: one monitoring window


def window_key(release: ReleaseState) -> WindowKey | None:
    """The release's open window, if it is in one."""
    m = release.monitoring
    if m is None or release.phase != "monitoring":
        return None
    return release.release_id, m.stage, m.starts_at


class LiveHub:
    def __init__(
        self,
        follower: Follower,
        js,
        subjects: Subjects,
        clock: Callable[[], datetime],
        cache_size: int = 1024,
        from_models: bool = False,
    ) -> None:
        self.follower = follower
        self.js = js
        self.subjects = subjects
        self.clock = clock
        self.seq = follower.position  # last log sequence the hub has passed on
        self.version = 0  # bumped on every change worth a re-render (log entry, fresher samples)
        self.health_note: str | None = None  # why samples are not shown, when they cannot be read
        self._queue = follower.listen()
        self._changed = asyncio.Condition()
        self._cache_size = cache_size
        # release id -> (record, last sequence folded into it); least recently viewed first
        self._records: OrderedDict[str, tuple[EvidenceRecord, int]] = OrderedDict()
        # release id -> events that arrived while its record was being read from the log
        self._loading: dict[str, list] = {}
        self._samples: dict[WindowKey, list] = {}
        self._wanted: dict[WindowKey, float] = {}  # window -> loop time a page last asked for it
        self.fleet = FleetTail(js, subjects, clock)  # every runtime seen on KX_HEALTH, kept live
        # `from_models`: the follower started from the read models (model_world.start_world), its world
        # holds closed releases as tombstones: a closed release is read back whole when a page asks
        # (`world_with`), and /history reads the read models as `kxr release list` does (`history_rows`)
        self.from_models = from_models
        self._closed_states: OrderedDict[str, ReleaseState] = OrderedDict()  # tombstoned, read back
        self.stirred: set[str] = set()  # tombstoned releases with an event since the start (model.recent_closed)
        self._model_history: dict[tuple[Filter, int], tuple[float, dict[str, Any]]] = {}  # filter -> (when, rows)
        self._index_kept: dict[int, tuple[int, list]] = {}  # index shard -> (seq, rows): read again when changed
        self.pack_versions: dict[str, str] = {}  # digest -> version, from the read models (`_name_packs`)
        self._unnamed: set[str] = set()  # digests the read models do not name
        # the release history (/history): `kxr release list`'s fold of release events, kept live;
        # a hub that starts after its follower has applied entries reads those first (`_history_from_log`)
        self.history = HistoryFold()
        self._history_from_start = follower.position > 0 and not from_models
        # closed windows' samples (they no longer change), least recently shown first
        self._closed: OrderedDict[WindowKey, list] = OrderedDict()
        self._closed_retry_at = 0.0  # after a failed read, charts do not read again before this loop time

    @property
    def world(self) -> World:
        return self.follower.world

    async def run(self) -> None:
        await asyncio.gather(self._follow_log(), self._refresh_samples(), self.fleet.run(), self._fleet_changes())

    async def _fleet_changes(self) -> None:
        """Health reports arrive far more often than log entries: at most one re-render every FLEET_EVERY_S."""
        seen = self.fleet.version
        while True:
            await asyncio.sleep(FLEET_EVERY_S)
            if self.fleet.version != seen:
                seen = self.fleet.version
                if self.from_models:
                    await self._name_packs()
                await self._bump()

    async def _name_packs(self) -> None:
        """A world started from the read models holds older closed releases as tombstones: a runtime
        still on a pack only such a release named would show its digest without a version. The read
        models name every pack a release named (`pack.<digest>`): those are read once, and kept."""
        digests = {r.digest for r in self.fleet.fleet.runtimes.values() if r.digest}
        digests |= {
            r.activation.digest for r in self.fleet.fleet.runtimes.values() if r.activation and r.activation.digest
        }
        unknown = digests - set(digest_versions(self.world)) - set(self.pack_versions) - self._unnamed
        if not unknown:
            return
        bucket = self.subjects.read_bucket
        prefix = f"$KV.{bucket}."
        try:
            async for stored in last_per_subject(
                connection_of(self.js), f"KV_{bucket}", [prefix + pack_key(d) for d in sorted(unknown)]
            ):
                if stored.data:
                    doc = json.loads(stored.data)
                    self.pack_versions[doc["digest"]] = doc["version"]
        except Exception as exc:  # the page shows the digest alone, as before
            log.info("dashboard: pack versions not read from the read models (%s)", exc)
            return
        self._unnamed |= unknown - set(self.pack_versions)  # no release named it: not asked again
        if len(self._unnamed) > PACKS_KEPT:  # digests runtimes made up: forget, ask again later
            self._unnamed.clear()

    async def _bump(self) -> None:
        self.version += 1
        async with self._changed:
            self._changed.notify_all()

    async def prepare(self) -> None:
        """Before the pages are served: the release events the follower applied before this hub listened
        (`kxr serve --ui` catches up first). Read before the queue is taken: the fold then skips the
        entries it has already applied."""
        if not self._history_from_start:
            return
        self._history_from_start = False
        try:
            self.history = await load_fold(self.js, self.subjects, self.follower.service_keys)
        except Exception as exc:  # the page says less, the dashboard stays up
            log.warning("release history not read from the log (%s): it shows releases from now on", exc)

    async def _follow_log(self) -> None:
        await self.prepare()  # a no-op once done (the dashboard does it before it serves)
        while True:
            position, event = await self._queue.get()
            if event is not None and not self.from_models:
                self.history.apply(position, event)
            if event is not None and event.release_id in self.world.tombstones:
                self.stirred.add(event.release_id)  # an annotated closed release: among the newest again
            # only release subjects: what load_evidence reads (scope events may name a release too)
            if event is not None and event.family == "release" and event.release_id:
                if event.release_id in self._loading:
                    self._loading[event.release_id].append((position, event))
                cached = self._records.get(event.release_id)
                if cached is not None and position.seq > cached[1]:
                    self._records[event.release_id] = (apply_evidence(cached[0], position, event), position.seq)
            self.seq = position.seq
            await self._bump()

    async def wait_newer(self, seen: int, timeout: float) -> bool:
        """True once `version` has moved past `seen`; False after `timeout` seconds without a change."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.version > seen), timeout)
            except TimeoutError:
                return False
        return True

    # -- evidence records -------------------------------------------------------------------------
    async def evidence(self, release_id: str) -> EvidenceRecord | None:
        """The release's evidence record as of now, or None if the log never named it."""
        if not self.world.known(release_id):
            return None
        cached = self._records.get(release_id)
        if cached is not None:
            self._records.move_to_end(release_id)
            return cached[0]
        # Events the hub passes on while the read runs are buffered, so none falls between
        # the read's end and the cache: the read has everything stored before it started.
        buffered = self._loading.setdefault(release_id, [])
        try:
            record = await load_evidence(self.js, self.subjects, release_id)
        finally:
            if self._loading.get(release_id) is buffered:
                del self._loading[release_id]
        if release_id in self._records:  # a concurrent load finished first
            return self._records[release_id][0]
        last = max((line["seq"] for line in record.timeline), default=0)
        for position, event in buffered:
            if position.seq > last:
                record, last = apply_evidence(record, position, event), position.seq
        self._records[release_id] = (record, last)
        while len(self._records) > self._cache_size:
            self._records.popitem(last=False)
        return record

    # -- closed releases a world started from the read models keeps as tombstones ---------------------
    async def world_with(self, *release_ids: str) -> World:
        """The world now, with these releases whole (a tombstoned one read back from its own events,
        as of its tombstone: what a whole fold holds). Pages and decisions about a release use this."""
        world = self.world
        for release_id in release_ids:
            stone = world.tombstones.get(release_id)
            if stone is None:
                continue
            state = self._closed_states.get(release_id)
            if state is None or state.last_seq != stone.last_seq:
                state = await release_history(
                    self.js, self.subjects, release_id, stone.last_seq + 1, self.follower.service_keys
                )
                if state is None or state.last_seq != stone.last_seq:  # the log disagrees: say so, show nothing
                    log.warning("dashboard: release %s not read back as of seq %d", release_id, stone.last_seq)
                    continue
            self._closed_states[release_id] = state
            self._closed_states.move_to_end(release_id)
            while len(self._closed_states) > self._cache_size:
                self._closed_states.popitem(last=False)
            world = restore(world, state)
        return world

    async def pin_world(self, env: str, channel: str, version: str | None) -> World:
        """What a pin of ENV/CHANNEL to `version` (None: an unpin) decides on. From the read models, the
        newest releases of that version to the channel are read back whole (`releases_of`, as `kxr pin`);
        when none of them was verified, the whole fold says which one was, if any (slow, rare)."""
        world = await self.world_with()
        if not self.from_models or version is None:
            return world
        try:
            ids = await read_view(
                connection_of(self.js),
                self.subjects.releases_stream,
                self.subjects.read_bucket,
                keys_id(self.follower.service_keys),
                lambda view: releases_of(view, f"{env}/{channel}", version),
            )
            world = await self.world_with(*ids)
            find_pack(world, env, channel, version)
            return world
        except Exception as exc:  # no verified candidate, models behind: the whole fold decides
            log.info("dashboard: pin of %s/%s decided on a fold of the whole log (%s)", env, channel, exc)
            return await load_world(self.js, self.subjects, service_keys=self.follower.service_keys)

    async def history_rows(self, flt: Filter, limit: int = HISTORY_LIMIT) -> dict[str, Any]:
        """/history: the releases that match, newest first, with how many match (`kxr release list`'s)."""
        channels = channels_of(self.world)
        if not self.from_models:
            return history_rows(self.history, flt, channels, limit)
        key = (flt, limit)
        kept = self._model_history.get(key)
        now = asyncio.get_running_loop().time()
        if kept is not None and now - kept[0] < MODEL_HISTORY_EVERY_S:
            return {**kept[1], "channels": channels}  # a busy log re-renders on every entry: read at most this often
        try:
            rows, total = await read_view(
                connection_of(self.js),
                self.subjects.releases_stream,
                self.subjects.read_bucket,
                keys_id(self.follower.service_keys),
                lambda view: release_matches(view, flt.channel, flt.outcome, flt.since, limit, self._index_kept),
            )
        except Exception as exc:  # NoView (the models lag, other keys), NATS away: say so with what was shown
            problem = f"the release history is as of an earlier read: {exc}"
            shown = kept[1] if kept is not None else history_view(flt, 0, [], channels)
            return {**shown, "channels": channels, "problem": problem}
        result = history_view(flt, total, rows, channels)
        self._model_history[key] = (now, result)
        while len(self._model_history) > MODEL_HISTORY_KEPT:
            del self._model_history[next(iter(self._model_history))]
        return result

    # -- health samples of open windows ------------------------------------------------------------
    def samples(self, release: ReleaseState) -> list | None:
        """The samples stored so far for the release's open window, None if not read (yet, or not readable)."""
        key = window_key(release)
        if key is None:
            return None
        self._wanted[key] = asyncio.get_running_loop().time()
        return self._samples.get(key)

    async def _refresh_samples(self) -> None:
        loop = asyncio.get_running_loop()
        retry_at = 0.0
        while True:
            await asyncio.sleep(SAMPLES_EVERY_S)
            now = loop.time()
            open_windows = {key: r for r in self.world.releases_in_flight() if (key := window_key(r)) is not None}
            self._wanted = {k: t for k, t in self._wanted.items() if k in open_windows and now - t < WANTED_FOR_S}
            self._samples = {k: v for k, v in self._samples.items() if k in open_windows}
            if not self._wanted or now < retry_at:
                continue
            for key in list(self._wanted):
                release = open_windows[key]
                m = release.monitoring
                target = release.prepared.target if release.prepared else None
                if m is None or target is None:
                    continue
                try:
                    self._samples[key] = await asyncio.wait_for(
                        samples_between(
                            self.js, self.subjects, target.env, target.channel, list(m.cohorts), *window_span(m)
                        ),
                        SAMPLES_READ_TIMEOUT_S,
                    )
                    self.health_note = None
                except Exception as exc:  # no read access to health, NATS away: say so, retry later
                    self.health_note = (
                        f"health samples not readable by this dashboard's NATS user ({exc.__class__.__name__})"
                    )
                    log.info("dashboard: %s; retrying in %.0f s", self.health_note, HEALTH_RETRY_S)
                    retry_at = now + HEALTH_RETRY_S
                    break
            await self._bump()

    # -- every window of a release, for its charts -------------------------------------------------
    async def window_samples(self, record: EvidenceRecord) -> dict[int, list | None]:
        """Per window of the record (its index): the samples stored on its cohorts over its span.

        The open window's come from the live refresh above; a closed window's are read once
        and kept (bounded). None: not readable (no access to KX_HEALTH, or NATS away).
        """
        release = (await self.world_with(record.release_id)).release(record.release_id)
        if release is None or release.prepared is None:
            return {}
        env, channel = release.prepared.target.env, release.prepared.target.channel
        open_key = window_key(release)
        out: dict[int, list | None] = {}
        for i, w in enumerate(record.windows):
            if not w.get("started"):
                continue
            started = MonitoringStarted.model_validate(w["started"])
            key = (record.release_id, started.stage, started.starts_at)
            if key == open_key and w.get("verdict") is None:
                out[i] = self.samples(release)
                continue
            cached = self._closed.get(key)
            if cached is not None:
                self._closed.move_to_end(key)
                out[i] = cached
                continue
            now = asyncio.get_running_loop().time()
            if now < self._closed_retry_at or self.fleet.problem is not None:  # KX_HEALTH not readable
                out[i] = None
                continue
            try:
                out[i] = await asyncio.wait_for(
                    samples_between(
                        self.js, self.subjects, env, channel, list(started.cohorts), started.starts_at, started.ends_at
                    ),
                    SAMPLES_READ_TIMEOUT_S,
                )
            except Exception as exc:  # no read access to health, NATS away: the chart says so
                log.info("dashboard: samples of %s not readable (%s)", key, exc.__class__.__name__)
                self._closed_retry_at = now + HEALTH_RETRY_S
                out[i] = None
                continue
            if w.get("verdict") is not None:
                self._closed[key] = out[i] or []
                while len(self._closed) > CLOSED_WINDOWS_CACHED:
                    self._closed.popitem(last=False)
        return out
