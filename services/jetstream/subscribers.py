"""FastStream subscribers on the service's own connection: the broker, the worker's ack policy, metrics.

The notifier and the dead-letter watcher are FastStream subscribers (services/consumers/notifier/,
services/jetstream/deadletter.py). What they take from FastStream: the subscription (a durable
pull consumer, or a core subscription), decoding into the handler's arguments, the ack policy
(`AckPolicy` and the `Ack`/`Nack`/`RejectMessage` handler exceptions), restarting a failed
consume task, `TestNatsBroker` for in-memory unit tests, the OpenTelemetry middleware (a
consumer span per message, parented on the message's `traceparent` header) and the Prometheus
middleware (`kx_faststream_*`, on `FASTSTREAM_METRICS`, which `/metrics` serves).

What stays ours, in `WorkerPolicy`: the same acking with intent as services/jetstream/worker.py
(a poison message is dead-lettered and terminated at once; any other failure is nak'ed with
back-off and dead-lettered on its last delivery), counted in `kx_events_processed` like every
other durable consumer, with the message's release and event in the log context.

The lifecycle consumers stay on the nats-py worker: they run several releases' messages at once
but one release at a time (the reactor's per-release lock), fold-wait on the follower before each
decision, and pull continuously with heartbeats (services/jetstream/pull.py) rather than
FastStream's fetch loop; none of that maps onto a FastStream handler without re-writing it
around one, and their hot path is measured (bench/) where the notifier's is not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import replace
from types import TracebackType
from typing import Any, Protocol

from faststream import BaseMiddleware
from faststream.exceptions import HandlerException, NackMessage, RejectMessage
from faststream.nats import NatsBroker
from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from faststream.nats.prometheus.provider import NatsMetricsSettingsProvider
from faststream.prometheus import PrometheusMiddleware
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig
from nats.js.errors import APIError, NotFoundError
from prometheus_client import CollectorRegistry

from services.observability.logs import message_context
from services.observability.metrics import FASTSTREAM_METRICS, count_processed

log = logging.getLogger(__name__)
APP_NAME = "konnaxion-releases"
METRICS_PREFIX = "kx_faststream"


class DeadLetterRecorder(Protocol):
    """Where a subscriber's dead letters go (services/jetstream/deadletter.py `DeadLetters`)."""

    async def record(
        self, consumer: str, stream: str, seq: int, subject: str, data: bytes, reason: str, deliveries: int = 1
    ) -> None: ...


