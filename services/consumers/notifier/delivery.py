"""Posting one webhook: bounded retries with jittered exponential back-off that honours
`Retry-After`, never an exception.

Each attempt has one deadline, ATTEMPT_TIMEOUT_S, for all of it: resolving the host, connecting,
sending and the answer's status line and headers (httpx's own timeout bounds each read, not their
sum: a receiver dripping a byte a second would hold the notifier, which handles one trigger at a
time). The answer's body is never read: the status is the answer, and a receiver's megabytes do
not belong in the memory of a process that runs every consumer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from services.consumers.notifier.destination import Destination, Refused, destination
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


class Unusable(Exception):
    """The webhook cannot be posted as configured (a URL httpx refuses, a destination the rule refuses):
    nothing was sent, and retrying does not change that."""


async def post_once(
    client: httpx.AsyncClient, hook: Webhook, now: Callable[[], float], allow_private: bool
) -> tuple[int, float | None]:
    """One attempt: (the answer's status, the pause its Retry-After asks for). Unusable when it cannot
    be made; httpx's errors, OSError (the host does not resolve) and TimeoutError when it failed."""
    try:  # what the channel's schema lets through but httpx cannot send (a control character, a bad A-label)
        url = httpx.URL(hook.url)
        _ = url.host  # decoded (IDNA) as httpx sends it: a malformed A-label (`xn--`) fails here
    except Exception as exc:
        raise Unusable(f"{exc.__class__.__name__}: {exc}") from None
    async with asyncio.timeout(ATTEMPT_TIMEOUT_S):
        try:
            place = await destination(url, allow_private)
        except Refused as exc:
            raise Unusable(str(exc)) from None
        candidates = place.candidates
        # each address gets its share of the deadline to connect, so an unreachable first one leaves time
        # for the next; once connected, the rest of the deadline is the answer's
        timeout = httpx.Timeout(ATTEMPT_TIMEOUT_S, connect=max(1.0, ATTEMPT_TIMEOUT_S / len(candidates)))
        if place.proxy is None:
            return await _post(client, hook, now, place, timeout)
        # through the proxy the environment names for this host (destination.py): a client of its own,
        # for this attempt (posts keep no connection anyway); the caller's client never picks a proxy
        try:
            proxied = httpx.AsyncClient(proxy=place.proxy, trust_env=False)
        except Exception as exc:  # (a scheme httpx cannot use: socks without its extra). The proxy's URL
            # may hold a password, and what is said here is recorded in the log: only what went wrong
            raise Unusable(
                f"the environment's proxy for {url.scheme} cannot be used ({exc.__class__.__name__})"
            ) from None
        async with proxied:
            return await _post(proxied, hook, now, place, timeout)


async def _post(
    client: httpx.AsyncClient, hook: Webhook, now: Callable[[], float], place: Destination, timeout: httpx.Timeout
) -> tuple[int, float | None]:
    """`place`'s candidates in turn until one takes the connection: the answer's status and Retry-After."""
    candidates = place.candidates
    for n, target in enumerate(candidates, 1):
        try:
            request = client.build_request(
                "POST",
                target,
                content=hook.body,
                headers={**hook.attempt_headers(now()), **place.headers},
                extensions=place.extensions,
                timeout=timeout,
            )
        except Exception as exc:
            raise Unusable(f"{exc.__class__.__name__}: {exc}") from None
        try:
            response = await client.send(request, stream=True, follow_redirects=False)
        except (httpx.InvalidURL, UnicodeError) as exc:  # (a part of the URL httpx checks only as it sends)
            raise Unusable(f"{exc.__class__.__name__}: {exc}") from None
        except (httpx.ConnectError, httpx.ConnectTimeout):
            if n == len(candidates):
                raise
            continue  # nothing was sent to this address: the next one, in the same attempt
        try:
            return response.status_code, retry_after(response.headers.get("Retry-After"), now())
        finally:
            await response.aclose()  # the body unread: the connection is closed, not drained
    raise AssertionError("unreachable: the last candidate returns or raises")


async def deliver(
    client: httpx.AsyncClient,
    hook: Webhook,
    attempts: int,
    backoff: Backoff,
    before_retry: Callable[[], Awaitable[None]] | None = None,
    clock: Callable[[], float] = time.time,
    *,
    allow_private: bool = False,
) -> Delivery:
    """Post until a 2xx, a refusal that retrying cannot fix, or `attempts` tries.

    Redirects are not followed: the configured URL is the one that was validated. Each
    attempt is signed at its own time (`clock`, unix seconds); the webhook id stays the same.
    `before_retry` runs before each pause and every KEEPALIVE_S of a long one (the notifier
    tells JetStream it is still working). A destination that is not a public address is
    refused (destination.py) unless `allow_private` (KX_WEBHOOK_ALLOW_PRIVATE); such a
    refusal, like a URL httpx cannot send, is final and counts no attempt (nothing was sent).
    """
    status: int | None = None
    error = ""
    for attempt in range(1, attempts + 1):
        wait: float | None = None
        try:
            status, wait = await post_once(client, hook, clock, allow_private)
        except Unusable as exc:
            return Delivery(False, attempt - 1, None, _shown(hook, str(exc)))
        except TimeoutError:  # the attempt's deadline passed (httpx's own timeouts are HTTPErrors)
            status, error = None, f"TimeoutError: no answer within {ATTEMPT_TIMEOUT_S:g} s"
        except (httpx.HTTPError, OSError) as exc:
            status, error = None, _shown(hook, f"{exc.__class__.__name__}: {exc}".rstrip(": "))
        else:
            if 200 <= status < 300:
                return Delivery(True, attempt, status, "")
            error = f"HTTP {status}"
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


def _shown(hook: Webhook, error: str) -> str:
    """The error as recorded in the log: never the URL with its secret filled in."""
    return error.replace(hook.url, hook.shown) if hook.shown else error
