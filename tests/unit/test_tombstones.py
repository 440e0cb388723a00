"""A service's world keeps closed releases as tombstones; folding that way must agree with a
whole fold at every step (pure: the follower's log read is modelled by filtering the entries)."""

from __future__ import annotations

from pathlib import Path

import pytest

from events.subjects import Subjects
from projections.position import Position
from projections.snapshot import FORMAT, dump_world, load_world
from projections.world import (
    NeedsHistory,
    Tombstone,
    World,
    apply,
    apply_undecodable,
    archive_all,
    archive_closed,
    fold,
    needs_history,
    restore,
)
from tests.unit.archive_support import own_history
from tests.unit.test_projections import P0, P1, P2, Log
from tests.unit.test_replay_decisions import HISTORIES, load


def fold_archiving(entries) -> tuple[World, int]:
    """As the service's follower does it: tombstone on close, restore when a closed release changes."""
    world, restores = World(), 0
    for position, event in entries:
        if needs_history(world, event):
            world = restore(world, own_history(entries, event.release_id, position.seq, Subjects()))
            restores += 1
        world = archive_closed(apply(world, position, event), event)
    return world, restores


def story_with_life_after_close() -> Log:
    log = Log()
    log.channel()
    log.point("internal", P0)
    log.point("rest", P0)
    log.two_stage_success("r1")
    log.note("r1", "annotated", "looked fine")
    log.requested("r1", P2)  # a second request for a closed id: the first one stands
    log.rollback_started("r1", {"internal": P0, "rest": P0}, trigger="tenant_impact")  # the operator, after close
    log.rolled_back("r1", {"internal": P0, "rest": P0})
    log.closed("r1", "rolled_back")
    log.requested("r2", P2)
    log.closed("r2", "rejected")
    return log


def test_archiving_fold_equals_the_whole_fold_archived_at_every_step() -> None:
    entries = story_with_life_after_close().entries()
    for end in range(1, len(entries) + 1):
        archived, _ = fold_archiving(entries[:end])
        assert archived == archive_all(fold(entries[:end])), f"differs after {end} entries"
    _, restores = fold_archiving(entries)
    assert restores == 1  # only the rollback after close needed the release whole


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
def test_recorded_histories_fold_the_same_with_tombstones(path: Path) -> None:
    entries = load(path)
    archived, _ = fold_archiving(entries)
    whole = fold(entries)
    assert archived == archive_all(whole)
    assert archived.tombstones and not any(r.closed for r in archived.releases.values())
    assert all(archived.tombstones[r].outcome == whole.release(r).outcome for r in archived.tombstones.keys())


def test_a_tombstone_keeps_sequence_and_outcome_and_the_id_stays_known() -> None:
    log = Log()
    log.two_stage_success("r1")
    world = archive_all(log.world())
    assert world.release("r1") is None and world.known("r1") and not world.known("r9")
    assert world.tombstones["r1"] == Tombstone(last_seq=len(log.events), outcome="success")
    assert "r1" not in world.in_flight


@pytest.mark.parametrize("late", ["annotated", "requested"])
def test_events_that_leave_a_closed_release_as_it_was_only_move_its_sequence(late: str) -> None:
    log = Log()
    log.two_stage_success("r1")
    event = log.note("r1", "annotated") if late == "annotated" else log.requested("r1", P2)
    entries = log.entries()
    before = archive_all(fold(entries[:-1]))
    assert not needs_history(before, event)
    after = apply(before, *entries[-1])
    assert after.tombstones["r1"] == Tombstone(last_seq=len(entries), outcome="success")
    assert after.applied_seq == len(entries)


def test_a_change_to_a_tombstoned_release_refuses_to_fold_without_its_history() -> None:
    log = Log()
    log.two_stage_success("r1")
    event = log.rollback_started("r1", {"internal": P0, "rest": P0}, trigger="tenant_impact")
    entries = log.entries()
    world = archive_all(fold(entries[:-1]))
    assert needs_history(world, event)
    with pytest.raises(NeedsHistory, match="r1"):
        apply(world, *entries[-1])
    restored = restore(world, fold(entries[:-1]).release("r1"))
    assert apply(restored, *entries[-1]).release("r1").phase == "rolling_back"


def test_restore_refuses_a_release_read_short_of_its_tombstone() -> None:
    log = Log()
    log.two_stage_success("r1")
    log.note("r1", "annotated")
    entries = log.entries()
    world = archive_all(fold(entries))
    with pytest.raises(ValueError, match="tombstone"):
        restore(world, fold(entries[:-1]).release("r1"))  # a read that missed the annotation
    with pytest.raises(ValueError, match="not tombstoned"):
        restore(fold(entries), fold(entries).release("r1"))


def test_undecodable_entry_on_a_tombstoned_release_bumps_its_sequence() -> None:
    log = Log()
    log.requested("r1", P1)
    log.closed("r1", "rejected")
    world = archive_all(log.world())
    after = apply_undecodable(world, Position(seq=10, subject="kx.release.r1.annotated"), Subjects())
    assert after.tombstones["r1"] == Tombstone(last_seq=10, outcome="rejected")


def test_snapshot_keeps_tombstones_and_in_flight_releases_whole() -> None:
    log = story_with_life_after_close()
    log.requested("r3", P1)  # in flight
    world = archive_all(log.world())
    loaded = load_world(dump_world(world))
    assert loaded == world
    assert loaded.release("r3").requested is not None and set(loaded.tombstones.keys()) == {"r1", "r2"}


def test_a_snapshot_of_the_previous_format_is_ignored() -> None:
    import json
    import zlib

    image = json.loads(zlib.decompress(dump_world(Log().world())))
    image["format"] = FORMAT - 1
    del image["tombstones"]
    assert load_world(zlib.compress(json.dumps(image).encode())) is None
