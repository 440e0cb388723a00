"""What the overview shows, as JSON-able dicts built from the fold (pure: no IO, time is an argument).

The rows come from `services/reads/status.py` (the same rows `kxr status` prints) and each
release's monitoring window from `services/reads/live_view.py` (what `kxr watch` shows); this
module only groups them the way the page shows them. The release page shows
`live_view.release_view` as it is.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from events.health import HealthSample
from events.model import MonitoringStarted
from projections.world import World
from services.monitoring.judge import Watch, counts_for, hard_breach
from services.reads.history import Filter, HistoryFold, matching, rfc3339, summary
from services.reads.history import parse_filter as history_filter
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


def recent_closed(world: World, stirred: Iterable[str] = ()) -> list[str]:
    """The releases the overview lists under those in flight: the newest RECENT by last sequence.

    A world started from the read models holds older closed releases as tombstones, each older than
    every closed release it holds whole, until an event (an annotation) moves one: `stirred`, the
    releases that had an event since the start, are the only tombstones that may be among the newest
    (scanning 10^5 tombstones on every render cost ~50 ms at 1M events)."""
    done = [(r.last_seq, r.release_id) for r in world.releases.values() if r.release_id not in world.in_flight]
    done += [(stone.last_seq, r) for r in stirred if (stone := world.tombstones.get(r)) is not None]
    return [release_id for _, release_id in heapq.nlargest(RECENT, done)]


# ---- release history (/history) -------------------------------------------------------------------
# The rows and the filter are `kxr release list`'s (services/reads/history.py): the hub keeps the
# same light fold of release events live (`LiveHub.history`), this only picks and counts.

HISTORY_LIMIT = 200  # rows on one page, newest first
HistoryFilter = Filter


class FilterError(ValueError):
    """A history filter that does not parse: one line for the page, shown as a 400."""


def parse_filter(query: Mapping[str, str], now: datetime) -> Filter:
    """`?channel=&outcome=&since=` as `kxr release list` takes them (channel: ENV/CHANNEL or CHANNEL;
    outcome: one of OUTCOMES or in-flight/in_flight; since: RFC 3339 or an age such as 30m, 6h, 2d);
    empty means any."""
    try:
        return history_filter(query.get("channel"), query.get("outcome"), query.get("since"), now=now)
    except ValueError as exc:
        raise FilterError(str(exc).replace("--", "", 1)) from None


def history_rows(
    fold: HistoryFold, flt: Filter, channels: list[str] | None = None, limit: int = HISTORY_LIMIT
) -> dict[str, Any]:
    """The releases that match, newest first, as `kxr release list --json` shows them (`summary`)."""
    chosen = matching(fold.items.values(), flt)
    return history_view(flt, len(chosen), [summary(i) for i in chosen[:limit]], channels)


def history_view(
    flt: Filter, total: int, rows: list[dict[str, Any]], channels: list[str] | None, problem: str | None = None
) -> dict[str, Any]:
    """/history's content: `rows` (the newest that match, `summary`s) of `total` that match.
    `problem`: why the rows are not the log's latest (the read models did not answer), if so."""
    channel = None
    if flt.channel is not None:
        channel = "/".join(c for c in flt.channel if c is not None)
    view = {
        "filter": {"channel": channel, "outcome": flt.outcome, "since": rfc3339(flt.since)},
        "total": total,
        "rows": rows,
        "channels": channels or [],
    }
    return {**view, "problem": problem} if problem else view


def channels_of(world: World) -> list[str]:
    return sorted({f"{env}/{channel}" for env, channel in world.channels.keys()})


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
