"""What the overview shows, as JSON-able dicts built from the fold (pure: no IO, time is an argument).

The rows come from `services/reads/status.py` (the same rows `kxr status` prints) and each
release's monitoring window from `services/reads/live_view.py` (what `kxr watch` shows); this
module only groups them the way the page shows them. The release page shows
`live_view.release_view` as it is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from events.health import HealthSample
from events.model import MonitoringStarted
from events.tokens import InvalidToken, check_token
from projections.world import World
from services.monitoring.judge import Watch, counts_for, hard_breach
from services.reads.history import OUTCOMES, parse_since
from services.reads.status import release_rows, scope_rows

RECENT = 20  # finished releases listed under the ones in flight


def scope_groups(world: World) -> list[dict[str, Any]]:
    """Scopes grouped env -> channel, each with its cohorts (active pack + since, pin with expiry, LKG)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in scope_rows(world):
        env, channel, cohort = row["scope"].split("/")
        groups.setdefault((env, channel), []).append({**row, "cohort": cohort})
    return [{"env": env, "channel": channel, "cohorts": cohorts} for (env, channel), cohorts in sorted(groups.items())]


def overview(world: World, now: datetime, windows: Mapping[str, dict[str, Any] | None]) -> dict[str, Any]:
    """`windows`: release id -> `live_view.window_view(...)` for the releases in flight."""
    rows = release_rows(world, in_flight_only=False)
    in_flight = [{**row, "window": windows.get(row["release"])} for row in rows if row["release"] in world.in_flight]
    recent = [row for row in rows if row["release"] not in world.in_flight][-RECENT:]
    return {
        "log_seq": world.applied_seq,
        "at": now.isoformat(),
        "scopes": scope_groups(world),
        "releases": in_flight,
        "recent": list(reversed(recent)),
    }


# ---- release history (/releases) ------------------------------------------------------------------

HISTORY_LIMIT = 200  # rows on one page, newest first


class FilterError(ValueError):
    """A history filter that does not parse: one line for the page, shown as a 400."""


@dataclass(frozen=True)
class HistoryFilter:
    channel: str | None = None  # "canary" or "prod/canary"
    outcome: str | None = None  # one of OUTCOMES, or "in_flight"
    since: datetime | None = None  # requested at or after


def parse_filter(query: Mapping[str, str], now: datetime) -> HistoryFilter:
    """`?channel=&outcome=&since=` (since: RFC 3339, or an age such as 30m, 6h, 2d); empty means any."""
    channel = (query.get("channel") or "").strip() or None
    if channel is not None:
        for token in channel.split("/"):
            try:
                check_token(token, "channel")
            except InvalidToken:
                raise FilterError(f"channel {channel!r}: expected CHANNEL or ENV/CHANNEL") from None
        if channel.count("/") > 1:
            raise FilterError(f"channel {channel!r}: expected CHANNEL or ENV/CHANNEL")
    outcome = (query.get("outcome") or "").strip() or None
    if outcome is not None and outcome not in (*OUTCOMES, "in_flight"):
        raise FilterError(f"outcome {outcome!r}: one of {', '.join((*OUTCOMES, 'in_flight'))}")
    text = (query.get("since") or "").strip()
    since = None
    if text:  # the same rule as `kxr release list --since` (an age, or RFC 3339 with a timezone)
        try:
            since = parse_since(text, now)
        except ValueError as exc:
            raise FilterError(str(exc).replace("--since", "since", 1)) from None
    return HistoryFilter(channel, outcome, since)


