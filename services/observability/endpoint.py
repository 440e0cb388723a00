"""`/metrics` over HTTP (`kxr serve --metrics ADDR`), and the feed that keeps the fold current.

The release metrics are folded from the log: the prefix the follower had already applied
when the endpoint started is read once from the log, everything after comes from the
follower as it applies it. So the numbers are those of the whole log, also in a process
that started from a snapshot.

The log's history is handed in (`History`: `kxr serve` passes services.jetstream.log_reads.log_entries
over its stream): observability sits below the NATS plumbing, whose worker counts into these metrics.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, make_server

from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.process_collector import ProcessCollector

from events.model import Event
from events.subjects import Subjects
from projections.world import World
from services.observability.metrics import FAST_PATH, FASTSTREAM_METRICS, PROCESSED, LagSampler, ServiceCollector
from services.observability.release_metrics import ReleaseMetrics
from services.settings import ConfigError
from services.tasks import cancel_and_wait
from services.web_hosts import allowed_hosts, answers

log = logging.getLogger(__name__)
# every entry of the log from its start: (entry with its `seq`, position, event or None if it does not decode)
History = Callable[[], AsyncGenerator[tuple[Any, Any, Event | None], None]]


class LiveFold(Protocol):
    """The follower as the metrics use it: where it is, what it folded, and a feed of what it applies."""

    @property
    def position(self) -> int: ...
    @property
    def world(self) -> World: ...
    def listen(self) -> asyncio.Queue: ...
    def unlisten(self, queue: asyncio.Queue) -> None: ...


class Observed(Protocol):
    """What the metrics read of a running service (an App is one): its log and its live fold."""

    @property
    def js(self) -> JetStreamContext: ...
    @property
    def subjects(self) -> Subjects: ...
    @property
    def follower(self) -> LiveFold: ...


def parse_listen_address(raw: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:9464` for IPv6; port 0 picks a free one)."""
    host, sep, port = raw.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"KX_METRICS_ADDR / --metrics takes HOST:PORT (e.g. 127.0.0.1:9464), not {raw!r}")
    return host, int(port)


async def feed(app: Observed, releases: ReleaseMetrics, history: History) -> None:
    """Fold the whole log into `releases`, then follow the follower."""
    queue = app.follower.listen()  # registered before reading where the follower is: nothing falls in between
    upto = app.follower.position
    try:
        if upto:
            async with aclosing(history()) as entries:  # closes its reader on break
                async for entry, _, event in entries:
                    if entry.seq > upto:
                        break
                    releases.apply(entry.seq, event)
        while True:
            position, event = await queue.get()
            releases.apply(position.seq, event)  # an entry seen twice (read and queued) is applied once
    finally:
        app.follower.unlisten(queue)


def _report(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s stopped: %r", task.get_name(), task.exception())


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # a scrape every few seconds is no news
        pass


def host_checked(app: Callable, allowed: frozenset[str] | None) -> Callable:
    """`app` answering only requests that name one of `allowed` in Host (None: any): a loopback-bound
    `/metrics` is for this machine, and a page of another site must not read it through DNS rebinding
    (services/web_hosts.py). Others get a 421 of one line."""

    def guarded(environ: dict, start_response: Callable) -> Any:
        if answers(allowed, environ.get("HTTP_HOST")):
            return app(environ, start_response)
        start_response("421 Misdirected Request", [("Content-Type", "text/plain; charset=utf-8")])
        return [f"this endpoint answers to {', '.join(sorted(allowed or ()))} only\n".encode()]

    return guarded


def start_server(host: str, port: int, registry: CollectorRegistry) -> tuple[ThreadingWSGIServer, threading.Thread]:
    """prometheus_client's `start_http_server`, with the Host check: a thread serving `registry`."""
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]

    class Server(ThreadingWSGIServer):
        address_family = family  # an IPv6 bind needs its family before the socket is made

    server = make_server(
        str(address[0]), port, host_checked(make_wsgi_app(registry), allowed_hosts(host)), Server, handler_class=_Quiet
    )
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return server, thread


@dataclass(frozen=True)
class MetricsEndpoint:
    host: str
    port: int
    releases: ReleaseMetrics | None  # None: no log-derived series here (KX_METRICS_LOG=off)
    lag: LagSampler

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"


@asynccontextmanager
async def serve_metrics(
    app: Observed, address: str, history: History, lag_every: float = 5.0, log_series: bool = True
) -> AsyncIterator[MetricsEndpoint]:
    """`log_series` False (KX_METRICS_LOG=off): no log-derived series, and no read of the log's history."""
    host, port = parse_listen_address(address)
    releases, lag = ReleaseMetrics() if log_series else None, LagSampler(app.js, app.subjects)
    registry = CollectorRegistry()
    registry.register(PROCESSED)
    registry.register(FAST_PATH)
    registry.register(FASTSTREAM_METRICS)  # the FastStream subscribers' own (kx_faststream_*)
    registry.register(ServiceCollector(lambda: app.follower.world, releases, lag))
    ProcessCollector(registry=registry)
    try:
        server, thread = start_server(host, port, registry)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {address}: {exc.strerror or exc}") from None
    endpoint = MetricsEndpoint(host, server.server_port, releases, lag)
    tasks = [asyncio.create_task(lag.run(lag_every), name="metrics-lag")]
    if releases is not None:
        tasks.append(asyncio.create_task(feed(app, releases, history), name="metrics-feed"))
    for task in tasks:  # metrics never stop the service, but a broken feed must say so
        task.add_done_callback(_report)
    log.info("metrics on %s", endpoint.url)
    try:
        yield endpoint
    finally:
        await cancel_and_wait(tasks)
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
