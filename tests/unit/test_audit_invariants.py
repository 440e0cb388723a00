"""Given a log, when the auditor replays it, then a pointer that its release's record does not back
(or a record no pointer backs), a pointer its release may not write now, an event id stored twice,
a pin's switch after the pin ran out, and a pack no cohort ever ran "earning" known-good are each
reported at the entry — while the batches the real activator writes (group commits included) audit
clean. Pure: the same `audit_entry` / `finish` `kxr audit replay` folds with."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from typing import Any

from events.codec import make_event
from events.model import Actor, Event, PackRef, Scope
from events.subjects import Subjects
from projections.invariants import Audit, audit_entry, finish
from projections.pointer_chain import chained_pointer
from projections.position import Position
from projections.releases import STALE_PASS, VOID_PASS
from projections.rollback import rollback_target
from projections.world import fold
from services.actions import operator
from services.consumers import activator, pinner
from services.consumers.outputs import Atomic, Chain, Ctx, Output
from tests.unit.archive_support import assert_archiving_agrees
from tests.unit.test_projections import CH, CHANNEL_DOC, ENV, P0, P1, P2, Log, manifest_of

ACTIVATOR = Actor(kind="service", id="activator")
PINNER = Actor(kind="service", id="pinner")
OPERATOR_ACTOR = Actor(kind="operator", id="ops")


class Story:
    """A `Log` whose entries carry the Nats-Batch-Id the service stores them with."""

    def __init__(self) -> None:
        self.log = Log()
        self.batch_of: dict[int, str] = {}  # seq -> Nats-Batch-Id

    @property
    def seq(self) -> int:
        return len(self.log.events)

    @contextmanager
    def batch(self, batch_id: str) -> Iterator[None]:
        """Everything appended inside is one atomic batch."""
        start = self.seq
        yield
        for seq in range(start + 1, self.seq + 1):
            self.batch_of[seq] = batch_id

    def append(self, event: Event) -> Event:
        self.log.events.append(event)
        return event

    def emit(self, outputs: list[Output], group: str | None = None) -> list[Event]:
        """As app.emit stores them: a Chain plainly, an Atomic as one batch (its own id, or a group's)."""
        stored = []
        for out in outputs:
            if isinstance(out, Chain):
                stored += [self.append(e) for e in out.events]
            elif isinstance(out, Atomic):
                with self.batch(group or out.batch_id):
                    stored += [self.append(w.event) for w in out.scope_writes]
                    stored += [self.append(e) for e in out.release_events]
        return stored

    def ctx(self, service: str = "activator") -> Ctx:
        return Ctx(now=self.log.clock, service=service)

    def rollout(self, rid: str) -> list[Output]:
        world = self.log.world()
        return activator.decide_rollout(world, world.release(rid), self.ctx())

    def rollback(self, rid: str) -> list[Output]:
        world = self.log.world()
        release = world.release(rid)
        checked = {t.digest: None for t in release.rollback.targets.values() if t is not None}
        return activator.decide_rollback(world, release, self.ctx(), checked)

    def stage(self, rid: str, stage: int, cohorts: list[str], p: dict[str, Any], outcome: str = "passed") -> None:
        self.emit(self.rollout(rid))
        self.log.started(rid, stage, cohorts, p)
        self.log.verdict(rid, outcome, stage)

    def success(self, rid: str, p: dict[str, Any]) -> None:
        self.log.through_verified(rid, p)
        self.stage(rid, 0, ["internal"], p)
        self.log.expanded(rid, 0, 1, ["rest"])
        self.stage(rid, 1, ["rest"], p)
        self.log.closed(rid, "success")

    def pointer(self, cohort: str, p: dict[str, Any], rid: str | None, kind: str = "rollout", channel: str = CH):
        """A pointer as the activator writes it (actor, the scope's next link), whatever it says."""
        mark = self.log.world().scope(ENV, channel, cohort).chain_mark
        data = chained_pointer(
            mark, pack=PackRef(**p), manifest=manifest_of(p), release_id=rid, kind=kind, previous=None
        )
        event = make_event(
            "scope.activated",
            data,
            actor=ACTIVATOR,
            release_id=rid,
            scope=Scope(env=ENV, channel=channel, cohort=cohort),
            event_id=f"ev-{self.seq + 1}",
            occurred_at=self.log.clock,
        )
        return self.append(event)

    def record(
        self, rid: str, p: dict[str, Any], cohorts: tuple[str, ...] = ("internal",), batch_id: str = "b-1", **kw
    ):
        """A `release.activated` of stage 0 as written by hand, whatever it claims (its batch is `s.batch`'s)."""
        data = {"stage": 0, "cohorts": list(cohorts), "pack": p, "batch_id": batch_id}
        return self.log.add("release.activated", data, release_id=rid, **kw)

    def replay(self) -> Audit:
        """The whole fold; the archiving replay (`kxr audit replay`'s) must say the same of every story."""
        entries = [(replace(p, batch_id=self.batch_of.get(p.seq)), e) for p, e in self.log.entries()]
        audit = Audit()
        for position, event in entries:
            audit = audit_entry(audit, position, event, Subjects())
        audit = finish(audit)
        assert_archiving_agrees(entries, Subjects(), audit)
        return audit

    def seq_of(self, event: Event) -> int:
        return self.log.seq_of(event)


def lines(audit: Audit) -> list[str]:
    return [v.line() for v in audit.violations]


def codes_at(audit: Audit, seq: int) -> set[str]:
    return {v.code for v in audit.violations if v.seq == seq}


def story() -> Story:
    """Channel configured; P0 ran on both cohorts and closed success, every switch the activator's."""
    s = Story()
    s.log.channel()
    s.success("r0", P0)
    return s


def rolling_back() -> Story:
    """`story`, then r1 rolled out P1 to internal, then rest, failed there, and started back to P0 on both."""
    s = story()
    s.log.through_verified("r1", P1)
    s.stage("r1", 0, ["internal"], P1)
    s.log.expanded("r1", 0, 1, ["rest"])
    s.stage("r1", 1, ["rest"], P1, outcome="failed")
    s.log.rollback_started("r1", {"internal": P0, "rest": P0})
    return s


# ---- what the service writes audits clean ---------------------------------------------------------


def test_the_activators_rollouts_and_rollbacks_audit_clean() -> None:
    s = rolling_back()
    (rollback,) = s.rollback("r1")
    assert isinstance(rollback, Atomic) and len(rollback.scope_writes) == 2
    s.emit([rollback])
    s.log.closed("r1", "rolled_back")
    audit = s.replay()
    assert audit.violations == (), lines(audit)
    assert s.log.world().scope(ENV, CH, "rest").active_pack.digest == P0["digest"]


def test_several_releases_committed_as_one_server_batch_pair_by_release_and_cohort() -> None:
    """README "Several activations in one atomic batch": the group commit stores r2's and r3's switches
    under ONE Nats-Batch-Id; each pointer pairs with its own release's record, wherever it sits."""
    s = story()
    s.log.through_verified("r2", P2, stages=[["internal"]])
    s.log.through_verified("r3", P2, stages=[["rest"]])
    both = s.rollout("r2") + s.rollout("r3")  # decided side by side, committed together
    s.emit(both, group="group-1")
    audit = s.replay()
    assert audit.violations == (), lines(audit)
    assert {s.batch_of[s.seq_of(e)] for e in s.log.events[-4:]} == {"group-1"}


def test_a_record_stored_before_its_pointers_in_the_batch_pairs_as_well() -> None:
    """The contract says "in one atomic batch", not in which order."""
    s = story()
    s.log.through_verified("r1", P1)
    (out,) = s.rollout("r1")
    assert isinstance(out, Atomic)
    with s.batch("b-r1"):
        for event in [*out.release_events, *(w.event for w in out.scope_writes)]:
            s.append(event)
    audit = s.replay()
    assert audit.violations == (), lines(audit)


def test_a_stage_with_every_cohort_pinned_and_a_rollback_with_nothing_to_move_audit_clean() -> None:
    """`release.activated` naming no cohort (a one-message batch); `rolled_back` outside any batch
    for a cohort already on its target (a pin's switch put it there)."""
    s = story()
    s.log.through_verified("r1", P1)
    s.stage("r1", 0, ["internal"], P1, outcome="failed")
    s.log.rollback_started("r1", {"internal": P0, "rest": P0})
    s.log.pin("internal", P0, s.log.clock + timedelta(days=1))
    world = s.log.world()
    state = world.scope(ENV, CH, "internal")
    switch = pinner.switch_to_pin(state, Scope(env=ENV, channel=CH, cohort="internal"), "pin-1", PINNER, s.log.clock)
    with s.batch("pin-1"):
        s.append(switch)
    (done,) = s.rollback("r1")
    assert isinstance(done, Chain)  # nothing to move: rolled_back alone, outside any batch
    s.emit([done])
    s.log.closed("r1", "rolled_back")
    s.log.through_verified("r2", P2, stages=[["internal"], ["rest"]])
    (none_moved,) = s.rollout("r2")  # internal is pinned: stage 0 switches nothing
    assert isinstance(none_moved, Atomic) and not none_moved.scope_writes
    s.emit([none_moved])
    audit = s.replay()
    assert audit.violations == (), lines(audit)


def test_a_rolled_back_cohort_left_on_the_pin_in_force_is_not_reported() -> None:
    """A rollback never fights a pin: a cohort the pin in force holds (its pointer on the pin's pack)
    may be named in `rolled_back` although no pointer of the batch moved it."""
    s = rolling_back()
    s.log.pin("internal", P2, s.log.clock + timedelta(days=1))
    state = s.log.world().scope(ENV, CH, "internal")
    with s.batch("pin-1"):
        s.append(
            pinner.switch_to_pin(state, Scope(env=ENV, channel=CH, cohort="internal"), "pin-1", PINNER, s.log.clock)
        )
    with s.batch("rb"):
        s.pointer("rest", P0, "r1", kind="rollback")
        s.log.add(
            "release.rolled_back",
            {"cohorts": ["internal", "rest"], "targets": {"internal": P0, "rest": P0}, "batch_id": "rb"},
            release_id="r1",
            actor=ACTIVATOR,
        )
    audit = s.replay()
    assert not [v for v in audit.violations if v.code.startswith(("release_record", "pointer_"))], lines(audit)


# ---- (a) a pointer and its release's record pair in one atomic batch ------------------------------


def test_a_pointer_whose_batch_holds_no_release_activated_is_reported() -> None:
    s = story()
    s.log.through_verified("r1", P1)
    with s.batch("b-1"):
        ptr = s.pointer("internal", P1, "r1")
    audit = s.replay()
    assert s.log.world().scope(ENV, CH, "internal").active_pack.digest == P1["digest"]
    assert s.log.world().release("r1").activated == ()  # the scope runs r1's pack; r1's record says nothing
    assert codes_at(audit, s.seq_of(ptr)) == {"pointer_without_release_record"}, lines(audit)


def test_release_activated_whose_batch_moved_no_pointer_is_reported() -> None:
    s = story()
    s.log.through_verified("r1", P1)
    with s.batch("b-1"):
        act = s.record("r1", P1)
    audit = s.replay()
    assert s.log.world().scope(ENV, CH, "internal").active_pack.digest == P0["digest"]  # never moved
    assert codes_at(audit, s.seq_of(act)) == {"release_record_without_pointer"}, lines(audit)


def test_a_pointer_and_its_record_in_two_batches_are_both_reported() -> None:
    s = story()
    s.log.through_verified("r1", P1)
    (out,) = s.rollout("r1")
    assert isinstance(out, Atomic)
    with s.batch("b-pointer"):
        ptr = s.append(out.scope_writes[0].event)
    with s.batch("b-record"):
        act = s.append(out.release_events[0])
    audit = s.replay()
    assert codes_at(audit, s.seq_of(ptr)) == {"pointer_without_release_record"}, lines(audit)
    assert codes_at(audit, s.seq_of(act)) == {"release_record_without_pointer"}, lines(audit)


def test_in_a_group_commit_a_pointer_never_pairs_with_another_releases_record() -> None:
    """One server batch holding r2's pointer on internal and r3's record naming internal: each message
    has "a partner in its batch", but not its own release's."""
    s = story()
    s.log.through_verified("r2", P2, stages=[["internal"]])
    s.log.through_verified("r3", P2, stages=[["internal"]])
    with s.batch("group-1"):
        ptr = s.pointer("internal", P2, "r2")
        act = s.record("r3", P2, batch_id="x")
    audit = s.replay()
    assert "pointer_without_release_record" in codes_at(audit, s.seq_of(ptr)), lines(audit)
    assert "release_record_without_pointer" in codes_at(audit, s.seq_of(act)), lines(audit)


def test_a_record_naming_another_pack_than_its_pointer_moved_to_is_reported() -> None:
    s = story()
    s.log.through_verified("r1", P1)
    with s.batch("b-1"):
        ptr = s.pointer("internal", P1, "r1")
        act = s.record("r1", P2)
    audit = s.replay()
    assert "pointer_without_release_record" in codes_at(audit, s.seq_of(ptr)), lines(audit)
    assert "release_record_without_pointer" in codes_at(audit, s.seq_of(act)), lines(audit)


def test_rolled_back_claiming_a_cohort_whose_pointer_never_moved_is_reported() -> None:
    """ "A rollback lands on the chosen target or holds": the batch moved internal only, yet
    `rolled_back` says rest is back on P0 too; rest still runs the failed pack."""
    s = rolling_back()
    (rollback,) = s.rollback("r1")
    assert isinstance(rollback, Atomic)
    with s.batch(rollback.batch_id):
        s.append(rollback.scope_writes[0].event)  # internal's pointer only
        done = s.append(rollback.release_events[0])
    s.log.closed("r1", "rolled_back")
    audit = s.replay()
    assert s.log.world().scope(ENV, CH, "rest").active_pack.digest == P1["digest"]
    assert codes_at(audit, s.seq_of(done)) == {"release_record_without_pointer"}, lines(audit)
    assert "rest" in next(v.message for v in audit.violations if v.seq == s.seq_of(done))


# ---- (b) a pointer its release may write now ------------------------------------------------------


def test_a_rollout_pointer_outside_the_release_target_is_reported() -> None:
    """r1 was prepared and verified for prod/canary (that channel's gates); a pointer naming r1
    switches prod/stable/all, even with a record claiming it."""
    s = story()
    s.log.through_verified("r1", P1)
    with s.batch("b-1"):
        ptr = s.pointer("all", P1, "r1", channel="stable")
    audit = s.replay()
    assert "pointer_outside_release_plan" in codes_at(audit, s.seq_of(ptr)), lines(audit)


def test_a_rollout_pointer_for_a_cohort_of_another_stage_is_reported() -> None:
    """Stage 0 is internal; a batch switching rest too (and a record saying so) exposes it early."""
    s = story()
    s.log.through_verified("r1", P1)
    with s.batch("b-1"):
        s.pointer("internal", P1, "r1")
        rest = s.pointer("rest", P1, "r1")
        s.record("r1", P1, ("internal", "rest"), actor=ACTIVATOR)
    audit = s.replay()
    assert codes_at(audit, s.seq_of(rest)) == {"pointer_outside_release_plan"}, lines(audit)
    assert [v.seq for v in audit.violations] == [s.seq_of(rest)], lines(audit)


def test_a_rollout_pointer_for_a_release_already_rolled_back_and_closed_is_reported() -> None:
    """r1's window failed, it rolled back to P0 and closed; a later rollout pointer naming r1 (and
    a record to pair with) puts the failed pack back: verified, same digest, yet out of phase."""
    s = story()
    s.log.through_verified("r1", P1)
    s.stage("r1", 0, ["internal"], P1, outcome="failed")
    s.log.rollback_started("r1", {"internal": P0, "rest": P0})
    s.emit(s.rollback("r1"))
    s.log.closed("r1", "rolled_back")
    with s.batch("b-late"):
        ptr = s.pointer("internal", P1, "r1")
    audit = s.replay()
    assert s.log.world().scope(ENV, CH, "internal").active_pack.digest == P1["digest"]  # the failed pack is back
    assert "pointer_out_of_phase" in codes_at(audit, s.seq_of(ptr)), lines(audit)


def test_a_rollback_pointer_for_a_cohort_the_release_never_activated_is_reported() -> None:
    s = story()
    s.log.through_verified("r1", P1)
    s.stage("r1", 0, ["internal"], P1, outcome="failed")
    s.log.rollback_started("r1", {"internal": P0, "rest": P0})
    with s.batch("rb"):
        s.pointer("internal", P0, "r1", kind="rollback")
        rest = s.pointer("rest", P0, "r1", kind="rollback")  # its recorded target, but r1 never ran there
        s.log.add(
            "release.rolled_back",
            {"cohorts": ["internal", "rest"], "targets": {"internal": P0, "rest": P0}, "batch_id": "rb"},
            release_id="r1",
            actor=ACTIVATOR,
        )
    audit = s.replay()
    assert "pointer_outside_release_plan" in codes_at(audit, s.seq_of(rest)), lines(audit)


# ---- (c) an event id is stored once -----------------------------------------------------------------


def test_the_same_event_id_stored_twice_is_reported_at_the_second_naming_the_first() -> None:
    s = story()
    s.log.requested("r1")
    first = s.log.note("r1", "annotated", "first note")
    again = s.log.note("r1", "annotated", "a different note")
    s.log.events[-1] = again.model_copy(update={"event_id": first.event_id})  # the same id, another body
    audit = s.replay()
    (dup,) = [v for v in audit.violations if v.code == "duplicate_event_id"]
    assert dup.seq == s.seq and f"seq {s.seq_of(first)}" in dup.message, lines(audit)
    assert [v.seq for v in audit.violations] == [s.seq], lines(audit)


# ---- (d) a pin's switch only while the pin is in force ------------------------------------------------


def _pin_switch(s: Story, late: timedelta) -> Event:
    until = s.log.clock + timedelta(minutes=5)
    s.log.pin("internal", P0, until)
    s.log.through_verified("r1", P1)
    state = s.log.world().scope(ENV, CH, "internal")
    scope = Scope(env=ENV, channel=CH, cohort="internal")
    switch = pinner.switch_to_pin(state, scope, "pin-1", PINNER, until + late)
    assert switch is not None
    with s.batch("pin-1"):
        return s.append(switch)


def test_a_pin_switch_written_after_the_pin_ran_out_is_reported() -> None:
    s = Story()
    s.log.channel()
    s.success("r0", P1)  # the scopes run P1; the pin is for P0
    switch = _pin_switch(s, late=timedelta(seconds=1))
    audit = s.replay()
    assert codes_at(audit, s.seq_of(switch)) == {"pin_switch_after_expiry"}, lines(audit)


def test_a_pin_switch_while_the_pin_is_in_force_is_not_reported() -> None:
    s = Story()
    s.log.channel()
    s.success("r0", P1)
    _pin_switch(s, late=-timedelta(seconds=1))
    audit = s.replay()
    assert audit.violations == (), lines(audit)


# ---- (e) only a pack that ran somewhere earns known-good ----------------------------------------------


def test_a_release_that_exposed_no_cohort_does_not_earn_its_pack() -> None:
    """Every cohort pinned after pre-flight: each stage switches nothing and passes with no data,
    the release closes success. No sample judged P1, so it is not known-good in the channel: a later
    rollback that restores it (a target recorded as P1) does not make it last-known-good (before
    session 23 every rollback's pack became LKG, and the audit said `lkg_not_earned` here)."""
    s = story()
    s.log.through_verified("r1", P1)
    until = s.log.clock + timedelta(days=1)
    s.log.pin("internal", P0, until)
    s.log.pin("rest", P0, until)
    for stage, cohort in enumerate(["internal", "rest"]):
        (out,) = s.rollout("r1")
        assert isinstance(out, Atomic) and not out.scope_writes
        s.emit([out])
        s.log.started("r1", stage, [], P1)
        s.log.add("release.monitoring_passed", {"stage": stage, "samples": 0, "reason": "all pinned"}, release_id="r1")
        if stage == 0:
            s.log.expanded("r1", 0, 1, [cohort])
    s.log.closed("r1", "success")
    audit = s.replay()
    assert audit.violations == (), lines(audit)
    assert (ENV, CH, P1["digest"]) not in audit.safety.earned
    assert (ENV, CH, P0["digest"]) in audit.safety.earned

    s.log.unpin("internal")
    s.log.through_verified("r2", P2, stages=[["internal"]], targets={"internal": P1})
    s.stage("r2", 0, ["internal"], P2, outcome="failed")
    s.log.rollback_started("r2", {"internal": P1})
    (rollback,) = s.emit(s.rollback("r2"))[:1]
    audit = s.replay()
    assert "lkg_not_earned" not in codes_at(audit, s.seq_of(rollback)), lines(audit)
    internal = s.log.world().scope(ENV, CH, "internal")
    assert internal.active_pack.digest == P1["digest"] and internal.lkg.digest == P0["digest"]


def test_check_lkg_still_catches_a_fold_that_makes_a_restored_pack_known_good() -> None:
    """No log breaks `lkg_not_earned` since session 23 (the fold sets LKG only on data or as a rollback's
    last pin): the check stays as a guard on the fold. Given what the fold before made of a rollback to a
    pack that never passed a window (its pack as LKG), it says so; given today's fold, nothing."""
    from projections.invariants import check_lkg
    from projections.world import World

    s = story()
    s.log.through_verified("r2", P2, stages=[["internal"]], targets={"internal": P1})
    s.stage("r2", 0, ["internal"], P2, outcome="failed")
    s.log.rollback_started("r2", {"internal": P1})
    before = s.log.world()
    (rollback,) = s.emit(s.rollback("r2"))[:1]
    after = s.log.world()
    memory = s.replay().safety
    position = s.log.entries()[-1][0]
    key = (ENV, CH, "internal")
    assert after.scope(*key).lkg.digest == P0["digest"]  # today's fold: P1 is not made LKG
    assert check_lkg(memory, before, after, position, rollback) == []
    old_fold: World = replace(
        after, scopes=after.scopes.insert(key, replace(after.scope(*key), lkg=PackRef.model_validate(P1)))
    )
    (found,) = check_lkg(memory, before, old_fold, position, rollback)
    assert found.code == "lkg_not_earned" and f"{P1['version']} became last-known-good" in found.message


def _pulled_after_success() -> tuple[Story, list[Event]]:
    """`story` (P0 earned by r0), then r1 earned P1, then an operator's rollback of r1 after it closed
    (tenant impact) to the targets its strategy chooses (`kxr release rollback`): the pointers it stored."""
    s = story()
    s.success("r1", P1)
    world = s.log.world()
    action = operator.rollback(world, "r1", "tenant_impact", "tickets spiked", OPERATOR_ACTOR, s.log.clock)
    s.append(action.event)
    stored = s.emit(s.rollback("r1"))
    s.log.closed("r1", "rolled_back")
    return s, stored


def test_an_operator_pulling_a_successful_release_leaves_its_pack_no_longer_known_good() -> None:
    """Session 27: LKG went back to the pack before it (P0, r0's), the audit is clean, and a later release
    that fails rolls back onto P0, not onto the pack the operator pulled (before, its target was P1)."""
    s, stored = _pulled_after_success()
    pointers = [e for e in stored if e.type == "scope.activated"]
    assert {e.data.pack.digest for e in pointers} == {P0["digest"]} and len(pointers) == 2
    audit = s.replay()
    assert audit.violations == (), lines(audit)
    for cohort in ("internal", "rest"):
        scope = s.log.world().scope(ENV, CH, cohort)
        assert (scope.active_pack.digest, scope.lkg.digest, scope.lkg_release) == (P0["digest"], P0["digest"], "r0")

    s.log.through_verified("r2", P2, stages=[["internal"]], targets={"internal": P0})
    s.stage("r2", 0, ["internal"], P2, outcome="failed")
    world = s.log.world()
    assert rollback_target(world, world.release("r2"), "internal", s.log.clock).digest == P0["digest"]


def test_check_lkg_catches_a_fold_that_keeps_a_pulled_pack_known_good() -> None:
    """No log breaks `lkg_pulled` with today's fold: the check guards it. Given what the fold before session
    27 made of the operator's rollback (P1 still LKG once r1's rollback started), it says so."""
    from projections.invariants import check_lkg

    s, _ = _pulled_after_success()
    started = next(e for e in s.log.events if e.type == "release.rollback_started" and e.release_id == "r1")
    seq = s.seq_of(started)
    entries = s.log.entries()
    before, after = fold(entries[: seq - 1]), fold(entries[:seq])
    position = entries[seq - 1][0]
    memory = Audit()
    for p, e in entries[: seq - 1]:
        memory = audit_entry(memory, p, e, Subjects())
    key = (ENV, CH, "internal")
    assert after.scope(*key).lkg.digest == P0["digest"]
    assert check_lkg(memory.safety, before, after, position, started) == []
    old_fold = replace(
        after,
        scopes=after.scopes.insert(key, replace(after.scope(*key), lkg=PackRef.model_validate(P1), lkg_release="r1")),
    )
    (found,) = check_lkg(memory.safety, before, old_fold, position, started)
    assert found.code == "lkg_pulled" and "r1 is rolled back there, yet its 1.0.0 is still" in found.message


def test_a_rollback_whose_recorded_target_was_pulled_since_holds() -> None:
    """r1 earned P1 with nothing earned before it (P0 only ran); r2 (P2) was prepared with P1 as its target and
    switched internal; an operator then pulls r1 (no LKG left). r2 fails: strategy `lkg` falls back to the
    recorded P1, the pack just pulled. The activator holds and escalates, naming why (the promoter's readiness
    says the same before an expansion); a pointer written there anyway is reported."""
    s = Story()
    s.log.channel()
    s.log.point("internal", P0)
    s.log.point("rest", P0)
    s.success("r1", P1)
    s.log.through_verified("r2", P2, stages=[["internal"]], targets={"internal": P1})
    s.emit(s.rollout("r2"))
    world = s.log.world()
    s.append(operator.rollback(world, "r1", "tenant_impact", "tickets", OPERATOR_ACTOR, s.log.clock).event)
    s.emit(s.rollback("r1"))
    assert s.log.world().scope(ENV, CH, "internal").lkg is None
    s.log.verdict("r2", "failed", 0)
    s.log.rollback_started("r2", {"internal": P1})
    (escalated,) = s.emit(s.rollback("r2"))
    assert escalated.type == "release.escalated" and escalated.data.code == "rollback_target_unusable"
    assert "internal: target 1.0.0 was rolled back there since" in escalated.data.message, escalated.data.message
    audit = s.replay()
    assert "lkg_pulled" not in {v.code for v in audit.violations}, lines(audit)
    forged = s.pointer("internal", P1, "r2", kind="rollback")
    assert "lkg_pulled" in codes_at(s.replay(), s.seq_of(forged))


def test_pulling_a_release_leaves_the_cohorts_a_newer_release_has_taken_over() -> None:
    """r1 earned P1 on both cohorts; r2 (P2) has since switched internal and is watched there; an operator pulls
    r1. Its rollback moves rest back (to P0, the LKG before it) and leaves internal on r2's P2: r1's pack no
    longer runs there, and moving it would undo r2's rollout without r2's record saying so (before session 27
    it did: r2's window then watched runtimes on a pack it never switched to)."""
    s = story()
    s.success("r1", P1)
    s.log.through_verified("r2", P2, stages=[["internal"], ["rest"]])
    s.emit(s.rollout("r2"))
    world = s.log.world()
    s.append(operator.rollback(world, "r1", "tenant_impact", "tickets", OPERATOR_ACTOR, s.log.clock).event)
    stored = s.emit(s.rollback("r1"))
    pointers = {e.scope.cohort: e.data.pack.digest for e in stored if e.type == "scope.activated"}
    assert pointers == {"rest": P0["digest"]}
    done = next(e for e in stored if e.type == "release.rolled_back")
    assert {c: t.digest for c, t in done.data.targets.items()} == {"internal": P2["digest"], "rest": P0["digest"]}
    world = s.log.world()
    assert world.scope(ENV, CH, "internal").active.release_id == "r2"
    assert {c: world.scope(ENV, CH, c).lkg.digest for c in ("internal", "rest")} == {
        "internal": P0["digest"],
        "rest": P0["digest"],
    }  # P1 is pulled in both: the LKG before it
    s.log.closed("r1", "rolled_back")
    audit = s.replay()
    assert audit.violations == (), lines(audit)


def test_an_older_audit_state_folded_again_sees_only_its_own_event_ids() -> None:
    """The ids are a dict appended in place (a replay's cost); an audit state is still a value:
    folding an older state again (a branch) neither sees the other branch's ids nor changes them."""
    s = story()
    a = s.log.note("r0", "annotated", "a")
    b = s.log.note("r0", "annotated", "b")
    entries = [(replace(p, batch_id=s.batch_of.get(p.seq)), e) for p, e in s.log.entries()]
    base = Audit()
    for position, event in entries[:-2]:
        base = audit_entry(base, position, event, Subjects())
    (pa, _), (pb, _) = entries[-2:]
    one = audit_entry(audit_entry(base, pa, a, Subjects()), pb, b, Subjects())
    other = audit_entry(base, pa, b, Subjects())  # a branch from `base`: b's id is new there
    assert one.violations == () and other.violations == (), lines(one) + lines(other)
    again = audit_entry(one, replace(pb, seq=pb.seq + 1), a, Subjects())  # `one` still holds a's id
    assert [(v.seq, v.code) for v in again.violations] == [(pb.seq + 1, "duplicate_event_id")]
    assert f"seq {pa.seq}" in again.violations[0].message
    assert audit_entry(other, pb, a, Subjects()).violations == ()  # and `other` never saw it


def watching_r1() -> Log:
    """r0 ran P0 to success; r1's first stage (internal) is being watched."""
    log = Log()
    log.channel()
    log.two_stage_success("r0", P0)
    log.through_verified("r1")
    log.activate("r1", 0, ["internal"])
    log.started("r1", 0, ["internal"])
    return log


PASSING = {"comparisons": [{"metric": "error_rate", "value": 0.0, "op": "<=", "threshold": 0.05, "ok": True}]}


def audited(log: Log) -> list[tuple[int, str]]:
    """`kxr audit replay`'s `pass_without_data` findings over `log`: (seq, message)."""
    audit = Audit()
    for position, event in log.entries():
        audit = audit_entry(audit, position, event, Subjects())
    return [(v.seq, v.message) for v in finish(audit).violations if v.code == "pass_without_data"]


def raced_pass() -> Log:
    """watching_r1, then the canary's cohorts become `rest` alone, then the monitor's pass of internal lands."""
    log = watching_r1()
    log.channel({**CHANNEL_DOC, "cohorts": [{"name": "rest"}], "plan": [["rest"]]})
    log.verdict("r1", "passed", 0, **PASSING)
    return log


def test_a_release_carried_on_by_a_pass_for_a_cohort_the_channel_no_longer_has_is_reported() -> None:
    """Sessions 24-25: the stage's cohort was taken out of the channel before its verdict was stored (its runtimes
    now match another cohort). The pass itself may be logged (the monitor's append is not fenced against a channel
    change: a race), so it is not the finding; the release moving on by it is (`pass_without_data` at the
    `expanded`)."""
    log = raced_pass()
    assert audited(log) == []  # logged by a race: nothing moved on it yet
    log.expanded("r1", 0, 1, ["rest"])
    assert audited(log) == [
        (len(log.events), "r1 expanded after stage 1 passed for internal, which prod/canary no longer has")
    ]


def test_a_raced_pass_held_by_the_promoter_then_passed_by_an_operator_is_no_violation_and_not_on_data() -> None:
    """The promoter's hold (`escalated` stale_pass) voids the pass in the release's own fold; an operator's override
    of the same window after it is their word (named in the record), so the stage passed by override, not on data:
    the release can never close `success` on it (its pack never becomes last-known-good)."""
    log = raced_pass()
    log.add(
        "release.escalated",
        {"code": STALE_PASS, "message": "stage 1's pass counts for nothing", "escalation": "pager"},
        release_id="r1",
    )
    release = log.world().release("r1")
    assert release.phase == "held" and release.verdicts[-1][0] == VOID_PASS
    log.override("r1", 0, "merged cohorts")
    log.expanded("r1", 0, 1, ["rest"])
    assert audited(log) == []
    release = log.world().release("r1")
    assert release.stages_passed_on_data == frozenset() and release.stages_passed_by_override == [0]


def test_a_release_carried_on_while_the_channels_newest_configuration_does_not_decode_is_reported() -> None:
    """Session 24: the monitor holds such a window (its cohorts are unknown, never the older configuration's);
    a pass logged anyway (a race) must not carry the release on: an expansion after it is `pass_without_data`."""
    log = watching_r1()
    audit = Audit()
    for position, event in log.entries():
        audit = audit_entry(audit, position, event, Subjects())
    junk = Position(len(log.events) + 1, Subjects().channel(ENV, CH))
    audit = audit_entry(audit, junk, None, Subjects())  # the channel's newest entry: not a valid event
    for offset, event in enumerate((log.verdict("r1", "passed", 0, **PASSING), log.expanded("r1", 0, 1, ["rest"]))):
        position = Position(junk.seq + 1 + offset, Subjects().release("r1", event.suffix))
        audit = audit_entry(audit, position, event, Subjects())
    found = [v for v in finish(audit).violations if v.code == "pass_without_data"]
    assert [(v.seq, v.message) for v in found] == [
        (junk.seq + 2, f"r1 expanded after stage 1 passed while prod/canary's channel config at seq {junk.seq} could "
         "not be decoded: not a valid event")
    ]  # fmt: skip


def audited_codes(log: Log, *codes: str) -> list[tuple[int, str, str]]:
    audit = Audit()
    for position, event in log.entries():
        audit = audit_entry(audit, position, event, Subjects())
    return [(v.seq, v.code, v.message) for v in finish(audit).violations if v.code in codes]


def test_a_pass_naming_the_configuration_it_was_judged_against_is_audited_where_it_was_stored() -> None:
    """Session 25. A pass names the channel entry its window was judged against (`channel_seq`): stored while
    that entry is still the channel's newest, it is the monitor's judgement, checked at once (a cohort the
    channel no longer has: `pass_without_data`); stored after a newer entry, it is a race no message fences,
    and what must not follow is the release moved on by it (`stale_pass_carried_on`). A change after the pass
    was stored is no finding, whatever follows."""
    judged = watching_r1()
    judged.channel({**CHANNEL_DOC, "cohorts": [{"name": "rest"}], "plan": [["rest"]]})
    newest = len(judged.events)
    judged.verdict("r1", "passed", 0, channel_seq=newest, **PASSING)  # the monitor saw the change, and passed
    assert audited_codes(judged, "pass_without_data", "stale_pass_carried_on") == [
        (newest + 1, "pass_without_data", "r1: stage 1 passed for internal, which prod/canary no longer has")
    ]

    raced = watching_r1()
    changed = raced.seq_of(raced.channel({**CHANNEL_DOC, "cohorts": [{"name": "rest"}], "plan": [["rest"]]}))
    raced.verdict("r1", "passed", 0, channel_seq=1, **PASSING)  # judged before the change, stored after it
    assert audited_codes(raced, "pass_without_data", "stale_pass_carried_on") == []
    raced.expanded("r1", 0, 1, ["rest"])
    assert audited_codes(raced, "pass_without_data", "stale_pass_carried_on") == [
        (
            len(raced.events),
            "stale_pass_carried_on",
            f"r1 expanded after stage 1 passed against prod/canary's configuration at seq 1, stored after its "
            f"change at seq {changed}",
        )
    ]

    later = watching_r1()
    later.verdict("r1", "passed", 0, channel_seq=1, **PASSING)
    later.channel({**CHANNEL_DOC, "cohorts": [{"name": "rest"}], "plan": [["rest"]]})  # after the pass was stored
    later.expanded("r1", 0, 1, ["rest"])
    assert audited_codes(later, "pass_without_data", "stale_pass_carried_on") == []


def refused_pin_then_pinned_rollback(reverified: bool) -> Log:
    """A log the service wrote before session 26: internal's pin to P2 refused by the pinner (its bytes failed a
    gate), yet r1's pre-flight recorded P2 as the `pinned` strategy's target and the rollback named it."""
    log = Log()
    log.channel()
    log.two_stage_success("r0", P0)
    log.pin("internal", P2, log.clock + timedelta(days=1), "hold on 2.0")
    log.add(
        "scope.unpinned",
        {
            "pack": P2,
            "by": "pinner",
            "reason": "refused",
            "rationale": "pinned pack refused: integrity/digest_mismatch",
        },
        cohort="internal",
        actor=PINNER,
    )
    if reverified:  # a release verifies P2's bytes afresh (and is then abandoned)
        log.through_verified("r2", P2)
    log.through_verified("r1", P1, targets={"internal": P2, "rest": P0}, strategy="pinned")
    log.stage("r1", 0, ["internal"], "failed")
    log.rollback_started("r1", {"internal": P2})
    return log


def test_a_pinned_rollback_onto_a_refused_pin_is_reported_until_the_pack_is_verified_again() -> None:
    """Found by a fail-closed audit (session 26): the fold kept a refused pin as the pinned prior, so a `pinned`
    rollback switched to a pack that failed verification. The fold no longer does; the auditor reports such a
    target in an older log, unless a release verified that pack's bytes after the refusal."""
    found = audited_codes(refused_pin_then_pinned_rollback(reverified=False), "rollback_off_strategy")
    assert [(code, "whose pin there was refused" in message) for _, code, message in found] == [
        ("rollback_off_strategy", True)
    ], found
    assert audited_codes(refused_pin_then_pinned_rollback(reverified=True), "rollback_off_strategy") == []
