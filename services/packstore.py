"""Reading and writing packs in the `kx_packs` object store, streamed.

Object names are mutable in an object store (a second put replaces the chunks), so
packs are named by digest and whoever uses the bytes hashes exactly the bytes they
fetched. Reading streams chunk by chunk: a pack is never held whole in memory.
"""

from __future__ import annotations

import base64
import json
from typing import AsyncIterator

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError, ObjectNotFoundError

from events.subjects import Subjects
from .reader import OrderedReader


class ObjectTooLarge(Exception):
    pass


class PackStore:
    def __init__(self, js: JetStreamContext, subjects: Subjects) -> None:
        self._js = js
        self._bucket = subjects.packs_bucket
        self._stream = f"OBJ_{self._bucket}"  # the object store's own stream (nats.py layout)

    def _meta_subject(self, name: str) -> str:
        return f"$O.{self._bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"

    async def _meta(self, name: str) -> dict | None:
        try:
            msg = await self._js.get_last_msg(self._stream, self._meta_subject(name))
        except NotFoundError:
            return None
        meta = json.loads(msg.data or b"{}")
        return None if meta.get("deleted") else meta

    async def size(self, name: str) -> int | None:
        meta = await self._meta(name)
        return int(meta.get("size", 0)) if meta else None

    async def chunks(self, name: str) -> AsyncIterator[bytes] | None:
        """The object's bytes as they are stored, chunk by chunk; None if absent."""
        meta = await self._meta(name)
        if meta is None:
            return None
        nuid, size = meta.get("nuid"), int(meta.get("size", 0))
        return self._iter_chunks(nuid, size)

    async def _iter_chunks(self, nuid: str, size: int) -> AsyncIterator[bytes]:
        if size == 0:
            return
        reader = OrderedReader(self._js, self._stream, [f"$O.{self._bucket}.C.{nuid}"], batch=64)
        try:
            async for entry in reader.read(follow=False):
                yield entry.data
                if entry.pending == 0:
                    return
        finally:
            await reader.close()

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
        store = await self._js.object_store(self._bucket)
        await store.put(name, data)

    async def exists(self, name: str) -> bool:
        store = await self._js.object_store(self._bucket)
        try:
            await store.get_info(name)
        except ObjectNotFoundError:
            return False
        return True
