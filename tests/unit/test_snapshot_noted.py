"""What a snapshot keeps beside the world: the entries that counted for nothing (bounded) and the service keys."""

from __future__ import annotations

import json
import zlib

import pytest

from projections.snapshot import FORMAT, Noted, dump_world, load_snapshot, load_world
from projections.world import PROBLEM_REASON_MAX, World
from services.reads.shapes import WHY_SHOWN


def test_noted_keeps_the_newest_and_counts_every_one() -> None:
    noted = Noted(3)
    for seq in (5, 1, 9, 7, 2, 8):  # in any order
        noted[seq] = f"why {seq}"
    assert list(noted) == [7, 8, 9] and noted[9] == "why 9" and noted.total == 6
    noted[8] = "again"  # the same entry noted twice counts once
    assert noted.total == 6 and noted[8] == "again"
    noted[3] = "old"  # older than every one kept: counted, not kept
    assert 3 not in noted and noted.total == 7 and len(noted) == 3
    noted[10] = "x" * (PROBLEM_REASON_MAX + 50)  # a decode error can quote its input: cut
    assert len(noted[10]) == PROBLEM_REASON_MAX == WHY_SHOWN and list(noted) == [8, 9, 10]  # a whole fold cuts alike
    copy = noted.copy()
    noted[11] = "later"
    assert list(copy) == [8, 9, 10] and copy.total == 8 and noted.total == 9
    with pytest.raises(ValueError):
        Noted(0)


def test_a_snapshot_keeps_the_newest_noted_their_total_and_the_keys() -> None:
    world = World(applied_seq=20_000)
    small, flood = Noted(100), Noted(100)
    for seq in range(1, 101):
        small[seq] = f"release.requested not signed by a service key: unsigned ({seq})"
    for seq in range(1, 20_001):
        flood[seq] = f"release.requested not signed by a service key: unsigned ({seq})"
    blob = dump_world(world, "sha256:" + "ab" * 32, flood)
    # a flood does not grow the snapshot: the newest 100 and a count
    assert len(blob) < 2 * len(dump_world(world, "sha256:" + "ab" * 32, small))
    loaded = load_snapshot(blob)
    assert loaded is not None and loaded.world == world and loaded.keys == "sha256:" + "ab" * 32
    assert loaded.ignored == list(flood.items()) and [s for s, _ in loaded.ignored] == list(range(19_901, 20_001))
    assert loaded.ignored_total == 20_000
    unchecked = load_snapshot(dump_world(world))
    assert unchecked is not None and unchecked.keys is None and unchecked.ignored == [] and unchecked.ignored_total == 0


def test_a_format_3_snapshot_names_no_keys_and_is_not_loaded() -> None:
    image = json.loads(zlib.decompress(dump_world(World(applied_seq=5))))
    for field in ("keys", "ignored", "ignored_total"):
        del image[field]
    image["format"] = 3
    assert FORMAT == 5 and load_world(zlib.compress(json.dumps(image).encode())) is None


def test_a_format_4_snapshot_is_what_an_older_fold_made_and_is_not_loaded() -> None:
    """Format 4 was written by folds that kept a refused pin as the pinned prior and a pulled pack as LKG: the
    same log folds to other scopes today, so such a snapshot is replayed once, never resumed from."""
    image = json.loads(zlib.decompress(dump_world(World(applied_seq=5))))
    assert load_world(zlib.compress(json.dumps(image).encode())) is not None
    image["format"] = 4
    assert load_world(zlib.compress(json.dumps(image).encode())) is None
