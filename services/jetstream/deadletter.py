"""Dead letters: messages a consumer cannot process are kept, with why, and skipped.

Nothing is lost: the record holds the original bytes, subject, sequence, the
consumer that gave up and the reason. `kxr deadletter list|show` reads them.
"""

from __future__ import annotations

import base64
import logging
from datetime import UTC, datetime
from typing import Any

from nats.js import JetStreamContext
from pydantic import BaseModel, ConfigDict

from events.canonical import compact_bytes
from events.subjects import Subjects
from services.permissions import SERVICE_DURABLES

log = logging.getLogger(__name__)


def deadletter_record(
    consumer: str, stream: str, seq: int, subject: str, data: bytes, reason: str, deliveries: int
) -> dict:
    return {
        "consumer": consumer,
        "stream": stream,
        "seq": seq,
        "subject": subject,
        "reason": reason,
        "deliveries": deliveries,
        "recorded_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "data_b64": base64.b64encode(data).decode("ascii"),
    }


class DeadLetters:
    def __init__(self, js: JetStreamContext, subjects: Subjects) -> None:
        self._js = js
        self._subjects = subjects

    async def record(
        self, consumer: str, stream: str, seq: int, subject: str, data: bytes, reason: str, deliveries: int = 1
    ) -> None:
        record = deadletter_record(consumer, stream, seq, subject, data, reason, deliveries)
        log.warning("dead letter: %s could not process %s seq %d (%s): %s", consumer, stream, seq, subject, reason)
        await self._js.publish(
            self._subjects.deadletter(consumer),
            compact_bytes(record),
            headers={"Nats-Msg-Id": f"{consumer}:{stream}:{seq}"},
        )

    async def record_undecodable(self, stream: str, seq: int, subject: str, data: bytes, reason: str) -> bool:
        """Keep a log entry that is not a valid event, once (consumer `UNDECODABLE`).

        Every service process folds the whole log, and a restart without a snapshot folds it
        again: the record has a subject of its own (`<p>.deadletter.undecodable.<seq>`), so
        an entry already kept is seen (stream info with a subject filter, which the service
        may read) and not kept twice, however long ago it was. Returns whether it wrote one.
        """
        where = f"{self._subjects.deadletter(UNDECODABLE)}.{seq}"
        try:
            info = await self._js.stream_info(self._subjects.deadletter_stream, subjects_filter=where)
            if (info.state.subjects or {}).get(where):
                return False
        except Exception as exc:  # unknown: keep it (the message id still drops a recent duplicate)
            log.info("dead letters: could not check for an earlier record of %s seq %d: %s", stream, seq, exc)
        record = deadletter_record(UNDECODABLE, stream, seq, subject, data, reason, 1)
        log.warning("dead letter: log entry %s seq %d (%s) is not a valid event: %s", stream, seq, subject, reason)
        await self._js.publish(where, compact_bytes(record), headers={"Nats-Msg-Id": f"{UNDECODABLE}:{stream}:{seq}"})
        return True


UNDECODABLE = "undecodable"  # the "consumer" named for log entries that nothing can read

MAX_DELIVERIES_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"
WATCHER = "kxr-max-deliveries"  # the watcher's name in metrics and the AsyncAPI document


class MaxDeliveriesAdvisory(BaseModel):
    """The server's `io.nats.jetstream.advisory.v1.max_deliver`: the fields the watcher uses (the rest kept)."""

    model_config = ConfigDict(extra="allow")

    stream: str
    consumer: str
    stream_seq: int
    deliveries: int = 0


class MaxDeliveriesWatcher:
    """Dead-letter what JetStream gave up on: a message delivered max_deliver times, never acked.

    A worker dead-letters a message that keeps failing on its own last attempt; this catches
    the ones whose handler never got that far (the process died each time), from the
    server's own max-deliver advisory: a FastStream subscriber (core NATS, no ack) per stream
    whose consumers the service runs.
    """

    def __init__(self, js: JetStreamContext, subjects: Subjects, deadletters: DeadLetters) -> None:
        self._js = js
        self._subjects = subjects
        self._dead = deadletters

    def advisory_subjects(self) -> list[str]:
        s = self._subjects
        return [f"{MAX_DELIVERIES_ADVISORY}.{stream}.*" for stream in (s.releases_stream, s.timers_stream)]

    async def on_advisory(self, advisory: MaxDeliveriesAdvisory) -> None:
        """Keep the message the advisory names, with why; an advisory it cannot act on is logged, never fatal.

        Only for the service's own durables: whoever may read the log may create a consumer on it, with
        `max_deliver: 1`, pull once and never ack, and JetStream announces that give-up on the very subject
        this watcher listens to. Taken as the service's own, it had the service write a dead letter of a
        healthy entry, under a name the reader chose, once per entry per consumer it made."""
        if advisory.consumer not in SERVICE_DURABLES:
            log.debug("max-deliver advisory of %s ignored: not one of the service's consumers", advisory.consumer)
            return
        try:
            original = await self._js.get_msg(advisory.stream, advisory.stream_seq)
            await self._dead.record(
                advisory.consumer,
                advisory.stream,
                advisory.stream_seq,
                original.subject or "",
                original.data or b"",
                f"JetStream gave up after {advisory.deliveries} deliveries without an ack (max-deliver advisory)",
                advisory.deliveries,
            )
        except Exception as exc:
            log.warning("max-deliver advisory not recorded: %s", exc)

    def subscribe(self, registrator: Any, subject: str | None = None) -> None:
        """Declare the watcher's subscribers (or only the one on `subject`) on `registrator`, a broker
        or router: the service runs them, services/contracts/asyncapi_app.py documents them."""
        for each in [subject] if subject is not None else self.advisory_subjects():
            stream = each.split(".")[-2]

            async def on_advisory(advisory: MaxDeliveriesAdvisory) -> None:
                await self.on_advisory(advisory)

            on_advisory.__name__ = on_advisory.__qualname__ = f"max_deliveries_{stream}"
            registrator.subscriber(
                each,
                title=f"{WATCHER}-{stream}",
                description=(
                    f"The dead-letter watcher: a consumer of {stream} delivered a message max_deliver times "
                    f"without an ack; the message is kept in the dead-letter stream with why."
                ),
            )(on_advisory)


async def watch_max_deliveries(nc, js: JetStreamContext, subjects: Subjects, deadletters: DeadLetters) -> None:
    """Run the max-deliver watcher on the process's connection until cancelled."""
    from services.jetstream.subscribers import run_broker, service_broker

    broker = service_broker(nc, WATCHER)
    MaxDeliveriesWatcher(js, subjects, deadletters).subscribe(broker)
    await run_broker(broker)
