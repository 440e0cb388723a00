"""Running asyncio tasks: stopping them reliably, housekeeping loops (`every`), long synchronous work
that lets the event loop turn (`Turns`), and the wall clock they run on (`utc_clock`).

On Python 3.11, `asyncio.wait_for` (used inside nats.py's fetch and request paths)
can swallow a cancellation that arrives just as its inner future completes; a task
cancelled once may then run on. Stopping therefore cancels again until every task
has actually finished.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime


async def cancel_and_wait(tasks: Iterable[asyncio.Task], timeout: float = 10.0, every: float = 0.2) -> None:
    pending = {t for t in tasks if not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=every)
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: a crash was already logged when it happened


class SignalStop:
    """SIGINT/SIGTERM cancel the task that made this; `requested` tells that clean stop
    from any other cancellation (which must propagate)."""

    def __init__(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self.requested = False
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop)

    def _stop(self) -> None:
        self.requested = True
        self._task.cancel()  # also interrupts start-up (e.g. waiting for NATS)


async def every(seconds: float, step: Callable[[], Awaitable[object]], what: str, log: logging.Logger) -> None:
    """Housekeeping: `step()` every `seconds`, forever. A failed step is logged and tried again at
    the next tick: it must never stop the consumer it rides with."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await step()
        except Exception as exc:
            log.warning("%s failed: %s: %s", what, exc.__class__.__name__, exc)


def utc_clock() -> datetime:
    """The service's clock (tests pass their own): here, not in services/app.py, so `kxr ui` gets it
    without importing the whole service."""
    return datetime.now(UTC)


class Turns:
    """Lets the event loop turn once `every_s` of work has passed since the last turn.

    For loops that await nothing (a read-model write building a thousand values, the fold of a
    batch of a thousand entries): each held every activation in flight behind it (~100-250 ms
    after a thousand channels were configured at once). Call `maybe()` between two steps.
    """

    def __init__(self, every_s: float = 0.005) -> None:
        self._every_s = every_s
        self._since = time.perf_counter()

    async def maybe(self) -> None:
        now = time.perf_counter()
        if now - self._since >= self._every_s:
            await asyncio.sleep(0)
            self._since = time.perf_counter()


class Backoff:
    """A pause doubling from `first_s` to `max_s` while something keeps failing (`reset()` once it
    works), and how long it has kept failing. The readers' re-opens and the pulls' unanswered
    requests (services/jetstream/reader.py, pull.py)."""

    def __init__(self, first_s: float, max_s: float) -> None:
        self._first_s, self._max_s = first_s, max_s
        self._delay = first_s
        self._failing_since: float | None = None

    def reset(self) -> None:
        self._delay, self._failing_since = self._first_s, None

    def failing_for(self) -> float:
        """Note a failure; the seconds since the first failure of this run of them."""
        now = asyncio.get_running_loop().time()
        if self._failing_since is None:
            self._failing_since = now
        return now - self._failing_since

    async def wait(self) -> None:
        await asyncio.sleep(self._delay)
        self._delay = min(self._delay * 2, self._max_s)
