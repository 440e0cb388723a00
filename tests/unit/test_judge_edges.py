"""The monitor fails closed at every edge (issues 13 and 14), on the pure judge and decide functions.

Each test names the defect it pins: missing data passing, a refusal missed, a poison figure
wedging a release, one runtime outvoting a cohort, a forged baseline, seed signals ignored.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from events.canonical import StrictJSONError
from events.codec import decode_event, encode_event
from events.health import MAX_COUNT, MAX_ERROR_CLASSES, MAX_MS, HealthSample, accept_report, decode_sample
from events.model import Comparison, MonitoringStarted, MonitoringVerdict
from events.subjects import HealthParts, Subjects
from projections.position import Position
from projections.world import apply_undecodable
from services.consumers import monitor
from services.monitoring.judge import (
    CLOCK_SKEW,
    MAX_LISTED,
    PER_RUNTIME_MIN_REQUESTS,
    Invalid,
    Watch,
    WindowData,
    breach_of,
    counts_for,
    figures_of,
    first_breach,
    judge,
    judge_window,
    moved_away,
    unswitched,
    window_data,
)

from .test_decisions import activated_log, activation, ctx, monitoring, monitoring_log, sample, state
from .test_projections import NOW, P0, P1, P2

T0 = NOW + timedelta(minutes=5)  # the stage's activation


def window(start: datetime = T0, window_s: int = 60, **thresholds: Any) -> MonitoringStarted:
    return MonitoringStarted(
        stage=0,
        cohorts=["internal"],
        digest=P1["digest"],
        starts_at=start,
        ends_at=start + timedelta(seconds=window_s),
        monitoring=monitoring(**thresholds),
    )


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def raw_sample(**fields: Any) -> bytes:
    body = {
        "runtime_id": "rt-1",
        "digest": P1["digest"],
        "at": NOW.isoformat(),
        "kind": "sample",
        "requests": 100,
        "errors": 0,
        "latency_ms": {"p95": 10, "p99": 20},
    }
    body.update(fields)
    return json.dumps(body).encode()


# ==== 1. missing data is never a pass ============================================================


@pytest.mark.parametrize(
    ("thresholds", "metric"),
    [
        ({"latency_p99_ms_max": 400}, "latency_p99_ms"),
        ({"latency_p95_ms_max": 250}, "latency_p95_ms"),
        ({"mismatch_rate_max": 0.01}, "mismatch_rate"),
        ({"activation_success_min": 0.9}, "activation_success_rate"),
        ({"time_to_activate_ms_max": 500}, "time_to_activate_ms_max"),
        ({"trace_coverage_min": 0.5}, "trace_coverage"),
        ({"tickets_max": 3}, "tickets"),
        ({"escalations_max": 1}, "escalations"),
    ],
)
def test_a_configured_threshold_without_data_is_inconclusive_naming_it(thresholds: dict, metric: str) -> None:
    bare = HealthSample.model_validate(
        {
            "runtime_id": "a",
            "digest": P1["digest"],
            "at": NOW.isoformat(),
            "kind": "sample",
            "requests": 100,
            "errors": 0,
        }
    )
    v = judge([bare, bare.model_copy(update={"runtime_id": "b"})], [], monitoring(**thresholds))
    assert v.outcome == "monitoring_inconclusive", v.reason
    assert f"no data for {metric}" in v.reason
    (missing,) = [c for c in v.comparisons if c.metric == metric]
    assert missing.value is None and missing.ok is False


def test_time_to_activate_is_a_success_criterion_judged_on_the_slowest_switch() -> None:
    """The seed names time-to-activate among the success criteria; it was a figure in every verdict but no
    threshold (the spec audit). `time_to_activate_ms_max` judges the slowest switch a runtime reported."""
    w = window()
    stored = [
        (at(-10), sample("a", d=P0["digest"])),
        (at(-9), sample("b", d=P0["digest"])),
        (at(1), activation("a", took_ms=120.0)),
        (at(1), activation("b", took_ms=900.0)),
        (at(2), sample("a")),
        (at(3), sample("b")),
    ]
    slow = judge_window(window_data(stored, w), monitoring(time_to_activate_ms_max=500))
    assert slow.outcome == "monitoring_failed", slow.reason
    (c,) = [c for c in slow.comparisons if c.metric == "time_to_activate_ms_max"]
    assert (c.value, c.op, c.threshold, c.ok) == (900.0, "<=", 500.0, False)
    assert judge_window(window_data(stored, w), monitoring(time_to_activate_ms_max=1000)).outcome == "monitoring_passed"


def test_an_error_rate_without_traffic_is_inconclusive() -> None:
    v = judge([sample("a", requests=0), sample("b", requests=0)], [], monitoring(error_rate_max=0.05))
    assert v.outcome == "monitoring_inconclusive"
    assert "no data for error_rate" in v.reason


def test_an_enforced_statistical_score_that_cannot_be_computed_holds_the_window() -> None:
    """Enforced, the score is a success criterion: no baseline (a first release; the old pack's runtimes silent
    before the activation) or too few samples a side is no data, never a pass. Found by a fail-closed audit
    (session 26): the same samples failed against a baseline and passed without one."""
    new = [sample(f"rt-{i}", requests=100, errors=4, p95=900.0, p99=1200.0) for i in range(6)]
    base = [sample(f"rt-{i}", requests=100, errors=0, p95=100.0, p99=150.0, d=P0["digest"]) for i in range(6)]
    enforced = monitoring(min_samples=2, error_rate_max=0.05, statistical="enforce")
    assert judge(new, base, enforced).outcome == "monitoring_failed"
    for baseline in ([], base[:2]):
        v = judge(new, baseline, enforced)
        assert v.figures["statistical"]["result"] == "insufficient_data"
        assert v.outcome == "monitoring_inconclusive" and "no data for statistical_score" in v.reason, v.reason
    # reported only, it stays a figure: the thresholds judge the window
    assert judge(new, [], monitoring(min_samples=2, error_rate_max=0.05)).outcome == "monitoring_passed"


# ==== 2. coverage and refusals ==================================================================


def test_a_runtime_that_ran_another_pack_before_and_never_switched_makes_the_window_inconclusive() -> None:
    w = window()
    stored = [
        (at(-10), sample("a", d=P0["digest"])),
        (at(-9), sample("b", d=P0["digest"])),
        (at(-8), sample("c", d=None)),
        (at(1), activation("a")),
        (at(2), sample("a")),
        (at(3), sample("a")),
    ]
    data = window_data(stored, w, baseline_digests={P0["digest"]})
    assert data.expected == {"a", "b", "c"}
    v = judge_window(data, w.monitoring)
    assert v.outcome == "monitoring_inconclusive", v.reason
    assert "2 runtime(s) reported before the activation but not activating the new pack: b, c" in v.reason
    assert v.figures["coverage"] == {"expected": 3, "activated": 1, "missing": ["b", "c"]}
    everyone = stored + [(at(1), activation("b")), (at(1), activation("c"))]
    assert judge_window(window_data(everyone, w), w.monitoring).outcome == "monitoring_passed"


def test_a_refusal_before_the_window_opened_fails_the_stage_with_its_own_trigger() -> None:
    """The runtime refused the moment it saw the pointer; the monitor opened the window later."""
    activated = T0
    late_window = window(start=T0 + timedelta(seconds=30))  # e.g. an extended window, or the old ctx.now start
    stored = [
        (at(-5), sample("a", d=P0["digest"])),
        (at(0.5), activation("a", ok=False, error="signature: unknown key")),
        (at(31), sample("b")),
        (at(32), sample("b")),
    ]
    data = window_data(stored, late_window, activated_at=activated)
    v = judge_window(data, late_window.monitoring)
    assert v.outcome == "monitoring_failed"
    assert v.trigger == "activation_failure"
    assert "refused by: a" in v.reason
    event = monitor.decide_window(state(monitoring_log())[1], 0, data, ctx("monitor"))[0].events[0]
    assert event.type == "release.monitoring_failed" and event.data.trigger == "activation_failure"


def test_an_activation_report_slightly_before_the_activation_time_still_counts() -> None:
    w = window()
    stored = [(at(-10), sample("a", d=P0["digest"])), (T0 - CLOCK_SKEW / 2, activation("a")), (at(1), sample("a"))]
    assert judge_window(window_data(stored, w), w.monitoring).outcome == "monitoring_passed"


def test_the_window_starts_at_the_activation_not_at_the_monitors_reaction() -> None:
    release = state(activated_log())[1]
    started = monitor.decide_start(release, ctx("monitor", T0 + timedelta(hours=2)))[0].events[0].data
    assert started.starts_at == release.activated_at[0]
    assert started.ends_at - started.starts_at == timedelta(seconds=release.prepared.monitoring.window_s)


def test_a_refusal_found_when_the_window_opens_fails_it_at_once() -> None:
    release = state(activated_log())[1]
    refusal = activation("rt-7", ok=False, error="manifest expired")
    found = first_breach(
        [(release.activated_at[0] + timedelta(seconds=1), refusal)],
        P1["digest"],
        release.prepared.monitoring,
        release.activated_at[0],
    )
    assert found is not None
    chain = monitor.decide_start(release, ctx("monitor"), (found[0], monitor.breach_figures(found[1])))[0]
    assert [e.type for e in chain.events] == ["release.monitoring_started", "release.monitoring_failed"]
    failed = chain.events[1].data
    assert failed.early and failed.trigger == "activation_failure"
    assert "rt-7 failed to activate: manifest expired" in failed.reason
    for event in chain.events:
        decode_event(encode_event(event))  # both are valid contract JSON


def test_first_breach_ignores_other_packs_and_reports_before_the_activation() -> None:
    mon = monitoring()
    refusal_of_other = HealthSample.model_validate(
        {**activation("a", ok=False).model_dump(mode="json"), "digest": P2["digest"]}
    )
    stored = [(at(2), refusal_of_other), (T0 - CLOCK_SKEW - timedelta(seconds=1), activation("b", ok=False))]
    assert first_breach(stored, P1["digest"], mon, T0) is None


# ==== 3. numbers are data, not a weapon ==========================================================


@pytest.mark.parametrize(
    "raw",
    [
        raw_sample(latency_ms={"p95": 1e308, "p99": 1e308}),
        raw_sample(latency_ms={"p95": MAX_MS * 2, "p99": 1}),
        raw_sample(requests=MAX_COUNT + 1),
        b'{"runtime_id":"rt-1","at":"2030-01-01T12:00:00Z","kind":"sample","requests":1' + b"0" * 400 + b"}",
        b'{"runtime_id":"rt-1","at":"2030-01-01T12:00:00Z","kind":"sample","latency_ms":{"p95":NaN,"p99":1}}',
        b'{"runtime_id":"rt-1","at":"2030-01-01T12:00:00Z","kind":"sample","latency_ms":{"p95":1e999,"p99":1}}',
        raw_sample(requests=5, errors=6),
        raw_sample(latency_ms={"p95": True, "p99": 1}),
        raw_sample(latency_ms={"p95": -1, "p99": 1}),
        raw_sample(kind="activation", ok=True, took_ms=1e300),
        raw_sample(error_classes={f"E{i}": 1 for i in range(MAX_ERROR_CLASSES + 1)}),
        raw_sample(error_classes={"x" * 500: 1}),
        raw_sample(correctness={"mismatches": 0, "checked": 10, "trace_coverage": 1.5}),
        raw_sample(signals={"tickets": -1}),
        raw_sample(signals={"tickets": 10**12}),
        # CONTRACT §8: figures are JSON numbers, `at` is RFC 3339 (a look-alike read two ways splits readers)
        raw_sample(latency_ms={"p95": "1", "p99": 1}),
        raw_sample(kind="activation", ok=True, took_ms="120"),
        raw_sample(correctness={"mismatches": 0, "checked": 10, "trace_coverage": "0.5"}),
        raw_sample(at=1714564800),
        raw_sample(at="2030-01-01T12:00Z"),
        raw_sample(at="2030-01-01 12:00:00Z"),
    ],
    ids=[
        "p95-1e308",
        "p95-over-a-day",
        "requests-over-1e9",
        "requests-10**400",
        "NaN",
        "inf-literal",
        "errors-over-requests",
        "bool-latency",
        "negative-latency",
        "took-1e300",
        "too-many-classes",
        "class-name-too-long",
        "trace-coverage-1.5",
        "negative-tickets",
        "tickets-10**12",
        "p95-a-string",
        "took-a-string",
        "trace-coverage-a-string",
        "at-epoch-seconds",
        "at-without-seconds",
        "at-with-a-space",
    ],
)
def test_out_of_bounds_figures_are_rejected_at_decode_with_a_reason(raw: bytes) -> None:
    problem = decode_sample(raw)
    assert isinstance(problem, str) and problem
    assert accept_report(raw, Subjects().health_parts("kx.health.prod.canary.internal.rt-1")) == problem


def test_a_sample_in_the_forms_the_contract_allows_is_accepted() -> None:
    """Go's nil map (`"error_classes": null`), nine fraction digits (RFC3339Nano), `t`/`z`, an offset, a leap
    second: each a sample, read as it says."""
    for raw, check in [
        (raw_sample(error_classes=None), lambda s: s.error_classes == {}),
        (raw_sample(at="2030-01-01T12:00:00.123456789Z"), lambda s: s.at.microsecond == 123456),
        (raw_sample(at="2030-01-01t12:00:00z"), lambda s: s.at.hour == 12),
        (raw_sample(at="2030-01-01T14:00:00+02:00"), lambda s: s.at.astimezone(UTC).hour == 12),
        (raw_sample(at="2016-12-31T23:59:60Z"), lambda s: (s.at.second, s.at.microsecond) == (59, 999999)),
        (raw_sample(latency_ms={"p95": 10, "p99": 20.5}), lambda s: s.latency_ms.p95 == 10.0),
    ]:
        sample = decode_sample(raw)
        assert not isinstance(sample, str), (raw, sample)
        assert check(sample), (raw, sample)


def test_a_sample_on_another_runtimes_subject_is_refused() -> None:
    assert (
        accept_report(raw_sample(runtime_id="rt-2"), Subjects().health_parts("kx.health.prod.canary.internal.rt-1"))
        == "runtime_id 'rt-2' reported on the subject of runtime 'rt-1'"
    )


def test_the_largest_valid_figures_cannot_overflow() -> None:
    biggest = HealthSample.model_validate(
        json.loads(raw_sample(requests=MAX_COUNT, errors=MAX_COUNT, latency_ms={"p95": MAX_MS, "p99": MAX_MS}))
    )
    f = figures_of([biggest] * 10_000, [])
    assert f["requests"] == MAX_COUNT * 10_000  # exact ints
    assert math.isfinite(f["latency_p95_ms"]) and f["latency_p95_ms"] == pytest.approx(MAX_MS)
    v = judge([biggest] * 10_000, [], monitoring(latency_p95_ms_max=1))
    decode_event(
        encode_event(
            monitor.decide_verdict(state(monitoring_log())[1], 0, [biggest] * 3, [], ctx("monitor"))[0].events[0]
        )
    )
    assert v.outcome == "monitoring_failed"


def test_invalid_reports_in_the_window_make_it_inconclusive_not_ignored() -> None:
    w = window()
    stored = [(at(1), activation("a")), (at(2), sample("a")), (at(3), sample("a"))]
    bad = [
        (at(2), Invalid("b", "latency_ms.p95: Input should be less than or equal to 86400000")),
        (at(-20), Invalid("c", "before the window: not this window's business")),
    ]
    v = judge_window(window_data(stored, w, invalid=bad), w.monitoring)
    assert v.outcome == "monitoring_inconclusive"
    assert "1 invalid health report(s) in the window (b): latency_ms.p95" in v.reason
    assert v.figures["invalid_reports"] == 1


def test_the_encoder_refuses_a_non_finite_number() -> None:
    release = state(monitoring_log())[1]
    verdict = MonitoringVerdict(
        stage=0, comparisons=[Comparison(metric="latency_p95_ms", value=math.inf, op="<=", threshold=1.0, ok=False)]
    )
    event = monitor.release_event(ctx("monitor"), release, "monitoring_failed", verdict, "verdict/0")
    with pytest.raises(StrictJSONError, match="NaN or an infinity"):
        encode_event(event)


def test_an_unwritable_verdict_becomes_an_inconclusive_one_with_the_reason() -> None:
    """Instead of a verdict no consumer can read (the release wedged), the window is held, saying why."""
    release = state(monitoring_log())[1]
    poisoned = MonitoringVerdict(
        stage=0,
        samples=3,
        runtimes=2,
        reason="latency_p95_ms inf breaches <= 250",
        comparisons=[Comparison(metric="latency_p95_ms", value=math.inf, op="<=", threshold=250.0, ok=False)],
    )
    event = monitor.verdict_event(ctx("monitor"), release, "monitoring_failed", poisoned)
    assert event.type == "release.monitoring_inconclusive"
    assert "could not be written" in event.data.reason and "NaN or an infinity" in event.data.reason
    assert (event.data.samples, event.data.runtimes) == (3, 2)
    assert decode_event(encode_event(event)).type == "release.monitoring_inconclusive"
    # same id as the verdict it replaces: a second instance writing either one is a duplicate
    assert (
        event.event_id
        == monitor.release_event(ctx("monitor"), release, "monitoring_failed", poisoned, "verdict/0").event_id
    )


def test_an_oversized_verdict_is_refused_by_the_encoder_and_held() -> None:
    release = state(monitoring_log())[1]
    huge = MonitoringVerdict(stage=0, figures={"blob": "x" * 70_000}, reason="big")
    with pytest.raises(StrictJSONError, match="over the 65536-byte cap"):
        encode_event(monitor.release_event(ctx("monitor"), release, "monitoring_passed", huge, "verdict/0"))
    assert (
        monitor.verdict_event(ctx("monitor"), release, "monitoring_passed", huge).type
        == "release.monitoring_inconclusive"
    )


def test_a_verdict_over_thousands_of_runtimes_and_error_classes_stays_one_bounded_event() -> None:
    release = state(monitoring_log())[1]
    samples = [
        sample(f"rt-{i}", requests=100, errors=10, classes={f"Err{i}-{j}-{'x' * 100}": 1 for j in range(10)})
        for i in range(2000)
    ]
    event = monitor.decide_verdict(release, 0, samples, [], ctx("monitor"))[0].events[0]
    assert event.type == "release.monitoring_failed"
    assert len(encode_event(event)) < 64 * 1024
    figures = event.data.figures
    assert figures["new_error_classes_count"] == 20_000 and len(figures["new_error_classes"]) == MAX_LISTED
    assert figures["per_runtime"]["judged"] == 2000 and len(figures["per_runtime"]["runtimes"]) == MAX_LISTED


# ==== 4. one runtime cannot outvote the cohort; the baseline is the previous active pack =========


def test_one_forged_huge_healthy_sample_cannot_turn_a_failing_window_into_a_pass() -> None:
    honest = [sample(f"rt-{i}", requests=100, errors=10) for i in range(5)] * 2  # 10% errors everywhere
    forged = sample("rt-forger", requests=10**9, errors=0)
    v = judge(honest + [forged], [], monitoring(error_rate_max=0.05))
    assert v.figures["error_rate"] < 0.05  # the aggregate alone would pass
    assert v.outcome == "monitoring_failed", v.reason
    assert "runtimes_breaching 5 breaches <= 0" in v.reason
    rows = v.figures["per_runtime"]
    assert rows["breaching"] == 5 and rows["runtimes"]["rt-0"]["breaches"] == ["error_rate 0.1 breaches <= 0.05"]
    assert rows["runtimes"]["rt-forger"]["breaches"] == []


def test_a_runtime_with_too_little_traffic_is_not_judged_alone() -> None:
    v = judge(
        [sample("a", requests=PER_RUNTIME_MIN_REQUESTS - 1, errors=5), sample("b", requests=1000)],
        [],
        monitoring(error_rate_max=0.05),
    )
    assert v.outcome == "monitoring_passed", v.reason
    assert v.figures["per_runtime"]["judged"] == 1


def test_the_baseline_is_the_previous_active_pack_not_any_other_digest() -> None:
    """A forged sample claiming an older pack cannot invent a baseline that hides a new error class."""
    w = window()
    stored = [
        (at(-5), sample("a", errors=1, classes={"KeyError": 1}, d=P2["digest"])),  # forged: P2 never ran here
        (at(-4), sample("a", d=P0["digest"])),
        (at(1), activation("a")),
        (at(2), sample("a", errors=1, classes={"KeyError": 1})),
    ]
    data = window_data(stored, w, baseline_digests={P0["digest"]})
    assert [s.digest for s in data.baseline] == [P0["digest"]]
    v = judge_window(data, w.monitoring)
    assert v.outcome == "monitoring_failed" and v.figures["new_error_classes"] == ["KeyError"]


def test_baseline_digests_come_from_the_scopes_previous_pointer_in_the_log() -> None:
    log = activated_log()
    # activated_log's pointer records no previous: write the real one, P0 (what history left active)
    log.point("internal", P1, "r1", previous={"version": P0["version"], "digest": P0["digest"]})
    log.started("r1", 0, ["internal"])
    world, release = state(log)
    assert monitor.baseline_digests(world, release) == {P0["digest"]}
    other = activated_log()
    other.point("internal", P2, "someone-else", previous={"version": P1["version"], "digest": P1["digest"]})
    other.started("r1", 0, ["internal"])
    assert monitor.baseline_digests(*state(other)) == frozenset()  # a scope moved by anything else: no baseline


# ==== 5. seed signals: tenant impact and trace coverage ==========================================


def with_signals(
    rid: str, tickets: int = 0, escalations: int = 0, trace: float | None = None, **kw: Any
) -> HealthSample:
    s = sample(rid, **kw)
    extra: dict[str, Any] = {"signals": {"tickets": tickets, "escalations": escalations}}
    if trace is not None:
        extra["correctness"] = {"mismatches": 0, "checked": 10, "trace_coverage": trace}
    return HealthSample.model_validate({**s.model_dump(mode="json"), **extra})


def test_tickets_over_the_window_total_fail_with_trigger_tenant_impact() -> None:
    v = judge([with_signals("a", tickets=2), with_signals("b", tickets=2)], [], monitoring(tickets_max=3))
    assert v.outcome == "monitoring_failed" and v.trigger == "tenant_impact"
    assert "tickets 4 breaches <= 3" in v.reason
    ok = judge([with_signals("a", tickets=1), with_signals("b", tickets=2)], [], monitoring(tickets_max=3))
    assert ok.outcome == "monitoring_passed", ok.reason


def test_escalations_fail_with_trigger_tenant_impact_early_on_one_sample() -> None:
    breach = breach_of(with_signals("a", escalations=3), monitoring(escalations_max=2))
    assert breach is not None and breach.trigger == "tenant_impact"
    assert "3 escalations in one sample" in breach.reason
    assert breach_of(with_signals("a", escalations=2), monitoring(escalations_max=2)) is None
    release = state(monitoring_log())[1]
    event = monitor.decide_breach(release, breach.reason, {}, ctx("monitor"), breach.trigger)[0].events[0]
    assert event.data.trigger == "tenant_impact" and event.data.early


def test_trace_coverage_below_its_minimum_fails_without_a_trigger() -> None:
    v = judge([with_signals("a", trace=0.5), with_signals("b", trace=0.7)], [], monitoring(trace_coverage_min=0.8))
    assert v.outcome == "monitoring_failed" and v.trigger is None
    assert "trace_coverage 0.6 breaches >= 0.8" in v.reason
    assert judge([with_signals("a", trace=0.9)], [], monitoring(trace_coverage_min=0.8)).outcome == "monitoring_passed"


def test_a_failed_verdict_carries_its_trigger_into_the_event() -> None:
    release = state(monitoring_log())[1]
    release = replace(
        release, monitoring=release.monitoring.model_copy(update={"monitoring": monitoring(tickets_max=1)})
    )
    event = monitor.decide_verdict(release, 0, [with_signals("a", tickets=2)] * 2, [], ctx("monitor"))[0].events[0]
    assert event.type == "release.monitoring_failed" and event.data.trigger == "tenant_impact"
    passed = monitor.decide_verdict(release, 0, [with_signals("a"), with_signals("b")], [], ctx("monitor"))[0].events[0]
    assert passed.type == "release.monitoring_passed" and passed.data.trigger is None


def test_window_data_is_what_decide_window_judges() -> None:
    data = WindowData([sample("a"), sample("b")], [], frozenset({"a"}))
    event = monitor.decide_window(state(monitoring_log())[1], 0, data, ctx("monitor"))[0].events[0]
    assert event.type == "release.monitoring_inconclusive" and "a" in event.data.figures["coverage"]["missing"]


def test_a_window_the_judge_chokes_on_is_held_with_the_reason() -> None:
    """The monitor's adapter turns any exception while judging into this, instead of retrying a timer forever."""
    event = monitor.decide_unjudgeable(
        state(monitoring_log())[1], 0, "OverflowError: int too large", ctx("monitor"), "the window could not be judged"
    )[0].events[0]
    assert event.type == "release.monitoring_inconclusive"
    assert event.data.reason == "the window could not be judged: OverflowError: int too large"