def _iso(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def history_rows(world: World, flt: HistoryFilter, limit: int = HISTORY_LIMIT) -> dict[str, Any]:
    """Every release the fold knows, newest first, filtered: in flight, closed whole, and tombstones.

    A tombstone (a closed release an archiving fold keeps only as its last sequence and
    outcome) shows what it carries: its id and outcome; its target and time are unknown,
    so a channel or since filter leaves it out.
    """
    rows: list[dict[str, Any]] = []
    for r in world.releases.values():
        target = r.requested.target if r.requested else None
        outcome = r.outcome if r.closed else None
        if flt.outcome is not None and (outcome or "in_flight") != flt.outcome:
            continue
        if flt.channel is not None and (
            target is None or flt.channel not in (target.channel, f"{target.env}/{target.channel}")
        ):
            continue
        if flt.since is not None and (r.requested_at is None or r.requested_at < flt.since):
            continue
        stages = len(r.stages)
        rows.append(
            {
                "release": r.release_id,
                "seq": r.last_seq,
                "pack": f"{r.pack.name}@{r.pack.version}" if r.pack else None,
                "digest": r.pack.digest if r.pack else None,
                "target": f"{target.env}/{target.channel}" if target else None,
                "requested_at": _iso(r.requested_at),
                "requested_by": r.requested_by.id if r.requested_by else None,
                "phase": f"{r.phase}{' (paused)' if r.paused else ''}",
                "stages": f"{r.stage + 1}/{stages}" if stages else "-",
                "outcome": outcome,
                "why": r.failure,
                "promoted_to": r.promoted.promoted_to if r.promoted else None,
                "archived": False,
            }
        )
    if flt.channel is None and flt.since is None:
        for release_id, stone in world.tombstones.items():
            if flt.outcome is not None and stone.outcome != flt.outcome:
                continue
            rows.append(
                {
                    "release": release_id,
                    "seq": stone.last_seq,
                    "pack": None,
                    "digest": None,
                    "target": None,
                    "requested_at": None,
                    "requested_by": None,
                    "phase": "closed",
                    "stages": "-",
                    "outcome": stone.outcome,
                    "why": None,
                    "promoted_to": None,
                    "archived": True,
                }
            )
    rows.sort(key=lambda row: row["seq"], reverse=True)
    return {
        "filter": {"channel": flt.channel, "outcome": flt.outcome, "since": _iso(flt.since)},
        "total": len(rows),
        "rows": rows[:limit],
        "channels": sorted({f"{env}/{channel}" for env, channel in world.channels.keys()}),
    }


# ---- a release's windows as time series per runtime (/releases/<id>) -------------------------------
SERIES_METRICS = (
    ("error_rate", "error rate", "error_rate_max"),
    ("latency_p95_ms", "p95 latency (ms)", "latency_p95_ms_max"),
)
MAX_LINES = 12  # runtimes drawn per chart (breaching first, then by id); the rest are counted
MAX_POINTS = 400  # points per runtime line (the newest)

Stored = list[tuple[datetime, HealthSample]]


def window_series(windows: list[dict[str, Any]], stored: Mapping[int, Stored | None]) -> dict[str, Any]:
    """Each window's figures, sample by sample and runtime by runtime, against its thresholds (pure).

    `windows` is the evidence record's `windows`; `stored[i]` the (stored time, sample)
    pairs read from window i's cohorts, None when they could not be read. A sample counts as
    the monitor counts it (`judge.counts_for`: its pack, inside the window); a point that is
    a hard breach by itself (`judge.hard_breach`, what fails a window early) is marked, and
    so is a window that failed early.
    """
    out_windows: list[dict[str, Any]] = []
    lines: dict[str, dict[str, list[dict[str, Any]]]] = {m: {} for m, _, _ in SERIES_METRICS}
    thresholds: dict[str, float | None] = {m: None for m, _, _ in SERIES_METRICS}
    unreadable = 0
    for i, w in enumerate(windows):
        if not w.get("started"):
            continue
        started = MonitoringStarted.model_validate(w["started"])
        verdict = w.get("verdict") or {}
        samples = stored.get(i)
        unreadable += samples is None
        for metric, _, name in SERIES_METRICS:
            limit = getattr(started.monitoring.thresholds, name)
            if limit is not None and math.isfinite(limit):
                thresholds[metric] = float(limit)
        watch = Watch.of(started)
        breaches = 0
        for at, s in sorted(samples or [], key=lambda pair: pair[0]):
            if s.kind != "sample" or not counts_for(watch, s, at):
                continue
            breach = hard_breach(s, started.monitoring)
            breaches += breach is not None
            values = {
                "error_rate": s.errors / s.requests if s.requests else None,
                "latency_p95_ms": s.latency_ms.p95 if s.latency_ms else None,
            }
            for metric, value in values.items():
                if value is None or not math.isfinite(value):
                    continue
                point = {"at": _ts_ms(at), "value": value, "window": i, "breach": breach}
                lines[metric].setdefault(s.runtime_id, []).append(point)
        ended = started.ends_at
        out_windows.append(
            {
                "index": i,
                "stage": started.stage + 1,
                "starts_at": _ts_ms(started.starts_at),
                "ends_at": _ts_ms(ended),
                "result": verdict.get("result"),
                "reason": verdict.get("reason"),
                "early": bool(verdict.get("early")),
                "hard_breach": bool(verdict.get("early")) or breaches > 0,
                "readable": samples is not None,
            }
        )
    metrics = []
    for metric, label, _ in SERIES_METRICS:
        by_runtime = lines[metric]
        order = sorted(by_runtime, key=lambda r: (not any(p["breach"] for p in by_runtime[r]), r))
        metrics.append(
            {
                "metric": metric,
                "label": label,
                "threshold": thresholds[metric],
                "runtimes": {r: by_runtime[r][-MAX_POINTS:] for r in order[:MAX_LINES]},
                "more_runtimes": max(0, len(order) - MAX_LINES),
            }
        )
    note = None
    if unreadable:
        note = f"health samples of {unreadable} window(s) not read yet, or not readable by this dashboard's NATS user"
    return {"windows": out_windows, "metrics": metrics, "note": note}


def _ts_ms(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
