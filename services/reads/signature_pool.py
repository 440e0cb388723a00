"""An auditor's signature checks in worker processes, a batch ahead of the fold.

Checking every service append is one Ed25519 verification per entry, more CPU than folding the
entry. cryptography holds the GIL while it verifies (measured: a verifying thread and Python work
take their sum), so the checks go to worker processes: they verify batch N+1 while the event loop
folds batch N, and the replay pays roughly the larger of the two, not their sum. The fold still
decides every entry with `ServiceKeys.check`; a verdict decided here is the same verification of the
same bytes, done earlier (`ServiceKeys.with_verdicts`), and anything not decided here is verified in
line as before, so the audit is identical to a serial one (tests/integration/test_tamper_evidence.py).

Workers are started (spawned: the replaying process has threads, a fork could inherit a held lock)
only for a batch with at least POOL_MIN_BATCH checks: a short log is verified in line, without
paying for the processes. Workers that cannot start or die leave their checks to the fold (in
line): slower, never different.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from types import TracebackType

from events.service_signing import Pending, ServiceKeys, Verdicts, verify_all
from services.jetstream.reader import RawEntry

WORKERS = 2  # the machines this runs on have few cores; the fold keeps one busy
POOL_MIN_BATCH = 256  # fewer checks than this in a batch: verified in line by the fold

Ticket = list[tuple[list[Pending], "Future[list[bool]]"]]
log = logging.getLogger(__name__)


class SignaturePool:
    """`submit(entries)` starts checking a batch at once; `await verdicts(ticket)` collects it."""

    def __init__(self, keys: ServiceKeys, workers: int = WORKERS) -> None:
        self.keys = keys
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._broken = False

    def __enter__(self) -> SignaturePool:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, entries: Iterable[tuple[RawEntry, str]]) -> Ticket:
        """Start the checks of (entry, subject) pairs now, split over the workers."""
        pending = [p for entry, subject in entries if (p := self.keys.to_verify(subject, entry.data, entry.headers))]
        if len(pending) < POOL_MIN_BATCH or self._broken:
            return []
        size = -(-len(pending) // self.workers)
        chunks = [pending[i : i + size] for i in range(0, len(pending), size)]
        try:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
            return [
                (chunk, self._pool.submit(verify_all, [(p.public, p.signature, p.message) for p in chunk]))
                for chunk in chunks
            ]
        except Exception as exc:  # no workers: the fold verifies in line
            self._gave_up(exc)
            return []

    async def verdicts(self, ticket: Ticket) -> Verdicts:
        """What the workers decided for a batch; what they could not, the fold verifies in line."""
        out: dict[tuple[str, bytes, bytes], bool] = {}
        for chunk, future in ticket:
            try:
                oks: list[bool] = await asyncio.wrap_future(future)
            except Exception as exc:
                self._gave_up(exc)
                continue
            for item, ok in zip(chunk, oks, strict=True):
                out[item.verdict_key] = ok
        return out

    def _gave_up(self, exc: Exception) -> None:
        if not self._broken:
            log.warning("signature workers unavailable (%s): checking signatures in line", exc)
        self._broken = True
