"""Trace context end to end: W3C `traceparent`/`tracestate` in NATS headers, OpenTelemetry spans.

One release is one trace. A producer may set `traceparent` (and `tracestate`) on its
`release.requested` (`kxr release request` takes them from the `TRACEPARENT`/`TRACESTATE`
environment variables, OpenTelemetry's carrier for processes); every consumer decision on
the release is a span whose parent is the trace context of the event the decision follows
from (the release's last event, its `causation_id`), and every event the decision appends
(each event of an atomic batch, the scope pointers too) carries the decision's own
`traceparent`. A runtime's switch is a span under the pointer's.

Header-only: the event bytes and their signatures (over subject and payload) are the same
with or without tracing. The headers are optional; a malformed `traceparent` is ignored
(the decision starts a new trace), never an error. Parsing follows W3C Trace Context
(OpenTelemetry's propagator: lowercase hex, no all-zero ids, version `ff` invalid, a later
version's extra fields ignored); the header name is matched case-insensitively, since
NATS header names are not canonicalised.

Tracing is on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set: spans go
to that OTLP/HTTP endpoint (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` and the other
exporter variables apply). Unset, nothing is created or imported and every hook here costs
one check of a module flag. `use_provider` hands spans to any SDK TracerProvider instead
(the tests use the in-memory exporter).
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from events.model import Event

if TYPE_CHECKING:  # imported only when tracing is used: `kxr` without it never loads OpenTelemetry
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer, TracerProvider

log = logging.getLogger(__name__)
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
TRACE_HEADERS = (TRACEPARENT, TRACESTATE)
ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
DEFAULT_SERVICE_NAME = "konnaxion-releases"
INSTRUMENTATION = "konnaxion-releases"
REMEMBERED = 20_000  # releases whose latest trace context is kept for the decisions that follow from it

ATTR_RELEASE_ID = "kx.release_id"
ATTR_EVENT_ID = "kx.event_id"  # the event the decision follows from (its causation)
ATTR_EMITTED = "kx.emitted_event_ids"
# a fast-path decision whose batch the server did not store (the first step's events were stored alone):
# why, and its emitted ids are then empty (its own consumer decides again, under a span of its own)
ATTR_NOT_STORED = "kx.not_stored"


class _State:
    def __init__(
        self, tracer: Tracer | None = None, provider: TracerProvider | None = None, exporter: object = None
    ) -> None:
        self.tracer = tracer
        self.provider = provider
        self.exporter = exporter  # the OTLP exporter, when configured from the environment


_OFF = _State()
_state: _State | None = None  # None: not decided yet (the environment is read on first use)
# release id -> (its latest event's id, traceparent, tracestate) as stored
_traces: dict[str, tuple[str, str, str | None]] = {}
# headers passed on verbatim by a producer that records no spans itself (no provider)
_carried: ContextVar[dict[str, str] | None] = ContextVar("kx_trace_carried", default=None)


# -- set-up -------------------------------------------------------------------------------------------
def enabled() -> bool:
    """Is a tracer provider configured (from the environment on first use, or `use_provider`)?"""
    return _tracer() is not None


def _tracer() -> Tracer | None:
    state = _state
    if state is None:
        state = _configure_from_env()
    return state.tracer


def _configure_from_env() -> _State:
    global _state
    endpoint = any(os.environ.get(var) for var in ENDPOINT_VARS)
    disabled = os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    if not endpoint or disabled:
        _state = _OFF
        return _state
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        named = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
        resource = Resource.create({} if named else {"service.name": DEFAULT_SERVICE_NAME})
        provider = SdkTracerProvider(resource=resource)
        exporter = OTLPSpanExporter()  # endpoint, headers, timeout, compression: from the environment
        provider.add_span_processor(BatchSpanProcessor(exporter))
    except Exception as exc:  # tracing is an aid: a bad OTEL_* setting must never stop the service
        log.warning("tracing off: OpenTelemetry could not be set up from the environment: %r", exc)
        _state = _OFF
        return _state
    atexit.register(provider.shutdown)  # a short-lived `kxr release request` still sends its span
    _state = _State(provider.get_tracer(INSTRUMENTATION), provider, exporter)
    return _state


def use_provider(provider: TracerProvider | None) -> None:
    """Spans go to `provider` from now on (None: tracing off, whatever the environment says)."""
    global _state
    _traces.clear()
    _state = _OFF if provider is None else _State(provider.get_tracer(INSTRUMENTATION), provider)


def reset() -> None:
    """Forget the configuration: the environment is read again on next use (tests)."""
    global _state
    _state = None
    _traces.clear()


def exporter() -> object:
    """The OTLP exporter configured from the environment (None: none was created)."""
    return None if _state is None else _state.exporter


# -- W3C trace context over NATS header dicts --------------------------------------------------------
def trace_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The `traceparent`/`tracestate` of a NATS header dict (names matched case-insensitively), as sent."""
    if not headers:
        return {}
    out = {name: headers[name] for name in TRACE_HEADERS if name in headers}
    if len(out) < 2:
        for key, value in headers.items():
            lower = key.lower()
            if lower in TRACE_HEADERS and lower not in out:
                out[lower] = value
    return out


