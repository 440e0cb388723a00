"""Given a log, when the auditor's replay keeps each closed release as a tombstone (its default, for
the memory and speed of a 1M-entry replay: projections/audit_archive.py), then it reports exactly
what the whole fold reports — at every read-batch size, violation for violation, the same summary —
including the entries that reach a closed release again: an operator's rollback after close, a
pointer whose data alone names a closed release, a release closed inside an atomic batch that is
being read, a release that closed after an illegal step. Pure (tests/unit/archive_support.py; the
replay against NATS: tests/integration/test_audit.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from events.subjects import Subjects
from tests.unit.archive_support import assert_archiving_agrees, replay_archiving, whole_replay
from tests.unit.test_audit_invariants import Story, codes_at, lines, rolling_back, story
from tests.unit.test_projections import P0, P1, P2
from tests.unit.test_replay_decisions import HISTORIES, load
from tests.unit.test_tombstones import story_with_life_after_close

SUBJECTS = Subjects()


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
def test_recorded_histories_replay_the_same_with_closed_releases_buried(path: Path) -> None:
    entries = load(path)
    assert_archiving_agrees(entries, SUBJECTS)
    archived, _ = replay_archiving(entries, 64, SUBJECTS)
    assert archived.world.tombstones, "nothing was buried: the comparison proves nothing"
    assert not any(r.closed and not r.anomalies for r in archived.world.releases.values())


def test_a_closed_release_changed_again_is_read_back_when_touched_and_reported_alike() -> None:
    """r1 closed, then an annotation, a second request, an operator's rollback and a second close."""
    entries = story_with_life_after_close().entries()
    assert assert_archiving_agrees(entries, SUBJECTS) == 1  # read back at the annotation, whole after it
    archived, _ = replay_archiving(entries, 1, SUBJECTS)
    # both end whole: each took an illegal step (r1 a request after close, r2 a close straight after
    # its request), which `finish` reports from the release whole
    assert set(archived.world.releases.keys()) == {"r1", "r2"} and not archived.world.tombstones


def test_a_release_read_back_stays_whole_until_it_closes_again() -> None:
    """Read back once for the first annotation after close; the second finds it whole (no read back
    per touch: a log that keeps touching closed releases would otherwise cost a log read each time)."""
    s = story()  # r0 closed success
    s.log.requested("r5", P2)
    s.log.note("r0", "annotated", "looked fine")
    s.log.requested("r6", P2)
    s.log.note("r0", "annotated", "still fine")
    assert assert_archiving_agrees(entries_of(s), SUBJECTS) == 1
    archived, _ = replay_archiving(entries_of(s), 1, SUBJECTS)
    assert archived.world.release("r0") is not None and "r0" not in archived.world.tombstones


def entries_of(s: Story):
    from dataclasses import replace

    return [(replace(p, batch_id=s.batch_of.get(p.seq)), e) for p, e in s.log.entries()]


def pointer_naming_in_data_only(s: Story, cohort: str, p: dict, release_id: str):
    """A rollout pointer as the activator would chain it, whose envelope names no release (hostile)."""
    s.pointer(cohort, p, release_id)
    s.log.events[-1] = hostile = s.log.events[-1].model_copy(update={"release_id": None})
    assert hostile.data.release_id == release_id
    return hostile


def test_a_pointer_whose_data_alone_names_a_closed_release_is_judged_on_that_release_whole() -> None:
    """The envelope names no release, the pointer's data names r0 (closed): the checks read r0 from
    the data, so the replay reads r0 back first (else: `activation_without_verification`)."""
    s = story()
    s.log.note("r0", "annotated", "after close")  # r0 read back here: whole again...
    s.log.closed("r0", "success")  # ...and an illegal second close: r0 stays whole
    s.log.requested("r5", P2)
    s.log.note("r5", "annotated", "an entry or two, so the pointer is read in a batch of its own")
    pointer = pointer_naming_in_data_only(s, "rest", P0, "r0")
    whole = whole_replay(entries_of(s), SUBJECTS)
    assert "activation_without_verification" not in codes_at(whole, s.seq_of(pointer)), lines(whole)
    assert codes_at(whole, s.seq_of(pointer)), lines(whole)  # reported, on r0 whole
    assert assert_archiving_agrees(entries_of(s), SUBJECTS, whole) >= 1


def test_a_pointer_whose_data_alone_names_a_buried_release_reads_it_back() -> None:
    """As above with r0 buried when the pointer comes (closed once, untouched since)."""
    s = story()
    s.log.requested("r5", P2)
    pointer = pointer_naming_in_data_only(s, "rest", P0, "r0")
    whole = whole_replay(entries_of(s), SUBJECTS)
    assert "activation_without_verification" not in codes_at(whole, s.seq_of(pointer)), lines(whole)
    assert assert_archiving_agrees(entries_of(s), SUBJECTS, whole) == 1


def test_a_release_closed_inside_an_atomic_batch_is_buried_at_once_and_its_pairing_still_holds() -> None:
    """r1's rollback pointers, its `rolled_back` and its close in one batch, read one entry at a time:
    r1 is buried before the batch ends, and the pairing judged then needs only the claims, each
    keyed by r1's target when its entry was folded (r1 whole then)."""
    s = rolling_back()
    with s.batch("b-odd"):
        s.emit(s.rollback("r1"), group="b-odd")
        s.log.closed("r1", "rolled_back")
    s.log.requested("r2", P2)  # the entry after the batch
    whole = whole_replay(entries_of(s), SUBJECTS)
    assert whole.violations == (), lines(whole)
    assert_archiving_agrees(entries_of(s), SUBJECTS, whole)
    archived, _ = replay_archiving(entries_of(s), 1, SUBJECTS)
    assert {"r0", "r1"} <= set(archived.world.tombstones.keys())


def test_a_release_that_closed_after_an_illegal_step_stays_whole_and_is_reported() -> None:
    s = story()
    s.log.requested("r1", P1)
    s.record("r1", P1)  # activated straight from requested: illegal
    s.log.closed("r1", "success")
    s.log.requested("r2", P2)
    whole = whole_replay(entries_of(s), SUBJECTS)
    assert any(v.code == "illegal_transition" and "r1" in v.message for v in whole.violations), lines(whole)
    assert_archiving_agrees(entries_of(s), SUBJECTS, whole)
    archived, _ = replay_archiving(entries_of(s), 1, SUBJECTS)
    assert archived.world.release("r1") is not None and "r1" not in archived.world.tombstones


async def test_a_closed_release_that_cannot_be_read_back_fails_the_replay_in_one_clear_line(monkeypatch) -> None:
    """The replay cannot fold on without the release: after its tries, `read_back` raises
    `ReadBackFailed`, which `kxr audit replay` prints as one line naming the release (exit 2)."""
    from services.cli.main import _failure
    from services.jetstream import log_reads

    async def short(*_args, **_kwargs):
        raise log_reads.ShortRead("release r1: 3 of the 9 entries on its subjects read")

    monkeypatch.setattr(log_reads, "release_history", short)
    with pytest.raises(log_reads.ReadBackFailed) as failed:
        await log_reads.read_back(None, SUBJECTS, "r1", 18, believe_empty_after=3, tries=2, first_delay=0)
    line, status = _failure(failed.value)
    assert status == 2 and line == (
        "kxr: error: release r1 (closed, changed again at seq 18) could not be read from the log in 2 tries: "
        "release r1: 3 of the 9 entries on its subjects read"
    )
