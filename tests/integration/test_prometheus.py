"""Prometheus as a monitoring source, against a real Prometheus and a real nats-server (issue 17).

One Prometheus per module (Debian's `prometheus`, /usr/bin/prometheus, installed by .ci/run)
scrapes an exporter this module runs (prometheus_client) every 200 ms. Each test sets the
exporter's gauges for its pack's digest, requests a release on a one-stage channel with a
2 s window and reads the verdict: passed, failed on a breached threshold, inconclusive on a
query error, an empty result, a NaN, a server that is down or one that does not answer.
The evidence record read back from the log holds each query as sent and its answer.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from events.channel import PrometheusSource
from events.thresholds import Thresholds
from services.jetstream.log_reads import load_evidence
from services.monitoring.prometheus import Place, queries_for
from services.reads.prometheus import ask_all
from tests.harness import CHANNEL, make_pack, running_service, wait_for

PROMETHEUS = "/usr/bin/prometheus"
LABELS = ("env", "channel", "cohort", "digest")
SELECT = 'env="{env}",channel="{channel}",cohort=~"{cohort}",digest="{digest}"'
QUERIES = {
    "error_rate": "max(max_over_time(kx_test_error_ratio{" + SELECT + "}[{window}]))",
    "latency_p99_ms": "max(max_over_time(kx_test_latency_p99_ms{" + SELECT + "}[{window}]))",
    "queue_depth": "max(kx_test_queue_depth{" + SELECT + "})",
}
THRESHOLDS = {"error_rate_max": 0.05, "latency_p99_ms_max": 400, "queue_depth_max": 10}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Exporter:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.gauges = {
            name: Gauge(name, name, LABELS, registry=self.registry)
            for name in ("kx_test_error_ratio", "kx_test_latency_p99_ms", "kx_test_queue_depth")
        }
        self.port = free_port()
        self.server, self.thread = start_http_server(self.port, "127.0.0.1", registry=self.registry)

    def set(self, digest: str, *, error: float, p99: float, queue: float, cohort: str = "all") -> None:
        labels = {"env": "prod", "channel": "canary", "cohort": cohort, "digest": digest}
        self.gauges["kx_test_error_ratio"].labels(**labels).set(error)
        self.gauges["kx_test_latency_p99_ms"].labels(**labels).set(p99)
        self.gauges["kx_test_queue_depth"].labels(**labels).set(queue)


def query(url: str, promql: str) -> dict:
    with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}", timeout=5) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def exporter():
    exp = Exporter()
    yield exp
    exp.server.shutdown()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory, exporter) -> str:
    """A real Prometheus scraping the exporter; its base URL."""
    if not Path(PROMETHEUS).exists():
        found = shutil.which("prometheus")
        pytest.fail(
            f"{PROMETHEUS} not found ({'found ' + found if found else 'not on PATH either'}): "
            "install Debian's prometheus package (`apt-get install prometheus`, as .ci/run does)",
            pytrace=False,
        )
    home = tmp_path_factory.mktemp("prometheus")
    (home / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 200ms\n  scrape_timeout: 150ms\n"
        "scrape_configs:\n  - job_name: kx-test\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{exporter.port}']\n"
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (home / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={home / 'prometheus.yml'}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # ready, and the exporter scraped at least once
            if proc.poll() is not None:
                pytest.fail(
                    f"prometheus exited with {proc.returncode}: {(home / 'prometheus.log').read_text()[-2000:]}"
                )
            try:
                if query(url, 'up{job="kx-test"} == 1')["data"]["result"]:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"prometheus not scraping the exporter after 30 s: {(home / 'prometheus.log').read_text()[-2000:]}"
                )
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def channel(url: str, queries: dict | None = None, timeout_s: float = 2.0) -> dict:
    return {
        **CHANNEL,
        "cohorts": [{"name": "all"}],
        "plan": None,
        "monitoring": {
            "window_s": 2,
            "min_samples": 1,
            "thresholds": {**THRESHOLDS, "new_error_classes": "ignore", "statistical": "off"},
            "prometheus": {"url": url, "timeout_s": timeout_s, "queries": queries or QUERIES},
        },
    }


async def verdict_of(svc, release_id: str):
    found = await wait_for(
        # a release that closed without a window fails here at once, saying why
        lambda: (release := svc.world.release(release_id)) is not None and (release.verdicts or release.outcome),
        30,
        f"a verdict on {release_id}",
        lambda: svc.world.release(release_id),
    )
    assert not isinstance(found, str), f"{release_id} closed without a verdict: {svc.world.release(release_id).failure}"
    return found[0]


async def scraped(url: str, digest: str) -> None:
    """Until Prometheus holds the gauges set for `digest` (a window then sees them from its start)."""
    await wait_for(lambda: query(url, f'kx_test_queue_depth{{digest="{digest}"}}')["data"]["result"], 10, "the scrape")


async def test_a_window_judged_from_prometheus_passes_then_fails_and_the_evidence_holds_every_query(
    nats_url, prefix, prometheus, exporter
):
    async with running_service(nats_url, prefix) as svc:
        await svc.configure(config=channel(prometheus))
        await svc.runtime("t-1")  # healthy runtime samples: only Prometheus can fail the second release
        good, bad = make_pack("1.0.0", svc.key), make_pack("1.1.0", svc.key)
        exporter.set(good.digest, error=0.01, p99=120, queue=3)
        exporter.set(bad.digest, error=0.20, p99=130, queue=4)
        await scraped(prometheus, bad.digest)

        await svc.request("r1", good, rollback={"strategy": "none"})
        kind, verdict = await verdict_of(svc, "r1")
        assert kind == "monitoring_passed", verdict.reason
        assert "3 Prometheus queries" in verdict.reason
        values = {q.name: q.value for q in verdict.queries}
        assert values == {"error_rate": 0.01, "latency_p99_ms": 120.0, "queue_depth": 3.0}
        assert all(
            q.status == "success" and q.at == svc.world.release("r1").monitoring.ends_at for q in verdict.queries
        )
        (err,) = [q for q in verdict.queries if q.name == "error_rate"]
        assert f'digest="{good.digest}"' in err.query and "[2s]" in err.query and 'cohort=~"all"' in err.query
        assert (await svc.wait_release("r1")).outcome == "success"

        await svc.request("r2", bad)
        kind, verdict = await verdict_of(svc, "r2")
        assert kind == "monitoring_failed", verdict.reason
        assert "prometheus.error_rate 0.2 breaches <= 0.05" in verdict.reason
        (c,) = [c for c in verdict.comparisons if c.metric == "prometheus.error_rate"]
        assert (c.value, c.ok) == (0.2, False)
        assert [c for c in verdict.comparisons if c.metric == "error_rate"][0].ok  # the runtimes were healthy
        assert (await svc.wait_release("r2")).outcome == "rolled_back"

        record = (await load_evidence(svc.app.js, svc.app.subjects, "r2")).to_json()
        (window,) = record["windows"]
        assert window["verdict"]["result"] == "failed"
        asked = {q["name"]: q for q in window["verdict"]["queries"]}
        assert set(asked) == set(QUERIES)
        assert asked["error_rate"]["result"] == [{"metric": {}, "value": "0.2"}]
        assert f'digest="{bad.digest}"' in asked["queue_depth"]["query"]


async def test_a_query_error_an_empty_result_or_nan_is_no_data_and_holds_the_window(
    nats_url, prefix, prometheus, exporter
):
    queries = {
        "error_rate": "sum(kx_test_error_ratio{" + SELECT + "}",  # unbalanced: Prometheus refuses to parse it
        "latency_p99_ms": 'max(kx_test_latency_p99_ms{digest="sha256:nothing-has-this"})',  # no series
        "queue_depth": "max(kx_test_queue_depth{" + SELECT + "})",  # the exporter says NaN
    }
    async with running_service(nats_url, prefix) as svc:
        await svc.configure(config=channel(prometheus, queries))
        await svc.runtime("t-1")
        pack = make_pack("1.0.0", svc.key)
        exporter.set(pack.digest, error=0.0, p99=100, queue=math.nan)
        await scraped(prometheus, pack.digest)
        await svc.request("r1", pack, rollback={"strategy": "none"})
        kind, verdict = await verdict_of(svc, "r1")
        assert kind == "monitoring_inconclusive", verdict.reason
        assert "no data from Prometheus query error_rate: error: bad_data" in verdict.reason
        assert "no data from Prometheus query latency_p99_ms: empty result" in verdict.reason
        assert "no data from Prometheus query queue_depth: non-finite value NaN" in verdict.reason
        assert all(q.value is None for q in verdict.queries)
        assert (await svc.wait_release("r1", "held")).stage == 0  # never passed, held for an operator


async def test_prometheus_down_is_no_data_and_holds_the_window(nats_url, prefix, prometheus, exporter):
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with running_service(nats_url, prefix) as svc:
        await svc.configure(config=channel(down))
        await svc.runtime("t-1")
        pack = make_pack("1.0.0", svc.key)
        await svc.request("r1", pack, rollback={"strategy": "none"})
        kind, verdict = await verdict_of(svc, "r1")
        assert kind == "monitoring_inconclusive", verdict.reason
        for name in QUERIES:
            assert f"no data from Prometheus query {name}: unreachable" in verdict.reason
        assert {q.status for q in verdict.queries} == {"unreachable"}
        await svc.wait_release("r1", "held")


async def test_a_prometheus_that_does_not_answer_times_out_as_no_data():
    async def silent(reader, writer):  # accepts, reads, never answers
        await reader.read(65536)
        await asyncio.sleep(30)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        source = PrometheusSource(url=f"http://127.0.0.1:{port}", timeout_s=0.5, queries={"error_rate": "vector(0)"})
        asked = queries_for(source, Place("prod", "canary", ("all",), "sha256:x", 2), datetime.now(UTC))
        started = time.monotonic()
        (answer,) = await ask_all(source, asked, Thresholds(error_rate_max=0.05), None)
        assert time.monotonic() - started < 3
        assert (answer.status, answer.value) == ("timeout", None)
        assert "within 0.5s" in (answer.no_data or "")
    finally:
        server.close()


async def test_hostile_label_values_stay_label_values_for_a_real_prometheus(prometheus):
    """The escaping holds for Prometheus' own parser: an injection attempt is one label value, matching nothing."""
    source = PrometheusSource(queries={"error_rate": 'count(kx_test_error_ratio{env="{env}",digest="{digest}"})'})
    hostile = Place('prod"} or vector(1) or {x="', "canary", ("all",), 'd\\"', 2)
    (answer,) = await ask_all(source, queries_for(source, hostile, datetime.now(UTC)), Thresholds(), prometheus)
    assert answer.status == "success", answer.no_data  # it parsed
    assert answer.series == 0 and answer.no_data == "empty result: no series matched"  # and matched nothing
    # the KX_PROMETHEUS_URL fallback is what answered: the source names no url
    none = await ask_all(source, queries_for(source, hostile, datetime.now(UTC)), Thresholds(), None)
    assert none[0].status == "not_configured"


async def test_the_evaluation_time_is_the_windows_end(prometheus, exporter):
    """An instant query at a time before the exporter had the series finds nothing: the time is sent."""
    source = PrometheusSource(url=prometheus, queries={"queue_depth": "max(kx_test_queue_depth)"})
    exporter.set("sha256:clock", error=0, p99=1, queue=1)
    await wait_for(lambda: query(prometheus, "max(kx_test_queue_depth)")["data"]["result"], 10, "the scrape")
    place = Place("prod", "canary", ("all",), "sha256:clock", 2)
    long_ago = datetime(2020, 1, 1, tzinfo=UTC)
    (then,) = await ask_all(source, queries_for(source, place, long_ago), Thresholds(queue_depth_max=5), None)  # type: ignore[call-arg]
    (now,) = await ask_all(source, queries_for(source, place, datetime.now(UTC)), Thresholds(queue_depth_max=5), None)  # type: ignore[call-arg]
    assert then.no_data == "empty result: no series matched" and then.at == long_ago
    assert now.value is not None
