"""One-off reads of the release log: entries in order, decoded, with their positions.

A read of the whole log never spins on a hole in it (a deleted entry: services/jetstream/reader.py):
it reads past it and tells `on_missing` (first, last sequence), or says so in a warning. What it folds
then lacks that entry; the auditor's replay reports it as a violation (services/reads/audit.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import datetime
from typing import Any

from nats.js import JetStreamContext

from events.codec import DecodeError, decode_event
from events.model import Event
from events.signing import TrustRoot
from events.subjects import Subjects
from events.trust import TrustChain, follow_chain
from projections.evidence import EvidenceRecord, evidence_of
from projections.invariants import apply_signed
from projections.pointer_chain import entry_digest
from projections.position import Position
from projections.releases import ReleaseState
from projections.snapshot import undecodable_why
from projections.world import World, apply_undecodable
from services.jetstream.client import relayed_delivery
from services.jetstream.fold_gc import step as gc_step
from services.jetstream.fold_gc import young_collections_only
from services.jetstream.reader import Missing, OrderedReader, RawEntry

log = logging.getLogger(__name__)


def position_of(entry: RawEntry) -> Position:
    return Position(
        entry.seq,
        entry.subject,
        entry.headers.get("Nats-Batch-Id"),
        entry.stored_at,
        entry_digest(entry.subject, entry.data),
    )


def _reader(
    js, subjects: Subjects, filters: list[str] | None, start_seq: int = 1, on_missing: Missing | None = None
) -> OrderedReader:
    whole_log = filters is None  # every subject: consecutive sequences, so a gap means a skip or a hole
    return OrderedReader(
        js,
        subjects.releases_stream,
        filters or subjects.log_subjects(),
        start_seq,
        contiguous=whole_log,
        batch=1024,
        on_missing=on_missing,
    )


def decode_entry(entry: RawEntry, subjects: Subjects) -> Event:
    """A log entry as an event, or DecodeError. Every reader of the log decodes through here.

    An entry JetStream relayed into the log (an API answer stored on the reply subject a request
    named: any role can have one stored on any subject, docs/permissions.md "JetStream's answers")
    was written by no role, whatever its bytes say: it is refused as the entry it is, never folded
    as an operator's channel configuration or a producer's request."""
    relayed = relayed_delivery(entry.headers)
    if relayed is not None:
        why = f"relayed by JetStream from stream {relayed[:100]}: an answer stored on this subject, written by no role"
        raise DecodeError(why, [{"code": "relayed", "field": None, "message": why}])
    return decode_event(entry.data, entry.subject, subjects)


def _decoded(entry: RawEntry, subjects: Subjects) -> tuple[RawEntry, Position, Event | None]:
    try:
        event = decode_entry(entry, subjects)
    except DecodeError:
        event = None
    return entry, position_of(entry), event


def _after(entry: RawEntry, until: datetime | None) -> bool:
    return until is not None and entry.stored_at is not None and entry.stored_at > until


async def log_entries(
    js,
    subjects: Subjects,
    filters: list[str] | None = None,
    *,
    until: datetime | None = None,
    idle_timeout: float = 0.5,
    on_missing: Missing | None = None,
) -> AsyncGenerator[tuple[RawEntry, Position, Event | None], None]:
    """Every entry (or those on `filters`) up to now, or up to the server time `until`; None if it does not decode.
    A hole in the whole log goes to `on_missing` before the entry after it (else a warning)."""
    reader = _reader(js, subjects, filters, on_missing=on_missing)
    try:
        async for entries in reader.read_batches(follow=False, idle_timeout=idle_timeout):
            for entry in entries:  # decoded one by one: a caller that stops early decodes no more
                if _after(entry, until):
                    return
                yield _decoded(entry, subjects)
    finally:
        await reader.close()


async def log_batches(
    js,
    subjects: Subjects,
    filters: list[str] | None = None,
    *,
    until: datetime | None = None,
    idle_timeout: float = 0.5,
    start_seq: int = 1,
    on_missing: Missing | None = None,
) -> AsyncIterator[list[tuple[RawEntry, Position, Event | None]]]:
    """`log_entries`, a list at a time (in order, never empty), from `start_seq`: one generator step per batch.
    A hole in the whole log goes to `on_missing` before the batch after it (else a warning)."""
    reader = _reader(js, subjects, filters, start_seq, on_missing)
    try:
        async for entries in reader.read_batches(follow=False, idle_timeout=idle_timeout):
            out: list[tuple[RawEntry, Position, Event | None]] = []
            for entry in entries:
                if _after(entry, until):
                    if out:
                        yield out
                    return
                out.append(_decoded(entry, subjects))
            yield out
    finally:
        await reader.close()


def undecodable_reason(entry: RawEntry, subjects: Subjects) -> str:
    """Why an entry `log_entries` gave as None does not decode (decoded again: junk is rare)."""
    try:
        decode_entry(entry, subjects)
    except DecodeError as exc:
        return str(exc)
    return "not a valid event"  # unreachable for an entry that failed once: decoding is pure


def fold_entry(world: World, entry: RawEntry, position: Position, event: Event | None, subjects: Subjects) -> World:
    """One entry of `log_entries` into the world (signatures unchecked); see `fold_signed_entry`."""
    return fold_signed_entry(world, None, entry, position, event, subjects)[0]


def fold_signed_entry(
    world: World, service_keys, entry: RawEntry, position: Position, event: Event | None, subjects: Subjects
) -> tuple[World, str | None]:
    """One entry of `log_entries` into the world, as the service folds it. One that does not decode
    still moves its subject's sequence (and is recorded where it matters): the expected sequences an
    operator or consumer appends with are the log's real ones, not those of what could be decoded.
    With `service_keys`, a pointer or service event no service key signed counts for nothing either
    (its sequence still moves); the second value says why it counts for nothing (undecodable too)."""
    if event is None:
        reason = undecodable_reason(entry, subjects)
        return apply_undecodable(world, position, subjects, reason), undecodable_why(reason)
    return apply_signed(world, service_keys, position, event, entry.data, entry.headers, subjects)


async def load_world(js, subjects: Subjects, until: datetime | None = None, service_keys=None) -> World:
    """The log folded; with `service_keys`, signed state only (see `load_signed_world`)."""
    return (await load_signed_world(js, subjects, service_keys, until))[0]


async def load_signed_world(
    js, subjects: Subjects, service_keys, until: datetime | None = None
) -> tuple[World, dict[int, str]]:
    """The log folded as the service folds it; the map says which entries counted for nothing and why."""
    world, ignored = World(), {}
    with young_collections_only():  # the world only grows: no full collections over it while it does
        async for batch in log_batches(js, subjects, until=until):
            for entry, position, event in batch:
                world, why = fold_signed_entry(world, service_keys, entry, position, event, subjects)
                if why is not None:
                    ignored[position.seq] = why
            gc_step()
    return world, ignored


async def fold_subjects(js, subjects: Subjects, filters: list[str], service_keys=None) -> World:
    """The log's entries on `filters` (disjoint) folded in log order, as the service folds them (signatures checked
    with `service_keys`): exactly what a fold of the whole log says about whatever depends on those
    subjects alone (a release, a channel, a scope). Each filter is its own single-subject read, merged
    by sequence: nats-server serves a consumer with several filters an order of magnitude slower."""
    import heapq

    async def read(flt: str) -> list[tuple[RawEntry, Position, Event | None]]:
        return [item async for batch in log_batches(js, subjects, [flt]) for item in batch]

    reads = [await read(flt) for flt in dict.fromkeys(filters)]
    world = World()
    for entry, position, event in heapq.merge(*reads, key=lambda item: item[1].seq):
        world, _ = fold_signed_entry(world, service_keys, entry, position, event, subjects)
    return world


async def release_history(
    js, subjects: Subjects, release_id: str, before_seq: int, service_keys=None
) -> ReleaseState | None:
    """One release whole, folded from its own subjects up to (not including) `before_seq`.

    A release's state depends on its own events alone, so this is exactly what a fold of
    the whole log says about it at that point (how an archiving world restores a tombstone).
    """
    flt = subjects.release_filter(release_id)
    # how many entries its subjects hold, asked before the read (the log only grows): a one-off read
    # that ended early would hold fewer, and is refused here rather than folded as the release. (The
    # failures that first motivated this, a release listed with no target or not closed, were the
    # projector skipping an entry of the follower's queue: fixed in services/reads/projector.py `_run`)
    info = await js.stream_info(subjects.releases_stream, subjects_filter=flt)
    held = sum((info.state.subjects or {}).values())
    world, read = World(), 0
    async for entry, position, event in log_entries(js, subjects, [flt]):
        read += 1
        if position.seq < before_seq:
            world, _ = fold_signed_entry(world, service_keys, entry, position, event, subjects)
    if read < held:
        raise ShortRead(f"release {release_id}: {read} of the {held} entries on its subjects read")
    return world.release(release_id)


class ShortRead(LookupError):
    """A read of a release's own subjects came back with fewer entries than they hold."""


