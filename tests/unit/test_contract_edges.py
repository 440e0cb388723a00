"""Contract edges, the pure parts: what cannot be decoded is recorded and moves sequences, never "absent".

The same behaviour against real JetStream: tests/integration/test_contract_edges.py and
tests/security/test_junk_lockout.py.
"""

from __future__ import annotations

from datetime import timedelta

from events.subjects import Subjects
from projections.position import Position
from projections.snapshot import dump_world, load_world
from projections.world import PROBLEM_REASON_MAX, apply, apply_undecodable, fold
from services.actions import operator as ops
from services.cli.channel import channel_shown
from services.cli.views import channel_tables
from services.consumers.outputs import Ctx
from services.consumers.preparer import preflight
from services.jetstream.log_reads import fold_entry, position_of
from services.jetstream.reader import RawEntry
from tests.unit.test_projections import CH, CHANNEL_DOC, ENV, NOW, OPERATOR, P0, Log

S = Subjects()
CHANNEL_SUBJECT = S.channel(ENV, CH)


def junk(world, seq: int, subject: str, reason: str = "data.cohorts: Input should be a valid list"):
    return apply_undecodable(world, Position(seq=seq, subject=subject), S, reason)


def target_exists(world, release_id: str = "r1"):
    items, prepared = preflight(world, world.release(release_id), Ctx(now=NOW, service="svc"), None)
    return next(i for i in items if i.item == "target_exists"), prepared


# ---- channel problems ----------------------------------------------------------------------------
def test_an_undecodable_channel_config_is_a_problem_over_the_older_config() -> None:
    log = Log()
    log.channel()
    world = junk(log.world(), 7, CHANNEL_SUBJECT)
    problem = world.channel_problem(ENV, CH)
    assert (problem.seq, problem.reason) == (7, "data.cohorts: Input should be a valid list")
    assert (
        problem.describe() == "channel config at seq 7 could not be decoded: data.cohorts: Input should be a valid list"
    )
    assert world.channel_state(ENV, CH).seq == 1  # the readable one is kept, and shown as older
    assert world.applied_seq == 7


def test_a_valid_config_after_the_problem_settles_it() -> None:
    log = Log()
    first, second = log.channel(), log.channel()
    world = junk(fold([(Position(seq=1, subject=CHANNEL_SUBJECT), first)]), 2, CHANNEL_SUBJECT)
    world = apply(world, Position(seq=3, subject=CHANNEL_SUBJECT), second)
    assert world.channel_problem(ENV, CH) is None and world.channel_state(ENV, CH).seq == 3


def test_load_worlds_step_records_why_a_channel_entry_did_not_decode() -> None:
    entry = RawEntry(
        seq=3, subject=CHANNEL_SUBJECT, data=b'{"type": "channel.configured"', headers={}, stored_at=None, pending=0
    )
    problem = fold_entry(fold([]), entry, position_of(entry), None, S).channel_problem(ENV, CH)
    assert problem.seq == 3 and "malformed JSON" in problem.reason


def test_a_problem_reason_is_bounded_and_other_channel_subjects_are_not_problems() -> None:
    world = junk(fold([]), 3, CHANNEL_SUBJECT, "x" * 10_000)
    assert len(world.channel_problem(ENV, CH).reason) == PROBLEM_REASON_MAX
    other = junk(fold([]), 4, f"kx.channel.{ENV}.{CH}.renamed")
    assert other.channel_problem(ENV, CH) is None and other.applied_seq == 4


def test_the_preparer_rejects_naming_the_problem_never_no_configuration() -> None:
    log = Log()
    log.channel()
    log.requested("r1", acknowledge_no_health=True, rollback={"strategy": "none"})
    item, prepared = target_exists(log.world())
    assert item.ok and prepared is not None  # the same request, readable config: prepared
    world = junk(log.world(), 9, CHANNEL_SUBJECT)
    item, prepared = target_exists(world)
    assert prepared is None and not item.ok
    assert item.detail.startswith("channel config at seq 9 could not be decoded: data.cohorts")
    never = Log()
    never.requested("r1", acknowledge_no_health=True, rollback={"strategy": "none"})
    item, _ = target_exists(junk(never.world(), 9, CHANNEL_SUBJECT))  # no readable config ever: still the problem
    assert "could not be decoded" in item.detail and "no configuration" not in item.detail


def test_a_snapshot_keeps_channel_problems() -> None:
    log = Log()
    log.channel()
    world = junk(log.world(), 5, CHANNEL_SUBJECT)
    assert load_world(dump_world(world)).channel_problem(ENV, CH) == world.channel_problem(ENV, CH)


def test_channel_show_renders_the_problem_with_or_without_an_older_config() -> None:
    log = Log()
    log.channel()
    world = junk(log.world(), 5, CHANNEL_SUBJECT, "bad [markup] reason")
    shown = channel_shown(world.channel_state(ENV, CH), world.channel_problem(ENV, CH), ENV, CH)
    assert shown["problem"]["seq"] == 5 and shown["seq"] == 1 and shown["config"]["plan"] == CHANNEL_DOC["plan"]
    parts = channel_tables(f"{ENV}/{CH}", shown)
    assert "UNREADABLE CONFIGURATION" in parts[0] and "\\[markup]" in parts[0]  # escaped: printed as written
    assert "older than the problem" in parts[1]
    alone = channel_shown(None, junk(fold([]), 2, CHANNEL_SUBJECT).channel_problem(ENV, CH), ENV, CH)
    assert alone["config"] is None and len(channel_tables(f"{ENV}/{CH}", alone)) == 1


# ---- junk never moves a CAS out of reach -----------------------------------------------------------
def test_operator_actions_follow_junk_on_the_release_subject() -> None:
    """`load_world`'s step (what kxr's operator verbs fold): junk moves the release's sequence."""
    log = Log()
    log.through_verified("r1")
    log.activate("r1", 0, ["internal"])
    log.started("r1", 0, ["internal"])
    entry = RawEntry(
        seq=50, subject=S.release("r1", "requested"), data=b"\x00junk", headers={}, stored_at=None, pending=0
    )
    world = fold_entry(log.world(), entry, position_of(entry), None, S)
    now = NOW + timedelta(hours=1)
    for action in (
        ops.pause(world, "r1", "look", OPERATOR, now),
        ops.abort(world, "r1", "stop", OPERATOR, now),
        ops.rollback(world, "r1", "operator", "why", OPERATOR, now),
    ):
        assert action.expected_seq == 50  # the log's real last sequence on kx.release.r1.*


def test_junk_on_a_pin_subject_moves_the_scope_sequence_pin_verbs_append_after() -> None:
    log = Log()
    log.point("internal", P0)
    log.pin("internal", P0, NOW + timedelta(days=1))
    world = junk(log.world(), 40, S.scope(ENV, CH, "internal", "pinned"))
    scope = world.scope(ENV, CH, "internal")
    assert scope.last_seq == 40 and scope.pin.pack.digest == P0["digest"] and scope.active_seq == 1
    unpinned = junk(world, 41, S.scope(ENV, CH, "internal", "unpinned"))
    assert unpinned.scope(ENV, CH, "internal").last_seq == 41 and unpinned.scope(ENV, CH, "internal").pin is not None
