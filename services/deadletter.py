"""Dead letters: messages a consumer cannot process are kept, with why, and skipped.

Nothing is lost: the record holds the original bytes, subject, sequence, the
consumer that gave up and the reason. `kxr deadletter list|show` reads them.
"""

from __future__ import annotations

import base64
import logging
from datetime import datetime, timezone

from nats.js import JetStreamContext

from events.canonical import compact_bytes
from events.subjects import Subjects

log = logging.getLogger(__name__)


def deadletter_record(consumer: str, stream: str, seq: int, subject: str, data: bytes, reason: str, deliveries: int) -> dict:
    return {
        "consumer": consumer,
        "stream": stream,
        "seq": seq,
        "subject": subject,
        "reason": reason,
        "deliveries": deliveries,
        "recorded_at": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        "data_b64": base64.b64encode(data).decode("ascii"),
    }


class DeadLetters:
    def __init__(self, js: JetStreamContext, subjects: Subjects) -> None:
        self._js = js
        self._subjects = subjects

    async def record(self, consumer: str, stream: str, seq: int, subject: str, data: bytes, reason: str, deliveries: int = 1) -> None:
        record = deadletter_record(consumer, stream, seq, subject, data, reason, deliveries)
        log.warning("dead letter: %s could not process %s seq %d (%s): %s", consumer, stream, seq, subject, reason)
        await self._js.publish(
            self._subjects.deadletter(consumer),
            compact_bytes(record),
            headers={"Nats-Msg-Id": f"{consumer}:{stream}:{seq}"},
        )
