"""The dashboard's fleet, history and charts, pure: the fold of health reports, the history
filters, the time series of a release's windows and their SVG (hostile ids, NaN-free, empty)."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from xml.etree import ElementTree

import pytest

from events.health import HealthSample, accept_report
from events.subjects import HealthParts
from projections.evidence import evidence_of
from services.dashboard import pages
from services.dashboard.charts import series_chart
from services.dashboard.model import FilterError, HistoryFilter, history_rows, parse_filter, window_series
from services.reads.fleet import MAX_TEXT, RECENT_SAMPLES, Fleet, fleet_rows, health_of, observe
from services.reads.history import fold_history, select, summary

from .test_decisions import history
from .test_projections import NOW, P0, P1, Log

HOSTILE = "<script>alert(1)</script>"
HOSTILE_ID = "rt-<img src=x onerror=alert(1)>"  # not a token: only ever a hostile subject or payload, escaped


def sample(runtime: str, p: dict, kind: str = "sample", **fields) -> HealthSample:
    return HealthSample.model_validate(
        {"runtime_id": runtime, "digest": p["digest"], "at": NOW.isoformat(), "kind": kind, **fields}
    )


def parts(runtime: str, cohort: str = "internal") -> HealthParts:
    return HealthParts("prod", "canary", cohort, runtime)


def test_the_fleet_keeps_each_runtimes_newest_report_per_field_in_any_order() -> None:
    t = NOW
    reports = [
        (1, t, parts("rt-a"), sample("rt-a", P0, "activation", ok=True)),
        (2, t + timedelta(seconds=1), parts("rt-a"), sample("rt-a", P0, requests=100, errors=1)),
        (3, t + timedelta(seconds=2), parts("rt-b", "rest"), sample("rt-b", P1, "activation", ok=False, error=HOSTILE)),
        (4, t + timedelta(seconds=3), parts("rt-a"), sample("rt-a", P1, "activation", ok=True)),
    ]
    reports += [
        (10 + i, t + timedelta(seconds=10 + i), parts("rt-a"), sample("rt-a", P1, requests=100, errors=i))
        for i in range(RECENT_SAMPLES + 2)
    ]
    in_order = Fleet()
    for r in reports:
        in_order = observe(in_order, *r)
    shuffled = Fleet()
    for r in reversed(reports):  # the seed (last per subject) and the tail may arrive in any order
        shuffled = observe(shuffled, *r)
    assert in_order == shuffled

    a = in_order.runtimes["rt-a"]
    assert (a.digest, a.activation.ok, a.activation.digest, a.last_seq) == (P1["digest"], True, P1["digest"], 16)
    assert [r.errors for r in a.recent] == list(range(2, RECENT_SAMPLES + 2))  # the newest, bounded
    b = in_order.runtimes["rt-b"]
    assert (b.cohort, b.activation.ok, b.activation.error) == ("rest", False, HOSTILE)

    log = history(Log())  # both cohorts run P0 (version 0.9.0)
    rows = fleet_rows(in_order, log.world(), t + timedelta(seconds=20))
    assert [(r["runtime"], r["scope"], r["status"]) for r in rows] == [
        ("rt-a", "prod/canary/internal", "ok"),
        ("rt-b", "prod/canary/rest", "refused"),
    ]
    assert rows[0]["in_sync"] is False and rows[0]["scope_version"] == "0.9.0"  # it runs P1, the pointer says P0
    assert rows[1]["activation"] == {
        "result": "refused",
        "reason": HOSTILE,
        "digest": P1["digest"],
        "version": None,  # the log never named P1 here
        "at": rows[1]["activation"]["at"],
    }
    health = rows[0]["health"]
    assert health["samples"] == RECENT_SAMPLES and health["error_rate"] == pytest.approx(
        sum(range(2, RECENT_SAMPLES + 2)) / (100 * RECENT_SAMPLES)
    )
    later = fleet_rows(in_order, log.world(), t + timedelta(minutes=5))
    assert [r["status"] for r in later] == ["stale", "refused"]  # a refusal says more than silence


def test_invalid_and_unattributed_reports_are_counted_never_taken_as_health() -> None:
    fleet = Fleet()
    long = HOSTILE * 200
    fleet = observe(fleet, 1, NOW, parts("rt-a"), sample("rt-a", P0, requests=10, errors=0))
    fleet = observe(fleet, 2, NOW, parts("rt-a"), long)  # what accept_report says of a bad report
    fleet = observe(fleet, 3, NOW, None, "not on a health subject")
    bad = accept_report(b'{"runtime_id": "rt-z", "at": "x"}', parts("rt-a"))
    assert isinstance(bad, str)
    a = fleet.runtimes["rt-a"]
    assert (a.invalid, len(a.last_invalid), a.digest, fleet.unattributed) == (1, MAX_TEXT, P0["digest"], 1)
    [row] = fleet_rows(fleet, history(Log()).world(), NOW)
    assert row["status"] == "invalid" and row["health"]["requests"] == 10
    html = pages.fleet_section({"ready": True, "problem": None, "rows": [row], "unattributed": 1})
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_hostile_runtime_ids_render_as_text() -> None:
    fleet = observe(Fleet(), 1, NOW, parts(HOSTILE_ID), sample("rt-a", P0, "activation", ok=False, error=HOSTILE))
    rows = fleet_rows(fleet, Log().world(), NOW)
    html = pages.fleet_section({"ready": True, "problem": None, "rows": rows, "unattributed": 0})
    assert "<img" not in html and "<script>" not in html and "&lt;img src=x" in html


def test_health_of_no_samples_is_none_not_zero() -> None:
    assert health_of(()) == {"samples": 0, "requests": 0, "errors": 0, "error_rate": None, "latency_p95_ms": None}


def test_a_fleet_that_cannot_be_read_says_so() -> None:
    html = pages.fleet_section({"ready": False, "problem": "not readable by this user", "rows": [], "unattributed": 0})
    assert "not readable by this user" in html and "no runtime has reported" not in html


# ---- history ---------------------------------------------------------------------------------------
def history_log() -> Log:
    log = history(Log())  # r0: success on prod/canary
    log.through_verified("r1")
    log.stage("r1", 0, ["internal"], outcome="failed")
    log.closed("r1", "rolled_back")
    log.through_verified("r2")  # in flight
    return log


def test_history_filters_by_channel_outcome_and_since() -> None:
    """The dashboard's history is `kxr release list`'s: the same fold, filter and rows (services/reads/history.py)."""
    log = history_log()
    fold, now = fold_history(log.entries()), log.clock
    every = history_rows(fold, HistoryFilter(), ["prod/canary"])
    assert [r["release_id"] for r in every["rows"]] == ["r2", "r1", "r0"]  # newest first
    assert every["rows"] == [summary(i) for i in select(fold.items.values())]  # kxr release list's rows
    assert every["channels"] == ["prod/canary"]

    def ids(query) -> list[str]:
        return [r["release_id"] for r in history_rows(fold, parse_filter(query, now))["rows"]]

    assert ids({"outcome": "rolled_back"}) == ["r1"]
    assert ids({"outcome": "in_flight"}) == ids({"outcome": "in-flight"}) == ["r2"]
    assert ids({"channel": "stable"}) == []
    assert ids({"channel": "prod/canary"}) == ids({"channel": "canary"}) == ["r2", "r1", "r0"]
    assert ids({"channel": "staging/canary"}) == []
    r1_at = fold.items["r1"].state.requested_at
    # since: requested then or later, or still open then (kxr release list --since)
    assert ids({"since": r1_at.isoformat()}) == ["r2", "r1"]
    assert parse_filter({"since": "2h"}, now).since == now - timedelta(hours=2)
    html = pages.history_section(every)
    assert "href='/releases/r2'" in html and "href='/releases/r0'" in html and "rolled_back" in html


@pytest.mark.parametrize(
    "query",
    [{"outcome": "sideways"}, {"channel": "a/b/c"}, {"channel": HOSTILE}, {"since": "yesterday"}, {"since": "5y"}],
)
def test_bad_history_filters_are_one_clear_error(query) -> None:
    with pytest.raises(FilterError) as err:
        parse_filter(query, NOW)
    assert "\n" not in str(err.value)


def test_history_filter_links_are_escaped_and_keep_the_other_filters() -> None:
    html = pages.history_filters(
        {"channel": "canary", "outcome": None, "since": HOSTILE}, ["prod/canary"], ("success",)
    )
    assert "<script>" not in html
    assert "href='/history?channel=canary&amp;outcome=success&amp;since=" in html


# ---- time series of a release's windows ------------------------------------------------------------
def windows_log() -> tuple[Log, list[dict]]:
    log = history(Log())
    log.through_verified("r1")
    log.stage("r1", 0, ["internal"])
    log.expanded("r1", 0, 1, ["rest"])
    log.activate("r1", 1, ["rest"])
    log.started("r1", 1, ["rest"])
    log.verdict("r1", "failed", 1, reason=HOSTILE, early=True)
    return log, list(evidence_of("r1", log.entries()).windows)


def stored_for(window: dict, runtimes: list[str], errors: int = 1) -> list:
    start = window["started"]["starts_at"]
    from datetime import datetime

    t0 = datetime.fromisoformat(start)
    out = []
    for i in range(5):
        for r in runtimes:
            out.append(
                (
                    t0 + timedelta(seconds=5 * i + 1),
                    sample(r, P1, requests=100, errors=errors, latency_ms={"p95": 80.0 + i, "p99": 120.0}),
                )
            )
    out.append((t0 + timedelta(seconds=2), sample("rt-old", P0, requests=100, errors=50)))  # another pack: not counted
    out.append((t0 - timedelta(seconds=30), sample("rt-early", P1, requests=100, errors=50)))  # before the window
    return out


def test_window_series_per_runtime_with_thresholds_and_hard_breaches() -> None:
    _, windows = windows_log()
    series = window_series(
        windows, {0: stored_for(windows[0], ["rt-a", "rt-c"]), 1: stored_for(windows[1], ["rt-b"], errors=40)}
    )
    assert [(w["stage"], w["result"], w["hard_breach"]) for w in series["windows"]] == [
        (1, "passed", False),
        (2, "failed", True),
    ]
    rate, p95 = series["metrics"]
    assert (rate["metric"], rate["threshold"], p95["metric"], p95["threshold"]) == (
        "error_rate",
        0.05,
        "latency_p95_ms",
        None,
    )
    assert sorted(rate["runtimes"]) == ["rt-a", "rt-b", "rt-c"]  # rt-old and rt-early do not count
    assert list(rate["runtimes"])[0] == "rt-b"  # breaching runtimes first
    assert all(p["breach"] for p in rate["runtimes"]["rt-b"]) and not any(p["breach"] for p in rate["runtimes"]["rt-a"])
    assert [p["value"] for p in p95["runtimes"]["rt-a"]] == [80.0, 81.0, 82.0, 83.0, 84.0]

    unread = window_series(windows, {0: None, 1: None})
    assert "not readable" in unread["note"] and all(not m["runtimes"] for m in unread["metrics"])


def _svg_ok(svg: str) -> ElementTree.Element:
    assert "nan" not in svg.lower() and "inf" not in svg.lower()
    root = ElementTree.fromstring(svg)  # well-formed: every text escaped
    for value in re.findall(r' (?:x|y|x1|x2|y1|y2|cx|cy|r|width|height)="([^"]*)"', svg):
        assert math.isfinite(float(value)), value
    for points in re.findall(r' points="([^"]*)"', svg):
        assert all(math.isfinite(float(n)) for pair in points.split() for n in pair.split(",")), points
    return root


def test_the_chart_escapes_ids_and_reasons_and_draws_threshold_lines_and_breaches() -> None:
    _, windows = windows_log()
    series = window_series(
        windows, {0: stored_for(windows[0], ["rt-a"]), 1: stored_for(windows[1], ["rt-b"], errors=40)}
    )
    series["metrics"][0]["runtimes"][HOSTILE] = series["metrics"][0]["runtimes"].pop("rt-a")
    svg = series_chart(series["metrics"][0], series["windows"])
    root = _svg_ok(svg)
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    ns = "{http://www.w3.org/2000/svg}"
    tags = [el.tag.removeprefix(ns) for el in root.iter()]
    assert tags.count("polyline") == 2 and "circle" in tags
    assert [el.get("class") for el in root.iter() if el.get("class", "").startswith("window")] == [
        "window",
        "window hard-breach",
    ]
    assert any(el.get("class") == "threshold" for el in root.iter())
    html = pages.series_section(series)
    assert html.count("<svg") == 2 and "<script>" not in html


@pytest.mark.parametrize(
    "metric",
    [
        {"metric": "error_rate", "label": "error rate", "threshold": None, "runtimes": {}},
        {"metric": "error_rate", "label": "error rate", "threshold": 0.0, "runtimes": {"rt": []}},
        {
            "metric": "error_rate",
            "label": HOSTILE,
            "threshold": float("nan"),
            "runtimes": {
                "rt": [
                    {"at": "2026-01-01T00:00:00Z", "value": float("nan"), "breach": None},
                    {"at": "not a time", "value": 1.0, "breach": None},
                    {"at": "2026-01-01T00:00:01Z", "value": float("inf"), "breach": HOSTILE},
                    {"at": "2026-01-01T00:00:02Z", "value": 0.0, "breach": None},
                ]
            },
        },
    ],
)
def test_the_chart_of_an_empty_or_degenerate_series_is_nan_free(metric) -> None:
    svg = series_chart(metric, [{"stage": 1, "starts_at": "bad", "ends_at": None}])
    _svg_ok(svg)
    assert "<script>" not in svg


def test_a_release_without_windows_has_no_chart() -> None:
    assert "no monitoring window yet" in pages.series_section(window_series([], {}))
    assert "no monitoring window yet" in pages.series_section(None)


def test_a_large_fleet_shows_problems_first_and_says_how_many_more() -> None:
    fleet = Fleet()
    for i in range(pages.FLEET_ROWS_SHOWN + 3):
        fleet = observe(fleet, i + 1, NOW, parts(f"rt-{i:04d}"), sample(f"rt-{i:04d}", P0, requests=10))
    fleet = observe(fleet, 10_000, NOW, parts("rt-zz"), sample("rt-zz", P0, "activation", ok=False))
    rows = fleet_rows(fleet, Log().world(), NOW)
    html = pages.fleet_section({"ready": True, "problem": None, "rows": rows, "unattributed": 0})
    assert html.count("<tr data-runtime=") == pages.FLEET_ROWS_SHOWN and "data-runtime='rt-zz'" in html
    assert "4 more runtime(s) not shown" in html
