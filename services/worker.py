"""A durable pull consumer that hands each message to a handler and acks with intent.

- handler returns normally -> ack
- handler raises Poison -> the message is dead-lettered and terminated (never retried)
- anything else -> nak with back-off; after max_deliver attempts -> dead-letter + term
Several processes may run the same worker: they share the durable consumer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from .deadletter import DeadLetters
from .pull import ContinuousPull

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
    ) -> None:
        self._js = js
        self._nc = js._nc  # the pull requests go over the context's own connection
        self.stream = stream
        self.durable = durable
        self._filters = filter_subjects
        self._handler = handler
        self._dead = deadletters
        self._ack_wait = ack_wait
        self._max_deliver = max_deliver
        self._deliver_new = deliver_new
        self.processed = 0

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
        (e.g. a narrower filter or a new ack wait): the server keeps its position."""
        config = self._config()
        config.name = self.durable
        await self._js.add_consumer(self.stream, config=config)

    async def run(self) -> None:
        while True:
            pull = ContinuousPull(self._nc, self.stream, self.durable, batch=16)
            try:
                await self._bind()
                async for msg in pull.messages():
                    await self._one(msg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # server restarted or consumer gone: bind again
                log.warning("%s: pull failed (%s); re-binding", self.durable, exc)
                await asyncio.sleep(0.5)
            finally:
                await pull.close()

    async def _one(self, msg: Msg) -> None:
        meta = msg.metadata
        if meta.num_delivered > 1:
            log.info("redelivery: %s seq %d, delivery %d", self.durable, meta.sequence.stream, meta.num_delivered)
        try:
            await self._handler(msg)
        except Poison as exc:
            await self._dead.record(self.durable, self.stream, meta.sequence.stream, msg.subject, msg.data, str(exc), meta.num_delivered)
            await msg.term()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if meta.num_delivered >= self._max_deliver:
                await self._dead.record(
                    self.durable, self.stream, meta.sequence.stream, msg.subject, msg.data,
                    f"gave up after {meta.num_delivered} deliveries: {exc!r}", meta.num_delivered,
                )
                await msg.term()
            else:
                delay = min(0.2 * 2 ** meta.num_delivered, 10.0)
                log.warning("%s: seq %d failed (%r); retry in %.1fs", self.durable, meta.sequence.stream, exc, delay)
                await msg.nak(delay=delay)
        else:
            self.processed += 1
            await msg.ack()