# ==== 6. one acceptance rule for every reader (issue 15) =========================================


def test_a_report_on_no_runtimes_subject_is_refused_not_decoded() -> None:
    assert "not on a health subject" in accept_report(
        raw_sample(), Subjects().health_parts("kx.health.prod.canary.internal.*")
    )
    assert accept_report(
        raw_sample(), Subjects().health_parts("kx.health.prod.canary.internal.rt-1")
    ) == HealthSample.model_validate(json.loads(raw_sample()))


def test_counts_for_is_the_windows_pack_and_time_span_by_kind() -> None:
    w = window()  # starts at T0, 60 s; the stage activated 10 s before the window opened
    watch = Watch.of(w, activated_at=at(-10))
    assert counts_for(watch, sample("a"), at(1)) and counts_for(watch, sample("a"), at(60))
    assert not counts_for(watch, sample("a"), at(-1)), "a sample before the window's start"
    assert not counts_for(watch, sample("a"), at(60.5)), "a sample after the window's end"
    assert not counts_for(watch, sample("a", d=P0["digest"]), at(1)), "another pack"
    assert counts_for(watch, activation("a"), at(-10) - CLOCK_SKEW), (
        "an activation from the activation on, give or take the skew"
    )
    assert not counts_for(watch, activation("a"), at(-10) - CLOCK_SKEW - timedelta(seconds=1))
    assert counts_for(watch, sample("a"), None), "arriving live: inside the open window"


