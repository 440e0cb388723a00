"""Trust-root operations: read the chain from the log, publish a rotation."""

from __future__ import annotations

from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from events.codec import make_event
from events.model import Actor
from events.signing import SigningKey, TrustRoot
from events.subjects import Subjects
from events.trust import TrustChain, follow_chain, sign_root, verify_rotation
from services.jetstream.log import Entry, EventLog
from services.jetstream.log_reads import log_entries


async def logged_rotations(js: JetStreamContext, subjects: Subjects) -> list[tuple[int, Any]]:
    return [
        (p.seq, e.data.root)  # type: ignore[attr-defined]  # a trust.rotated event's data is a RootModel
        async for _, p, e in log_entries(js, subjects, [subjects.trust_rotated()])
        if e is not None
    ]


async def current_chain(js: JetStreamContext, subjects: Subjects, anchor: TrustRoot) -> TrustChain:
    return follow_chain(anchor, await logged_rotations(js, subjects))


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
