"""Given events, when folded, then the world says ... (projections are pure folds)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from events.codec import make_event
from events.model import RELEASE_TYPES, Actor, Event, Scope
from events.subjects import Subjects
from projections.evidence import evidence_of
from projections.position import Position, positions
from projections.releases import PHASE_AFTER, TRANSITIONS
from projections.world import World, apply, apply_undecodable, fold

# ---- builders (test_decisions.py imports these too) -------------------------------------------

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
ENV, CH = "prod", "canary"
SERVICE = Actor(kind="service", id="svc")
OPERATOR = Actor(kind="operator", id="ops")
PRODUCER = Actor(kind="producer", id="ci")
CHANNEL_DOC: dict[str, Any] = {
    "cohorts": [{"name": "internal", "tenants": ["t-int"]}, {"name": "rest"}],
    "plan": [["internal"], ["rest"]],
    "monitoring": {"window_s": 60, "min_samples": 2, "thresholds": {"error_rate_max": 0.05}},
}
STAGES = [["internal"], ["rest"]]
COHORTS = ("internal", "rest")


def digest(n: int) -> str:
    return "sha256:" + f"{n:064x}"


def pack(version: str, n: int) -> dict[str, Any]:
    return {"name": "kb", "version": version, "digest": digest(n)}


P0 = pack("0.9.0", 9)  # what ran before
P1 = pack("1.0.0", 1)  # the release under test
P2 = pack("2.0.0", 2)


def manifest_of(p: dict[str, Any]) -> str:
    return p["digest"].replace(":", "-") + ".manifest"


class Log:
    """An in-memory release log: append typed events, fold them into a World."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    @property
    def clock(self) -> datetime:
        return NOW + timedelta(seconds=len(self.events))

    def add(
        self,
        event_type: str,
        data: dict[str, Any],
        *,
        release_id: str | None = None,
        cohort: str | None = None,
        actor: Actor = SERVICE,
        channel: str = CH,
    ) -> Event:
        scope = Scope(env=ENV, channel=channel, cohort=cohort) if cohort else None
        event = make_event(
            event_type,
            data,
            actor=actor,
            release_id=release_id,
            scope=scope,
            event_id=f"ev-{len(self.events) + 1}",
            occurred_at=self.clock,
        )
        self.events.append(event)
        return event

    def world(self) -> World:
        return fold(positions(self.events))

    def entries(self) -> list[tuple[Position, Event]]:
        return list(positions(self.events))

    def seq_of(self, event: Event) -> int:
        return next(i + 1 for i, e in enumerate(self.events) if e is event)

    # -- channel and scopes -------------------------------------------------------------------
    def channel(self, doc: dict[str, Any] | None = None, channel: str = CH) -> Event:
        return self.add("channel.configured", doc or CHANNEL_DOC, cohort="all", actor=OPERATOR, channel=channel)

    def point(
        self, cohort: str, p: dict[str, Any], release_id: str | None = None, kind: str = "rollout", previous=None
    ) -> Event:
        data = {"pack": p, "manifest": manifest_of(p), "release_id": release_id, "kind": kind, "previous": previous}
        return self.add("scope.activated", data, release_id=release_id, cohort=cohort)

    def pin(self, cohort: str, p: dict[str, Any], until: datetime, rationale: str = "freeze") -> Event:
        return self.add(
            "scope.pinned",
            {"pack": p, "until": until.isoformat(), "rationale": rationale, "by": "ops"},
            cohort=cohort,
            actor=OPERATOR,
        )

    def unpin(self, cohort: str) -> Event:
        return self.add("scope.unpinned", {"by": "ops"}, cohort=cohort, actor=OPERATOR)

    # -- a release's lifecycle ----------------------------------------------------------------
    def requested(self, rid: str, p: dict[str, Any] = P1, **extra: Any) -> Event:
        data = {"pack": p, "target": {"env": ENV, "channel": CH}, "owner": "kb-team", "escalation": "pager:kb", **extra}
        return self.add("release.requested", data, release_id=rid, actor=PRODUCER)

    def prepared(
        self,
        rid: str,
        p: dict[str, Any] = P1,
        stages: list[list[str]] | None = None,
        targets: dict[str, Any] | None = None,
        strategy: str = "lkg",
        window_s: int = 60,
        **extra: Any,
    ) -> Event:
        stages = stages if stages is not None else STAGES
        cohorts = [c for s in stages for c in s]
        data = {
            "pack": p,
            "target": {"env": ENV, "channel": CH},
            "stages": stages,
            "monitoring": {"window_s": window_s, "min_samples": 2, "thresholds": {"error_rate_max": 0.05}},
            "rollback_strategy": strategy,
            "rollback_targets": targets if targets is not None else {c: P0 for c in cohorts},
            "checklist": [{"item": "target_exists", "ok": True, "detail": "configured"}],
            "owner": "kb-team",
            "escalation": "pager:kb",
            **extra,
        }
        return self.add("release.prepared", data, release_id=rid)

    def distributed(self, rid: str, p: dict[str, Any] = P1) -> Event:
        return self.add(
            "release.distributed", {"pack": {**p, "size": 4000}, "manifest": manifest_of(p)}, release_id=rid
        )

    def verified(self, rid: str, p: dict[str, Any] = P1) -> Event:
        gates = [{"gate": "signature", "ok": True, "code": "ok"}, {"gate": "digest", "ok": True, "code": "ok"}]
        return self.add(
            "release.verified",
            {
                "pack": {**p, "size": 4000},
                "manifest": manifest_of(p),
                "reference_time": self.clock.isoformat(),
                "gates": gates,
                "signers": ["k0"],
            },
            release_id=rid,
        )

    def verification_failed(self, rid: str, gate: str = "signature", code: str = "bad_signature") -> Event:
        return self.add(
            "release.verification_failed",
            {
                "gate": gate,
                "code": code,
                "message": "no valid signature",
                "reference_time": self.clock.isoformat(),
                "gates": [{"gate": gate, "ok": False, "code": code}],
            },
            release_id=rid,
        )

    def activate(self, rid: str, stage: int, cohorts: list[str], p: dict[str, Any] = P1, batch: str = "b") -> Event:
        for cohort in cohorts:
            self.point(cohort, p, rid)
        return self.add(
            "release.activated",
            {"stage": stage, "cohorts": cohorts, "pack": p, "batch_id": f"{batch}{stage}"},
            release_id=rid,
        )

    def activation_failed(self, rid: str, stage: int, code: str = "superseded") -> Event:
        return self.add("release.activation_failed", {"stage": stage, "code": code, "message": "lost"}, release_id=rid)

    def started(self, rid: str, stage: int, cohorts: list[str], p: dict[str, Any] = P1, window_s: int = 60) -> Event:
        mon = {"window_s": window_s, "min_samples": 2, "thresholds": {"error_rate_max": 0.05}}
        return self.add(
            "release.monitoring_started",
            {
                "stage": stage,
                "cohorts": cohorts,
                "digest": p["digest"],
                "starts_at": self.clock.isoformat(),
                "ends_at": (self.clock + timedelta(seconds=window_s)).isoformat(),
                "monitoring": mon,
            },
            release_id=rid,
        )

    def verdict(self, rid: str, outcome: str, stage: int, reason: str = "", **extra: Any) -> Event:
        return self.add(
            f"release.monitoring_{outcome}",
            {"stage": stage, "samples": 3, "runtimes": 2, "reason": reason or outcome, **extra},
            release_id=rid,
        )

    def override(self, rid: str, stage: int, why: str = "go") -> Event:
        """An operator's pass of a window (what `kxr release promote` appends)."""
        return self.add(
            "release.monitoring_passed",
            {"stage": stage, "reason": f"operator override by ops: {why}", "override": True},
            release_id=rid,
            actor=OPERATOR,
        )

    def expanded(self, rid: str, frm: int, to: int, cohorts: list[str]) -> Event:
        return self.add("release.expanded", {"from_stage": frm, "to_stage": to, "cohorts": cohorts}, release_id=rid)

    def promoted(self, rid: str, to_channel: str = "stable") -> Event:
        return self.add(
            "release.promoted", {"to_channel": to_channel, "promoted_to": f"{rid}-{to_channel}"}, release_id=rid
        )

    def rollback_started(self, rid: str, targets: dict[str, Any], trigger: str = "monitoring_failure") -> Event:
        return self.add(
            "release.rollback_started",
            {"trigger": trigger, "reason": "window failed", "targets": targets},
            release_id=rid,
        )

    def rolled_back(self, rid: str, targets: dict[str, Any]) -> Event:
        for cohort, target in targets.items():
            self.point(cohort, target, rid, kind="rollback")
        return self.add(
            "release.rolled_back", {"cohorts": list(targets), "targets": targets, "batch_id": "rb"}, release_id=rid
        )

    def closed(self, rid: str, outcome: str = "success") -> Event:
        return self.add("release.closed", {"outcome": outcome, "summary": outcome}, release_id=rid)

    def note(self, rid: str, suffix: str, rationale: str = "", incident: str | None = None) -> Event:
        return self.add(
            f"release.{suffix}", {"rationale": rationale, "incident": incident}, release_id=rid, actor=OPERATOR
        )

    # -- whole stories ---------------------------------------------------------------------------
    def through_verified(
        self, rid: str, p: dict[str, Any] = P1, stages: list[list[str]] | None = None, **prepared: Any
    ) -> None:
        self.requested(rid, p)
        self.prepared(rid, p, stages, **prepared)
        self.distributed(rid, p)
        self.verified(rid, p)

    def stage(self, rid: str, stage: int, cohorts: list[str], outcome: str = "passed", p: dict[str, Any] = P1) -> None:
        """activated -> monitoring_started -> verdict for one stage."""
        self.activate(rid, stage, cohorts, p)
        self.started(rid, stage, cohorts, p)
        self.verdict(rid, outcome, stage)

    def two_stage_success(self, rid: str, p: dict[str, Any] = P1) -> None:
        self.through_verified(rid, p)
        self.stage(rid, 0, ["internal"], p=p)
        self.expanded(rid, 0, 1, ["rest"])
        self.stage(rid, 1, ["rest"], p=p)
        self.closed(rid, "success")


