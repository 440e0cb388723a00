"""Projection snapshots in an internal object-store bucket: restart from snapshot + tail.

The log stays the source of truth: a snapshot that is missing, unreadable, of another
format, or ahead of the log (the stream was recreated) is ignored and the log is
replayed from sequence 1.
"""

from __future__ import annotations

import asyncio
import logging

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError, ObjectNotFoundError

from events.subjects import Subjects
from projections.snapshot import dump_world, load_world
from projections.world import World

log = logging.getLogger(__name__)
OBJECT = "world"
SNAPSHOT_EVERY = 1000  # applied entries between snapshots


class Snapshots:
    def __init__(self, js: JetStreamContext, subjects: Subjects) -> None:
        self._js = js
        self._subjects = subjects

    async def load(self) -> World | None:
        try:
            store = await self._js.object_store(self._subjects.snapshots_bucket)
            blob = (await store.get(OBJECT)).data
            last = (await self._js.stream_info(self._subjects.releases_stream)).state.last_seq
        except (ObjectNotFoundError, NotFoundError):
            return None
        except Exception as exc:  # any doubt: replay from 1
            log.warning("snapshot not loaded (%s); replaying the log from sequence 1", exc)
            return None
        world = load_world(blob or b"")
        if world is None or world.applied_seq > last:
            log.warning("snapshot ignored (unreadable, other format, or ahead of the log); replaying from 1")
            return None
        return world

    async def save(self, world: World) -> None:
        # serialised in a worker thread: the world is immutable, and the event loop keeps
        # switching while 10^5 tombstones are written (~0.4 s of Python that blocked it)
        blob = await asyncio.to_thread(dump_world, world)
        store = await self._js.object_store(self._subjects.snapshots_bucket)
        await store.put(OBJECT, blob)
