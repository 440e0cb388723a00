"""Metrics, structured logs and webhook notifications, against a real service run."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import httpx
from prometheus_client.parser import text_string_to_metric_families

from events.notifications import KIND_OF_EVENT
from services.consumers.notifier.consumer import Notifier
from services.consumers.notifier.signing import verify
from services.consumers.notifier.webhook import SIGNATURE_HEADER, signature
from services.jetstream.log_reads import load_evidence, log_entries
from services.observability.endpoint import serve_metrics
from services.observability.logs import JsonFormatter
from services.reads.audit import replay
from tests.harness import CHANNEL, Behaviour, make_pack, running_service, wait_for
from tests.integration.webhook_server import WebhookServer

SECRET_ENV = "KX_TEST_WEBHOOK_SECRET"
LIFECYCLE = {
    "kxr-preparer",
    "kxr-distributor",
    "kxr-verifier",
    "kxr-activator",
    "kxr-monitor",
    "kxr-promoter",
    "kxr-notifier",
}
RELEASE_LEVEL = (
    "kx_log_events",
    "kx_releases_closed",
    "kx_gate_failures",
    "kx_rollbacks_started",
    "kx_release_holds",
    "kx_release_escalations",
    "kx_notifications",
    "kx_activation_latency_seconds",
)


async def scrape(url: str) -> dict[str, dict[tuple, float]]:
    """family name -> {(sample name, sorted labels): value}, parsed by prometheus_client's own parser."""
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    assert response.status_code == 200, response.text
    families: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.text):
        families[family.name] = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
    return families


async def scrape_when(url: str, ready, what: str) -> dict[str, dict[tuple, float]]:
    latest: dict = {}

    async def probe():
        latest.update(await scrape(url))
        return ready(latest)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while not await probe():
        assert loop.time() < deadline, f"metrics never showed {what}: {latest}"
        await asyncio.sleep(0.1)
    return latest


def value(families, family: str, sample: str | None = None, **labels) -> float:
    return families[family].get((sample or f"{family}_total", tuple(sorted(labels.items()))), 0.0)


def history_of(app):
    """The log from its start, as `kxr serve` hands it to the metrics endpoint."""
    return lambda: log_entries(app.js, app.subjects)


async def log_events(svc, filters=None):
    return [e async for _, _, e in log_entries(svc.app.js, svc.app.subjects, filters) if e is not None]