def phases_of(log: Log, rid: str) -> list[str | None]:
    """The release's phase after each of its own events."""
    out, world = [], World()
    for position, event in log.entries():
        world = apply(world, position, event)
        if event.family == "release" and event.release_id == rid:
            out.append(world.release(rid).phase)
    return out


# ---- the state machine ---------------------------------------------------------------------


def test_machine_tables_cover_every_release_event_type() -> None:
    assert set(PHASE_AFTER) == set(RELEASE_TYPES)
    targets = set().union(*TRANSITIONS.values())
    assert targets <= set(RELEASE_TYPES)
    phases = {p for p in PHASE_AFTER.values() if p is not None}
    assert phases <= set(TRANSITIONS), phases - set(TRANSITIONS)


def test_whole_successful_two_stage_life() -> None:
    log = Log()
    log.channel()
    log.point("internal", P0)
    log.point("rest", P0)
    log.two_stage_success("r1")
    assert phases_of(log, "r1") == [
        "requested",
        "prepared",
        "distributed",
        "verified",
        "activated",
        "monitoring",
        "passed",
        "expanding",
        "activated",
        "monitoring",
        "passed",
        "closed",
    ]
    r = log.world().release("r1")
    assert r.anomalies == ()
    assert r.closed and not r.in_flight
    assert r.outcome == "success"
    assert r.stage == 1
    assert r.activated == ("internal", "rest")
    assert set(r.activated_at) == {0, 1}
    assert [s for s, _ in r.verdicts] == ["monitoring_passed", "monitoring_passed"]
    assert r.failure is None
    assert r.pack.digest == P1["digest"] and r.pack.size == 4000  # the verified pack wins
    assert r.stages == STAGES
    assert r.last_seq == len(log.events)


