"""Trace context over NATS headers (services/observability/tracing.py): W3C parsing, propagation,
the cost-free off state, and OTLP export only when OTEL_EXPORTER_OTLP_ENDPOINT is set."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from events.codec import make_event
from events.model import Actor
from services.consumers.outputs import Atomic, Chain, Promotion, ScopeWrite, Timer, event_ids
from services.observability import tracing
from tests import otel_support
from tests.otel_support import otlp_collector

spans = otel_support.spans  # the fixture: tracing on, every finished span in memory

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
PARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"
STATE = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"

MALFORMED = [
    "",
    "garbage",
    f"00-{TRACE_ID.upper()}-{SPAN_ID}-01",  # upper-case hex
    f"00-{'0' * 32}-{SPAN_ID}-01",  # all-zero trace id
    f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
    f"ff-{TRACE_ID}-{SPAN_ID}-01",  # version ff is invalid
    f"00-{TRACE_ID}-{SPAN_ID}-01-extra",  # version 00 has exactly four fields
    f"00-{TRACE_ID[:-1]}-{SPAN_ID}-01",  # short trace id
    f"00-{TRACE_ID}-{SPAN_ID}",  # no flags
    f"00_{TRACE_ID}_{SPAN_ID}_01",
    "00-" + "x" * 600,
]


@pytest.fixture
def off(monkeypatch):
    for var in (*tracing.ENDPOINT_VARS, "TRACEPARENT", "TRACESTATE"):
        monkeypatch.delenv(var, raising=False)
    tracing.reset()
    yield
    tracing.reset()


def test_a_valid_traceparent_is_the_parent_and_tracestate_is_kept(spans):
    headers = {"Nats-Msg-Id": "e1", "traceparent": PARENT, "tracestate": STATE}
    out: dict[str, str] = {}
    with tracing.decision_span("preparer decide", "r1", "e1", headers) as span:
        tracing.inject(out)
    finished = spans.get_finished_spans()[0]
    assert span is not None and finished.name == "preparer decide"
    assert f"{finished.context.trace_id:032x}" == TRACE_ID
    assert f"{finished.parent.span_id:016x}" == SPAN_ID and finished.parent.is_remote
    assert dict(finished.attributes) == {tracing.ATTR_RELEASE_ID: "r1", tracing.ATTR_EVENT_ID: "e1"}
    # what an event appended inside carries: the same trace, this span as parent, the tracestate as given
    version, trace_id, span_id, flags = out["traceparent"].split("-")
    assert (version, trace_id, span_id, flags) == ("00", TRACE_ID, f"{finished.context.span_id:016x}", "01")
    assert out["tracestate"] == STATE


@pytest.mark.parametrize("bad", MALFORMED)
def test_a_malformed_traceparent_is_ignored_and_the_decision_starts_a_new_trace(spans, bad):
    assert tracing.extract({"traceparent": bad, "tracestate": STATE}) is None
    with tracing.decision_span("verifier decide", "r1", "e1", {"traceparent": bad}) as span:
        out: dict[str, str] = {}
        tracing.inject(out)
    finished = spans.get_finished_spans()[0]
    assert span is not None and finished.parent is None  # a root: no error, no parent
    assert f"{finished.context.trace_id:032x}" != TRACE_ID
    assert out["traceparent"].split("-")[1] == f"{finished.context.trace_id:032x}"


def test_a_later_version_is_read_by_its_first_four_fields():
    context = tracing.extract({"traceparent": f"01-{TRACE_ID}-{SPAN_ID}-01-what-comes-next"})
    assert context is not None
    assert tracing.valid_trace_headers({"traceparent": f"01-{TRACE_ID}-{SPAN_ID}-01-more"}) == {"traceparent": PARENT}


def test_header_names_are_matched_case_insensitively():
    # a producer in another language may send canonicalised names; exact lower case wins
    assert tracing.trace_headers({"Traceparent": PARENT, "TraceState": STATE}) == {
        "traceparent": PARENT,
        "tracestate": STATE,
    }
    assert tracing.trace_headers({"traceparent": PARENT, "TRACEPARENT": "other"})["traceparent"] == PARENT
    assert tracing.trace_headers(None) == {} and tracing.trace_headers({"Nats-Msg-Id": "x"}) == {}
    assert tracing.extract({"TRACEPARENT": PARENT}) is not None


def test_a_malformed_tracestate_drops_only_the_tracestate(spans):
    out: dict[str, str] = {}
    with tracing.decision_span("d", "r1", "e1", {"traceparent": PARENT, "tracestate": "=,=bad=,"}):
        tracing.inject(out)
    assert out["traceparent"].split("-")[1] == TRACE_ID and "tracestate" not in out


def test_no_parent_headers_is_a_root_even_inside_another_span(spans):
    with tracing.decision_span("outer", "r1", "e0", {"traceparent": PARENT}):
        with tracing.decision_span("inner", "r2", "e1", None):
            pass
    inner = next(s for s in spans.get_finished_spans() if s.name == "inner")
    assert inner.parent is None  # a decision never borrows an ambient parent


def released(release_id: str):
    return make_event("release.rejected", {"reasons": []}, actor=Actor(kind="service", id="t"), release_id=release_id)


def test_decisions_follow_the_remembered_context_of_the_release_latest_event(spans):
    first, second = released("r1"), released("r1")
    tracing.remember(first, {"Nats-Msg-Id": first.event_id, "traceparent": PARENT, "tracestate": STATE})
    assert tracing.headers_of("r1", first.event_id) == {"traceparent": PARENT, "tracestate": STATE}
    # a later event of the release is what decisions follow from now; one without a context leaves none
    tracing.remember(second, {"Nats-Msg-Id": second.event_id})
    assert tracing.headers_of("r1", first.event_id) is None and tracing.headers_of("r1", second.event_id) is None
    assert tracing.headers_of("r1", None) is None and tracing.headers_of("r2", first.event_id) is None


def test_the_remembered_contexts_are_bounded_by_releases_least_recently_moved_first(spans, monkeypatch):
    monkeypatch.setattr(tracing, "REMEMBERED", 3)
    events = {rid: released(rid) for rid in ("a", "b", "c", "d")}
    for rid in ("a", "b", "c"):
        tracing.remember(events[rid], {"traceparent": PARENT})
    tracing.remember(events["a"], {"traceparent": PARENT})  # "a" moved again: "b" is now the oldest
    tracing.remember(events["d"], {"traceparent": PARENT})
    kept = {rid for rid, e in events.items() if tracing.headers_of(rid, e.event_id) is not None}
    assert kept == {"a", "c", "d"}


def test_off_costs_nothing_and_writes_nothing(off):
    headers = {"Nats-Msg-Id": "e1", "traceparent": PARENT}
    assert not tracing.enabled() and tracing.exporter() is None
    with tracing.decision_span("d", "r1", "e1", headers) as span:
        out: dict[str, str] = {}
        tracing.inject(out)
    assert span is None and out == {}
    event = released("r1")
    tracing.remember(event, headers)
    assert tracing.headers_of("r1", event.event_id) is None


def test_a_producer_without_a_provider_passes_a_valid_traceparent_on_verbatim(off, monkeypatch):
    monkeypatch.setenv("TRACEPARENT", PARENT)
    monkeypatch.setenv("TRACESTATE", STATE)
    with tracing.producer_span("kxr release request", "r1", "e1") as span:
        out: dict[str, str] = {}
        tracing.inject(out)
    assert span is None and out == {"traceparent": PARENT, "tracestate": STATE}
    after: dict[str, str] = {}
    tracing.inject(after)
    assert after == {}  # only inside the producer's block
    monkeypatch.setenv("TRACEPARENT", MALFORMED[2])
    with tracing.producer_span("kxr release request", "r1", "e1"):
        tracing.inject(out := {})
    assert out == {}


def test_a_producer_span_is_a_child_of_the_environment_traceparent(spans, monkeypatch):
    monkeypatch.setenv("TRACEPARENT", PARENT)
    monkeypatch.delenv("TRACESTATE", raising=False)
    with tracing.producer_span("kxr release request", "r1", "e1") as span:
        tracing.inject(out := {})
    finished = spans.get_finished_spans()[0]
    assert span is not None and finished.kind.name == "PRODUCER"
    assert f"{finished.parent.span_id:016x}" == SPAN_ID
    assert out["traceparent"] == f"00-{TRACE_ID}-{finished.context.span_id:016x}-01"


def test_event_ids_lists_what_outputs_append_in_order():
    actor = Actor(kind="service", id="t")
    a, b, c, d, e, pointer = (
        make_event("release.rejected", {"reasons": []}, actor=actor, release_id=f"r{n}") for n in range(6)
    )
    outputs = [Chain((a, b)), Timer("r.x", a.occurred_at), Atomic((ScopeWrite(pointer, 3),), (c,)), Promotion(d, e)]
    assert event_ids(outputs) == [a.event_id, b.event_id, pointer.event_id, c.event_id, d.event_id, e.event_id]
    assert event_ids([]) == []


def _python(code: str, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _env(**extra: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k not in ("TRACEPARENT",)}
    env.update(extra)
    return env


def test_without_an_endpoint_no_exporter_is_created_and_opentelemetry_is_not_even_loaded():
    code = (
        "import sys, json\n"
        "from services.observability import tracing\n"
        "from services.jetstream import log\n"
        "h = {}\n"
        "with tracing.decision_span('d', 'r1', 'e1', {'traceparent': PARENT}) as s:\n"
        "    tracing.inject(h)\n"
        "from events.codec import make_event\n"
        "from events.model import Actor\n"
        "e = make_event('release.rejected', {'reasons': []}, actor=Actor(kind='service', id='t'), release_id='r1')\n"
        "tracing.remember(e, {'traceparent': PARENT})\n"
        "print(json.dumps([tracing.enabled(), tracing.exporter() is None, s is None, h,\n"
        "    sorted(m for m in sys.modules if m.startswith('opentelemetry'))]))"
    ).replace("PARENT", repr(PARENT))
    out = _python(code, _env())
    assert json.loads(out) == [False, True, True, {}, []]


def test_with_an_endpoint_spans_are_exported_over_otlp_http():
    with otlp_collector() as collector:
        endpoint = collector.endpoint
        out = _python(
            "from services.observability import tracing\n"
            "with tracing.producer_span('kxr release request', 'r-otlp', 'e-otlp') as span:\n"
            "    pass\n"
            "print(type(tracing.exporter()).__name__, tracing.exporter()._endpoint, span is not None)",
            _env(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_SERVICE_NAME="kx-test", TRACEPARENT=PARENT),
        )
    assert out == f"OTLPSpanExporter {endpoint}/v1/traces True"
    assert len(collector.received) == 1  # the exit of the process flushed the batch
    export = collector.received[0]
    path, content_type, body = export.path, export.content_type, export.body
    assert (path, content_type) == ("/v1/traces", "application/x-protobuf")
    # the protobuf body names the span, its attributes, the service and the producer's trace id
    for part in (b"kxr release request", b"r-otlp", b"e-otlp", b"kx-test", bytes.fromhex(TRACE_ID)):
        assert part in body


def test_otel_sdk_disabled_wins_over_an_endpoint(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    tracing.reset()
    try:
        assert not tracing.enabled() and tracing.exporter() is None
    finally:
        tracing.reset()


def test_a_bad_otel_setting_turns_tracing_off_with_a_warning_never_an_error(monkeypatch, caplog):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "0")  # the SDK's BatchSpanProcessor raises ValueError
    tracing.reset()
    try:
        assert not tracing.enabled() and tracing.exporter() is None
        assert "tracing off" in caplog.text and "max_queue_size" in caplog.text
        with tracing.decision_span("d", "r1", "e1", {"traceparent": PARENT}) as span:
            tracing.inject(out := {})
        assert span is None and out == {}
    finally:
        tracing.reset()
