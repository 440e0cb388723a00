"""The fleet: every runtime seen on KX_HEALTH, what it runs and how it fares (the dashboard's `/fleet`).

What Unleash shows as connected SDKs and Argo as pods, read from the runtimes' own health
reports (CONTRACT §8). Two parts:

- a pure fold, `observe(fleet, seq, stored_at, subject, checked)`: one report (already taken
  by `events.health.accept_report`, the rule every reader of KX_HEALTH shares) into `Fleet`;
  `fleet_rows(fleet, world, now)` turns it into JSON-able rows, the version of each digest
  taken from the log's fold;
- `FleetTail`, the IO: the last report of every runtime subject (one batched direct get),
  then the stream from a bounded lookback on, followed live. It never reads the whole stream.

Every field keeps the newest report by stream sequence, so the seed and the tail may overlap
in any order. A user that may not read KX_HEALTH (the auditor's) gets `problem` set, never an
empty fleet that looks like no runtime at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from rpds import HashTrieMap

from events.health import HealthSample, accept_report
from events.subjects import HealthParts, Subjects

if TYPE_CHECKING:
    from projections.world import World

log = logging.getLogger(__name__)

RECENT_SAMPLES = 5  # a runtime's health: request-weighted over its latest regular samples
MAX_RUNTIMES = 10_000  # beyond this, the runtimes seen longest ago are forgotten
STALE_AFTER = timedelta(seconds=60)  # no report for this long: the row says "stale"
DEFAULT_LOOKBACK = timedelta(minutes=15)  # how far back the tail starts reading (beside each runtime's last report)
RETRY_S = 60.0  # after a failed read (no permission, NATS away)
MAX_TEXT = 300  # characters kept of a refusal's or an invalid report's text


def _ts(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if value else None


@dataclass(frozen=True, slots=True)
class Activation:
    seq: int
    at: datetime
    digest: str | None
    ok: bool
    error: str | None


@dataclass(frozen=True, slots=True)
class Recent:
    seq: int
    at: datetime
    requests: int
    errors: int
    p95_ms: float | None


@dataclass(frozen=True, slots=True)
class RuntimeSeen:
    runtime_id: str
    env: str
    channel: str
    cohort: str
    last_seq: int
    last_seen: datetime
    digest: str | None = None  # the pack of its newest valid report
    digest_seq: int = 0
    activation: Activation | None = None
    recent: tuple[Recent, ...] = ()  # newest last, at most RECENT_SAMPLES
    invalid: int = 0  # invalid reports on its subject
    last_invalid: str | None = None


@dataclass(frozen=True, slots=True)
class Fleet:
    runtimes: HashTrieMap[str, RuntimeSeen] = field(default_factory=HashTrieMap)
    last_seq: int = 0
    unattributed: int = 0  # reports on no runtime's health subject


def observe(
    fleet: Fleet, seq: int, stored_at: datetime, subject: HealthParts | None, checked: HealthSample | str
) -> Fleet:
    """Fold one stored report (`accept_report`'s result for it) into the fleet. Pure."""
    last_seq = max(fleet.last_seq, seq)
    if subject is None:
        return replace(fleet, last_seq=last_seq, unattributed=fleet.unattributed + 1)
    rid = subject.runtime_id
    row = fleet.runtimes.get(rid)
    if row is None:
        row = RuntimeSeen(rid, subject.env, subject.channel, subject.cohort, seq, stored_at)
    elif seq > row.last_seq:  # its newest report says where it is now
        row = replace(
            row, env=subject.env, channel=subject.channel, cohort=subject.cohort, last_seq=seq, last_seen=stored_at
        )
    if isinstance(checked, str):
        if row.last_seq == seq or row.last_invalid is None:
            row = replace(row, last_invalid=checked[:MAX_TEXT])
        row = replace(row, invalid=row.invalid + 1)
    else:
        row = _sample(row, seq, stored_at, checked)
    runtimes = fleet.runtimes.insert(rid, row)
    if len(runtimes) > MAX_RUNTIMES:
        oldest = min(runtimes.values(), key=lambda r: r.last_seq)
        runtimes = runtimes.remove(oldest.runtime_id)
    return Fleet(runtimes, last_seq, fleet.unattributed)


def _sample(row: RuntimeSeen, seq: int, at: datetime, s: HealthSample) -> RuntimeSeen:
    if seq > row.digest_seq:
        row = replace(row, digest=s.digest, digest_seq=seq)
    if s.kind == "activation":
        if row.activation is None or seq > row.activation.seq:
            error = s.error or ("refused, no reason given" if s.ok is not True else None)
            row = replace(
                row, activation=Activation(seq, at, s.digest, s.ok is True, error[:MAX_TEXT] if error else None)
            )
        return row
    if any(r.seq == seq for r in row.recent):
        return row
    p95 = s.latency_ms.p95 if s.latency_ms else None
    recent = sorted((*row.recent, Recent(seq, at, s.requests, s.errors, p95)), key=lambda r: r.seq)
    return replace(row, recent=tuple(recent[-RECENT_SAMPLES:]))


def fold_reports(entries: list[tuple[int, datetime, HealthParts | None, HealthSample | str]]) -> Fleet:
    fleet = Fleet()
    for seq, at, subject, checked in entries:
        fleet = observe(fleet, seq, at, subject, checked)
    return fleet


def health_of(recent: tuple[Recent, ...]) -> dict[str, Any]:
    """Error rate (errors / requests) and the request-weighted p95 of the latest samples; None without data."""
    requests = sum(r.requests for r in recent)
    errors = sum(r.errors for r in recent)
    weighted = [(r.p95_ms, r.requests) for r in recent if r.p95_ms is not None]
    weight = sum(w for _, w in weighted)
    if weighted and weight > 0:
        p95: float | None = sum(v * w for v, w in weighted) / weight
    elif weighted:
        p95 = sum(v for v, _ in weighted) / len(weighted)
    else:
        p95 = None
    return {
        "samples": len(recent),
        "requests": requests,
        "errors": errors,
        "error_rate": errors / requests if requests else None,
        "latency_p95_ms": round(p95, 3) if p95 is not None else None,
    }


def digest_versions(world: World) -> dict[str, str]:
    """Every pack digest the log names, with its version (scope pointers, pins, releases)."""
    out: dict[str, str] = {}
    for r in world.releases.values():
        if r.pack is not None:
            out[r.pack.digest] = r.pack.version
    for s in world.scopes.values():
        for pack in (s.lkg, s.pin.pack if s.pin else None, s.active_pack):
            if pack is not None:
                out[pack.digest] = pack.version
    return out


def fleet_rows(
    fleet: Fleet, world: World, now: datetime, known: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """One JSON-able row per runtime, by scope then runtime id.

    `status`: "refused" (its last activation failed), "stale" (no report for STALE_AFTER),
    "invalid" (its newest report was not a valid sample), else "ok". `in_sync`: whether it
    runs what its scope's pointer says (None when the log has no pointer there).
    """
    versions = {**(known or {}), **digest_versions(world)}  # `known`: digest -> version named elsewhere
    rows = []
    for r in sorted(fleet.runtimes.values(), key=lambda r: (r.env, r.channel, r.cohort, r.runtime_id)):
        pointer = world.scope(r.env, r.channel, r.cohort).active_pack
        act = r.activation
        age = (now - r.last_seen).total_seconds()
        if act is not None and not act.ok and act.seq >= r.digest_seq:
            status = "refused"
        elif age > STALE_AFTER.total_seconds():
            status = "stale"
        elif r.last_invalid is not None and r.digest_seq < r.last_seq:
            status = "invalid"
        else:
            status = "ok"
        rows.append(
            {
                "runtime": r.runtime_id,
                "scope": f"{r.env}/{r.channel}/{r.cohort}",
                "digest": r.digest,
                "version": versions.get(r.digest) if r.digest else None,
                "scope_version": pointer.version if pointer else None,
                "in_sync": (pointer.digest == r.digest) if pointer else None,
                "activation": {
                    "result": "ok" if act.ok else "refused",
                    "reason": act.error,
                    "digest": act.digest,
                    "version": versions.get(act.digest) if act.digest else None,
                    "at": _ts(act.at),
                }
                if act
                else None,
                "last_seen": _ts(r.last_seen),
                "age_s": round(max(age, 0.0), 1),
                "health": health_of(r.recent),
                "invalid_reports": r.invalid,
                "last_invalid": r.last_invalid,
                "status": status,
            }
        )
    return rows


# ---- IO: the tail of KX_HEALTH --------------------------------------------------------------------
class FleetTail:
    """The fleet, kept live: each runtime's last report, then KX_HEALTH from `lookback` ago on, followed.

    `version` moves on every change; `problem` says why the fleet cannot be read (then
    retried every RETRY_S), None while it can.
    """

    def __init__(
        self, js, subjects: Subjects, clock: Callable[[], datetime], lookback: timedelta = DEFAULT_LOOKBACK
    ) -> None:
        self.js = js
        self.subjects = subjects
        self.clock = clock
        self.lookback = lookback
        self.fleet = Fleet()
        self.problem: str | None = None
        self.ready = False  # the seed (every runtime's last report) has been read
        self.version = 0

    def _fold(self, seq: int, stored_at: datetime | None, subject: str, data: bytes) -> None:
        parts = self.subjects.health_parts(subject)
        at = stored_at or self.clock()
        self.fleet = observe(self.fleet, seq, at, parts, accept_report(data, parts))

    async def run(self) -> None:
        while True:
            try:
                await self._read()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # no read access to KX_HEALTH (the auditor's user), NATS away
                self.problem = (
                    f"runtime health reports (KX_HEALTH) are not readable by this dashboard's NATS user "
                    f"({exc.__class__.__name__}{': ' + str(exc)[:200] if str(exc) else ''}); the operator's "
                    "or the service's user may read them, the auditor's may not"
                )
                self.version += 1
                log.info("dashboard fleet: %s; retrying in %.0f s", self.problem, RETRY_S)
                await asyncio.sleep(RETRY_S)

    async def _read(self) -> None:
        from services.jetstream.direct import connection_of, last_per_subject
        from services.jetstream.reader import OrderedReader
        from services.reads.watch import may_read_health

        if not await may_read_health(connection_of(self.js), self.subjects):  # a denied request is never answered
            raise PermissionError(f"no answer to STREAM.INFO of {self.subjects.health_stream}")
        stream = self.subjects.health_stream
        start_seq = self.fleet.last_seq + 1
        if not self.ready:
            async for stored in last_per_subject(connection_of(self.js), stream, [self.subjects.health_all()]):
                self._fold(stored.seq, stored.stored_at, stored.subject, stored.data)
            self.ready, self.problem = True, None
            self.version += 1
            start_seq = 1  # the tail starts by time: the seed's newest report says nothing of the others'
        reader = OrderedReader(
            self.js,
            stream,
            [self.subjects.health_all()],
            start_seq=start_seq,
            start_time=self.clock() - self.lookback if start_seq <= 1 else None,
        )
        try:
            async for batch in reader.read_batches(follow=True):
                for entry in batch:
                    self._fold(entry.seq, entry.stored_at, entry.subject, entry.data)
                self.problem = None
                self.version += 1
        finally:
            await reader.close()
