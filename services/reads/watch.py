"""Following one release live: the log (folded) and, while a window is open, its health samples.

`ReleaseWatch.views()` yields the release's view (services/reads/live_view.py) whenever the log
moves or `interval` passes (the window's clock and new samples), and stops once the
release is closed (with `wait`, a release not in the log yet is waited for first). It
reads KX_RELEASES from sequence 1 like `kxr status` and, for an open window, KX_HEALTH
from one window length before it (what the monitor reads). A user that may not read
KX_HEALTH (the auditor) still gets every stage, gate and verdict: the window then says
its figures appear with the verdict.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import datetime

from events.health import HealthSample, accept_report
from events.model import MonitoringStarted
from events.subjects import Subjects
from projections.evidence import EvidenceRecord, apply_evidence
from services.jetstream.reader import OrderedReader
from services.monitoring.judge import window_span
from services.reads.follower import Follower
from services.reads.live_view import DEFAULT_EVENTS, release_view
from services.tasks import cancel_and_wait

HEALTH_PROBE_TIMEOUT_S = 2.0


class UnknownRelease(LookupError):
    pass


async def may_read_health(nc, subjects: Subjects) -> bool:
    """May this NATS user read KX_HEALTH? A denied request is never answered, hence the short timeout."""
    try:
        await nc.jetstream(timeout=HEALTH_PROBE_TIMEOUT_S).stream_info(subjects.health_stream)
    except Exception:
        return False
    return True


class HealthTail:
    """The stored health samples of one window's cohorts, read from its lookback on and followed."""

    def __init__(self, js, subjects: Subjects, env: str, channel: str, window: MonitoringStarted) -> None:
        self.window = window
        self.samples: list = []
        self._subjects = subjects
        start, _ = window_span(window)
        self._reader = OrderedReader(
            js,
            subjects.health_stream,
            [subjects.health_cohort(env, channel, c) for c in window.cohorts],
            start_time=start,
        )

    async def run(self) -> None:
        try:
            async for entry in self._reader.read(follow=True, idle_timeout=0.5):
                # the rule of every health reader (the monitor's too): a valid sample from the runtime its subject names
                sample = accept_report(entry.data, self._subjects.health_parts(entry.subject))
                if entry.stored_at is not None and isinstance(sample, HealthSample):
                    self.samples.append((entry.stored_at, sample))
        finally:
            await self._reader.close()


class ReleaseWatch:
    def __init__(
        self,
        nc,
        js,
        subjects: Subjects,
        release_id: str,
        *,
        clock: Callable[[], datetime],
        interval: float = 1.0,
        events: int = DEFAULT_EVENTS,
        wait: bool = False,
        on_waiting: Callable[[], None] | None = None,
    ) -> None:
        self._nc = nc
        self._js = js
        self._subjects = subjects
        self.release_id = release_id
        self._clock = clock
        self._interval = interval
        self._events = events
        # wait: a release not in the log yet is waited for (the log is followed until it is
        # requested) instead of being UnknownRelease; `on_waiting` is told once when that starts
        self._wait_for_it = wait
        self._on_waiting = on_waiting
        self._follower = Follower(js, subjects)
        self._record = EvidenceRecord(release_id=release_id)
        self._tail: HealthTail | None = None
        self._tail_task: asyncio.Task | None = None
        self.health_readable: bool | None = None  # None: not asked yet

    async def views(self) -> AsyncIterator[dict]:
        # The follower applies an entry to its world and queues it without yielding in
        # between, so draining the queue before each view keeps world and record in step.
        queue = self._follower.listen()
        follow = asyncio.create_task(self._follower.run(), name=f"watch-log-{self.release_id}")
        try:
            await self._follower.catch_up()
            self._drain(queue)
            if self._follower.world.release(self.release_id) is None:
                if not self._wait_for_it:
                    raise UnknownRelease(f"no release {self.release_id} in the log")
                if self._on_waiting is not None:
                    self._on_waiting()
                while self._follower.world.release(self.release_id) is None:
                    await self._wait(queue, follow)
            while True:
                await self._track_window()
                # _track_window awaits (a tail starts or stops): entries the follower applied
                # meanwhile are in the world already, so take them into the record before the view
                self._drain(queue)
                view = release_view(
                    self._follower.world,
                    self._record,
                    now=self._clock(),
                    stored_samples=self._window_samples(),
                    events=self._events,
                )
                assert view is not None
                yield view
                if view["terminal"]:
                    return
                await self._wait(queue, follow)
        finally:
            await cancel_and_wait([t for t in (follow, self._tail_task) if t is not None])

    def _absorb(self, item) -> None:
        position, event = item
        if event is not None and event.release_id == self.release_id:
            self._record = apply_evidence(self._record, position, event)

    def _drain(self, queue: asyncio.Queue) -> None:
        while not queue.empty():
            self._absorb(queue.get_nowait())

    async def _wait(self, queue: asyncio.Queue, follow: asyncio.Task) -> None:
        """Until the log moves or `interval` passes: new samples show at the next tick, so a
        busy cohort costs at most one view per interval."""
        if follow.done():
            follow.result()  # the log reader stopped: raise its reason rather than show a frozen view
        getter = asyncio.ensure_future(queue.get())
        try:
            await asyncio.wait({getter, follow}, timeout=self._interval, return_when=asyncio.FIRST_COMPLETED)
        finally:
            getter.cancel()
        if getter.done() and not getter.cancelled():
            self._absorb(getter.result())
        self._drain(queue)

    async def _track_window(self) -> None:
        """Follow the health of the window that is open now (and only while it is)."""
        release = self._follower.world.release(self.release_id)
        window = release.monitoring if release is not None and release.phase == "monitoring" else None
        if self._tail is not None and (window is None or window != self._tail.window):
            await cancel_and_wait([t for t in (self._tail_task,) if t is not None])
            self._tail, self._tail_task = None, None
        if window is None or self._tail is not None or release is None or release.prepared is None:
            return
        if self.health_readable is None:
            self.health_readable = await may_read_health(self._nc, self._subjects)
        if self.health_readable:
            target = release.prepared.target
            self._tail = HealthTail(self._js, self._subjects, target.env, target.channel, window)
            self._tail_task = asyncio.create_task(self._tail.run(), name=f"watch-health-{self.release_id}")

    def _window_samples(self):
        if self._tail is None:
            return None
        return list(self._tail.samples)
