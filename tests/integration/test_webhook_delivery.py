"""Posting a webhook against a real local HTTP server: what is retried and what is not.

The receivers listen on 127.0.0.1, which a deployment's notifier refuses (destination.py): every
post here allows private addresses, as KX_WEBHOOK_ALLOW_PRIVATE=1 does."""

from __future__ import annotations

import base64
import json
import time
from email.utils import formatdate

import httpx
from aiohttp import web
from aiohttp.test_utils import TestServer

from services.actions.producer import parse_channel_config
from services.consumers.notifier import delivery
from services.consumers.notifier.consumer import Notifier
from services.consumers.notifier.delivery import deliver
from services.consumers.notifier.signing import verify
from services.consumers.notifier.webhook import Backoff, Webhook, webhook
from services.jetstream.embedded import free_port
from tests.integration.webhook_server import WebhookServer
from tests.unit.test_notifications import HOOK, _rolled_back_release, channel

QUICK = Backoff(first_s=0.01, cap_s=0.02)
LOCAL = {"allow_private": True}  # the receivers are on 127.0.0.1


def hook(url: str) -> Webhook:
    return Webhook(url, b'{"kind":"held"}', {"Content-Type": "application/json", "Idempotency-Key": "ev-1"})


async def test_transient_failures_are_retried_until_success_and_the_keepalive_runs_between() -> None:
    pauses = []

    async def still_working() -> None:
        pauses.append(1)

    with WebhookServer(fail_first={"/flaky": 3}) as server:
        async with httpx.AsyncClient() as client:
            result = await deliver(client, hook(server.url("/flaky")), 5, QUICK, still_working, **LOCAL)
    assert (result.ok, result.attempts, result.status, result.error) == (True, 4, 200, "")
    assert len(pauses) == 3 and len(server.posts("/flaky")) == 4


async def test_a_refusal_retrying_cannot_fix_is_not_retried() -> None:
    with WebhookServer(always={"/gone": 404, "/moved": 301}) as server:
        async with httpx.AsyncClient() as client:
            gone = await deliver(client, hook(server.url("/gone")), 5, QUICK, **LOCAL)
            moved = await deliver(client, hook(server.url("/moved")), 5, QUICK, **LOCAL)
    assert (gone.ok, gone.attempts, gone.status, gone.error) == (False, 1, 404, "HTTP 404")
    assert (moved.ok, moved.attempts, moved.status) == (False, 1, 301)  # a redirect is not followed


async def test_nobody_listening_is_retried_up_to_the_bound_and_reported() -> None:
    async with httpx.AsyncClient() as client:
        result = await deliver(client, hook(f"http://127.0.0.1:{free_port()}/x"), 3, QUICK, **LOCAL)
    assert (result.ok, result.attempts, result.status) == (False, 3, None)
    assert result.error.startswith("ConnectError")


async def test_retry_after_is_honoured_and_every_attempt_verifies_under_one_webhook_id() -> None:
    """A real aiohttp server answers 429 (Retry-After: 1 s), then 503 (Retry-After: an HTTP date
    2 s ahead), then 200; the sender waits as asked, each attempt signed at its own time."""
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    seen: list[tuple[float, dict[str, str], bytes]] = []

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append((time.time(), dict(request.headers), body))
        if len(seen) == 1:
            return web.Response(status=429, headers={"Retry-After": "1"})
        if len(seen) == 2:
            return web.Response(status=503, headers={"Retry-After": formatdate(time.time() + 2, usegmt=True)})
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", receive)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        release, rolled = _rolled_back_release()
        sink = parse_channel_config(channel({**HOOK, "secret_env": "S"}), "canary").notifications[0]
        hook = webhook("rolled_back", sink, rolled, release, secret)
        hook = Webhook(str(server.make_url("/hook")), hook.body, hook.headers, hook.webhook_id, hook.keys)
        async with httpx.AsyncClient() as client:
            result = await deliver(client, hook, 5, QUICK, **LOCAL)
    finally:
        await server.close()
    assert (result.ok, result.attempts, result.status) == (True, 3, 200)
    (t1, h1, _), (t2, h2, _), (t3, h3, _) = seen
    assert t2 - t1 >= 0.95  # Retry-After: 1 (the back-off alone would be 0.01 s)
    assert t3 - t2 >= 1.0  # the date, 2 s ahead at whole-second precision: at least 1 s
    assert t3 - t1 < 6
    ids = {h["webhook-id"] for h in (h1, h2, h3)}
    assert ids == {rolled.event_id}  # one id across the retries: the receiver's idempotency key
    for at, headers, body in seen:
        assert verify(headers, body, secret, now=at) == rolled.event_id
        # signed when sent, not when first tried: whole seconds (floored) at the send, so up to 1 s before
        # the receipt plus the send's own latency (a loaded CI host once measured 1.0016 s), never after it
        assert 0 <= at - int(headers["webhook-timestamp"]) < 1.5
    assert h1["webhook-timestamp"] != h3["webhook-timestamp"]