class _Otel:
    """OpenTelemetry's pieces, imported and built once, on first use (never when tracing is off)."""

    def __init__(self) -> None:
        from opentelemetry import trace
        from opentelemetry.context import Context
        from opentelemetry.propagators.textmap import Getter
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        class HeaderGetter(Getter[Mapping[str, str]]):
            def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
                value = carrier.get(key)
                return None if value is None else [value]

            def keys(self, carrier: Mapping[str, str]) -> list[str]:
                return list(carrier)

        self.trace = trace
        self.Context = Context
        self.SpanKind = SpanKind
        self.propagator = TraceContextTextMapPropagator()
        self.getter = HeaderGetter()


_otel_parts: _Otel | None = None


def _otel() -> _Otel:
    global _otel_parts
    if _otel_parts is None:
        _otel_parts = _Otel()
    return _otel_parts


def extract(headers: Mapping[str, str] | None) -> Context | None:
    """The remote parent a header dict names, or None (no `traceparent`, or a malformed one)."""
    found = trace_headers(headers)
    if TRACEPARENT not in found:
        return None
    otel = _otel()
    context = otel.propagator.extract(found, getter=otel.getter)  # `found` has lower-case names
    return context if otel.trace.get_current_span(context).get_span_context().is_valid else None


def valid_trace_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """`traceparent` (and `tracestate`) re-encoded from a valid parent; {} if none or malformed."""
    context = extract(headers)
    if context is None:
        return {}
    out: dict[str, str] = {}
    _otel().propagator.inject(out, context=context)
    return out


# event id -> the trace headers of the span that decided it, where several decisions' events are stored
# together (the fast path's batch: services/consumers/reactor.py), so each names its own decision
_decided_by: ContextVar[Mapping[str, dict[str, str]] | None] = ContextVar("kx_decided_by", default=None)


@contextmanager
def decided_by(spans: Mapping[str, dict[str, str]]) -> Iterator[None]:
    """Within it, an event in `spans` is appended with the trace headers given there for it."""
    token = _decided_by.set(spans)
    try:
        yield
    finally:
        _decided_by.reset(token)


def current_headers() -> dict[str, str]:
    """The current span's trace headers (what `inject` adds), as a new dict."""
    headers: dict[str, str] = {}
    inject(headers)
    return headers


def inject(headers: dict[str, str], event_id: str | None = None) -> None:
    """Add the current span's `traceparent`/`tracestate` to an outgoing NATS header dict; for an
    event some other decision of the same write decided (`decided_by`), that decision's."""
    chosen = (_decided_by.get() or {}).get(event_id or "")
    if chosen:
        headers.update(chosen)
        return
    if _tracer() is None:
        carried = _carried.get()
        if carried:
            headers.update(carried)
        return
    otel = _otel()
    if otel.trace.get_current_span().get_span_context().is_valid:
        otel.propagator.inject(headers)


