"""Reading and writing packs in the `kx_packs` object store, streamed.

Object names are mutable in an object store (a second put replaces the chunks), so
packs are named by digest and whoever uses the bytes hashes exactly the bytes they
fetched. Reading streams chunk by chunk: a pack is never held whole in memory.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError, ObjectNotFoundError
from pydantic import ValidationError

from events.model import StoredObject
from events.subjects import Subjects
from services.jetstream.direct import SubjectStream, connection_of


class ObjectTooLarge(Exception):
    pass


def object_digest(data: bytes) -> str:
    """The digest an object store records for these bytes (nats.py's `SHA-256=<base64url>`)."""
    return encoded_digest(hashlib.sha256(data))


def encoded_digest(hasher) -> str:
    return "SHA-256=" + base64.urlsafe_b64encode(hasher.digest()).decode()


def recorded_sha256(meta_digest: object) -> bytes | None:
    """The SHA-256 an object's metadata says its bytes have (None: it says none we can read).

    Clients write it as `SHA-256=` and base64url, padded (nats.py, Go) or not (nats.js, whose
    `base64url` drops the `=`): both are the same digest."""
    if not isinstance(meta_digest, str) or not meta_digest.startswith("SHA-256="):
        return None
    encoded = meta_digest.removeprefix("SHA-256=").rstrip("=")
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (ValueError, TypeError):
        return None
    return raw if len(raw) == 32 else None


CHUNKS_PER_REQUEST = 16  # 2 MiB of nats.py's 128 KiB chunks per request, two requests held at most


class Chunks:
    """An opened object's chunks: iterate once, or close without reading."""

    def __init__(self, stream: SubjectStream | None, count: int | None = None) -> None:
        self._stream = stream
        self._count = count

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """The object's chunks, no more than its metadata counts: whoever may put chunks can
        append to an object's chunk subject, and what comes after its last chunk is not its."""
        if self._stream is None:
            return
        seen = 0
        async for stored in self._stream:
            seen += 1
            yield stored.data
            if seen == self._count:  # all of it: no need to read on to the end (and confirm it)
                return

    async def close(self) -> None:
        if self._stream is not None:
            await self._stream.close()


def as_stored_object(meta: dict | None) -> StoredObject | None:
    try:
        return (
            None
            if meta is None
            else StoredObject(
                nuid=meta.get("nuid"),
                size=int(meta.get("size", 0)),
                chunks=int(meta.get("chunks") or 0),
                digest=meta.get("digest"),
                chunk_size=(meta.get("options") or {}).get("max_chunk_size"),
            )
        )
    except (ValidationError, TypeError, ValueError):
        return None


class PackStore:
    def __init__(self, js: JetStreamContext, subjects: Subjects) -> None:
        self._js = js
        self._bucket = subjects.packs_bucket
        self._stream = f"OBJ_{self._bucket}"  # the object store's own stream (nats.py layout)

    def _meta_subject(self, name: str) -> str:
        return f"$O.{self._bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"

    async def stored_meta(self, name: str) -> dict | None:
        """The object's last metadata as stored, deleted or not (None: never put).

        Read by a direct get; "not found" from one is confirmed with the stream's leader, since a
        lagging replica or mirror may answer a direct get (services/jetstream/direct.py)."""
        try:
            msg = await self._js.get_last_msg(self._stream, self._meta_subject(name), direct=True)
        except NotFoundError:
            try:
                msg = await self._js.get_last_msg(self._stream, self._meta_subject(name))
            except NotFoundError:
                return None
        meta = json.loads(msg.data or b"{}")
        return meta if isinstance(meta, dict) else {"deleted": True}  # not metadata at all: as good as deleted

    async def live_meta(self, name: str) -> dict | None:
        """The object's metadata (None: absent or marked deleted)."""
        meta = await self.stored_meta(name)
        return None if meta is None or meta.get("deleted") else meta

    async def stored_object(self, name: str) -> StoredObject | None:
        """What distribution records of an object (None: absent or not readable as one)."""
        return as_stored_object(await self.live_meta(name))

    async def size(self, name: str) -> int | None:
        meta = await self.live_meta(name)
        return int(meta.get("size", 0)) if meta else None

    async def described(self, name: str) -> tuple[int | None, StoredObject | None]:
        """`size` and `stored_object` from one read of the metadata (one round trip, not two)."""
        meta = await self.live_meta(name)
        return (int(meta.get("size", 0)) if meta else None), as_stored_object(meta)

    async def chunks(self, name: str) -> Chunks | None:
        """The object's bytes as they are stored, chunk by chunk; None if absent.

        The first batch of chunks is already requested when this returns: open the pack,
        check something else, then iterate (or `close()` to drop it).
        """
        meta = await self.live_meta(name)
        if meta is None:
            return None
        nuid, size = meta.get("nuid"), int(meta.get("size", 0))
        if size == 0:
            return Chunks(None)
        # metadata without a nuid names no chunks: the read finds none and the size check fails closed
        return await self._open_chunks(str(nuid), meta.get("chunks"))

    async def _open_chunks(self, nuid: str, count) -> Chunks:
        stream = SubjectStream(
            connection_of(self._js), self._stream, f"$O.{self._bucket}.C.{nuid}", batch=CHUNKS_PER_REQUEST
        )
        return Chunks(await stream.start(), int(count) if isinstance(count, int) and count > 0 else None)

    async def read(self, name: str, max_bytes: int) -> bytes | None:
        """A small object (a manifest) whole, refusing anything over `max_bytes`."""
        stream = await self.chunks(name)
        if stream is None:
            return None
        out = bytearray()
        async for chunk in stream:
            out += chunk
            if len(out) > max_bytes:
                raise ObjectTooLarge(f"{name} is over {max_bytes} bytes")
        return bytes(out)

    async def put(self, name: str, data: bytes) -> None:
        """Put an object without ever purging: producers may not purge (docs/permissions.md).

        The same bytes again are already there. Other bytes under an existing name (a
        re-signed manifest) get new metadata, which rolls the old one up; the old chunks
        stay in the stream, unreachable from the name, since only purging would remove them.
        A pack's name is the digest of its bytes: whoever reads it hashes what it got.
        """
        store = await self._js.object_store(self._bucket)
        try:
            stored = await store.get_info(name)
        except ObjectNotFoundError:
            stored = None
        if stored is None:
            await store.put(name, data)  # nothing to replace: nats.py purges nothing
        elif stored.digest != object_digest(data):
            await self._replace(name, data)

    async def _replace(self, name: str, data: bytes) -> None:
        """nats.py's object put (chunks on a fresh nuid, then the metadata with a rollup) minus
        its last step, purging the old chunks."""
        nuid = secrets.token_hex(11)
        chunk = 128 * 1024
        for at in range(0, len(data), chunk):
            await self._js.publish(f"$O.{self._bucket}.C.{nuid}", data[at : at + chunk])
        await self._publish_meta(
            name,
            StoredObject(
                nuid=nuid, size=len(data), chunks=-(-len(data) // chunk), digest=object_digest(data), chunk_size=chunk
            ),
        )

    async def _publish_meta(self, name: str, obj: StoredObject) -> None:
        """The object's metadata, as nats.py writes it: one message, rolling up the ones before."""
        from nats.js.api import Header, ObjectInfo, ObjectMetaOptions
        from nats.js.kv import MSG_ROLLUP_SUBJECT

        info = ObjectInfo(
            name=name,
            bucket=self._bucket,
            nuid=obj.nuid,
            size=obj.size,
            chunks=obj.chunks,
            mtime=datetime.now(UTC).isoformat(),
            digest=obj.digest,
            options=ObjectMetaOptions(max_chunk_size=obj.chunk_size) if obj.chunk_size else None,
        )
        await self._js.publish(
            self._meta_subject(name), json.dumps(info.as_dict()).encode(), headers={Header.ROLLUP: MSG_ROLLUP_SUBJECT}
        )

    async def restore(self, name: str, obj: StoredObject) -> str:
        """Make `name` read as `obj` again (what distribution recorded), from its chunks.

        "intact": its metadata already is `obj`; "restored": it was not (deleted, re-pointed,
        altered) and the chunks `obj` names still hash to its digest, so the metadata was
        re-published; "bytes_gone": they do not (or are not there), nothing was written.
        """
        if await self.stored_object(name) == obj:
            return "intact"
        hasher, size = hashlib.sha256(), 0
        chunks = await self._open_chunks(obj.nuid, obj.chunks) if obj.size else Chunks(None)
        async for data in chunks:
            hasher.update(data)
            size += len(data)
        if size != obj.size or encoded_digest(hasher) != obj.digest:
            return "bytes_gone"
        await self._publish_meta(name, obj)
        return "restored"

    async def exists(self, name: str) -> bool:
        store = await self._js.object_store(self._bucket)
        try:
            await store.get_info(name)
        except ObjectNotFoundError:
            return False
        return True