def test_release_state_tracks_last_event_and_sequence() -> None:
    log = Log()
    log.requested("r1")
    e = log.prepared("r1")
    log.requested("other")  # another release does not move r1's CAS value
    r = log.world().release("r1")
    assert (r.last_seq, r.last_event_id) == (2, e.event_id)


def test_in_flight_releases_are_ordered_by_last_sequence() -> None:
    log = Log()
    log.requested("a")
    log.requested("b")
    log.prepared("a")
    log.requested("c")
    log.closed("c", "rejected")
    assert [r.release_id for r in log.world().releases_in_flight()] == ["b", "a"]


ILLEGAL = [
    ("prepared-first", lambda log: log.prepared("r1"), "prepared after nothing"),
    (
        "activated-after-requested",
        lambda log: (log.requested("r1"), log.activate("r1", 0, ["internal"])),
        "activated after requested",
    ),
    (
        "verdict-after-verified",
        lambda log: (log.through_verified("r1"), log.verdict("r1", "passed", 0)),
        "monitoring_passed after verified",
    ),
    (
        "promoted-after-failed",
        lambda log: (log.through_verified("r1"), log.stage("r1", 0, ["internal"], "failed"), log.promoted("r1")),
        "promoted after failed",
    ),
    (
        "activated-after-closed",
        lambda log: (log.requested("r1"), log.closed("r1", "rejected"), log.activate("r1", 0, ["internal"])),
        "activated after closed",
    ),
    (
        "abort-while-rolling-back",
        lambda log: (
            log.through_verified("r1"),
            log.stage("r1", 0, ["internal"], "failed"),
            log.rollback_started("r1", {"internal": P0}),
            log.note("r1", "aborted"),
        ),
        "aborted after rolling_back",
    ),
    ("second-request", lambda log: (log.requested("r1"), log.requested("r1")), "requested after requested"),
    (
        "activated-without-verification",
        lambda log: (
            log.requested("r1"),
            log.prepared("r1"),
            log.distributed("r1"),
            log.activate("r1", 0, ["internal"]),
        ),
        "activated after distributed",
    ),
    (
        "activated-after-prepared",
        lambda log: (log.requested("r1"), log.prepared("r1"), log.activate("r1", 0, ["internal"])),
        "activated after prepared",
    ),
    (
        "activated-after-pass-without-expand",
        lambda log: (log.through_verified("r1"), log.stage("r1", 0, ["internal"]), log.activate("r1", 1, ["rest"])),
        "activated after passed",
    ),
    (
        "expanded-after-failed",
        lambda log: (
            log.through_verified("r1"),
            log.stage("r1", 0, ["internal"], "failed"),
            log.expanded("r1", 0, 1, ["rest"]),
        ),
        "expanded after failed",
    ),
    (
        "closed-while-monitoring",
        lambda log: (
            log.through_verified("r1"),
            log.activate("r1", 0, ["internal"]),
            log.started("r1", 0, ["internal"]),
            log.closed("r1"),
        ),
        "closed after monitoring",
    ),
]


# Safety properties of the machine, stated independently of the table's layout.
ONLY_AFTER = [
    ("activated", {"verified", "expanding"}),  # no activation without verification
    ("rolled_back", {"rolling_back"}),
    ("promoted", {"passed", "held"}),
    ("expanded", {"passed", "held"}),
    ("monitoring_passed", {"monitoring", "held"}),  # held: an operator's override of an inconclusive window
    ("verified", {"distributed"}),
    ("requested", {None}),
]


@pytest.mark.parametrize(("suffix", "phases"), ONLY_AFTER, ids=[s for s, _ in ONLY_AFTER])
def test_step_is_legal_only_after(suffix: str, phases: set) -> None:
    assert {phase for phase, allowed in TRANSITIONS.items() if suffix in allowed} == phases


def test_only_annotations_and_an_operator_rollback_follow_closed() -> None:
    assert TRANSITIONS["closed"] == {"annotated", "rollback_started"}


@pytest.mark.parametrize(("story", "anomaly"), [(s, a) for _, s, a in ILLEGAL], ids=[i for i, _, _ in ILLEGAL])
def test_illegal_step_is_flagged_not_refused(story, anomaly: str) -> None:
    log = Log()
    story(log)
    r = log.world().release("r1")
    assert r.anomalies[-1] == anomaly
    assert r.last_seq == len(log.events)  # the fold never refuses: the log is the truth


@pytest.mark.parametrize("suffix", ["paused", "resumed", "annotated", "aborted", "escalated"])
def test_operator_steps_are_legal_mid_flight(suffix: str) -> None:
    log = Log()
    log.through_verified("r1")
    if suffix == "escalated":
        log.add("release.escalated", {"code": "x", "message": "y", "escalation": "pager"}, release_id="r1")
    else:
        log.note("r1", suffix, "ops")
    assert log.world().release("r1").anomalies == ()


