"""Asking Prometheus a window's queries (the IO; rendering and judging are services/monitoring/prometheus.py).

Each query is one instant query (`GET /api/v1/query`) evaluated at the window's end, with
the channel's timeout both on the HTTP request and as Prometheus' own `timeout`. Nothing
here raises for a query that fails: an unreachable server, a timeout, an error or an
answer that is not Prometheus' API becomes a `QueryAnswer` without a figure, saying why,
so the window is inconclusive, recorded, never passed.
"""

from __future__ import annotations

import asyncio
import json

import httpx

from events.channel import PrometheusSource
from events.model import QueryAnswer
from events.thresholds import Thresholds
from services.monitoring.prometheus import Asked, parse_answer, unanswered

MAX_ANSWER_BYTES = 4 * 1024 * 1024  # a bigger answer is refused (a window's query should aggregate)


def base_url(source: PrometheusSource, fallback: str | None) -> str | None:
    """The channel's url, else the service's KX_PROMETHEUS_URL (None: neither is set)."""
    return (source.url or fallback or "").rstrip("/") or None


async def _ask(client: httpx.AsyncClient, url: str, asked: Asked, timeout_s: float, thresholds: Thresholds):
    params = {"query": asked.query, "time": f"{asked.at.timestamp():.3f}", "timeout": f"{timeout_s:g}"}
    try:
        async with client.stream("GET", f"{url}/api/v1/query", params=params) as response:
            body = b""
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_ANSWER_BYTES:
                    return unanswered(asked, "invalid", f"the answer is over {MAX_ANSWER_BYTES} bytes")
    except httpx.TimeoutException:
        return unanswered(asked, "timeout", f"no answer from {url} within {timeout_s}s")
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        # InvalidURL is not an HTTPError: a URL the channel's pattern lets through (a port `9O90`) but httpx
        # cannot parse raised out of here, and the window lost the record of the query it asked
        return unanswered(asked, "unreachable", f"{url}: {exc.__class__.__name__}: {exc}")
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested too deep (`[[[[…` from any garbage server)
        return unanswered(asked, "invalid", f"HTTP {response.status_code}: the answer is not JSON")
    try:
        return parse_answer(asked, response.status_code, doc, thresholds)
    except (ValueError, TypeError, ArithmeticError, RecursionError) as exc:  # never raised for a query's answer
        return unanswered(asked, "invalid", f"HTTP {response.status_code}: {exc.__class__.__name__}: {exc}")


async def ask_all(
    source: PrometheusSource, asked: list[Asked], thresholds: Thresholds, fallback_url: str | None
) -> tuple[QueryAnswer, ...]:
    """Every query's answer, in the order asked (all at once; each bounded by the source's timeout)."""
    url = base_url(source, fallback_url)
    if url is None:
        why = "no Prometheus URL: set monitoring.prometheus.url or KX_PROMETHEUS_URL"
        return tuple(unanswered(a, "not_configured", why) for a in asked)
    timeout = httpx.Timeout(source.timeout_s)
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
        # the overall deadline too: a server trickling bytes cannot hold the window past its timeout
        async def bounded(a: Asked) -> QueryAnswer:
            try:
                return await asyncio.wait_for(_ask(client, url, a, source.timeout_s, thresholds), source.timeout_s + 1)
            except TimeoutError:
                return unanswered(a, "timeout", f"no whole answer from {url} within {source.timeout_s}s")

        return tuple(await asyncio.gather(*(bounded(a) for a in asked)))
