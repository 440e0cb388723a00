"""OpenTelemetry test parts shared by the tracing tests: spans caught in memory, and an OTLP/HTTP
endpoint on localhost that keeps what it is sent."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.observability import tracing


def spans_provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the test, every finished span in the exporter; off again afterwards."""
    exporter = InMemorySpanExporter()
    tracing.use_provider(spans_provider(exporter))
    yield exporter
    tracing.reset()


@dataclass
class Export:
    path: str
    content_type: str
    body: bytes


@dataclass
class Collector:
    endpoint: str
    received: list[Export] = field(default_factory=list)


@contextmanager
def otlp_collector() -> Iterator[Collector]:
    """An OTLP/HTTP endpoint (`collector.endpoint`) recording every export it is sent."""
    collector = Collector("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            collector.received.append(Export(self.path, self.headers["Content-Type"], body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    collector.endpoint = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield collector
    finally:
        server.shutdown()
        thread.join()