def test_second_request_does_not_replace_the_first() -> None:
    log = Log()
    first = log.requested("r1", P1, owner="first-team")
    log.prepared("r1")
    log.requested("r1", P2, owner="second-team")
    r = log.world().release("r1")
    assert r.requested.owner == "first-team"
    assert r.requested.pack.digest == P1["digest"]
    assert r.requested_at == first.occurred_at
    assert r.phase == "prepared"  # the duplicate does not rewind the machine
    assert r.anomalies == ("requested after prepared",)


def test_pause_resume_and_abort_flags() -> None:
    log = Log()
    log.through_verified("r1")
    log.note("r1", "paused", "hold on")
    paused = log.world().release("r1")
    assert paused.paused and paused.phase == "verified"
    log.note("r1", "resumed")
    assert not log.world().release("r1").paused
    log.note("r1", "aborted", "bad idea")
    r = log.world().release("r1")
    assert r.aborted and r.phase == "aborting" and r.failure == "aborted: bad idea"


@pytest.mark.parametrize(
    ("story", "failure"),
    [
        (
            lambda log: log.add(
                "release.rejected", {"reasons": [{"code": "target_exists", "message": "unconfigured"}]}, release_id="r1"
            ),
            "rejected: target_exists: unconfigured",
        ),
        (
            lambda log: (log.requested("r1"), log.prepared("r1"), log.distributed("r1"), log.verification_failed("r1")),
            "verification_failed: signature/bad_signature: no valid signature",
        ),
        (
            lambda log: (log.through_verified("r1"), log.stage("r1", 0, ["internal"], "failed")),
            "monitoring_failed: failed",
        ),
        (
            lambda log: (log.through_verified("r1"), log.stage("r1", 0, ["internal"], "inconclusive")),
            "monitoring_inconclusive: inconclusive",
        ),
    ],
    ids=["rejected", "verification-failed", "monitoring-failed", "inconclusive"],
)
def test_failure_text(story, failure: str) -> None:
    log = Log()
    story(log)
    assert log.world().release("r1").failure == failure


# ---- scopes: the pointer ---------------------------------------------------------------------


def test_scope_pointer_active_seq_and_since() -> None:
    log = Log()
    log.point("internal", P0)
    second = log.point("internal", P1, "r1", previous={"version": "0.9.0", "digest": P0["digest"]})
    log.point("rest", P2)  # another scope does not move this one
    s = log.world().scope(ENV, CH, "internal")
    assert s.active_pack.digest == P1["digest"]
    assert s.active.release_id == "r1" and s.active.kind == "rollout"
    assert s.active.previous.digest == P0["digest"]
    assert s.active_seq == log.seq_of(second) == 2
    assert s.active_since == second.occurred_at
    assert s.ever_active
    assert s.lkg is None  # a rollout alone is not known good


def test_scope_batch_comes_from_the_position() -> None:
    log = Log()
    event = log.point("internal", P1, "r1")
    world = apply(
        World(), Position(seq=7, subject=Subjects().scope(ENV, CH, "internal", "activated"), batch_id="batch-1"), event
    )
    s = world.scope(ENV, CH, "internal")
    assert (s.active_seq, s.active_batch) == (7, "batch-1")


def test_unknown_scope_reads_as_empty() -> None:
    s = World().scope(ENV, CH, "ghost")
    assert s.key == (ENV, CH, "ghost")
    assert s.active is None and s.active_pack is None and s.active_seq == 0 and not s.ever_active


# ---- scopes: last-known-good ------------------------------------------------------------------


def test_lkg_set_on_success_for_cohorts_still_running_the_pack() -> None:
    log = Log()
    log.channel()
    log.point("internal", P0)
    log.point("rest", P0)
    log.through_verified("r1")
    log.stage("r1", 0, ["internal"])
    log.expanded("r1", 0, 1, ["rest"])
    log.stage("r1", 1, ["rest"])
    log.point("rest", P2, None, kind="pin")  # an operator moved `rest` away before the close
    before = log.world()
    assert before.scope(ENV, CH, "internal").lkg is None
    log.closed("r1", "success")
    w = log.world()
    internal, rest = w.scope(ENV, CH, "internal"), w.scope(ENV, CH, "rest")
    assert internal.lkg.digest == P1["digest"]
    assert internal.lkg_release == "r1"
    assert internal.lkg_manifest == manifest_of(P1)
    assert rest.lkg is None  # not running r1's pack any more


@pytest.mark.parametrize("outcome", ["rolled_back", "aborted", "failed", "pinned"])
def test_lkg_not_set_on_other_outcomes(outcome: str) -> None:
    log = Log()
    log.through_verified("r1")
    log.stage("r1", 0, ["internal"])
    log.closed("r1", outcome)
    assert log.world().scope(ENV, CH, "internal").lkg is None


def test_lkg_not_set_for_success_without_verification() -> None:
    log = Log()
    log.requested("r1")
    log.prepared("r1")
    log.point("internal", P1, "r1")
    log.add("release.activated", {"stage": 0, "cohorts": ["internal"], "pack": P1, "batch_id": "b"}, release_id="r1")
    log.closed("r1", "success")
    assert log.world().scope(ENV, CH, "internal").lkg is None


def test_a_rollback_to_the_lkg_keeps_it_and_the_release_that_earned_it() -> None:
    log = Log()
    log.two_stage_success("r0", P0)
    log.through_verified("r1")
    log.stage("r1", 0, ["internal"], "failed")
    log.rollback_started("r1", {"internal": P0})
    log.rolled_back("r1", {"internal": P0})
    s = log.world().scope(ENV, CH, "internal")
    assert s.active_pack.digest == P0["digest"]
    assert s.active.kind == "rollback"
    assert (s.lkg.digest, s.lkg_release) == (P0["digest"], "r0")  # before session 23: "r1", which earned nothing


