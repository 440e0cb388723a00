"""Janitor: the service removes consumers that other roles left behind on its streams.

Whoever may read a stream may create consumers on it (docs/permissions.md), and the
request's body (durable or not, its inactivity threshold) is invisible to permissions. The
account's limit bounds how many, but a role that fills it would lock every new reader out.
Legitimate readers (services/jetstream/reader.py: `kxr`, runtimes, the service's own follower) use
ephemeral consumers with a 60 s inactivity threshold, which the server removes by itself
once nobody pulls; the service's durables are `SERVICE_DURABLES`. Anything else (a durable
of another name, an ephemeral that asked never to expire or to linger for long) is removed
once it has been idle for `idle_s` and nobody is pulling from it.

`foreign` is the pure judgement over a consumer's info; `Janitor` lists and deletes.
Removals are a log line and `kx_foreign_consumers_removed_total`: housekeeping, not a
decision about a release, and an event per removal would let a role grow the log at will.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime

from prometheus_client import Counter

from services.permissions import SERVICE_DURABLES, janitor_streams
from services.tasks import every

log = logging.getLogger(__name__)

REMOVED = Counter(
    "kx_foreign_consumers_removed",
    "Consumers on the service's streams that were neither the service's nor a live reader's, removed by the janitor.",
    ["stream"],
)

IDLE_ENV = "KX_JANITOR_IDLE_S"
DEFAULT_IDLE_S = 60.0
# An ephemeral consumer that the server removes within this long of its last pull is a
# reader's (services/jetstream/reader.py asks 60 s): the janitor leaves it to the server.
MAX_READER_THRESHOLD_S = 300.0
PAGE = 256  # nats-server's consumer list page


async def all_consumers(js, stream: str) -> list:
    """Every consumer of `stream` (nats-py's `consumers_info` answers one page of 256)."""
    out: list = []
    while True:
        page = await js.consumers_info(stream, offset=len(out) or None)
        out += page
        if len(page) < PAGE:
            return out


def idle_from_env(env: dict | None = None) -> float:
    raw = (os.environ if env is None else env).get(IDLE_ENV)
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_IDLE_S
    except ValueError:
        log.warning("%s=%r is not a number of seconds: using %.0f", IDLE_ENV, raw, DEFAULT_IDLE_S)
        return DEFAULT_IDLE_S


def _last_active(info) -> datetime | None:
    times = [
        t
        for t in (
            info.created,
            getattr(info.delivered, "last_active", None),
            getattr(info.ack_floor, "last_active", None),
        )
        if isinstance(t, datetime)
    ]
    return max(times) if times else None


def foreign(info, now: datetime, idle_s: float) -> str | None:
    """Why this consumer is to be removed (None: it stays)."""
    if info.name in SERVICE_DURABLES:
        return None
    cfg = info.config
    deliver = getattr(cfg, "deliver_subject", None)
    if deliver and not deliver.startswith("_INBOX"):
        # a push consumer delivering onto a subject, not to a reader's inbox: it would copy the stream
        # onto whatever it names (a stream capturing that subject stores the copies, with their own
        # subjects and no JetStream header) once anyone subscribes to it. No reader does that: at once
        return f"push consumer delivering to {deliver[:80]!r}, not to an inbox"
    threshold = cfg.inactive_threshold
    if not cfg.durable_name and threshold is not None and 0 < threshold <= MAX_READER_THRESHOLD_S:
        return None  # a reader's ephemeral: the server removes it once nobody pulls
    if info.num_waiting:
        return None  # someone is pulling from it right now
    last = _last_active(info)
    if last is not None and (now - last).total_seconds() < idle_s:
        return None
    kind = "durable" if cfg.durable_name else f"ephemeral with inactivity threshold {threshold or 'none'}"
    return f"{kind}, not the service's, idle since {last.isoformat() if last else 'ever'}"


class Janitor:
    def __init__(self, js, subjects, idle_s: float | None = None, every_s: float | None = None) -> None:
        self._js = js
        self.idle_s = idle_from_env() if idle_s is None else idle_s
        self.every_s = every_s if every_s is not None else max(1.0, self.idle_s / 2)
        self.streams = janitor_streams(subjects)  # the streams other roles may read (and so create consumers on)

    async def consumers(self, stream: str) -> list:
        return await all_consumers(self._js, stream)

    async def sweep(self, now: datetime | None = None) -> list[tuple[str, str]]:
        """Remove every foreign consumer now; (stream, name) of those removed."""
        removed = []
        for stream in self.streams:
            try:
                infos = await self.consumers(stream)
            except Exception as exc:  # a stream not there yet, a timeout: the next sweep
                log.info("janitor: cannot list consumers of %s: %s", stream, exc)
                continue
            at = now or datetime.now(UTC)
            for info in infos:
                why = foreign(info, at, self.idle_s)
                if why is None:
                    continue
                try:
                    await self._js.delete_consumer(stream, info.name)
                except Exception as exc:  # gone meanwhile (its own threshold), or a timeout: the next sweep
                    log.info("janitor: could not remove %s on %s: %s", info.name, stream, exc)
                    continue
                REMOVED.labels(stream).inc()
                removed.append((stream, info.name))
                log.warning("janitor: removed consumer %s on %s (%s)", info.name, stream, why)
        return removed

    async def run(self) -> None:
        await every(self.every_s, self.sweep, "janitor: sweep", log)
