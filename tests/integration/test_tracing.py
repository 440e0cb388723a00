"""One release, one trace: the producer's W3C trace context through every consumer to the runtimes,
against a real nats-server, spans caught by OpenTelemetry's in-memory exporter. Header-only:
tracing changes no event byte and no signature."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan

from events.codec import decode_event, encode_event, make_event
from events.service_signing import ServiceKeys, signature_headers
from events.signing import SigningKey
from events.subjects import Subjects
from services.actions.producer import request_event
from services.jetstream.client import connect
from services.jetstream.layout import LayoutSettings, ensure_layout
from services.jetstream.log import Entry, EventLog
from services.jetstream.reader import OrderedReader
from services.observability import tracing
from services.settings import ROLES
from tests import otel_support
from tests.harness import CHANNEL, PRODUCER, make_pack, refuse_batches, request_data, running_service, wait_for
from tests.otel_support import otlp_collector, spans_provider

spans = otel_support.spans  # the fixture: tracing on, every finished span in memory

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CI_SPAN = "b7ad6b7169203331"  # the producer's CI job: the remote parent of the whole release
PARENT = f"00-{TRACE_ID}-{CI_SPAN}-01"
STATE = "ci=job-42,vendor=x"


def hex_span(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.span_id:016x}"


def hex_trace(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.trace_id:032x}"


async def stored(js, subjects: Subjects) -> list:
    reader = OrderedReader(js, subjects.releases_stream, subjects.log_subjects())
    try:
        return [entry async for entry in reader.read(follow=False)]
    finally:
        await reader.close()


async def test_a_release_requested_with_a_trace_context_is_one_connected_trace(nats_url, prefix, spans, monkeypatch):
    """Two stages on canary, then promotion: the linked release on stable continues the same trace."""
    monkeypatch.setenv("TRACEPARENT", PARENT)  # what a CI job exports for the tools it runs
    monkeypatch.setenv("TRACESTATE", STATE)
    async with running_service(nats_url, prefix) as svc:
        await svc.configure(channel="canary", config={**CHANNEL, "promote_to": "stable"})
        longer = {**CHANNEL["monitoring"], "window_s": 2}  # a promotion watches longer
        stable = {**CHANNEL, "cohorts": [{"name": "rest"}], "plan": [["rest"]], "monitoring": longer}
        await svc.configure(channel="stable", config=stable)
        pack = make_pack("1.0.0", svc.key)
        runtimes = [await svc.runtime("t-int-1"), await svc.runtime("tenant-42")]
        runtimes.append(await svc.runtime("tenant-42", channel="stable"))
        await svc.request("r1", pack, rollback={"strategy": "none"})
        release = await svc.wait_release("r1")
        assert release.outcome == "success", release.failure
        assert release.promoted is not None
        linked = release.promoted.promoted_to
        assert (await svc.wait_release(linked)).outcome == "success"
        switched = lambda: [s for s in spans.get_finished_spans() if s.name == "runtime switch"]  # noqa: E731
        await wait_for(lambda: len(switched()) == 3, 10, "the three runtimes' switch spans")
        entries = []
        for entry in await stored(svc.app.js, svc.app.subjects):
            event = decode_event(entry.data, entry.subject, svc.app.subjects)
            if event.release_id in ("r1", linked):
                entries.append((entry, event))

    releases = {"r1", linked}
    ours = [s for s in spans.get_finished_spans() if (s.attributes or {}).get(tracing.ATTR_RELEASE_ID) in releases]
    by_id = {hex_span(s): s for s in ours}
    names = {s.name for s in ours}
    assert {
        "kxr release request",
        "preparer decide",
        "distributor decide",
        "verifier decide",
        "activator decide",
        "monitor decide",
        "promoter decide",
        "runtime switch",
    } <= names, names
    assert {(s.attributes or {})[tracing.ATTR_RELEASE_ID] for s in ours if s.name == "activator decide"} == releases
    # one trace: the producer's; every span's parent is the CI job (the request only) or another span of it
    assert {hex_trace(s) for s in ours} == {TRACE_ID}
    roots = [s for s in ours if s.parent is not None and f"{s.parent.span_id:016x}" == CI_SPAN]
    assert [s.name for s in roots] == ["kxr release request"]
    for span in ours:
        assert span.parent is not None, span.name
        assert span in roots or f"{span.parent.span_id:016x}" in by_id, f"{span.name} hangs off no span of the trace"

    # every stored event of both releases (each event of the pointer batches too) names the span that
    # decided it, that span follows from the event that caused it, and the CI job's tracestate rides along
    pointers = 0
    for entry, event in entries:
        version, trace_id, parent_id, flags = entry.headers["traceparent"].split("-")
        assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
        assert entry.headers["tracestate"] == STATE
        decider = by_id[parent_id]
        if event.type == "release.requested" and event.release_id == "r1":
            assert decider.name == "kxr release request"
            continue
        assert event.event_id in (decider.attributes or {})[tracing.ATTR_EMITTED]
        if event.type == "release.requested":  # the linked release on stable: the promoter asked for it
            assert decider.name == "promoter decide" and (decider.attributes or {})[tracing.ATTR_RELEASE_ID] == "r1"
            continue
        cause = (decider.attributes or {})[tracing.ATTR_EVENT_ID]
        assert cause == event.causation_id  # the decision's span records the event it follows from
        assert decider.parent is not None
        causing = next(e for e, _ in entries if e.headers["Nats-Msg-Id"] == cause)
        assert causing.headers["traceparent"].split("-")[2] == f"{decider.parent.span_id:016x}"
        pointers += event.type == "scope.activated"
    assert pointers == 3  # one per cohort and channel, each in an atomic batch with its release event
    # a runtime's switch is a child of the activator span that wrote its pointer
    for span in switched():
        assert span.parent is not None and by_id[f"{span.parent.span_id:016x}"].name == "activator decide"
    assert all(rt.active and rt.active.digest == pack.digest for rt in runtimes)


async def test_a_fast_path_batch_the_server_refuses_leaves_no_span_naming_an_event_it_did_not_store(
    nats_url, prefix, spans, monkeypatch
):
    """The server refuses every batch that carries a `distributed` (injected at the commit). The preparer's
    decision is stored alone, and the later steps decided with it in the refused batch say so on their
    spans (`kx.not_stored`, no emitted ids); each stored event names one span that lists it. Before, those
    spans listed event ids that the log never held under them."""
    refuse_batches(monkeypatch, lambda subject: subject.endswith(".distributed"))
    async with running_service(nats_url, prefix) as svc:
        await svc.configure()
        await svc.runtime("t-int-1")
        await svc.request("r1", make_pack("1.0.0", svc.key), rollback={"strategy": "none"})
        await svc.wait_release("r1", "monitoring")
        ids = {
            decode_event(entry.data, entry.subject, svc.app.subjects).event_id: entry.headers
            for entry in await stored(svc.app.js, svc.app.subjects)
        }
    decisions = [
        s
        for s in spans.get_finished_spans()
        if s.name.endswith(" decide") and (s.attributes or {}).get(tracing.ATTR_RELEASE_ID) == "r1"
    ]
    refused = [s for s in decisions if tracing.ATTR_NOT_STORED in (s.attributes or {})]
    # the preparer's batch (distributor, verifier, activator after it) and the distributor's own (verifier,
    # activator after it) were refused: their later parts say so
    assert sorted(s.name for s in refused) == sorted(
        ["distributor decide", "verifier decide", "activator decide", "verifier decide", "activator decide"]
    ), [(s.name, s.attributes) for s in decisions]
    for span in refused:
        assert list((span.attributes or {})[tracing.ATTR_EMITTED]) == [], span.attributes
        assert "injected: batch refused" in str((span.attributes or {})[tracing.ATTR_NOT_STORED])
    for span in decisions:
        for event_id in (span.attributes or {}).get(tracing.ATTR_EMITTED) or ():
            assert event_id in ids, f"{span.name} lists {event_id}, which the log does not hold"
            assert ids[event_id]["traceparent"].split("-")[2] == hex_span(span), (span.name, event_id)


async def test_tracing_changes_headers_only_never_the_event_bytes_or_signatures(nats_url, prefix, spans):
    """The same events appended (one by one and as an atomic batch) with tracing and without: the
    stored bytes are identical and each signature is the one the untraced writer makes."""
    nc = await connect(nats_url, name="test-trace-bytes")
    signer = SigningKey.generate()
    keys = ServiceKeys.of(signer, list(ROLES))
    pack = make_pack("1.0.0", SigningKey.generate())
    requested = request_event("rb", request_data(pack), PRODUCER)
    rejected = make_event("release.rejected", {"reasons": []}, actor=PRODUCER, release_id="rb")
    later = make_event("release.rejected", {"reasons": []}, actor=PRODUCER, release_id="rb2")
    first = make_event("release.rejected", {"reasons": []}, actor=PRODUCER, release_id="rb3")
    runs = {}
    try:
        for name, traced in (("traced", True), ("plain", False)):
            subjects = Subjects(f"{prefix}{name[0]}")
            js = nc.jetstream()
            await ensure_layout(js, subjects, LayoutSettings())
            log = EventLog(nc, js, subjects, signer=signer)
            tracing.use_provider(spans_provider(spans) if traced else None)
            with tracing.decision_span("writer", "rb", None, {"traceparent": PARENT}):
                await log.append(log.release_entry(requested, 0))
                await log.append(Entry(rejected))
                await log.commit_batch([Entry(first), Entry(later)])
            runs[name] = (subjects, await stored(js, subjects))
    finally:
        await nc.close()
    (traced_subjects, traced), (plain_subjects, plain) = runs["traced"], runs["plain"]
    assert len(traced) == len(plain) == 4
    for t, p in zip(traced, plain, strict=True):
        assert t.data == p.data  # the same bytes
        event = decode_event(t.data, t.subject, traced_subjects)
        assert t.data == encode_event(event)
        # each signature is exactly what an untraced writer makes over (subject, bytes), and verifies
        assert {k: t.headers[k] for k in ("Kx-Signer", "Kx-Signature")} == signature_headers(signer, t.subject, t.data)
        assert {k: p.headers[k] for k in ("Kx-Signer", "Kx-Signature")} == signature_headers(signer, p.subject, p.data)
        assert keys.check("preparer", t.subject, t.data, t.headers) is None
        # the headers differ by the trace context only
        assert t.headers["traceparent"].split("-")[1] == TRACE_ID and "traceparent" not in p.headers
        rest = {k: v for k, v in t.headers.items() if k not in ("traceparent", "Kx-Signature")}
        same = {k: v.replace(plain_subjects.prefix, traced_subjects.prefix) for k, v in p.headers.items()}
        assert rest == {k: v for k, v in same.items() if k != "Kx-Signature"}


async def test_kxr_release_request_carries_the_ci_trace_context(nats_url, prefix, tmp_path):
    """`kxr release request` under a CI job's TRACEPARENT: without an endpoint the context is passed on
    verbatim (no span); with one, the request is a span of that trace, exported, and its own context
    is what the stored event carries. The CLI is the real console script."""
    subjects = Subjects(prefix)
    nc = await connect(nats_url, name="test-trace-cli")
    js = nc.jetstream()
    await ensure_layout(js, subjects, LayoutSettings())
    pack = make_pack("1.0.0", SigningKey.generate())
    (tmp_path / "m.json").write_bytes(pack.manifest)
    stack = ExitStack()
    collector = stack.enter_context(otlp_collector())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KX_", "OTEL_"))}
    env.update({"KX_PREFIX": prefix, "KX_NATS_URL": nats_url, "TRACEPARENT": PARENT, "TRACESTATE": STATE})
    try:
        for release_id, extra in (("plain", {}), ("traced", {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint})):
            args = ["release", "request", release_id, "--manifest", "m.json", "--target", "prod/canary"]
            args += ["--owner", "kb-team", "--escalation", "pager:kb"]
            done = await asyncio.to_thread(
                subprocess.run,
                [str(Path(sys.executable).parent / "kxr"), *args],
                cwd=tmp_path,
                env={**env, **extra},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
        entries = {decode_event(e.data, e.subject, subjects).release_id: e for e in await stored(js, subjects)}
    finally:
        await nc.close()
        stack.close()
    assert {k: entries["plain"].headers.get(k) for k in ("traceparent", "tracestate")} == {
        "traceparent": PARENT,
        "tracestate": STATE,
    }
    version, trace_id, span_id, flags = entries["traced"].headers["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01") and span_id != CI_SPAN
    assert entries["traced"].headers["tracestate"] == STATE
    [export] = collector.received  # one export, from the traced request only, flushed at exit
    assert export.path == "/v1/traces"
    for part in (b"kxr release request", b"traced", bytes.fromhex(span_id), bytes.fromhex(CI_SPAN)):
        assert part in export.body