def test_a_rollback_to_the_pinned_prior_makes_it_known_good() -> None:
    log = Log()
    log.pin("internal", P0, NOW + timedelta(days=1))
    log.unpin("internal")
    log.through_verified("r1")
    log.stage("r1", 0, ["internal"], "failed")
    log.rollback_started("r1", {"internal": P0})
    log.rolled_back("r1", {"internal": P0})
    s = log.world().scope(ENV, CH, "internal")
    assert (s.lkg.digest, s.lkg_release) == (P0["digest"], "r1")


def test_a_rollback_landing_on_a_pin_the_operator_has_since_replaced_does_not_make_it_known_good() -> None:
    """The lifecycle model's case (session 23): the rollback's target was the pin in force (P2) when it
    started; the operator then pinned P0 and lifted it; the rollback lands on P2, as recorded. P2 never
    passed a window: before, it became LKG (`lkg_not_earned`), and the next release of it was refused as
    "the pack being released is the LKG"."""
    log = Log()
    log.two_stage_success("r0", P1)
    log.pin("internal", P2, NOW + timedelta(days=1))
    log.through_verified("r1", P1)
    log.rollback_started("r1", {"internal": P2})
    log.pin("internal", P0, NOW + timedelta(days=1))
    log.unpin("internal")
    log.rolled_back("r1", {"internal": P2})
    s = log.world().scope(ENV, CH, "internal")
    assert s.active_pack.digest == P2["digest"]
    assert (s.lkg.digest, s.lkg_release) == (P1["digest"], "r0")


# ---- scopes: a rollback pulls its release's pack (session 27) -------------------------------------


def test_an_operator_rollback_of_a_release_that_closed_success_hands_lkg_back_to_the_one_before() -> None:
    """r1 earned P1 (P0 before it, earned by r0); an operator pulls r1 after it closed (tenant impact) back to
    P0: P1 is known good there no longer. Before session 27 it stayed LKG, and the next failed release of the
    channel rolled back onto the pack the operator had just pulled."""
    log = Log()
    log.two_stage_success("r0", P0)
    log.two_stage_success("r1", P1)
    w = log.world()
    assert {c: (w.scope(ENV, CH, c).lkg.digest, w.scope(ENV, CH, c).lkg_prior.pack.digest) for c in COHORTS} == {
        c: (P1["digest"], P0["digest"]) for c in COHORTS
    }
    log.rollback_started("r1", {"internal": P0, "rest": P0}, trigger="tenant_impact")
    w = log.world()  # from the decision on: wherever, or whether, the rollback lands
    for cohort in COHORTS:
        s = w.scope(ENV, CH, cohort)
        assert s.active_pack.digest == P1["digest"] and s.pulled == {P1["digest"]}
        assert (s.lkg.digest, s.lkg_release, s.lkg_manifest) == (P0["digest"], "r0", manifest_of(P0))
        assert s.lkg_prior is None  # one step back; a second pull leaves no LKG
    log.rolled_back("r1", {"internal": P0, "rest": P0})
    s = log.world().scope(ENV, CH, "internal")
    assert (s.active_pack.digest, s.lkg.digest, s.lkg_release) == (P0["digest"], P0["digest"], "r0")


def test_a_pulled_lkg_with_nothing_earned_before_it_leaves_none() -> None:
    """The first release that earned anything is pulled back to what ran before it (never judged): no LKG."""
    log = Log()
    log.point("internal", P0)
    log.two_stage_success("r1", P1)
    assert log.world().scope(ENV, CH, "internal").lkg_prior is None
    log.rollback_started("r1", {"internal": P0}, trigger="tenant_impact")
    log.rolled_back("r1", {"internal": P0})
    s = log.world().scope(ENV, CH, "internal")
    assert s.active_pack.digest == P0["digest"] and s.lkg is None and s.lkg_release is None


def test_a_pulled_lkg_landing_on_the_pin_makes_the_pin_known_good_with_the_earned_one_before() -> None:
    log = Log()
    log.two_stage_success("r0", P0)
    log.two_stage_success("r1", P1)
    log.pin("internal", P2, NOW + timedelta(days=1))
    log.rollback_started("r1", {"internal": P2}, trigger="tenant_impact")
    log.rolled_back("r1", {"internal": P2})
    s = log.world().scope(ENV, CH, "internal")
    assert (s.lkg.digest, s.lkg_earned) == (P2["digest"], False)  # the operator's word, not evidence
    assert s.lkg_prior is not None and s.lkg_prior.pack.digest == P0["digest"]  # never the pulled P1
    # pulled again, the pin's pack hands the name back to r0's earned P0
    log.through_verified("r2", P1)
    log.activate("r2", 0, ["internal"], P1)
    log.rollback_started("r2", {"internal": P0})
    assert log.world().scope(ENV, CH, "internal").lkg.digest == P2["digest"]  # r2 pulls P1, not the pin's P2


def test_a_pulled_pack_before_the_lkg_is_forgotten_as_the_prior() -> None:
    """P0 is the LKG before P1; a release of P0 again fails in internal and rolls back to P1: P0 just failed
    there, so it is no longer where pulling P1 would send the scope (the LKG itself stays P1)."""
    log = Log()
    log.two_stage_success("r0", P0)
    log.two_stage_success("r1", P1)
    log.through_verified("r2", P0)
    log.activate("r2", 0, ["internal"], P0)
    log.rollback_started("r2", {"internal": P1})
    log.rolled_back("r2", {"internal": P1})
    s = log.world().scope(ENV, CH, "internal")
    assert (s.active_pack.digest, s.lkg.digest, s.lkg_prior) == (P1["digest"], P1["digest"], None)
    rest = log.world().scope(ENV, CH, "rest")  # r2 never ran there: its prior stays
    assert rest.lkg_prior is not None and rest.lkg_prior.pack.digest == P0["digest"] and not rest.pulled