async def test_retry_after_beyond_the_cap_waits_only_the_cap_and_attempts_stay_bounded() -> None:
    async def always_busy(request: web.Request) -> web.Response:
        return web.Response(status=503, headers={"Retry-After": "3600"})

    app = web.Application()
    app.router.add_post("/busy", always_busy)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        started = time.monotonic()
        async with httpx.AsyncClient() as client:
            result = await deliver(
                client,
                hook(str(server.make_url("/busy"))),
                3,
                Backoff(first_s=0.01, cap_s=0.02, retry_after_cap_s=0.2),
                **LOCAL,
            )
        elapsed = time.monotonic() - started
    finally:
        await server.close()
    assert (result.ok, result.attempts, result.status, result.error) == (False, 3, 503, "HTTP 503")
    assert 0.4 <= elapsed < 3  # two capped pauses of 0.2 s, not two hours


async def test_a_long_pause_keeps_telling_jetstream_it_is_still_working(monkeypatch) -> None:
    """A Retry-After longer than the ack wait must not let the trigger be redelivered meanwhile."""
    monkeypatch.setattr(delivery, "KEEPALIVE_S", 0.1)
    beats: list[float] = []

    async def still_working() -> None:
        beats.append(time.monotonic())

    with WebhookServer(fail_first={"/slow": 1}) as server:
        slow = Backoff(first_s=0.5, cap_s=0.5, jitter=0.0)
        async with httpx.AsyncClient() as client:
            result = await delivery.deliver(client, hook(server.url("/slow")), 2, slow, still_working, **LOCAL)
    assert (result.ok, result.attempts) == (True, 2)
    assert len(beats) == 5 and all(0.08 <= b - a < 0.3 for a, b in zip(beats, beats[1:]))


async def test_the_notifier_fills_a_urls_secret_from_its_environment_and_fails_closed_without_it(
    monkeypatch,
) -> None:
    release, rolled = _rolled_back_release()
    notifier = Notifier(None, QUICK, **LOCAL)  # type: ignore[arg-type]  # send() uses no port
    with WebhookServer() as server:
        url = server.url("/services/${KX_HOOK_TEST_PATH}")
        sink = parse_channel_config(channel({**HOOK, "url": url, "format": "slack"}), "canary").notifications[0]
        async with httpx.AsyncClient() as client:
            monkeypatch.delenv("KX_HOOK_TEST_PATH", raising=False)
            unset = await notifier.send(client, sink, "rolled_back", rolled, release, None)
            monkeypatch.setenv("KX_HOOK_TEST_PATH", "T0/B0/s3cret")
            sent = await notifier.send(client, sink, "rolled_back", rolled, release, None)
        assert (unset.ok, unset.attempts) == (False, 0) and "${KX_HOOK_TEST_PATH}" in unset.error
        assert (sent.ok, sent.attempts) == (True, 1)
        (post,) = server.received
        assert post.path == "/services/T0/B0/s3cret" and "blocks" in json.loads(post.body)
