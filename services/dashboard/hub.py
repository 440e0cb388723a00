"""One live view of the log per process, shared by every browser.

The hub listens to the process's `Follower` (the same live fold the consumers use) and
keeps the evidence records of the releases someone looked at, updated as their events
arrive. Browsers never cause a read of the log per event: a change wakes the SSE streams,
which render from the fold in memory.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from datetime import datetime
from typing import Callable

from events.subjects import Subjects
from projections.evidence import EvidenceRecord, apply_evidence
from projections.world import World
from services.follower import Follower
from services.log_reads import load_evidence


class LiveHub:
    def __init__(self, follower: Follower, js, subjects: Subjects, clock: Callable[[], datetime], cache_size: int = 256) -> None:
        self.follower = follower
        self.js = js
        self.subjects = subjects
        self.clock = clock
        self.seq = follower.position  # last log sequence the hub has passed on
        self._queue = follower.listen()
        self._changed = asyncio.Condition()
        self._cache_size = cache_size
        # release id -> (record, last sequence folded into it); least recently viewed first
        self._records: OrderedDict[str, tuple[EvidenceRecord, int]] = OrderedDict()
        # release id -> events that arrived while its record was being read from the log
        self._loading: dict[str, list] = {}

    @property
    def world(self) -> World:
        return self.follower.world

    async def run(self) -> None:
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
            async with self._changed:
                self._changed.notify_all()

    async def wait_newer(self, seen: int, timeout: float) -> bool:
        """True once the hub has passed on an entry after `seen`; False after `timeout` seconds without one."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.seq > seen), timeout)
            except asyncio.TimeoutError:
                return False
        return True

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
