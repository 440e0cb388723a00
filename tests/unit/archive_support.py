"""The archiving replay (`services.reads.audit.replay`, its default) against the whole fold, pure.

`replay_archiving` runs the replay's own steps (projections/audit_archive.py) over an in-memory
log read in batches of a given size; a buried release is read back from the log's entries on its
own subjects, as `services.jetstream.log_reads.release_history` reads it from NATS.
`assert_archiving_agrees` is called by the invariant stories (tests/unit/test_audit_invariants.py),
the lifecycle model after each run and the recorded histories (tests/unit/test_audit_archive.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from events.model import Event
from events.subjects import Subjects
from projections.audit_archive import bury, closed_in, restored, to_restore
from projections.invariants import Audit, audit_entry, finish
from projections.position import Position
from projections.releases import ReleaseState
from projections.world import World, apply, apply_undecodable
from services.reads.audit import summary

Entries = Sequence[tuple[Position, Event | None]]
BATCH_SIZES = (1, 2, 3, 7, 64)  # read batches: every boundary, odd ones, and most of a story in one


def own_history(entries: Entries, release_id: str, before_seq: int, subjects: Subjects) -> ReleaseState:
    """The release folded from the entries on its own subjects before `before_seq` (what NATS would return)."""
    world = World()
    for position, event in entries:
        if position.seq >= before_seq:
            break
        family, tokens = subjects.parse(position.subject)
        if family == "release" and len(tokens) == 2 and tokens[0] == release_id:  # release_filter
            world = apply(world, position, event) if event is not None else apply_undecodable(world, position, subjects)
    state = world.release(release_id)
    assert state is not None, f"{release_id} was buried, yet has no events before seq {before_seq}"
    return state


def replay_archiving(entries: Entries, batch_size: int, subjects: Subjects) -> tuple[Audit, int]:
    """The log folded as the replay folds it with `archive` on; also how many releases were read back."""
    audit, restores = Audit(), 0
    for start in range(0, len(entries), batch_size):
        batch = entries[start : start + batch_size]
        read_back_ids = to_restore(audit, (event for _, event in batch))
        for release_id in read_back_ids:
            audit = restored(audit, own_history(entries, release_id, batch[0][0].seq, subjects))
        restores += len(read_back_ids)
        for position, event in batch:
            audit = audit_entry(audit, position, event, subjects)
        audit = bury(audit, closed_in(event for _, event in batch))
    return finish(audit), restores


def whole_replay(entries: Entries, subjects: Subjects) -> Audit:
    audit = Audit()
    for position, event in entries:
        audit = audit_entry(audit, position, event, subjects)
    return finish(audit)


def assert_same_releases(archived: World, whole: World) -> None:
    """Each release the archiving world holds whole is the whole fold's (read back ones included), each
    tombstone the whole fold's closed release. (`promotion_confirmed_by` aside: a mark no check reads,
    set by another release's event, so never in a release's own history: see `audit_archive.touched`.)"""
    for release_id, state in archived.releases.items():
        other = whole.release(release_id)
        assert other is not None and replace(state, promotion_confirmed_by=None) == replace(
            other, promotion_confirmed_by=None
        ), release_id
    for release_id, stone in archived.tombstones.items():
        other = whole.release(release_id)
        assert other is not None and other.closed, release_id
        assert (stone.last_seq, stone.outcome) == (other.last_seq, other.outcome), release_id
    assert len(archived.releases) + len(archived.tombstones) == len(whole.releases)


def assert_archiving_agrees(entries: Entries, subjects: Subjects, whole: Audit | None = None) -> int:
    """Every read-batch size gives the whole fold's violations (in order) and summary; returns the
    most releases any size read back (a story that never touches a closed release reads back none)."""
    whole = whole if whole is not None else whole_replay(entries, subjects)
    most = 0
    for size in BATCH_SIZES:
        archived, restores = replay_archiving(entries, size, subjects)
        assert archived.violations == whole.violations, f"read in batches of {size}"
        assert summary(archived) == summary(whole), f"read in batches of {size}"
        assert_same_releases(archived.world, whole.world)
        most = max(most, restores)
    return most


def record_read_backs(monkeypatch) -> list[tuple[str, int]]:
    """For a replay against NATS: each entry its own read batch (so a close and the next entry are
    never read together) and every read back recorded, (release id, before seq), once it succeeded."""
    from services.reads import audit as audit_module

    reads: list[tuple[str, int]] = []
    real_read_back, real_batches = audit_module.read_back, audit_module.log_batches

    async def recorded(js, subjects, release_id, before_seq, *args, **kwargs):
        state = await real_read_back(js, subjects, release_id, before_seq, *args, **kwargs)
        reads.append((release_id, before_seq))
        return state

    async def one_at_a_time(*args, **kwargs):
        async for batch in real_batches(*args, **kwargs):
            for item in batch:
                yield [item]

    monkeypatch.setattr(audit_module, "read_back", recorded)
    monkeypatch.setattr(audit_module, "log_batches", one_at_a_time)
    return reads
