"""Event ids: fresh ones for new facts, derived ones for consumer outputs.

A consumer's output id is a pure function of (input event id, consumer, step), so a
redelivered input produces byte-for-byte the same id and JetStream's duplicate
window (Nats-Msg-Id) drops the second append: exactly-once effects on an
at-least-once bus.
"""

from __future__ import annotations

import os
import time
import uuid


def new_event_id() -> str:
    """UUIDv7: time-ordered, so ids sort roughly by creation."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (
        (ms & ((1 << 48) - 1)) << 80
        | (0x7 << 76)
        | ((rand >> 64) & 0xFFF) << 64
        | (0b10 << 62)
        | (rand & ((1 << 62) - 1))
    )
    return str(uuid.UUID(int=value))


_NAMESPACE = uuid.UUID("6f1d3c2a-5b7e-4c1a-9a59-4b0c8e1f2d3a")


def derived_event_id(cause_id: str, consumer: str, step: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{cause_id}/{consumer}/{step}"))
