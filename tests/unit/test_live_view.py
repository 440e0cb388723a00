"""The live view model of one release (services/reads/live_view.py): pure, from the fold and samples."""

from __future__ import annotations

import json
from datetime import timedelta

from events.model import MonitoringStarted
from projections.evidence import evidence_of
from services.monitoring.judge import judge, split_window
from services.reads.live_view import VIEW_SCHEMA, release_view
from services.reads.shapes import WatchFrame

from .test_decisions import history, sample
from .test_projections import NOW, P0, P1, Log


def view(log: Log, rid: str = "r1", **kwargs):
    kwargs.setdefault("now", log.clock)
    return release_view(log.world(), evidence_of(rid, log.entries()), **kwargs)


def open_window(log: Log, rid: str = "r1") -> Log:
    """r1 verified and its first stage under a 60 s window (min_samples 2, error_rate_max 0.05)."""
    log.through_verified(rid)
    log.activate(rid, 0, ["internal"])
    log.started(rid, 0, ["internal"])
    return log


def window_of(log: Log, rid: str = "r1") -> MonitoringStarted:
    return log.world().release(rid).monitoring


def test_unknown_release_has_no_view() -> None:
    log = history(Log())
    assert view(log, "nope") is None


def test_a_successful_release_shows_stages_gates_recorded_window_scopes_and_last_events() -> None:
    log = history(Log())
    log.two_stage_success("r1")
    v = view(log, events=3)
    assert v["schema"] == VIEW_SCHEMA and v["terminal"] and v["outcome"] == "success" and not v["held"]
    assert v["pack"] == {"name": "kb", "version": "1.0.0", "digest": P1["digest"]} and v["target"] == "prod/canary"
    assert [(s["stage"], s["cohorts"], s["state"]) for s in v["stages"]] == [
        (1, ["internal"], "passed"),
        (2, ["rest"], "passed"),
    ]
    assert [(g["gate"], g["ok"]) for g in v["gates"]] == [("signature", True), ("digest", True)]
    w = v["window"]
    assert (w["stage"], w["open"], w["source"], w["result"], w["samples"]) == (2, False, "verdict", "passed", 3)
    assert (w["elapsed_s"], w["verdict_at"]) == (1.0, v["events"][1]["at"])  # the clock stopped at the verdict
    assert [
        (s["cohort"], s["active"], s["lkg_version"], s["lkg_release"], s["rollback_target"]) for s in v["scopes"]
    ] == [
        ("internal", "1.0.0", "1.0.0", "r1", "0.9.0"),
        ("rest", "1.0.0", "1.0.0", "r1", "0.9.0"),
    ]
    assert [e["type"] for e in v["events"]] == [
        "release.monitoring_started",
        "release.monitoring_passed",
        "release.closed",
    ]
    assert all(s["lkg"] == {"name": "kb", "version": "1.0.0", "digest": P1["digest"]} for s in v["scopes"])
    assert json.loads(json.dumps(v)) == v  # JSON-able as is
    WatchFrame.model_validate(v)  # `kxr watch --json`'s documented shape (docs/schemas/cli/watch.schema.json)


def test_an_open_window_is_judged_by_the_monitors_own_functions() -> None:
    log = open_window(history(Log()))
    m = window_of(log)
    now = m.starts_at + timedelta(seconds=15)
    stored = [
        (m.starts_at - timedelta(seconds=5), sample("rt-1", d=P0["digest"])),  # baseline: previous pack
        (m.starts_at - timedelta(seconds=1), sample("rt-1", errors=90)),  # new pack, before the window: ignored
        (m.starts_at + timedelta(seconds=2), sample("rt-1", errors=1)),
        (m.starts_at + timedelta(seconds=4), sample("rt-2", errors=9, classes={"Timeout": 9})),  # new error class
    ]
    w = view(log, now=now, stored_samples=stored)["window"]
    expected = judge(*split_window(stored, m), m.monitoring)
    assert (w["open"], w["source"], w["stage"], w["cohorts"]) == (True, "live", 1, ["internal"])
    assert (w["elapsed_s"], w["fraction"], w["window_s"]) == (15.0, 0.25, 60)
    assert w["figures"] == [c.model_dump(mode="json") for c in expected.comparisons]
    assert (w["result"], w["reason"], w["samples"], w["runtimes"]) == ("failed", expected.reason, 2, 2)
    assert (w["requests"], w["errors"], w["new_error_classes"]) == (200, 10, ["Timeout"])
    by_metric = {f["metric"]: f for f in w["figures"]}
    assert by_metric["error_rate"] == {"metric": "error_rate", "value": 0.05, "op": "<=", "threshold": 0.05, "ok": True}
    assert by_metric["new_error_classes"]["ok"] is False
    assert view(log, now=now, stored_samples=stored)["stages"][0]["state"] == "monitoring"


def test_an_open_window_without_samples_says_figures_are_unavailable() -> None:
    log = open_window(history(Log()))
    m = window_of(log)
    healthy = view(log, now=m.starts_at + timedelta(seconds=1), stored_samples=[])["window"]
    assert (healthy["source"], healthy["result"], healthy["samples"]) == ("live", "inconclusive", 0)
    w = view(log, now=m.starts_at + timedelta(seconds=90), stored_samples=None)["window"]
    assert (w["open"], w["source"], w["figures"], w["fraction"]) == (True, "unavailable", [], 1.0)
    assert "not readable" in w["note"]


