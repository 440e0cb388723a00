"""Trust-root rotation: sign a new root with the old and new keys, check it, append `trust.rotated`.

Reading the chain in force is a log read (services/jetstream/log_reads.py `current_chain`)."""

from __future__ import annotations

from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from events.codec import make_event
from events.model import Actor
from events.signing import SigningKey, TrustRoot
from events.trust import sign_root, verify_rotation
from services.jetstream.log import Entry, EventLog
from services.jetstream.log_reads import current_chain


async def rotate(
    log: EventLog,
    js: JetStreamContext,
    anchor: TrustRoot,
    new_root: dict[str, Any],
    keys: list[SigningKey],
    actor: Actor,
    rationale: str = "",
) -> tuple[int, TrustRoot]:
    """Sign `new_root` with `keys`, check it would be accepted, and append `trust.rotated`."""
    chain = await current_chain(js, log.subjects, anchor)
    doc = sign_root(new_root, keys)
    new = verify_rotation(chain.current, doc)  # RotationError: refused here, before anything is published
    subject = log.subjects.trust_rotated()
    try:
        last = (await js.get_last_msg(log.subjects.releases_stream, subject)).seq
    except NotFoundError:
        last = 0
    event = make_event("trust.rotated", {"root": doc, "version": new.version, "rationale": rationale}, actor=actor)
    return await log.append(Entry(event, last)), new
