"""Projection snapshots in an internal object-store bucket: restart from snapshot + tail.

The log stays the source of truth: a snapshot that is missing, unreadable, of another
format, ahead of the log (the stream was recreated) or folded under other service keys than
the reader's is ignored and the log is replayed from sequence 1.

A snapshot is signed by the service process that saved it (`sealed`: Ed25519 over the SHA-256 of
its bytes), and a service that trusts service keys loads only one a trusted key signed. The
bucket's subjects are the service's alone by permission, but JetStream can be made to store an
answer on any of them (docs/permissions.md "JetStream's answers"): an unsigned world restored
at start-up would be whatever its writer wanted the pointers and last-known-goods to be. A
snapshot saved before this rule (unsigned) is ignored once: the log is replayed from 1.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sys

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError, ObjectNotFoundError

from events.service_signing import ServiceKeys, signed_bytes, verify_job
from events.signing import SigningKey, b64encode, normal_keyid
from events.subjects import Subjects
from projections.snapshot import Noted, Snapshot, dump_world, load_snapshot
from projections.world import World
from services.reads.model_reads import keys_id

log = logging.getLogger(__name__)
OBJECT = "world"
SNAPSHOT_EVERY = 1000  # applied entries between snapshots


SEALED = b"kx-snapshot-signed/1\n"  # then {"keyid", "signature"} on one line, then the snapshot's bytes
SIGNED_AS = "kx.snapshot"  # what a snapshot's signature covers besides its digest (events/service_signing.py)


def sealed(blob: bytes, signer: SigningKey) -> bytes:
    """`blob` with its signer's signature over its SHA-256 in front."""
    signature = signer.sign(signed_bytes(SIGNED_AS, hashlib.sha256(blob).digest()))
    head = json.dumps({"keyid": signer.keyid, "signature": b64encode(signature)}).encode()
    return SEALED + head + b"\n" + blob


def unsealed(data: bytes, service_keys: ServiceKeys | None) -> tuple[bytes | None, str]:
    """(the snapshot's bytes, "") when a key of `service_keys` signed them, else (None, why not). Pure.
    Without service keys (a fold that checks no signature) any snapshot is taken, signed or not."""
    if not data.startswith(SEALED):
        return (data, "") if service_keys is None else (None, "it is not signed")
    head, _, blob = data[len(SEALED) :].partition(b"\n")
    if service_keys is None:
        return blob, ""
    try:
        doc = json.loads(head)
        keyid, signature = normal_keyid(str(doc["keyid"])), str(doc["signature"])
    except (ValueError, KeyError, TypeError):
        return None, "its signature line is not readable"
    key = service_keys.keys.get(keyid)
    if key is None:
        return None, f"it is signed by {keyid[:16]}, not a trusted service key"
    if not verify_job(key.public, signature, SIGNED_AS, hashlib.sha256(blob).digest()):
        return None, "its signature does not verify"
    return blob, ""


class Snapshots:
    def __init__(self, js: JetStreamContext, subjects: Subjects, signer: SigningKey | None = None) -> None:
        self._js = js
        self._subjects = subjects
        self._signer = signer  # signs what `save` writes (None: unsigned, for folds that check no signature)

    async def read(self, service_keys) -> Snapshot | None:
        """The snapshot a fold trusting `service_keys` (None: signatures unchecked) may start from, or None.

        A snapshot folded under other keys counted other entries (a service event signed by a key
        no longer trusted, or one newly trusted) and is not this fold's state: one warning, and the
        log is replayed from sequence 1, as for one ahead of the log."""
        snapshot = await self._fetch(service_keys)
        if snapshot is None:
            return None
        trusted = keys_id(service_keys)
        if snapshot.keys != trusted:
            log.warning(
                "snapshot ignored: folded under service keys %s, this process trusts %s; replaying from 1",
                snapshot.keys or "none (signatures unchecked)",
                trusted or "none (signatures unchecked)",
            )
            return None
        return snapshot

    async def load(self) -> World | None:
        """The snapshot's world, whatever keys it was folded under (a bench comparing it with a replay)."""
        snapshot = await self._fetch(None)
        return snapshot.world if snapshot is not None else None

    async def _fetch(self, service_keys: ServiceKeys | None) -> Snapshot | None:
        try:
            store = await self._js.object_store(self._subjects.snapshots_bucket)
            data = (await store.get(OBJECT)).data
            last = (await self._js.stream_info(self._subjects.releases_stream)).state.last_seq
        except (ObjectNotFoundError, NotFoundError):
            return None
        except Exception as exc:  # any doubt: replay from 1
            log.warning("snapshot not loaded (%s); replaying the log from sequence 1", exc)
            return None
        blob, why = unsealed(data or b"", service_keys)
        if blob is None:
            log.warning("snapshot ignored: %s by a trusted service key; replaying the log from sequence 1", why)
            return None
        snapshot = load_snapshot(blob)
        if snapshot is None or snapshot.world.applied_seq > last:
            log.warning("snapshot ignored (unreadable, other format, or ahead of the log); replaying from 1")
            return None
        return snapshot

    async def save(self, world: World, service_keys=None, ignored: Noted | None = None) -> None:
        """Save `world`, folded trusting `service_keys`, with the entries that fold noted as counting for nothing."""
        # serialised in a worker thread: the world is immutable, and the event loop keeps
        # switching while 10^5 tombstones are written (~0.4 s of Python that blocked it);
        # `ignored` is copied here, on the loop, as the fold keeps noting
        noted = ignored.copy() if ignored is not None else None
        blob = await asyncio.to_thread(_dump_aside, world, keys_id(service_keys), noted)
        if self._signer is not None:
            blob = sealed(blob, self._signer)
        store = await self._js.object_store(self._subjects.snapshots_bucket)
        await store.put(OBJECT, blob)


# While the dump runs, the event loop waits up to the interpreter's switch interval (5 ms) for the
# GIL after each call that released it (every send, every poll), which put ~0.4 s of degraded
# latency into each snapshot at 10^5 tombstones. A shorter interval for the dump's thread alone
# keeps each of those waits under a millisecond; the dump takes a little longer, on the side.
DUMP_SWITCH_INTERVAL_S = 0.0005


def _dump_aside(world: World, keys: str | None, noted: Noted | None) -> bytes:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(previous, DUMP_SWITCH_INTERVAL_S))
    try:
        return dump_world(world, keys, noted)
    finally:
        sys.setswitchinterval(previous)
