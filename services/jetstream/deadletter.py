"""Dead letters: messages a consumer cannot process are kept, with why, and skipped.

Nothing is lost: the record holds the original bytes, subject, sequence, the
consumer that gave up and the reason. `kxr deadletter list|show` reads them.
"""

from __future__ import annotations

import base64
import json
import logging
from datetime import UTC, datetime

from nats.js import JetStreamContext

from events.canonical import compact_bytes
from events.subjects import Subjects

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


async def watch_max_deliveries(nc, js: JetStreamContext, subjects: Subjects, deadletters: DeadLetters) -> None:
    """Dead-letter what JetStream gave up on: a message delivered max_deliver times, never acked.

    A worker dead-letters a message that keeps failing on its own last attempt; this catches
    the ones whose handler never got that far (the process died each time), from the
    server's own max-deliver advisory.
    """
    import asyncio

    queue: asyncio.Queue = asyncio.Queue()
    subs = [
        await nc.subscribe(f"{MAX_DELIVERIES_ADVISORY}.{stream}.*", cb=queue.put)
        for stream in (subjects.releases_stream, subjects.timers_stream)
    ]
    try:
        while True:
            msg = await queue.get()
            try:
                advisory = json.loads(msg.data)
                stream, consumer, seq = advisory["stream"], advisory["consumer"], int(advisory["stream_seq"])
                original = await js.get_msg(stream, seq)
                await deadletters.record(
                    consumer,
                    stream,
                    seq,
                    original.subject or "",
                    original.data or b"",
                    f"JetStream gave up after {advisory.get('deliveries')} deliveries without an ack "
                    "(max-deliver advisory)",
                    int(advisory.get("deliveries") or 0),
                )
            except Exception as exc:  # an advisory we cannot act on is logged, never fatal
                log.warning("max-deliver advisory not recorded: %s", exc)
    finally:
        for sub in subs:
            await sub.unsubscribe()