def test_a_placed_watch_takes_only_its_target_and_cohorts() -> None:
    release = state(monitoring_log())[1]
    watch = Watch.of_release(release)
    assert watch is not None and watch.digest == release.monitoring.digest
    env, channel = release.prepared.target.env, release.prepared.target.channel
    s = sample("a")
    assert counts_for(watch, s, subject=HealthParts(env, channel, "internal", "a"))
    assert not counts_for(watch, s, subject=HealthParts(env, channel, "rest", "a")), "a cohort outside the window"
    assert not counts_for(watch, s, subject=HealthParts(env, "other", "internal", "a")), "another channel"
    assert not counts_for(watch, s, subject=HealthParts("other", channel, "internal", "a")), "another env"
    assert not counts_for(watch, s), "a placed watch needs the report's subject"
    assert Watch.of_release(state(activated_log())[1]) is None, "no window open"


def test_the_early_scan_and_the_window_agree_on_what_counts() -> None:
    """`first_breach` (before the window opens) and `window_data` (at its end) use the same rule."""
    w = window()
    refusal = activation("a", ok=False, error="boom")
    stored = [(at(0.5), refusal), (at(2), sample("b"))]
    found = first_breach(stored, w.digest, w.monitoring, T0)
    assert found is not None and found[1] == refusal
    assert refusal in window_data(stored, w).samples


