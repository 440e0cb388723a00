"""The live view of one release: a pure, JSON-able model for `kxr watch` and the dashboard.

`release_view(world, record, now=..., stored_samples=...)` reads only the fold (World and
the release's EvidenceRecord) and, while a window is open, the health samples stored so
far for its cohorts. Figures of an open window come from the monitor's own pure judge
(`services/monitoring/judge.py`: `window_data`, whose `counts_for` is the monitor's
rule for which samples count, and `judge_window`), so the view shows exactly what the
monitor would decide on the same samples; a closed window shows the verdict the monitor
recorded. Nothing here does IO or reads a clock.

Output (schema `VIEW_SCHEMA`; the model and JSON Schema of `kxr watch --json` are shapes.py's
`WatchFrame`, docs/schemas/cli/watch.schema.json; version 2 made a scope's `lkg` a pack object):

    {
      "schema": "kxr.release-view/2",
      "release_id": str, "log_seq": int (the log sequence the fold has applied), "at": RFC 3339 (`now`),
      "phase": str | null          # projections/releases.py PHASE_AFTER, e.g. "monitoring", "held", "closed"
      "paused": bool, "terminal": bool (closed), "held": bool (phase "held": inconclusive window or escalation),
      "waiting": bool              # nothing moves it on but an operator: held, or paused after a passed stage
      "outcome": "success" | "rolled_back" | "aborted" | "rejected" | "failed" | "pinned" | null,
      "why": str | null            # why it stopped or failed, if it did
      "pack": {"name", "version", "digest"} | null,
      "target": "env/channel" | null, "owner": str | null, "escalation": str | null,
      "promoted_to": str | null    # the linked release on the next channel, once promoted
      "stages": [ {"stage": int (1-based), "cohorts": [str], "skipped": {cohort: why},
                   "state": "pending" | "activating" | "activated" | "monitoring" | "passed" | "failed"
                            | "held" | "rolling_back" | "rolled_back",
                   "verdict": str | null (the last window's reason)} ],
      "gates": [ {"gate", "ok": bool, "code", "message"} ],   # in the verifier's order; [] before verification
      "verification": {"result": "verified" | "failed", ...} | {},
      "window": null | {
          "stage": int (1-based), "cohorts": [str], "digest": str,
          "starts_at", "ends_at": RFC 3339, "window_s": int,
          "elapsed_s": float, "fraction": float in [0, 1],   # of the window's length; a judged window
                                     # stops at its verdict (an early failure stays below 1)
          "verdict_at": RFC 3339 | null,
          "open": bool               # true until the monitor records a verdict
          "source": "live" | "verdict" | "unavailable",
                                     # live: judged now from stored samples; verdict: the monitor's record;
                                     # unavailable: open but no samples were given (no read access to
                                     # health), or it ended without a verdict (abort, rollback): see note
          "result": "passed" | "failed" | "inconclusive" | null,   # recorded verdict, or what it would be now
          "reason": str | null, "early": bool,
          "samples": int, "min_samples": int, "runtimes": int | null,
          "requests": int | null, "errors": int | null,
          "figures": [ {"metric", "value": float | null, "op": "<=" | ">=" | "none_new",
                        "threshold": float | null, "ok": bool} ],
          "new_error_classes": [str], "statistical": {"score", "result", ...} | null,
          "note": str | null
      },
      "scopes": [ {"scope": "env/channel/cohort", "cohort", "active": version | null, "active_digest",
                   "active_release", "active_kind", "lkg": {"name", "version", "digest"} | null,
                   "lkg_version": version | null, "lkg_release",
                   "pinned": {"pack": {"name", "version", "digest"}, "version", "until", "rationale", "by"} | null,
                   "rollback_target": version | null} ],
      "events": [ {"seq", "at", "type", "actor", "event_id", "summary"} ]   # the last `events` entries, oldest first
    }
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from events.health import HealthSample
from events.model import MonitoringStarted
from projections.evidence import EvidenceRecord
from projections.releases import ReleaseState
from projections.world import World
from services.monitoring.judge import against_channel, baseline_digests, judge_window, window_data

VIEW_SCHEMA = "kxr.release-view/2"  # 2: a scope's lkg is a pack {name, version, digest}, as in every command
DEFAULT_EVENTS = 10
_VERDICT_TYPES = {"release.monitoring_passed", "release.monitoring_failed", "release.monitoring_inconclusive"}


def _ts(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if value else None


def release_view(
    world: World,
    record: EvidenceRecord,
    *,
    now: datetime,
    stored_samples: Iterable[tuple[datetime, HealthSample]] | None = None,
    events: int = DEFAULT_EVENTS,
) -> dict[str, Any] | None:
    """The view of `record.release_id`, or None if the fold has never seen it.

    `stored_samples` are (server stored time, sample) pairs from the window's cohorts over
    `services.monitoring.judge.window_span(window)`; None means they could not be read.
    """
    release = world.release(record.release_id)
    if release is None:
        return None
    req = release.requested
    pack = release.pack
    return {
        "schema": VIEW_SCHEMA,
        "release_id": release.release_id,
        "log_seq": world.applied_seq,
        "at": _ts(now),
        "phase": release.phase,
        "paused": release.paused,
        "terminal": release.closed,
        "held": release.phase == "held",
        "waiting": waiting_for_operator(release),
        "outcome": release.outcome,
        "why": release.failure,
        "pack": _pack(pack),
        "target": f"{req.target.env}/{req.target.channel}" if req else None,
        "owner": req.owner if req else None,
        "escalation": req.escalation if req else None,
        "promoted_to": release.promoted.promoted_to if release.promoted else None,
        "stages": stage_rows(release, record),
        "gates": [dict(g) for g in record.gates],
        "verification": dict(record.verification),
        "window": window_view(release, record, now, stored_samples, world),
        "scopes": scope_rows(world, release, now),
        "events": [dict(e) for e in record.timeline[-events:]] if events > 0 else [],
    }


def _pack(ref) -> dict[str, Any] | None:
    """A pack as every command shows one: `{name, version, digest}` (services/reads/shapes.py `Pack`)."""
    return None if ref is None else {"name": ref.name, "version": ref.version, "digest": ref.digest}


def waiting_for_operator(release: ReleaseState) -> bool:
    return release.phase == "held" or (release.paused and release.phase == "passed")


def _last_windows(record: EvidenceRecord) -> dict[int, dict]:
    """Per stage (0-based), the most recent window of the record (an extended stage has several)."""
    return {w["stage"]: w for w in record.windows}


def stage_rows(release: ReleaseState, record: EvidenceRecord) -> list[dict[str, Any]]:
    windows = _last_windows(record)
    skipped = release.prepared.skipped if release.prepared else {}
    rows = []
    for i, cohorts in enumerate(release.stages):
        window = windows.get(i)
        verdict = window["verdict"] if window else None
        rows.append(
            {
                "stage": i + 1,
                "cohorts": list(cohorts),
                "skipped": {c: skipped[c] for c in cohorts if c in skipped},
                "state": _stage_state(release, i, window),
                "verdict": verdict.get("reason") if verdict else None,
            }
        )
    return rows


def _stage_state(release: ReleaseState, i: int, window: dict | None) -> str:
    reached = i <= release.stage
    if reached and release.rolled_back is not None:
        return "rolled_back"
    if reached and release.phase == "rolling_back":
        return "rolling_back"
    if window is not None:
        if window["verdict"] is None:
            return "monitoring"
        return {"passed": "passed", "failed": "failed", "inconclusive": "held"}[window["verdict"]["result"]]
    if reached:
        return "activated"
    if i == release.stage + 1 and release.phase == "expanding":
        return "activating"
    return "pending"


def window_view(
    release: ReleaseState,
    record: EvidenceRecord,
    now: datetime,
    stored_samples: Iterable[tuple[datetime, HealthSample]] | None,
    world: World | None = None,
) -> dict[str, Any] | None:
    """The most recent monitoring window: its clock, and each figure against its threshold."""
    m = release.monitoring
    if m is None:
        return None
    recorded = _recorded_verdict(record, m)
    # A judged window's clock stops at its verdict (an early failure stays short of 100%).
    verdict_at = _last_verdict_at(record) if recorded is not None else None
    clock = min(now, verdict_at) if verdict_at is not None else now
    span = (m.ends_at - m.starts_at).total_seconds()
    elapsed = min(max((clock - m.starts_at).total_seconds(), 0.0), span)
    view: dict[str, Any] = {
        "stage": m.stage + 1,
        "cohorts": list(m.cohorts),
        "digest": m.digest,
        "starts_at": _ts(m.starts_at),
        "ends_at": _ts(m.ends_at),
        "window_s": m.monitoring.window_s,
        "elapsed_s": round(elapsed, 3),
        "fraction": round(elapsed / span, 4) if span > 0 else 1.0,
        "verdict_at": _ts(verdict_at),
        "min_samples": m.monitoring.min_samples,
        "early": False,
        "note": None,
    }
    if recorded is not None:
        return {**view, **_from_verdict(recorded)}
    if release.phase != "monitoring":
        # A window the fold opened but whose verdict is not in the record: say so, never guess.
        return {**view, **_empty(False, f"closed without a verdict: the release went on to {release.phase}")}
    if stored_samples is None:
        return {**view, **_empty(True, "health samples not readable here: figures appear with the verdict")}
    # the monitor's own split and judge (services/monitoring/judge.py); the baseline is what the log says ran before
    data = window_data(
        stored_samples,
        m,
        baseline_digests=baseline_digests(world, release) if world else (),
        activated_at=release.activated_at.get(m.stage),
    )
    if world is not None:  # as the monitor will judge it: against the channel's cohorts as configured now
        data = against_channel(data, world, release)
    v = judge_window(data, m.monitoring)
    return {
        **view,
        "open": True,
        "source": "live",
        "result": v.outcome.removeprefix("monitoring_"),
        "reason": v.reason,
        **_counts(v.samples, v.runtimes, v.figures),
        "figures": [c.model_dump(mode="json") for c in v.comparisons],
    }


def _recorded_verdict(record: EvidenceRecord, m: MonitoringStarted) -> dict | None:
    """The verdict of window `m` in the record: the last window of its stage, if that one started at m."""
    for w in reversed(record.windows):
        if w["stage"] != m.stage:
            continue
        started = w["started"]
        if w["verdict"] is None or (
            started is not None and started.get("starts_at") != m.model_dump(mode="json")["starts_at"]
        ):
            return None  # the window that is open now (or an older one of an extended stage)
        return w["verdict"]
    return None


def _last_verdict_at(record: EvidenceRecord) -> datetime | None:
    """When the newest verdict was logged: the verdict of the newest window, when it has one."""
    for entry in reversed(record.timeline):
        if entry["type"] in _VERDICT_TYPES:
            return datetime.fromisoformat(entry["at"].replace("Z", "+00:00"))
    return None


def _from_verdict(verdict: dict) -> dict[str, Any]:
    figures = verdict.get("figures") or {}
    return {
        "open": False,
        "source": "verdict",
        "result": verdict["result"],
        "reason": verdict.get("reason"),
        "early": bool(verdict.get("early")),
        **_counts(verdict.get("samples", 0), verdict.get("runtimes"), figures),
        "figures": [dict(c) for c in verdict.get("comparisons") or []],
    }


def _counts(samples: int, runtimes: int | None, figures: dict) -> dict[str, Any]:
    return {
        "samples": samples,
        "runtimes": runtimes,
        "requests": figures.get("requests"),
        "errors": figures.get("errors"),
        "new_error_classes": list(figures.get("new_error_classes") or []),
        "statistical": figures.get("statistical"),
    }


def _empty(is_open: bool, note: str) -> dict[str, Any]:
    return {
        "open": is_open,
        "source": "unavailable",
        "result": None,
        "reason": None,
        **_counts(0, None, {}),
        "figures": [],
        "note": note,
    }


def scope_rows(world: World, release: ReleaseState, now: datetime) -> list[dict[str, Any]]:
    """Every cohort the release plans to touch: what runs there, its last-known-good and pin."""
    if release.prepared is None:
        return []
    env, channel = release.prepared.target.env, release.prepared.target.channel
    targets = release.prepared.rollback_targets
    rows = []
    for cohort in dict.fromkeys(c for stage in release.stages for c in stage):
        s = world.scope(env, channel, cohort)
        pin = s.pinned_at(now)
        target = targets.get(cohort)
        rows.append(
            {
                "scope": f"{env}/{channel}/{cohort}",
                "cohort": cohort,
                "active": s.active_pack.version if s.active_pack else None,
                "active_digest": s.active_pack.digest if s.active_pack else None,
                "active_release": s.active.release_id if s.active else None,
                "active_kind": s.active.kind if s.active else None,
                "lkg": _pack(s.lkg),
                "lkg_version": s.lkg.version if s.lkg else None,
                "lkg_release": s.lkg_release,
                "pinned": {
                    "pack": _pack(pin.pack),
                    "version": pin.pack.version,
                    "until": _ts(pin.until),
                    "rationale": pin.rationale,
                    "by": pin.by,
                }
                if pin
                else None,
                "rollback_target": target.version if target else None,
            }
        )
    return rows