async def test_a_release_run_is_measured_logged_and_notified(nats_url, prefix, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    handler.setFormatter(JsonFormatter())
    services_log = logging.getLogger("services")
    level = services_log.level
    services_log.setLevel(logging.INFO)
    services_log.addHandler(handler)
    try:
        with WebhookServer(fail_first={"/flaky": 2, "/down": 1_000}) as hooks:
            async with running_service(nats_url, prefix) as svc:
                async with serve_metrics(svc.app, "127.0.0.1:0", history_of(svc.app), lag_every=0.2) as endpoint:
                    await svc.configure(
                        config={
                            **CHANNEL,
                            "notifications": [
                                {
                                    "name": "flaky",
                                    "url": hooks.url("/flaky"),
                                    "on": ["rolled_back", "held"],
                                    "secret_env": SECRET_ENV,
                                },
                                {"name": "down", "url": hooks.url("/down"), "on": ["rolled_back"], "attempts": 2},
                                {"name": "quiet", "url": hooks.url("/quiet"), "on": ["escalated"]},
                            ],
                        }
                    )
                    good, bad = make_pack("1.0.0", svc.key), make_pack("1.1.0", svc.key)
                    await svc.runtime("t-int-1", {bad.digest: Behaviour(error_rate=0.5)})
                    await svc.runtime("tenant-42")
                    await svc.request("r1", good, rollback={"strategy": "none"})
                    assert (await svc.wait_release("r1")).outcome == "success"
                    await svc.request("r2", bad)
                    assert (await svc.wait_release("r2")).outcome == "rolled_back"
                    tampered = make_pack("1.2.0", svc.key)
                    await svc.publish(tampered)
                    tampered = type(tampered)(
                        tampered.body[:-1] + b"!", tampered.manifest, tampered.digest, tampered.version
                    )
                    await svc.request("r3", tampered)
                    assert (await svc.wait_release("r3")).outcome == "failed"

                    # ---- notifications: retried, signed, recorded once, the release untouched
                    await wait_for(
                        lambda: len(endpoint.releases.view().notifications) == 2, 20, "both outcomes recorded"
                    )
                    evidence = (await load_evidence(svc.app.js, svc.app.subjects, "r2")).to_json()
                    rolled_back = next(
                        e
                        for e in await log_events(svc, [svc.app.subjects.release_filter("r2")])
                        if e.type == "release.rolled_back"
                    )
                    by_sink = {n["sink"]: n for n in evidence["notifications"]}
                    assert by_sink["flaky"]["result"] == "sent" and by_sink["flaky"]["attempts"] == 3
                    assert by_sink["flaky"]["status"] == 200 and by_sink["flaky"]["trigger"] == rolled_back.event_id
                    assert by_sink["down"]["result"] == "failed" and by_sink["down"]["attempts"] == 2
                    assert by_sink["down"]["error"] == "HTTP 503"
                    assert evidence["outcome"]["outcome"] == "rolled_back"
                    flaky = [r for r in hooks.posts("/flaky") if r.headers["idempotency-key"] == rolled_back.event_id]
                    assert len(flaky) == 3 and len(hooks.posts("/down")) == 2 and hooks.posts("/quiet") == []
                    for post in flaky:
                        assert post.headers[SIGNATURE_HEADER.lower()] == signature("s3cret", post.body)
                        # Standard Webhooks: one id across the retries, each attempt verifiable now
                        assert verify(post.headers, post.body, "s3cret") == rolled_back.event_id
                        body = json.loads(post.body)
                        assert (body["kind"], body["release_id"], body["event_id"]) == (
                            "rolled_back",
                            "r2",
                            rolled_back.event_id,
                        )
                    assert "kx-signature-256" not in hooks.posts("/down")[0].headers

                    # a redelivery of the same event (here: a second notifier) posts nothing and records nothing
                    await Notifier(svc.app).notify(rolled_back)
                    assert len(hooks.received) == 5
                    notes = await log_events(svc, [svc.app.subjects.notification_filter("r2")])
                    assert sorted(e.type for e in notes) == ["notification.failed", "notification.sent"]
                    audit = await replay(svc.app.js, svc.app.subjects, service_keys=svc.service_keys)
                    assert audit.violations == () and audit.undecodable == 0, [v.line() for v in audit.violations]

                    # ---- metrics, scraped over HTTP, match what happened
                    last_seq = (await svc.app.js.stream_info(svc.app.subjects.releases_stream)).state.last_seq
                    stream = svc.app.subjects.releases_stream
                    families = await scrape_when(
                        endpoint.url,
                        lambda f: (
                            value(f, "kx_log_applied_sequence", "kx_log_applied_sequence") == last_seq
                            and LIFECYCLE
                            <= {
                                dict(k[1])["consumer"]
                                for k in f["kx_consumer_pending_messages"]
                                if dict(k[1])["stream"] == stream
                            }
                        ),
                        "the whole log and every consumer's lag",
                    )
                    assert value(families, "kx_releases_closed", outcome="success") == 1
                    assert value(families, "kx_releases_closed", outcome="rolled_back") == 1
                    assert value(families, "kx_releases_closed", outcome="failed") == 1
                    verification = (await load_evidence(svc.app.js, svc.app.subjects, "r3")).verification
                    assert verification["gate"] == "integrity"
                    assert value(families, "kx_gate_failures", gate="integrity", code=verification["code"]) == 1
                    assert sum(families["kx_gate_failures"].values()) == 1
                    assert value(families, "kx_rollbacks_started", trigger="monitoring_failure") == 1
                    assert value(families, "kx_notifications", kind="rolled_back", result="sent") == 1
                    assert value(families, "kx_notifications", kind="rolled_back", result="failed") == 1
                    assert value(families, "kx_activation_latency_seconds", "kx_activation_latency_seconds_count") == 2
                    assert (
                        value(
                            families, "kx_activation_latency_seconds", "kx_activation_latency_seconds_bucket", le="+Inf"
                        )
                        == 2
                    )
                    triggers = [e for e in await log_events(svc) if e.type in KIND_OF_EVENT]
                    assert value(
                        families, "kx_events_processed", stream=stream, consumer="kxr-notifier", outcome="acked"
                    ) == len(triggers)
                    assert (
                        value(families, "kx_events_processed", stream=stream, consumer="kxr-promoter", outcome="acked")
                        > 0
                    )
                    # the releases went the fast path (process-wide counts: at least this test's): the
                    # activator's step joined the preparer's batch; r3's pack failed a gate, its verifier's own
                    assert value(families, "kx_fast_path_steps", step="activator", outcome="joined") >= 2
                    assert value(families, "kx_fast_path_steps", step="verifier", outcome="joined") >= 3
                    # FastStream's own middleware counts the notifier's messages too (process-wide, all prefixes)
                    handled = value(
                        families,
                        "kx_faststream_received_processed_messages",
                        app_name="konnaxion-releases",
                        broker="nats",
                        handler="kxr-notifier",
                        status="acked",
                    )
                    assert handled >= len(triggers), families.get("kx_faststream_received_processed_messages")
                    log_types = {dict(k[1])["type"]: v for k, v in families["kx_log_events"].items()}
                    assert log_types["release.closed"] == 3 and log_types["notification.sent"] == 1
            first = {name: families[name] for name in RELEASE_LEVEL}

            # another process, started later (from the snapshot the first one saved), reports the same
            async with running_service(nats_url, prefix, roles=()) as again:
                assert again.app.follower.started_from > 0
                async with serve_metrics(again.app, "127.0.0.1:0", history_of(again.app)) as endpoint2:
                    later = await scrape_when(
                        endpoint2.url,
                        lambda f: value(f, "kx_log_applied_sequence", "kx_log_applied_sequence") == last_seq,
                        "the whole log",
                    )
            assert {name: later[name] for name in RELEASE_LEVEL} == first
    finally:
        services_log.removeHandler(handler)
        services_log.setLevel(level)

    # ---- every line is one JSON object naming its release and event
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    assert lines and all(set(line) >= {"ts", "level", "logger", "message", "release_id", "event_id"} for line in lines)
    notified = [line for line in lines if line["message"].startswith("rolled_back notification to flaky sent")]
    retried = [line for line in lines if "/flaky: attempt" in line["message"]]
    assert len(notified) == 1 and len(retried) == 2
    for line in notified + retried:
        assert (line["release_id"], line["event_id"]) == ("r2", rolled_back.event_id), line


async def test_a_loopback_metrics_endpoint_answers_only_to_loopback_names(nats_url, prefix):
    """A page of another site cannot read `/metrics` through DNS rebinding: the browser names the attacker's
    host, which a loopback-bound endpoint refuses (421); Prometheus scraping 127.0.0.1 or localhost is answered.
    (An outside review: "/metrics has no Host check".)"""
    from tests.harness import running_service

    async with running_service(nats_url, prefix, roles=()) as svc:
        async with serve_metrics(svc.app, "127.0.0.1:0", history_of(svc.app)) as endpoint:
            async with httpx.AsyncClient() as client:
                for host, status in [
                    (f"127.0.0.1:{endpoint.port}", 200),
                    (f"localhost:{endpoint.port}", 200),
                    ("LOCALHOST", 200),
                    (f"rebind.attacker.example:{endpoint.port}", 421),
                    ("127.0.0.1.attacker.example", 421),
                ]:
                    response = await client.get(endpoint.url, headers={"Host": host})
                    assert response.status_code == status, (host, response.status_code, response.text[:200])
                assert "kx_" in (await client.get(endpoint.url)).text
                assert response.text == "this endpoint answers to 127.0.0.1, ::1, [::1], localhost only\n"