def test_a_runtime_is_moved_only_on_a_newer_report_from_a_cohort_outside_the_window():
    """`moved_away`: positive evidence only — its newest report is from another cohort, after the activation."""
    since = NOW
    later, earlier = NOW + timedelta(seconds=5), NOW - timedelta(seconds=5)
    newest = [
        (earlier, "internal", sample("moved")),
        (later, "rest", sample("moved")),  # reports from rest since the activation: moved
        (later, "internal", sample("stuck")),  # still here (with whatever pack): not moved
        (earlier, "rest", sample("stuck")),
        (earlier, "rest", sample("left-before")),  # elsewhere, but only before the activation: no evidence
        (later, "internal", sample("back")),  # went to rest, came back: its newest is here
        (earlier, "rest", sample("back")),
    ]
    assert moved_away(newest, ["internal"], since) == {"moved": "rest"}
    assert moved_away(newest, ["internal", "rest"], since) == {}  # rest is the window's too: nothing moved out
    assert moved_away([], ["internal"], since) == {}


def test_a_moved_runtime_is_no_longer_expected_and_the_verdict_says_where_it_went():
    data = WindowData([sample("rt-1"), activation("rt-1")], [], expected=frozenset({"rt-1", "rt-moved", "rt-stuck"}))
    assert unswitched(data) == {"rt-moved", "rt-stuck"}
    held = judge_window(replace(data, moved={"rt-moved": "rest"}), monitoring())
    assert held.outcome == "monitoring_inconclusive" and "rt-stuck" in held.reason and "rt-moved" not in held.reason
    assert held.figures["coverage"]["moved"] == ["rt-moved (now in rest)"]
    assert held.figures["coverage"]["missing"] == ["rt-stuck"]
    passed = judge_window(replace(data, moved={"rt-moved": "rest", "rt-stuck": "edge"}), monitoring())
    assert passed.outcome == "monitoring_passed", passed.reason
    assert "moved" not in judge_window(data, monitoring()).figures["coverage"]  # said only when someone moved


