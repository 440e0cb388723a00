"""Read-side helpers for `kxr`: rebuild state from the log for one command."""

from __future__ import annotations

from events.codec import DecodeError, decode_event
from events.subjects import Subjects
from projections.evidence import EvidenceRecord, evidence_of
from projections.position import Position
from projections.world import World, apply
from services.reader import OrderedReader


async def load_world(js, subjects: Subjects) -> World:
    world = World()
    reader = OrderedReader(js, subjects.releases_stream, subjects.log_subjects(), contiguous=True, batch=1024)
    try:
        async for entry in reader.read(follow=False, idle_timeout=0.5):
            try:
                event = decode_event(entry.data, entry.subject, subjects)
            except DecodeError:
                continue
            world = apply(world, Position(entry.seq, entry.subject, entry.headers.get("Nats-Batch-Id")), event)
    finally:
        await reader.close()
    return world


async def load_evidence(js, subjects: Subjects, release_id: str) -> EvidenceRecord:
    entries = []
    reader = OrderedReader(js, subjects.releases_stream, [subjects.release_filter(release_id)], batch=1024)
    try:
        async for entry in reader.read(follow=False, idle_timeout=0.5):
            try:
                event = decode_event(entry.data, entry.subject, subjects)
            except DecodeError:
                continue
            entries.append((Position(entry.seq, entry.subject, entry.headers.get("Nats-Batch-Id")), event))
    finally:
        await reader.close()
    return evidence_of(release_id, entries)