# -- what decisions follow from ---------------------------------------------------------------------
def remember(event: Event, headers: Mapping[str, str] | None) -> None:
    """Keep the trace context a release's latest event was stored with (a follower calls this for
    each event it folds), so the decision that follows from it, triggered by a message or by a
    reconcile round, minutes later or not, can be its child. One entry per release, the least
    recently moved dropped first beyond REMEMBERED releases."""
    if not headers or _tracer() is None or event.release_id is None or not event.type.startswith("release."):
        return
    found = trace_headers(headers)
    parent = found.get(TRACEPARENT)
    if parent is None:
        _traces.pop(event.release_id, None)  # its latest event has none: nothing to follow from
        return
    _traces.pop(event.release_id, None)  # re-inserted last: the dict's order is least recently moved first
    if len(_traces) >= REMEMBERED:
        del _traces[next(iter(_traces))]
    _traces[event.release_id] = (event.event_id, parent, found.get(TRACESTATE))


def headers_of(release_id: str, event_id: str | None) -> dict[str, str] | None:
    """The trace headers the release's event `event_id` was stored with, if it is the one remembered."""
    found = _traces.get(release_id)
    if found is None or found[0] != event_id:
        return None
    _, parent, state = found
    return {TRACEPARENT: parent} if state is None else {TRACEPARENT: parent, TRACESTATE: state}


# -- spans ---------------------------------------------------------------------------------------------
_NO_SPAN: nullcontext[None] = nullcontext()


def decision_span(
    name: str,
    release_id: str | None,
    event_id: str | None,
    parent_headers: Mapping[str, str] | None,
    start_ns: int | None = None,
) -> Any:
    """A context manager: the span of one decision, child of the trace context in `parent_headers`
    (a new trace when they carry none, or a malformed one); it yields the span, or None when
    tracing is off (then it costs one check). Events appended inside it carry its `traceparent`.
    `start_ns`: when the decision began (epoch ns), if before the span is opened."""
    if _tracer() is None:
        return _NO_SPAN
    return _span(name, release_id, event_id, parent_headers, "consumer", start_ns)


@contextmanager
def producer_span(name: str, release_id: str | None, event_id: str | None) -> Iterator[Span | None]:
    """A producer's span (`kxr release request`), child of `TRACEPARENT`/`TRACESTATE` from the
    environment if valid. Without a provider no span is recorded, but a valid `TRACEPARENT` is
    still passed on verbatim, so the producer's CI trace reaches the service."""
    carrier = {TRACEPARENT: os.environ.get("TRACEPARENT", ""), TRACESTATE: os.environ.get("TRACESTATE", "")}
    carrier = {k: v for k, v in carrier.items() if v}
    if not enabled():
        token = _carried.set(valid_trace_headers(carrier) or None)
        try:
            yield None
        finally:
            _carried.reset(token)
        return
    with _span(name, release_id, event_id, carrier, "producer") as span:
        yield span


@contextmanager
def _span(
    name: str,
    release_id: str | None,
    event_id: str | None,
    parent_headers: Mapping[str, str] | None,
    kind: str,
    start_ns: int | None = None,
) -> Iterator[Span]:
    otel = _otel()
    tracer = _tracer()
    assert tracer is not None
    attrs: dict[str, str] = {}
    if release_id:
        attrs[ATTR_RELEASE_ID] = release_id
    if event_id:
        attrs[ATTR_EVENT_ID] = event_id
    parent = extract(parent_headers) or otel.Context()  # never the ambient context: no parent is a new trace
    span_kind = otel.SpanKind.PRODUCER if kind == "producer" else otel.SpanKind.CONSUMER
    with tracer.start_as_current_span(
        name, context=parent, kind=span_kind, attributes=attrs, start_time=start_ns
    ) as span:
        yield span