def test_a_pulled_pack_is_known_good_again_once_a_release_earns_it_or_an_operator_pins_it() -> None:
    log = Log()
    log.point("internal", P0)
    log.two_stage_success("r1", P1)
    log.rollback_started("r1", {"internal": P0, "rest": P0}, trigger="tenant_impact")
    log.rolled_back("r1", {"internal": P0, "rest": P0})
    assert log.world().scope(ENV, CH, "rest").pulled == {P1["digest"]}
    log.pin("rest", P1, NOW + timedelta(days=1))  # the operator's word on it
    assert not log.world().scope(ENV, CH, "rest").pulled
    log.two_stage_success("r2", P1)  # passed its windows on data again
    s = log.world().scope(ENV, CH, "internal")
    assert not s.pulled and (s.lkg.digest, s.lkg_release) == (P1["digest"], "r2")


def test_pulled_keeps_only_packs_something_could_still_name_as_a_target() -> None:
    """A failed release's new pack, which no LKG, pin or recorded target names, is not remembered (`pulled` is in
    snapshots and read models: it must not grow with every failure of the scope's history); one a release in
    flight recorded as its target is, and that release's rollback then holds."""
    log = Log()
    log.two_stage_success("r0", P0)
    log.through_verified("r1", P1)
    log.activate("r1", 0, ["internal"], P1)
    log.rollback_started("r1", {"internal": P0})
    assert not log.world().scope(ENV, CH, "internal").pulled
    log.rolled_back("r1", {"internal": P0})
    log.closed("r1", "rolled_back")
    log.through_verified("r2", P2, stages=[["rest"]], targets={"rest": P1})  # P1 recorded (as a forged plan could)
    log.through_verified("r3", P1, stages=[["rest"]])
    log.activate("r3", 0, ["rest"], P1)
    log.rollback_started("r3", {"rest": P0})
    assert log.world().scope(ENV, CH, "rest").pulled == {P1["digest"]}


def test_a_rollback_of_a_release_that_switched_nothing_pulls_nothing() -> None:
    """The model's case (session 27, against a first version of this rule): r1's target was the pin in force
    (P2); the operator then pinned P0 (the pinner switched to it) and lifted the pin; r1's rollback lands on P2,
    moving internal off P0, its LKG. r1 never ran anywhere: nothing is pulled, P0 stays known good (that first
    version took the name from any pack a rollback pointer moved a scope off)."""
    log = Log()
    log.two_stage_success("r0", P0)
    log.pin("internal", P2, NOW + timedelta(days=1))
    log.point("internal", P2, None, kind="pin")
    log.through_verified("r1", P1)
    log.rollback_started("r1", {"internal": P2})
    log.pin("internal", P0, NOW + timedelta(days=1))
    log.point("internal", P0, None, kind="pin")
    log.unpin("internal")
    log.rolled_back("r1", {"internal": P2})
    s = log.world().scope(ENV, CH, "internal")
    assert s.active_pack.digest == P2["digest"] and (s.lkg.digest, s.lkg_release) == (P0["digest"], "r0")
    assert not s.pulled


def test_a_success_of_the_same_pack_again_keeps_the_prior() -> None:
    """A newer release of the LKG's own pack passing again supersedes nothing: the prior stays the one before."""
    log = Log()
    log.two_stage_success("r0", P0)
    log.two_stage_success("r1", P1)
    log.two_stage_success("r2", P1)
    s = log.world().scope(ENV, CH, "internal")
    assert (s.lkg.digest, s.lkg_release, s.lkg_prior.pack.digest) == (P1["digest"], "r2", P0["digest"])


def test_later_success_replaces_lkg() -> None:
    log = Log()
    log.point("internal", P0)
    log.point("rest", P0)
    log.two_stage_success("r1", P1)
    log.two_stage_success("r2", P2)
    w = log.world()
    assert {w.scope(ENV, CH, c).lkg.digest for c in ("internal", "rest")} == {P2["digest"]}
    assert w.scope(ENV, CH, "rest").lkg_release == "r2"


# ---- scopes: pins ----------------------------------------------------------------------------


def test_pin_and_unpin() -> None:
    log = Log()
    until = NOW + timedelta(hours=1)
    pinned = log.pin("internal", P0, until, "incident INC-1")
    s = log.world().scope(ENV, CH, "internal")
    assert s.pin.pack.digest == P0["digest"] and s.pin.rationale == "incident INC-1"
    assert s.pin_seq == log.seq_of(pinned)
    unpinned = log.unpin("internal")
    s = log.world().scope(ENV, CH, "internal")
    assert s.pin is None and s.pinned_at(NOW) is None
    assert s.pin_seq == log.seq_of(unpinned)


@pytest.mark.parametrize(
    ("offset", "in_force"),
    [(timedelta(hours=-1), True), (timedelta(seconds=-1), True), (timedelta(0), False), (timedelta(seconds=1), False)],
    ids=["well-before", "just-before", "at-until", "after"],
)
def test_pinned_at_respects_until(offset: timedelta, in_force: bool) -> None:
    until = NOW + timedelta(hours=2)
    log = Log()
    log.pin("internal", P0, until)
    s = log.world().scope(ENV, CH, "internal")
    assert (s.pinned_at(until + offset) is not None) is in_force


def test_pin_does_not_move_the_pointer() -> None:
    log = Log()
    log.point("internal", P1, "r1")
    log.pin("internal", P0, NOW + timedelta(days=1))
    s = log.world().scope(ENV, CH, "internal")
    assert s.active_pack.digest == P1["digest"] and s.active_seq == 1


