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
import logging
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime

from events.subjects import Subjects
from projections.evidence import EvidenceRecord, apply_evidence
from projections.releases import ReleaseState
from projections.world import World
from services.jetstream.log_reads import load_evidence
from services.monitoring.judge import window_span
from services.reads.follower import Follower
from services.reads.health_reads import samples_between

log = logging.getLogger(__name__)

SAMPLES_EVERY_S = 2.0  # how often an open window's figures are recomputed
SAMPLES_READ_TIMEOUT_S = 5.0
HEALTH_RETRY_S = 60.0  # after a failed health read (e.g. the auditor's user may not read health)
WANTED_FOR_S = 30.0  # a window's samples are kept fresh this long after a page last showed it

WindowKey = tuple[str, int, datetime]  # release id, stage, start: one monitoring window


def window_key(release: ReleaseState) -> WindowKey | None:
    """The release's open window, if it is in one."""
    m = release.monitoring
    if m is None or release.phase != "monitoring":
        return None
    return release.release_id, m.stage, m.starts_at


class LiveHub:
    def __init__(
        self, follower: Follower, js, subjects: Subjects, clock: Callable[[], datetime], cache_size: int = 1024
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

    @property
    def world(self) -> World:
        return self.follower.world

    async def run(self) -> None:
        await asyncio.gather(self._follow_log(), self._refresh_samples())

    async def _bump(self) -> None:
        self.version += 1
        async with self._changed:
            self._changed.notify_all()

    async def _follow_log(self) -> None:
        while True:
            position, event = await self._queue.get()
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
        if self.world.release(release_id) is None:
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