def test_a_window_over_a_cohort_the_channel_no_longer_has_never_passes() -> None:
    """Session 24: a reconfiguration took the stage's cohort out of the channel mid-window; its runtimes had
    reported well before they moved. That is no evidence for a cohort nobody is in: the window holds, saying
    why, and names the cohort in its coverage (`WindowData.unconfigured`, set by the monitor from the world)."""
    w = window(error_rate_max=0.05)
    stored = [(at(1), activation("a")), (at(2), sample("a")), (at(3), sample("a"))]
    data = window_data(stored, w)
    assert judge_window(data, w.monitoring).outcome == "monitoring_passed"
    v = judge_window(replace(data, unconfigured=frozenset({"internal"})), w.monitoring)
    assert v.outcome == "monitoring_inconclusive"
    assert v.reason.startswith("cohort(s) internal no longer in the channel's configuration")
    assert v.figures["coverage"]["unconfigured"] == ["internal"]
    # a breach still fails it: taking a cohort out never hides what its runtimes reported
    bad = stored + [(at(4), sample("a", errors=90))]
    failed = judge_window(replace(window_data(bad, w), unconfigured=frozenset({"internal"})), w.monitoring)
    assert failed.outcome == "monitoring_failed"


def test_a_window_judged_while_the_channels_newest_configuration_does_not_decode_holds() -> None:
    """Which cohorts the channel has is unknown when its newest configuration does not decode: never taken
    to be the older one's (projections.world.ChannelProblem). The monitor's decision on the world says so and
    holds, as pre-flight refuses requests there; once a configuration that decodes follows, it passes."""
    world, release = state(monitoring_log())
    good = [activation("a"), sample("a"), sample("b")]
    passed = monitor.decide_verdict(release, 0, good, [], ctx("monitor"), world)[0].events[0]
    assert passed.type == "release.monitoring_passed", passed.data.reason
    junk = Position(world.applied_seq + 1, Subjects().channel("prod", "canary"))
    broken = apply_undecodable(world, junk, Subjects(), "not JSON")
    held = monitor.decide_verdict(release, 0, good, [], ctx("monitor"), broken)[0].events[0]
    assert held.type == "release.monitoring_inconclusive"
    assert held.data.reason == (
        f"channel config at seq {junk.seq} could not be decoded: not JSON: the window's cohorts cannot be "
        "checked against the channel's configuration"
    )
