"""Prometheus as a monitoring source, the pure parts: templates, escaping, answers, judging, config.

The integration test (tests/integration/test_prometheus.py) asks a real Prometheus.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from events.channel import ChannelConfig, PrometheusSource, channel_problems, unknown_fields
from events.model import Monitoring, MonitoringVerdict, QueryAnswer
from events.thresholds import Thresholds
from services.actions.producer import parse_channel_config
from services.monitoring.judge import judge
from services.monitoring.prometheus import (
    MAX_SERIES,
    Asked,
    Place,
    cohort_regex,
    parse_answer,
    promql_string,
    queries_for,
    render,
    unanswered,
)

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
PLACE = Place("prod", "canary", ("internal",), "sha256:" + "a" * 64, 90)


def vector(*values: str, label: str = "pod") -> dict:
    return {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [{"metric": {label: f"p{i}"}, "value": [1.0, v]} for i, v in enumerate(values)],
        },
    }


def answer(name: str, body: object, thresholds: Thresholds, status: int = 200) -> QueryAnswer:
    return parse_answer(Asked(name, "q", AT), status, body, thresholds)


# ---- templates ----------------------------------------------------------------------------------


def test_render_fills_the_placeholders_and_leaves_promql_braces_alone():
    template = (
        'sum(rate(http_errors_total{env="{env}",channel="{channel}",cohort=~"{cohort}",digest="{digest}"}[{window}]))'
        ' / sum(rate(http_requests_total{env="{env}"}[{window}]))'
    )
    assert render(template, PLACE) == (
        f'sum(rate(http_errors_total{{env="prod",channel="canary",cohort=~"internal",digest="{PLACE.digest}"}}[90s]))'
        ' / sum(rate(http_requests_total{env="prod"}[90s]))'
    )
    # an unknown placeholder is left as written (kxr channel set refuses it, see below)
    assert render("x{foo}", PLACE) == "x{foo}"


def test_label_values_are_escaped_for_a_promql_string():
    assert promql_string('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    hostile = Place('pr"od', 'x"} or vector(0) or {"', ("a",), "d\\", 1)
    rendered = render('m{env="{env}",channel="{channel}",digest="{digest}"}', hostile)
    assert rendered == 'm{env="pr\\"od",channel="x\\"} or vector(0) or {\\"",digest="d\\\\"}'
    # (tests/integration/test_prometheus.py has a real Prometheus parse such a query as three label matchers)


def test_cohorts_are_one_regex_alternation_and_a_single_cohort_is_its_own_name():
    assert cohort_regex(("internal",)) == "internal"
    assert cohort_regex(("internal", "rest-1")) == "internal|rest-1"
    assert cohort_regex(("a.b", "c|d")) == "a\\.b|c\\|d"
    two = Place("prod", "canary", ("internal", "rest"), "d", 5)
    assert render('m{cohort=~"{cohort}"}', two) == 'm{cohort=~"internal|rest"}'
    assert render('m{cohort=~"{cohort}"}', Place("p", "c", ("a.b",), "d", 5)) == 'm{cohort=~"a\\\\.b"}'


def test_queries_are_rendered_in_name_order_at_the_windows_end():
    source = PrometheusSource(queries={"zeta": "z[{window}]", "alpha": 'a{env="{env}"}'})
    asked = queries_for(source, PLACE, AT)
    assert [(a.name, a.query, a.at) for a in asked] == [("alpha", 'a{env="prod"}', AT), ("zeta", "z[90s]", AT)]


# ---- answers ------------------------------------------------------------------------------------

MAX = Thresholds(error_rate_max=0.05)
MIN = Thresholds(trace_coverage_min=0.9)


def test_a_vector_is_judged_on_its_worst_series():
    a = answer("error_rate", vector("0.01", "0.04", "0.02"), MAX)
    assert (a.status, a.value, a.no_data, a.series) == ("success", 0.04, None, 3)
    assert a.result[0] == {"metric": {"pod": "p1"}, "value": "0.04"}  # worst first
    low = answer("trace_coverage", vector("0.95", "0.91", "0.99"), MIN)
    assert low.value == 0.91
    band = answer("queue", vector("3", "9", "5"), Thresholds(queue_max=10, queue_min=1))  # type: ignore[call-arg]
    assert (band.value, band.lowest) == (9.0, 3.0)


def test_a_huge_figure_in_full_decimal_is_judged_whole_not_cut_small():
    """Prometheus writes 1e70 as "1" and 70 zeros: judged from a cut text it would read 1e63."""
    huge = "1" + "0" * 70
    a = answer("queue", vector("5", huge), Thresholds(queue_max=1e65))  # type: ignore[call-arg]
    assert a.value == 1e70 and a.no_data is None
    assert a.result[0]["value"] == huge  # the evidence keeps it whole too


def test_a_scalar_answer_is_one_figure():
    a = answer("error_rate", {"status": "success", "data": {"resultType": "scalar", "result": [1.0, "0.5"]}}, MAX)
    assert (a.value, a.result) == (0.5, [{"metric": {}, "value": "0.5"}])


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        (vector(), "success", "empty result"),
        (vector("0.01", "NaN"), "success", "non-finite value NaN (pod=p1)"),
        (vector("+Inf"), "success", "non-finite value +Inf"),
        (
            {"status": "error", "errorType": "bad_data", "error": 'parse error: unexpected "}"'},
            "error",
            "error: bad_data: parse error",
        ),
        ({"status": "error", "errorType": "timeout", "error": "query timed out"}, "timeout", "timeout: timeout"),
        (
            {"status": "success", "data": {"resultType": "matrix", "result": []}},
            "invalid",
            "result type 'matrix'",
        ),
        ({"hello": "world"}, "invalid", "not a Prometheus API answer"),
        ({"status": "success", "data": {"resultType": "vector", "result": [{"value": 3}]}}, "invalid", "malformed"),
    ],
)
def test_an_answer_without_a_finite_figure_is_no_data_saying_why(body, status, fragment):
    a = answer("error_rate", body, MAX)
    assert a.status == status
    assert a.value is None
    assert fragment in (a.no_data or ""), a.no_data


def test_the_evidence_keeps_the_worst_series_and_counts_the_rest():
    values = [f"0.0{i % 10}" for i in range(50)] + ["0.5"]
    a = answer("error_rate", vector(*values), MAX)
    assert a.series == 51 and len(a.result) == MAX_SERIES
    assert a.result[0]["value"] == "0.5" and a.value == 0.5
    # one NaN hidden among many finite series still makes it no data, and stays in the evidence
    b = answer("error_rate", vector(*values[:-1], "NaN"), MAX)
    assert b.value is None and b.result[0]["value"] == "NaN"


# ---- judging ------------------------------------------------------------------------------------


def sample(runtime: str = "rt-1", **fields):
    from events.health import HealthSample

    base = {
        "runtime_id": runtime,
        "digest": "sha256:" + "b" * 64,
        "at": AT.isoformat(),
        "kind": "sample",
        "requests": 100,
    }
    return HealthSample.model_validate({**base, "errors": 0, **fields})


def monitoring(**thresholds) -> Monitoring:
    return Monitoring(window_s=5, thresholds=Thresholds(new_error_classes="ignore", statistical="off", **thresholds))


def test_a_window_passes_fails_and_holds_on_the_queries():
    m = monitoring(error_rate_max=0.05, queue_depth_max=10)
    good = [answer("error_rate", vector("0.01"), m.thresholds), answer("queue_depth", vector("4"), m.thresholds)]
    v = judge([sample()], [], m, queries=good)
    assert v.outcome == "monitoring_passed", v.reason
    assert "2 Prometheus queries" in v.reason
    assert {c.metric: c.ok for c in v.comparisons if c.metric.startswith("prometheus.")} == {
        "prometheus.error_rate": True,
        "prometheus.queue_depth": True,
    }

    bad = [good[0], answer("queue_depth", vector("11"), m.thresholds)]
    v = judge([sample()], [], m, queries=bad)
    assert v.outcome == "monitoring_failed"
    assert "prometheus.queue_depth 11 breaches <= 10" in v.reason
    assert v.trigger is None  # a monitoring failure

    missing = [good[0], answer("queue_depth", vector(), m.thresholds)]
    v = judge([sample()], [], m, queries=missing)
    assert v.outcome == "monitoring_inconclusive"
    assert "no data from Prometheus query queue_depth: empty result" in v.reason

    down = [unanswered(Asked("error_rate", "q", AT), "unreachable", "ConnectError"), good[1]]
    v = judge([sample()], [], m, queries=down)
    assert v.outcome == "monitoring_inconclusive"
    assert "no data from Prometheus query error_rate: unreachable: ConnectError" in v.reason

    # the channel's queries were removed while the window was open: its custom threshold judges nothing
    v = judge([sample()], [], m, queries=[])
    assert v.outcome == "monitoring_inconclusive"
    assert "threshold queue_depth_max has no figure: no Prometheus query queue_depth was asked" in v.reason


def test_a_query_named_like_a_sample_figure_speaks_for_it_when_the_samples_have_none():
    m = monitoring(error_rate_max=0.05, latency_p99_ms_max=300)
    no_latency = [sample()]  # runtimes report traffic, not one latency figure
    assert "no data for latency_p99_ms" in judge(no_latency, [], m).reason
    p99 = answer("latency_p99_ms", vector("120"), m.thresholds)
    v = judge(no_latency, [], m, queries=[p99])
    assert v.outcome == "monitoring_passed", v.reason
    # when the samples do hold the figure, both must hold
    slow = [sample(latency_ms={"p95": 500, "p99": 900})]
    v = judge(slow, [], m, queries=[p99])
    assert v.outcome == "monitoring_failed" and "latency_p99_ms 900 breaches" in v.reason
    # and a query that does not speak for a figure leaves its gap open
    other = answer("queue_depth", vector("1"), Thresholds(queue_depth_max=5))  # type: ignore[call-arg]
    m2 = monitoring(latency_p99_ms_max=300, queue_depth_max=5)
    assert judge(no_latency, [], m2, queries=[other]).outcome == "monitoring_inconclusive"


def test_a_verdict_without_queries_is_written_as_before_and_one_with_them_round_trips():
    plain = MonitoringVerdict(stage=0, reason="ok")
    assert "queries" not in plain.model_dump(mode="json")
    with_queries = MonitoringVerdict(stage=0, queries=[answer("error_rate", vector("0.01", "NaN"), MAX)])
    doc = with_queries.model_dump(mode="json")
    assert doc["queries"][0]["result"][0]["value"] == "NaN"  # Prometheus' text: strict JSON, no NaN number
    assert MonitoringVerdict.model_validate(doc) == with_queries


def test_a_request_may_tighten_a_custom_threshold_never_loosen_it():
    channel = Thresholds(error_rate_max=0.05, queue_depth_max=100, backlog_min=2)  # type: ignore[call-arg]
    tighter = channel.tightened_by(Thresholds(queue_depth_max=10, backlog_min=5))  # type: ignore[call-arg]
    assert (tighter.queue_depth_max, tighter.backlog_min) == (10, 5)  # type: ignore[attr-defined]
    looser = channel.tightened_by(Thresholds(queue_depth_max=1000, backlog_min=0, other_max="x"))  # type: ignore[call-arg]
    assert (looser.queue_depth_max, looser.backlog_min) == (100, 2)  # type: ignore[attr-defined]
    assert "other_max" not in looser.model_dump()  # not a number: ignored
    assert channel.tightened_by(Thresholds()) == channel


def test_a_request_threshold_that_nothing_can_judge_is_a_problem_not_dropped():
    """Pre-flight refuses what `tightened_by` would drop or the judge could never measure (issue: a
    producer's stricter threshold silently ignored judged the release more loosely than asked)."""
    from events.channel import requested_threshold_problems

    cfg = ChannelConfig.model_validate(
        channel({"url": "http://prom:9090", "queries": {"queue_depth": "q"}}, {"queue_depth_max": 100})
    )
    ok = Thresholds.model_validate({"queue_depth_max": 10, "queue_depth_min": 0.5, "error_rate_max": 0.01})
    assert requested_threshold_problems(ok, cfg) == []
    asked = Thresholds.model_validate(
        {"queue_depth_max": "10", "backlog_max": 5, "error_rate_maxx": 0.1, "queue_depth_min": 10**400}
    )
    problems = requested_threshold_problems(asked, cfg)
    assert len(problems) == 4, problems
    assert problems[0].startswith("threshold 'backlog_max' names no Prometheus query")
    assert problems[1].startswith("unknown threshold 'error_rate_maxx' (known: error_rate_max,")
    assert problems[2].startswith("threshold 'queue_depth_max' is not a finite number")
    assert problems[3].startswith("threshold 'queue_depth_min' is not a finite number")
    # without any query on the channel, a custom threshold has nothing to judge it
    plain = ChannelConfig.model_validate({"monitoring": {"window_s": 60}})
    assert requested_threshold_problems(Thresholds.model_validate({"queue_depth_max": 1}), plain) == [
        "threshold 'queue_depth_max' names no Prometheus query of this channel: nothing would judge it"
    ]


# ---- channel configuration ----------------------------------------------------------------------


def channel(prometheus: dict, thresholds: dict | None = None) -> dict:
    return {"monitoring": {"window_s": 60, "thresholds": thresholds or {}, "prometheus": prometheus}}


def test_a_channel_with_queries_and_their_thresholds_is_sound():
    doc = channel(
        {"url": "http://prom:9090", "timeout_s": 2, "queries": {"error_rate": "x", "queue_depth": "y[{window}]"}},
        {"error_rate_max": 0.05, "queue_depth_max": 100},
    )
    cfg = parse_channel_config(doc, "canary")
    assert cfg.monitoring.prometheus is not None and cfg.monitoring.prometheus.timeout_s == 2
    assert unknown_fields(cfg) == []  # queue_depth_max is a threshold because a query is named queue_depth
    # without the query it is a typo as before
    assert unknown_fields(
        ChannelConfig.model_validate({"monitoring": {"window_s": 60, "thresholds": {"queue_depth_max": 1}}})
    ) == ["monitoring.thresholds.queue_depth_max"]


def test_older_configurations_validate_as_before():
    cfg = ChannelConfig.model_validate({"monitoring": {"window_s": 60, "thresholds": {"error_rate_max": 0.05}}})
    assert cfg.monitoring.prometheus is None and channel_problems(cfg) == []
    assert "prometheus" not in cfg.model_dump(mode="json")["monitoring"]  # written byte for byte as before


@pytest.mark.parametrize(
    "prometheus, thresholds, fragment",
    [
        ({"queries": {"queue_depth": "q"}}, {}, "queue_depth: no threshold to judge it against"),
        ({"queries": {"error_rate": "q"}}, {"latency_p99_ms_max": 300}, "error_rate: no threshold"),
        ({"queries": {"queue_depth": "q"}}, {"queue_depth_max": "many"}, "queue_depth_max must be a finite number"),
        ({"queries": {"queue_depth": "q"}}, {"queue_depth_max": True}, "queue_depth_max must be a finite number"),
        (
            {"queries": {"error_rate": 'x{env="{environment}"}'}},
            {"error_rate_max": 1},
            "unknown placeholder(s) {environment}",
        ),
        ({"queries": {"bad-name": "q"}}, {}, "a query name is a letter or _"),
        ({"queries": {"error_rate\n": "q"}}, {}, "a query name is a letter or _"),  # (checked whole)
        ({"queries": {"error_rate": "  "}}, {"error_rate_max": 1}, "the query is empty"),
        ({"url": "file:///etc/passwd", "queries": {"error_rate": "q"}}, {"error_rate_max": 1}, "http:// or https://"),
    ],
)
def test_a_query_kxr_channel_set_refuses(prometheus, thresholds, fragment):
    with pytest.raises(ValueError) as caught:
        parse_channel_config(channel(prometheus, thresholds), "canary")
    assert fragment in str(caught.value)


def test_kxr_channel_set_names_the_query_without_a_threshold_in_one_line_and_exit_2(tmp_path):
    path = tmp_path / "canary.toml"
    path.write_text(
        "[monitoring]\nwindow_s = 60\n[monitoring.thresholds]\nerror_rate_max = 0.05\n"
        "[monitoring.prometheus]\nurl = 'http://127.0.0.1:9'\n"
        "[monitoring.prometheus.queries]\nerror_rate = 'x'\nqueue_depth = 'max(queue_depth{env=\"{env}\"})'\n"
    )
    done = subprocess.run(
        [str(Path(sys.executable).parent / "kxr"), "channel", "set", "prod/canary", "--file", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr + done.stdout
    assert "monitoring.prometheus.queries.queue_depth: no threshold to judge it against" in done.stderr + done.stdout


def test_the_services_prometheus_url_comes_from_kx_prometheus_url(monkeypatch):
    from services.reads.prometheus import base_url
    from services.settings import Settings

    monkeypatch.setenv("KX_PROMETHEUS_URL", "http://prom.internal:9090/")
    fallback = Settings.from_env().prometheus_url
    assert fallback == "http://prom.internal:9090/"
    assert base_url(PrometheusSource(queries={"a": "q"}), fallback) == "http://prom.internal:9090"
    assert base_url(PrometheusSource(url="http://own:9090", queries={"a": "q"}), fallback) == "http://own:9090"
    monkeypatch.delenv("KX_PROMETHEUS_URL")
    assert Settings.from_env().prometheus_url is None
