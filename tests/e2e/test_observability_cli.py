"""`kxr serve --only notifier --metrics ADDR`: JSON log lines on a pipe, /metrics over HTTP, one-line config errors."""

from __future__ import annotations

import json
import signal
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.jetstream.embedded import free_port

from .support import assert_one_line_error, stderr_lines

pytestmark = pytest.mark.e2e
LOG_KEYS = {"ts", "level", "logger", "message", "release_id", "event_id"}


def consumers_with_lag(url: str) -> set[str]:
    try:
        text = httpx.get(url, timeout=2).text
    except httpx.HTTPError:
        return set()
    return {
        s.labels["consumer"]
        for f in text_string_to_metric_families(text)
        if f.name == "kx_consumer_pending_messages"
        for s in f.samples
    }


def test_serve_only_the_notifier_logs_json_on_a_pipe_and_serves_metrics(kx):
    port = free_port()
    serve = kx.serve("--only", "notifier", "--metrics", f"127.0.0.1:{port}").wait_ready()
    url = f"http://127.0.0.1:{port}/metrics"
    deadline = time.monotonic() + 20
    while "kxr-notifier" not in consumers_with_lag(url):
        assert serve.proc.poll() is None, serve.stderr()
        assert time.monotonic() < deadline, f"/metrics never showed the notifier's consumer:\n{serve.stderr()}"
        time.sleep(0.1)
    serve.signal(signal.SIGTERM)
    assert serve.proc.wait(timeout=10) == 0, serve.stderr()
    lines = [json.loads(line) for line in stderr_lines(serve.stderr())]  # every line one JSON object
    assert lines and all(set(line) >= LOG_KEYS for line in lines), lines
    ready = [line for line in lines if line["message"].startswith("kxr serve: notifier running against")]
    assert len(ready) == 1 and f"metrics on http://127.0.0.1:{port}/metrics" in ready[0]["message"]


@pytest.mark.parametrize(
    "env, args, expect",
    [
        ({"KX_METRICS_ADDR": "nonsense"}, [], "HOST:PORT"),
        ({}, ["--metrics", "127.0.0.1:99999"], "HOST:PORT"),
        ({"KX_LOG_FORMAT": "yaml"}, [], "KX_LOG_FORMAT"),
    ],
)
def test_bad_observability_settings_exit_non_zero_with_one_line(kx, env, args, expect):
    result = kx.run("serve", *args, env=kx.env(**env), timeout=15)
    assert assert_one_line_error(result, expect).startswith("kxr: error:")