class SharedConnectionBroker(NatsBroker):
    """A NatsBroker on a connection the process already has (the App's), never one of its own:
    one connection per process, with the credentials, inbox prefix and TLS that
    services/jetstream/client.py gave it. Stopping the broker stops its subscribers and leaves
    the connection open for the rest of the process."""

    def __init__(self, nc: Client | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._shared = nc

    async def _connect(self) -> Client:
        if self._shared is None:
            raise RuntimeError("this broker has no connection (it documents handlers or runs under TestNatsBroker)")
        self.config.connect(self._shared)
        return self._shared

    async def stop(
        self,
        exc_type: type[BaseException] | None = None,
        exc_val: BaseException | None = None,
        exc_tb: TracebackType | None = None,
    ) -> None:
        self._connection = None  # not ours: NatsBroker.stop would drain (close) it
        await super().stop(exc_type, exc_val, exc_tb)


class _NamedHandler(NatsMetricsSettingsProvider):
    """FastStream's NATS metrics, labelled with the handler's name instead of each message's subject
    (`kx.release.<release_id>.…`: a series per release would grow without bound)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def get_consume_attrs_from_message(self, msg: Any) -> Any:
        return {**super().get_consume_attrs_from_message(msg), "destination_name": self.name}


def service_broker(
    nc: Client | None,
    name: str,
    policy: WorkerPolicy | None = None,
    registry: CollectorRegistry | None = None,
    tracer_provider: Any = None,
) -> SharedConnectionBroker:
    """A broker for one of the service's FastStream subscribers (`name`: its metrics label): logs
    through `services.…` at debug level (a line per message would drown the service's own),
    OpenTelemetry, Prometheus, and `policy`."""
    middlewares: list[Any] = [
        # a consumer span per message, parented on its `traceparent` header; None: the global tracer
        # provider (a no-op until one is configured)
        NatsTelemetryMiddleware(tracer_provider=tracer_provider),
        PrometheusMiddleware(
            settings_provider_factory=lambda msg: _NamedHandler(name) if isinstance(msg, Msg) or msg is None else None,
            registry=registry if registry is not None else FASTSTREAM_METRICS,
            app_name=APP_NAME,
            metrics_prefix=METRICS_PREFIX,
        ),
    ]
    if policy is not None:
        middlewares.append(policy)
    return SharedConnectionBroker(
        nc,
        logger=logging.getLogger("services.jetstream.faststream"),
        log_level=logging.DEBUG,
        middlewares=middlewares,
        graceful_timeout=5.0,
    )


def inbox_prefix(nc: Client) -> bytes:
    """The connection's reply-inbox prefix with its dot (FastStream would otherwise use `_INBOX.`,
    which a per-role user may not subscribe to): read from a fresh inbox, a public call."""
    return nc.new_inbox().rsplit(".", 1)[0].encode() + b"."


async def bind_durable(js: JetStreamContext, stream: str, config: ConsumerConfig) -> None:
    """Create the durable consumer, or bring an existing one to `config` (a narrower filter, a new
    ack wait): the server keeps its position. One whose fixed settings differ (its deliver
    policy) is kept as it is, with its position, rather than stop consuming (as the worker does)."""
    named = replace(config, name=config.durable_name)
    try:
        await js.add_consumer(stream, config=named)
    except APIError as exc:
        assert config.durable_name is not None
        await js.consumer_info(stream, config.durable_name)  # raises if it does not exist at all
        log.warning("%s: kept the existing consumer's configuration (%s)", config.durable_name, exc.description)


KEEP_EVERY_S = 5.0  # how often a running broker's durable is checked, and bound again if it is gone


async def run_broker(broker: NatsBroker, keep: Callable[[], Awaitable[None]] | None = None) -> None:
    """Start `broker` (after `keep`, e.g. binding its durable), run until cancelled, then stop it.

    `keep` runs again every KEEP_EVERY_S: FastStream's pull loop restarts a failed fetch but never
    creates its durable again, so a consumer removed under a running service (by hand, or with its
    stream) would be fetched from in vain; the worker re-binds in that case, and so does this."""
    if keep is not None:
        await keep()
    await broker.start()
    try:
        while True:
            await asyncio.sleep(KEEP_EVERY_S)
            if keep is None:
                continue
            try:
                await keep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS away for a moment: the next round tries again
                log.info("could not check the durable consumer: %s", exc)
    finally:
        await asyncio.shield(broker.stop())


async def keep_durable(js: JetStreamContext, stream: str, config: ConsumerConfig) -> None:
    """Bind the durable when it does not exist (at start, or removed since); otherwise one info request."""
    assert config.durable_name is not None
    try:
        await js.consumer_info(stream, config.durable_name)
        return
    except NotFoundError:
        pass
    await bind_durable(js, stream, config)
    log.warning("%s: the durable consumer was missing and is bound again", config.durable_name)


class WorkerPolicy:
    """The worker's acking with intent, as a FastStream middleware for one durable consumer.

    - the handler returns -> ack (FastStream's ack policy), counted `acked`
    - it (or the decoder) raises `poison` (the worker's `Poison`) -> dead letter + term, `dead_lettered`
    - anything else -> nak with back-off (0.2 s · 2^n, at most 10 s), `nak`; on the last of
      `max_deliver` deliveries -> dead letter + term instead.
    """

    def __init__(
        self,
        stream: str,
        durable: str,
        deadletters: DeadLetterRecorder,
        poison: type[Exception],
        max_deliver: int = 10,
    ) -> None:
        self.stream = stream
        self.durable = durable
        self.deadletters = deadletters
        self.poison = poison
        self.max_deliver = max_deliver

    def __call__(self, msg: Any, /, *, context: Any) -> _WorkerPolicyScope:
        return _WorkerPolicyScope(msg, context=context, policy=self)


class _WorkerPolicyScope(BaseMiddleware):
    def __init__(self, msg: Any, /, *, context: Any, policy: WorkerPolicy) -> None:
        super().__init__(msg, context=context)
        self.policy = policy
        self.raw: Msg = msg
        self._logging: AbstractContextManager[None] | None = None

    async def on_receive(self) -> None:
        raw = self.raw
        self._logging = message_context(raw)  # every line while handling it names its release and event
        self._logging.__enter__()
        deliveries = _deliveries(raw)
        if deliveries > 1:
            log.info("redelivery: %s seq %d, delivery %d", self.policy.durable, _seq(raw), deliveries)

    async def after_processed(
        self,
        exc_type: type[BaseException] | None = None,
        exc_val: BaseException | None = None,
        exc_tb: TracebackType | None = None,
    ) -> bool | None:
        try:
            return await self._settle(exc_val)
        finally:
            if self._logging is not None:
                self._logging.__exit__(None, None, None)

    async def _settle(self, exc: BaseException | None) -> bool | None:
        p, raw = self.policy, self.raw
        if exc is None:
            count_processed(p.stream, p.durable, "acked")
            return False
        if isinstance(exc, (HandlerException, asyncio.CancelledError)) or not isinstance(exc, Exception):
            return False  # the handler chose (or the task is stopping): FastStream's own policy applies
        deliveries = _deliveries(raw)
        if isinstance(exc, p.poison) or deliveries >= p.max_deliver:
            reason = str(exc) if isinstance(exc, p.poison) else f"gave up after {deliveries} deliveries: {exc!r}"
            await p.deadletters.record(p.durable, p.stream, _seq(raw), raw.subject, raw.data, reason, deliveries)
            count_processed(p.stream, p.durable, "dead_lettered")
            raise RejectMessage() from None  # FastStream terminates it: never redelivered
        delay = min(0.2 * 2**deliveries, 10.0)
        log.warning("%s: seq %d failed (%r); retry in %.1fs", p.durable, _seq(raw), exc, delay)
        count_processed(p.stream, p.durable, "nak")
        raise NackMessage(delay=delay) from None


def _deliveries(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:  # not a JetStream message (a test's, or a core one): its first delivery
        return 1


def _seq(msg: Msg) -> int:
    try:
        return int(msg.metadata.sequence.stream)
    except Exception:
        return 0
