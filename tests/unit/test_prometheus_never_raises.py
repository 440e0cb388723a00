"""services/reads/prometheus.py promises "Nothing here raises for a query that fails: an unreachable
server, a timeout, an error or an answer that is not Prometheus' API becomes a QueryAnswer without a
figure, saying why". Two inputs escaped it and raised out of `ask_all` (an outside review found them):
- a channel URL that passes `kxr channel set` (PROMETHEUS_URL pattern) but that httpx cannot parse
  (a typo'd port, `http://prometheus:9O90`): httpx.InvalidURL is not an httpx.HTTPError;
- an answer that is deeply nested JSON (any garbage server / proxy): json.loads raises RecursionError,
  which is not a ValueError.
The monitor then recorded the window as "health samples could not be read: ..." with no `queries`
evidence (README: "no data from Prometheus query <name>: <why>", `queries` records query and answer)."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from events.channel import PrometheusSource, prometheus_problems
from events.thresholds import Thresholds
from services.monitoring.prometheus import Asked
from services.reads.prometheus import ask_all

THRESHOLDS = Thresholds(queue_depth_max=10)


def _ask(url: str):
    source = PrometheusSource(url=url, queries={"queue_depth": "max(queue_depth)"}, timeout_s=3)
    assert prometheus_problems(source, THRESHOLDS) == []  # `kxr channel set` accepts this channel
    asked = [Asked("queue_depth", "max(queue_depth)", datetime.now(UTC))]
    return asyncio.run(ask_all(source, asked, THRESHOLDS, None))


def test_a_url_httpx_cannot_parse_is_an_unreachable_query_not_an_exception() -> None:
    (answer,) = _ask("http://prometheus:9O90")
    assert answer.value is None and answer.status in ("unreachable", "invalid", "error")


class _Deep(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"[" * 200_000
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def deep_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Deep)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_deeply_nested_answer_is_an_invalid_answer_not_an_exception(deep_server) -> None:
    (answer,) = _ask(deep_server)
    assert answer.value is None and answer.status == "invalid"