def test_a_regression_rolled_back_marks_every_reached_stage_and_the_scopes_return() -> None:
    log = history(Log())
    log.through_verified("r1")
    log.activate("r1", 0, ["internal"])
    log.started("r1", 0, ["internal"])
    log.verdict(
        "r1",
        "failed",
        0,
        reason="error_rate 0.2 breaches <= 0.05",
        comparisons=[{"metric": "error_rate", "value": 0.2, "op": "<=", "threshold": 0.05, "ok": False}],
    )
    log.rollback_started("r1", {"internal": P0})
    during = view(log)
    assert during["stages"][0]["state"] == "rolling_back" and during["phase"] == "rolling_back"
    log.rolled_back("r1", {"internal": P0})
    log.closed("r1", "rolled_back")
    v = view(log)
    assert (v["terminal"], v["outcome"]) == (True, "rolled_back") and v["why"].startswith("monitoring_failed")
    assert [s["state"] for s in v["stages"]] == ["rolled_back", "pending"]
    assert v["stages"][0]["verdict"] == "error_rate 0.2 breaches <= 0.05"
    w = v["window"]
    assert (w["source"], w["result"], w["figures"]) == (
        "verdict",
        "failed",
        [{"metric": "error_rate", "value": 0.2, "op": "<=", "threshold": 0.05, "ok": False}],
    )
    assert [(s["cohort"], s["active"], s["active_kind"]) for s in v["scopes"]] == [
        ("internal", "0.9.0", "rollback"),
        ("rest", "0.9.0", "rollout"),
    ]


def test_a_held_window_then_an_extension_is_live_again() -> None:
    log = open_window(history(Log()))
    log.verdict("r1", "inconclusive", 0, reason="1 sample(s), fewer than min_samples 2")
    held = view(log)
    assert held["held"] and held["stages"][0]["state"] == "held"
    assert (held["window"]["source"], held["window"]["result"]) == ("verdict", "inconclusive")
    log.started("r1", 0, ["internal"])  # kxr release extend
    m = window_of(log)
    extended = view(log, now=m.starts_at, stored_samples=[(m.starts_at, sample()), (m.starts_at, sample("rt-2"))])
    assert not extended["held"] and extended["stages"][0]["state"] == "monitoring"
    assert (extended["window"]["source"], extended["window"]["result"], extended["window"]["fraction"]) == (
        "live",
        "passed",
        0.0,
    )


def test_a_window_that_ended_without_a_verdict_is_not_guessed() -> None:
    log = open_window(history(Log()))
    log.note("r1", "aborted", "wrong pack")
    w = view(log, stored_samples=[])["window"]
    assert (w["open"], w["source"], w["result"]) == (False, "unavailable", None)
    assert "aborting" in w["note"]


def test_stage_states_before_and_while_expanding() -> None:
    log = history(Log())
    log.requested("r1")
    assert view(log)["stages"] == [] and view(log)["window"] is None and view(log)["gates"] == []
    log.prepared("r1")
    log.distributed("r1")
    log.verified("r1")
    assert [s["state"] for s in view(log)["stages"]] == ["pending", "pending"]
    log.activate("r1", 0, ["internal"])
    assert [s["state"] for s in view(log)["stages"]] == ["activated", "pending"]
    log.started("r1", 0, ["internal"])
    log.verdict("r1", "passed", 0)
    log.expanded("r1", 0, 1, ["rest"])
    assert [s["state"] for s in view(log)["stages"]] == ["passed", "activating"]


def test_pins_and_skipped_cohorts_are_shown() -> None:
    log = history(Log())
    until = NOW + timedelta(days=2)
    log.pin("rest", P0, until, rationale="audit baseline")
    log.requested("r1")
    log.prepared("r1", skipped={"rest": "pinned to 0.9.0"})
    v = view(log)
    assert v["stages"][1]["skipped"] == {"rest": "pinned to 0.9.0"}
    rest = v["scopes"][1]
    assert rest["pinned"] == {
        "pack": {"name": P0["name"], "version": "0.9.0", "digest": P0["digest"]},
        "version": "0.9.0",
        "until": until.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "rationale": "audit baseline",
        "by": "ops",
    }
    assert view(log, now=until + timedelta(seconds=1))["scopes"][1]["pinned"] is None  # expired
    assert view(log, events=0)["events"] == []


def test_an_open_window_whose_cohort_the_channel_no_longer_has_is_shown_as_the_monitor_will_judge_it() -> None:
    """Session 24: the live view checks the window against the channel as the monitor does (`against_channel`):
    the stage's cohort taken out of the channel shows the hold the verdict will record, good data or not."""
    log = open_window(history(Log()))
    m = window_of(log)
    now = m.starts_at + timedelta(seconds=15)
    stored = [(m.starts_at + timedelta(seconds=s), sample(f"rt-{s}")) for s in (1, 2)]
    assert view(log, now=now, stored_samples=stored)["window"]["result"] == "passed"
    log.channel({"cohorts": [{"name": "rest"}], "monitoring": {"window_s": 60, "min_samples": 2}})
    w = view(log, now=now, stored_samples=stored)["window"]
    assert w["result"] == "inconclusive"
    assert w["reason"].startswith("cohort(s) internal no longer in the channel's configuration")
