"""Posting a webhook against a real local HTTP server: what is retried and what is not."""

from __future__ import annotations

import httpx

from services.consumers.notifier.delivery import deliver
from services.consumers.notifier.webhook import Backoff, Webhook
from services.jetstream.embedded import free_port
from tests.integration.webhook_server import WebhookServer

QUICK = Backoff(first_s=0.01, cap_s=0.02)


def hook(url: str) -> Webhook:
    return Webhook(url, b'{"kind":"held"}', {"Content-Type": "application/json", "Idempotency-Key": "ev-1"})


async def test_transient_failures_are_retried_until_success_and_the_keepalive_runs_between() -> None:
    pauses = []

    async def still_working() -> None:
        pauses.append(1)

    with WebhookServer(fail_first={"/flaky": 3}) as server:
        async with httpx.AsyncClient() as client:
            result = await deliver(client, hook(server.url("/flaky")), 5, QUICK, still_working)
    assert (result.ok, result.attempts, result.status, result.error) == (True, 4, 200, "")
    assert len(pauses) == 3 and len(server.posts("/flaky")) == 4


async def test_a_refusal_retrying_cannot_fix_is_not_retried() -> None:
    with WebhookServer(always={"/gone": 404, "/moved": 301}) as server:
        async with httpx.AsyncClient() as client:
            gone = await deliver(client, hook(server.url("/gone")), 5, QUICK)
            moved = await deliver(client, hook(server.url("/moved")), 5, QUICK)
    assert (gone.ok, gone.attempts, gone.status, gone.error) == (False, 1, 404, "HTTP 404")
    assert (moved.ok, moved.attempts, moved.status) == (False, 1, 301)  # a redirect is not followed


async def test_nobody_listening_is_retried_up_to_the_bound_and_reported() -> None:
    async with httpx.AsyncClient() as client:
        result = await deliver(client, hook(f"http://127.0.0.1:{free_port()}/x"), 3, QUICK)
    assert (result.ok, result.attempts, result.status) == (False, 3, None)
    assert result.error.startswith("ConnectError")