class ReadBackFailed(RuntimeError):
    """A closed release's own events could not be read back (`read_back`): the fold cannot go on."""


READ_BACK_TRIES = 5  # reads of one release's events before a read back gives up (0.5, 1, 2, 4 s apart)
READ_BACK_FIRST_DELAY_S = 0.5


async def read_back(
    js,
    subjects: Subjects,
    release_id: str,
    before_seq: int,
    service_keys=None,
    *,
    believe_empty_after: int,
    tries: int = READ_BACK_TRIES,
    first_delay: float = READ_BACK_FIRST_DELAY_S,
) -> ReleaseState | None:
    """`release_history`, read again when it fails or comes back with none of the release's events before
    the `believe_empty_after`-th read (a reader that knows the release has some passes more than
    `tries`: "none" is then never believed): a short read is never taken for "no such release".
    Raises `ReadBackFailed` (a RuntimeError) after `tries` reads (the caller cannot skip what it folds).
    A follower's tombstone and the projector's closed releases are read back through here."""
    delay = first_delay
    for attempt in range(1, tries + 1):
        try:
            state = await release_history(js, subjects, release_id, before_seq, service_keys)
            if state is None and attempt < believe_empty_after:
                raise LookupError(f"no events of release {release_id} before seq {before_seq}")
            return state
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if attempt == tries:
                raise ReadBackFailed(
                    f"release {release_id} (closed, changed again at seq {before_seq}) could not be read from "
                    f"the log in {tries} tries: {exc or exc.__class__.__name__}"
                ) from exc
            log.warning("release %s not restored yet (%s); trying again in %.1fs", release_id, exc, delay)
            await asyncio.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


async def load_evidence(js, subjects: Subjects, release_id: str) -> EvidenceRecord:
    filters = [subjects.release_filter(release_id), subjects.notification_filter(release_id)]
    entries = [(p, e) async for _, p, e in log_entries(js, subjects, filters) if e is not None]
    return evidence_of(release_id, entries)


async def logged_rotations(js: JetStreamContext, subjects: Subjects) -> list[tuple[int, Any]]:
    """Every `trust.rotated` in the log: (sequence, the signed root document), in log order."""
    return [
        (p.seq, e.data.root)  # type: ignore[attr-defined]  # a trust.rotated event's data is a RootModel
        async for _, p, e in log_entries(js, subjects, [subjects.trust_rotated()])
        if e is not None
    ]


async def current_chain(js: JetStreamContext, subjects: Subjects, anchor: TrustRoot) -> TrustChain:
    """The anchor advanced by every valid rotation in the log (what runtimes and `kxr trust show` trust)."""
    return follow_chain(anchor, await logged_rotations(js, subjects))
