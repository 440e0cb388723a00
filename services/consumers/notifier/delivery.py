"""Posting one webhook: bounded retries with exponential back-off, never an exception."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from services.consumers.notifier.webhook import Backoff, Webhook, worth_retrying

log = logging.getLogger(__name__)
ATTEMPT_TIMEOUT_S = 5.0


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
) -> Delivery:
    """Post until a 2xx, a refusal that retrying cannot fix, or `attempts` tries.

    Redirects are not followed: the configured URL is the one that was validated.
    `before_retry` runs before each pause (the notifier tells JetStream it is still working).
    """
    status: int | None = None
    error = ""
    for attempt in range(1, attempts + 1):
        try:
            response = await client.post(
                hook.url, content=hook.body, headers=hook.headers, timeout=ATTEMPT_TIMEOUT_S, follow_redirects=False
            )
        except httpx.HTTPError as exc:
            status, error = None, f"{exc.__class__.__name__}: {exc}".rstrip(": ")
        else:
            status = response.status_code
            if 200 <= status < 300:
                return Delivery(True, attempt, status, "")
            error = f"HTTP {status}"
        if attempt == attempts or not worth_retrying(status):
            return Delivery(False, attempt, status, error)
        log.warning("webhook %s: attempt %d of %d failed (%s); retrying", hook.url, attempt, attempts, error)
        if before_retry is not None:
            await before_retry()
        await asyncio.sleep(backoff.delay(attempt))
    return Delivery(False, attempts, status, error)  # attempts < 1: nothing tried