# ---- channels --------------------------------------------------------------------------------


def test_channel_configured_is_folded_with_who_and_when() -> None:
    log = Log()
    log.channel()
    second = log.channel({**CHANNEL_DOC, "promote_to": "stable"})
    state = log.world().channel_state(ENV, CH)
    assert state.seq == 2 and state.configured_at == second.occurred_at and state.configured_by == "ops"
    assert log.world().channel_config(ENV, CH).promote_to == "stable"


# ---- apply: idempotence and undecodable entries -----------------------------------------------


def test_apply_is_idempotent_for_an_applied_sequence() -> None:
    log = Log()
    log.two_stage_success("r1")
    entries = log.entries()
    world = fold(entries)
    for position, event in (entries[0], entries[-1]):
        assert apply(world, position, event) is world
    assert fold(entries, world) is world  # replaying an overlapping stretch changes nothing
    assert world.applied_seq == len(entries)


def test_fold_from_a_snapshot_equals_a_full_fold() -> None:
    log = Log()
    log.point("internal", P0)
    log.two_stage_success("r1")
    entries = log.entries()
    snapshot = fold(entries[:7])
    resumed = fold(entries[3:], snapshot)  # overlapping replay after a snapshot
    full = fold(entries)
    assert resumed.applied_seq == full.applied_seq
    assert resumed.release("r1") == full.release("r1")
    assert resumed.scope(ENV, CH, "internal") == full.scope(ENV, CH, "internal")


def _garbage(seq: int, subject: str) -> Position:
    return Position(seq=seq, subject=subject)


def test_undecodable_on_a_release_subject_bumps_its_cas_sequence() -> None:
    log = Log()
    log.requested("r1")
    log.prepared("r1")
    world = log.world()
    after = apply_undecodable(world, _garbage(10, "kx.release.r1.distributed"), Subjects())
    assert after.release("r1").last_seq == 10
    assert after.release("r1").phase == "prepared"  # nothing else changes
    assert after.applied_seq == 10


def test_undecodable_on_a_scope_pointer_bumps_active_seq() -> None:
    log = Log()
    log.point("internal", P1, "r1")
    after = apply_undecodable(log.world(), _garbage(5, "kx.scope.prod.canary.internal.activated"), Subjects())
    s = after.scope(ENV, CH, "internal")
    assert s.active_seq == 5
    assert s.active_pack.digest == P1["digest"]
    fresh = apply_undecodable(World(), _garbage(3, "kx.scope.prod.canary.rest.activated"), Subjects())
    assert fresh.scope(ENV, CH, "rest").active_seq == 3


def test_a_pointer_moves_the_scope_chain_and_junk_does_not() -> None:
    log = Log()
    pre_chain = log.point("internal", P0)
    data = {
        "pack": P1,
        "manifest": manifest_of(P1),
        "release_id": "r1",
        "kind": "rollout",
        "generation": 4,
        "prev": "sha256:" + "e" * 64,
    }
    chained = log.add("scope.activated", data, release_id="r1", cohort="internal")
    subject = Subjects().scope(ENV, CH, "internal", "activated")
    world = apply(World(), Position(1, subject, "b", digest="sha256:" + "e" * 64), pre_chain)
    assert (world.scope(ENV, CH, "internal").generation, world.scope(ENV, CH, "internal").pointer_digest) == (
        None,
        "sha256:" + "e" * 64,
    )
    world = apply(world, Position(2, subject, "b", digest="sha256:" + "d" * 64), chained)
    s = world.scope(ENV, CH, "internal")
    assert (s.active_pack.digest, s.generation, s.pointer_digest) == (P1["digest"], 4, "sha256:" + "d" * 64)
    after = apply_undecodable(world, _garbage(3, subject), Subjects()).scope(ENV, CH, "internal")
    assert (after.generation, after.pointer_digest, after.active_seq) == (4, "sha256:" + "d" * 64, 3)


@pytest.mark.parametrize(
    "subject",
    # (a pin subject moves the scope's pin sequence and a channel subject records a problem:
    # tests/unit/test_contract_edges.py)
    ["kx.release.unknown.requested", "kx.channel.prod.canary.configured", "other.release.r1.closed", "kx.release.r1"],
    ids=["unknown-release", "channel", "foreign-prefix", "short"],
)
def test_undecodable_elsewhere_only_moves_applied_seq(subject: str) -> None:
    log = Log()
    log.requested("r1")
    log.point("internal", P1, "r1")
    world = log.world()
    after = apply_undecodable(world, _garbage(9, subject), Subjects())
    assert after.applied_seq == 9
    assert after.releases == world.releases and after.scopes == world.scopes


def test_undecodable_already_applied_is_ignored() -> None:
    log = Log()
    log.requested("r1")
    log.prepared("r1")
    world = log.world()
    assert apply_undecodable(world, _garbage(1, "kx.release.r1.requested"), Subjects()) is world


def test_undecodable_honours_the_prefix() -> None:
    log = Log()
    log.requested("r1")
    world = log.world()
    after = apply_undecodable(world, _garbage(4, "foo.release.r1.prepared"), Subjects("foo"))
    assert after.release("r1").last_seq == 4


# ---- evidence record ----------------------------------------------------------------------------


