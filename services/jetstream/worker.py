"""A durable pull consumer that hands each message to a handler and acks with intent.

- handler returns normally -> ack
- handler raises Poison -> the message is dead-lettered and terminated (never retried)
- anything else -> nak with back-off; after max_deliver attempts -> dead-letter + term
Several processes may run the same worker: they share the durable consumer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, NotFoundError

from services.jetstream.deadletter import DeadLetters
from services.jetstream.direct import connection_of
from services.jetstream.pull import ContinuousPull
from services.observability.logs import message_context
from services.observability.metrics import count_processed, track_consumer
from services.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class Poison(Exception):
    """This message can never be processed; keep it as a dead letter and move on."""


Handler = Callable[[Msg], Awaitable[None]]


class Worker:
    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        durable: str,
        filter_subjects: list[str],
        handler: Handler,
        deadletters: DeadLetters,
        *,
        ack_wait: float = 30.0,
        max_deliver: int = 10,
        deliver_new: bool = False,
        start_at: Callable[[], int] | None = None,
        concurrency: int = 1,
    ) -> None:
        self._js = js
        self._nc = connection_of(js)  # the pull requests go over the context's own connection
        self.stream = stream
        self.durable = durable
        self._filters = filter_subjects
        self._handler = handler
        self._dead = deadletters
        self._ack_wait = ack_wait
        self._max_deliver = max_deliver
        self._deliver_new = deliver_new
        self._start_at = start_at
        self._concurrency = max(1, concurrency)
        self._running: set[asyncio.Task] = set()
        self.processed = 0
        track_consumer(stream, durable)  # its lag is sampled for /metrics

    def _config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._ack_wait,
            max_deliver=self._max_deliver,
            filter_subjects=self._filters,
            deliver_policy=DeliverPolicy.NEW if self._deliver_new else DeliverPolicy.ALL,
            max_ack_pending=1000,
        )

    async def _bind(self) -> None:
        """Create the durable consumer, or bring an existing one to this configuration
        (e.g. a narrower filter or a new ack wait): the server keeps its position.

        Where it starts is fixed when it is created: an existing consumer keeps its deliver policy.
        A new one starts at `start_at()` when given (the first log sequence that may still need
        this consumer: a brand-new consumer on a long log need not walk every closed release),
        else with the first message (or the next one, `deliver_new`).
        """
        config = self._config()
        config.name = self.durable
        try:
            existing: ConsumerConfig | None = (await self._js.consumer_info(self.stream, self.durable)).config
        except NotFoundError:
            existing = None
        if existing is not None:
            config.deliver_policy = existing.deliver_policy
            config.opt_start_seq, config.opt_start_time = existing.opt_start_seq, existing.opt_start_time
        elif self._start_at is not None:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = max(1, self._start_at())
            log.info("%s: new consumer, from log sequence %d", self.durable, config.opt_start_seq)
        try:
            await self._js.add_consumer(self.stream, config=config)
        except APIError as exc:
            # an existing consumer whose fixed settings differ (another process created it meanwhile,
            # from another sequence): keep it as it is, with its position, rather than stop consuming
            await self._js.consumer_info(self.stream, self.durable)  # raises if it does not exist at all
            log.warning("%s: kept the existing consumer's configuration (%s)", self.durable, exc.description)

    async def run(self) -> None:
        slots = asyncio.Semaphore(self._concurrency)
        try:
            while True:
                pull = ContinuousPull(self._nc, self.stream, self.durable, batch=max(16, 2 * self._concurrency))
                try:
                    await self._bind()
                    async for msg in pull.messages():
                        if self._concurrency == 1:
                            await self._in_context(msg)
                            continue
                        # several messages at once (each acked when its own handling ends); the
                        # handler serialises what must not overlap (a reactor: one release at a time)
                        await slots.acquire()
                        task = asyncio.create_task(self._in_context(msg))
                        self._running.add(task)
                        task.add_done_callback(self._finished(slots))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # server restarted or consumer gone: bind again
                    log.warning("%s: pull failed (%s); re-binding", self.durable, exc)
                    await asyncio.sleep(0.5)
                finally:
                    await pull.close()
        finally:
            await cancel_and_wait(list(self._running))

    def _finished(self, slots: asyncio.Semaphore) -> Callable[[asyncio.Task], None]:
        """A task's done callback: forget it and free its slot."""

        def done(task: asyncio.Task) -> None:
            self._running.discard(task)
            slots.release()

        return done

    async def _in_context(self, msg: Msg) -> None:
        with message_context(msg):  # every log line while handling it names its release and event
            await self._one(msg)

    async def _one(self, msg: Msg) -> None:
        meta = msg.metadata
        if meta.num_delivered > 1:
            log.info("redelivery: %s seq %d, delivery %d", self.durable, meta.sequence.stream, meta.num_delivered)
        try:
            await self._handler(msg)
        except Poison as exc:
            await self._dead.record(
                self.durable, self.stream, meta.sequence.stream, msg.subject, msg.data, str(exc), meta.num_delivered
            )
            await msg.term()
            count_processed(self.stream, self.durable, "dead_lettered")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if meta.num_delivered >= self._max_deliver:
                await self._dead.record(
                    self.durable,
                    self.stream,
                    meta.sequence.stream,
                    msg.subject,
                    msg.data,
                    f"gave up after {meta.num_delivered} deliveries: {exc!r}",
                    meta.num_delivered,
                )
                await msg.term()
                count_processed(self.stream, self.durable, "dead_lettered")
            else:
                delay = min(0.2 * 2**meta.num_delivered, 10.0)
                log.warning("%s: seq %d failed (%r); retry in %.1fs", self.durable, meta.sequence.stream, exc, delay)
                await msg.nak(delay=delay)
                count_processed(self.stream, self.durable, "nak")
        else:
            self.processed += 1
            await msg.ack()
            count_processed(self.stream, self.durable, "acked")
