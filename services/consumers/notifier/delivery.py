"""Posting one webhook: bounded retries with jittered exponential back-off that honours
`Retry-After`, never an exception."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from services.consumers.notifier.webhook import Backoff, Webhook, retry_after, worth_retrying

log = logging.getLogger(__name__)
ATTEMPT_TIMEOUT_S = 5.0
KEEPALIVE_S = 10.0  # a long pause tells JetStream "still working" this often (the ack wait is 30 s by default)


@dataclass(frozen=True)
class Delivery:
    ok: bool
    attempts: int
    status: int | None  # the last HTTP status (None: no answer)
    error: str  # why the last attempt failed ("" when ok)


async def deliver(
    client: httpx.AsyncClient,
    hook: Webhook,
    attempts: int,
    backoff: Backoff,
    before_retry: Callable[[], Awaitable[None]] | None = None,
    clock: Callable[[], float] = time.time,
) -> Delivery:
    """Post until a 2xx, a refusal that retrying cannot fix, or `attempts` tries.

    Redirects are not followed: the configured URL is the one that was validated. Each
    attempt is signed at its own time (`clock`, unix seconds); the webhook id stays the same.
    `before_retry` runs before each pause and every KEEPALIVE_S of a long one (the notifier
    tells JetStream it is still working).
    """
    status: int | None = None
    error = ""
    for attempt in range(1, attempts + 1):
        wait: float | None = None
        try:
            response = await client.post(
                hook.url,
                content=hook.body,
                headers=hook.attempt_headers(clock()),
                timeout=ATTEMPT_TIMEOUT_S,
                follow_redirects=False,
            )
        except httpx.HTTPError as exc:
            status, error = None, f"{exc.__class__.__name__}: {exc}".rstrip(": ")
            if hook.shown:  # the error is recorded in the log: never the URL with its secret filled in
                error = error.replace(hook.url, hook.shown)
        else:
            status = response.status_code
            if 200 <= status < 300:
                return Delivery(True, attempt, status, "")
            error = f"HTTP {status}"
            wait = retry_after(response.headers.get("Retry-After"), clock())
        if attempt == attempts or not worth_retrying(status):
            return Delivery(False, attempt, status, error)
        pause = backoff.pause(attempt, wait)
        log.warning(
            "webhook %s: attempt %d of %d failed (%s); retrying in %.1f s",
            hook.shown or hook.url,
            attempt,
            attempts,
            error,
            pause,
        )
        while True:
            if before_retry is not None:
                await before_retry()
            step = min(pause, KEEPALIVE_S)
            await asyncio.sleep(step)
            pause -= step
            if pause <= 1e-6:  # not a sliver of float left over
                break
    return Delivery(False, attempts, status, error)  # attempts < 1: nothing tried