def failing_story() -> Log:
    log = Log()
    log.channel()
    log.point("internal", P0)
    log.point("rest", P0)
    log.through_verified("r1")
    log.stage("r1", 0, ["internal"])
    log.expanded("r1", 0, 1, ["rest"])
    log.note("r1", "annotated", "looking into latency", incident="INC-7")
    log.activate("r1", 1, ["rest"])
    log.started("r1", 1, ["rest"])
    log.verdict("r1", "failed", 1, "error_rate 0.2 breaches <= 0.05", figures={"error_rate": 0.2})
    log.rollback_started("r1", {"internal": P0, "rest": P0})
    log.rolled_back("r1", {"internal": P0, "rest": P0})
    log.closed("r1", "rolled_back")
    log.requested("other")  # not part of r1's record
    return log


def test_evidence_record_of_a_rolled_back_release() -> None:
    log = failing_story()
    rec = evidence_of("r1", log.entries())
    assert rec.identity["owner"] == "kb-team" and rec.identity["escalation"] == "pager:kb"
    assert rec.identity["requested_by"] == "producer:ci"
    assert rec.target == {"env": ENV, "channel": CH}
    assert rec.pack["digest"] == P1["digest"] and rec.pack["size"] == 4000
    assert rec.plan["stages"] == STAGES and rec.plan["rollback_strategy"] == "lkg"
    assert [c["item"] for c in rec.checklist] == ["target_exists"]
    assert [g["gate"] for g in rec.gates] == ["signature", "digest"]
    assert rec.verification["result"] == "verified" and rec.verification["signers"] == ["k0"]
    assert [(a["type"], a["stage"] if "stage" in a else None) for a in rec.activations] == [
        ("activated", 0),
        ("activated", 1),
        ("rolled_back", None),
    ]
    assert [(w["stage"], w["verdict"]["result"]) for w in rec.windows] == [(0, "passed"), (1, "failed")]
    assert all(w["started"] is not None for w in rec.windows)
    assert rec.windows[1]["verdict"]["figures"] == {"error_rate": 0.2}
    assert [d["decision"] for d in rec.decisions] == ["expanded", "annotated", "rollback_started"]
    assert rec.decisions[1]["by"] == "operator:ops"
    assert rec.incidents == ("INC-7",)
    assert rec.outcome["outcome"] == "rolled_back"
    own = [e for e in log.events if e.release_id == "r1"]
    assert [line["event_id"] for line in rec.timeline] == [e.event_id for e in own]  # scope switches included
    assert [line["seq"] for line in rec.timeline] == sorted(line["seq"] for line in rec.timeline)
    assert rec.to_json()["incidents"] == ["INC-7"]


def test_evidence_of_a_rejected_request_lists_the_reasons() -> None:
    log = Log()
    log.requested("r1")
    log.add(
        "release.rejected",
        {
            "reasons": [
                {"code": "target_exists", "message": "unconfigured"},
                {"code": "rollback_target", "message": "no lkg"},
            ]
        },
        release_id="r1",
    )
    log.closed("r1", "rejected")
    rec = evidence_of("r1", log.entries())
    assert rec.checklist == (
        {"item": "target_exists", "ok": False, "detail": "unconfigured"},
        {"item": "rollback_target", "ok": False, "detail": "no lkg"},
    )
    assert rec.outcome["outcome"] == "rejected"
    assert rec.activations == () and rec.windows == ()


def test_evidence_of_a_failed_verification() -> None:
    log = Log()
    log.requested("r1")
    log.prepared("r1")
    log.distributed("r1")
    log.verification_failed("r1", "digest", "digest_mismatch")
    rec = evidence_of("r1", log.entries())
    assert rec.verification["result"] == "failed"
    assert (rec.verification["gate"], rec.verification["code"]) == ("digest", "digest_mismatch")
    assert rec.gates == ({"gate": "digest", "ok": False, "code": "digest_mismatch", "message": ""},)


def test_verdict_without_a_started_window_is_still_recorded() -> None:
    log = Log()
    log.through_verified("r1")
    log.activate("r1", 0, ["internal"])
    log.verdict("r1", "failed", 0, "hard breach", early=True)
    rec = evidence_of("r1", log.entries())
    assert len(rec.windows) == 1
    assert rec.windows[0]["started"] is None and rec.windows[0]["verdict"]["early"] is True


def test_evidence_windows_match_the_latest_open_window_of_the_stage() -> None:
    log = Log()
    log.through_verified("r1")
    log.activate("r1", 0, ["internal"])
    log.started("r1", 0, ["internal"])
    log.verdict("r1", "inconclusive", 0)
    log.started("r1", 0, ["internal"])  # an operator re-opened the window
    log.verdict("r1", "passed", 0)
    rec = evidence_of("r1", log.entries())
    assert [w["verdict"]["result"] for w in rec.windows] == ["inconclusive", "passed"]


def test_a_second_verdict_never_overwrites_the_first() -> None:
    log = Log()
    log.through_verified("r1")
    log.activate("r1", 0, ["internal"])
    log.started("r1", 0, ["internal"])
    log.verdict("r1", "failed", 0, "hard breach", early=True)
    log.verdict("r1", "passed", 0, "late duplicate")
    rec = evidence_of("r1", log.entries())
    assert [(w["started"] is not None, w["verdict"]["result"]) for w in rec.windows] == [
        (True, "failed"),
        (False, "passed"),
    ]


def test_evidence_ignores_other_releases() -> None:
    log = Log()
    log.requested("r2", P2)
    assert evidence_of("r1", log.entries()).timeline == ()


def test_evidence_is_a_pure_fold() -> None:
    log = failing_story()
    entries = log.entries()
    assert evidence_of("r1", entries) == evidence_of("r1", list(entries))
    # positions matter only through what they carry: a batch id on an activation is kept
    batched = [(replace(p, batch_id="B") if e.type == "release.activated" else p, e) for p, e in entries]
    assert {a["batch"] for a in evidence_of("r1", batched).activations if a["type"] == "activated"} == {"B"}
