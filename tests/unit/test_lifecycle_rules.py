"""Issue 13, the lifecycle decisions: overrides, abort, rollback strategy, readiness, policies.

Pure: logs folded into a World, then the decide functions and operator actions over it.
Each rule here failed on the code before issue 13 (see the docstrings for what it did).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from events.model import Actor, PackRef, Scope
from events.subjects import Subjects
from projections.pins import pin_too_long
from projections.position import Position
from projections.releases import ILLEGAL_AFTER_ABORT
from projections.rollback import rollback_targets
from projections.world import apply_undecodable
from services.actions import operator as ops
from services.actions.pins import pin as pin_action
from services.consumers import preparer, promoter
from services.errors import OperatorError
from services.verification.readiness import readiness_problems

from .test_audit_invariants import watching_r1
from .test_decisions import LATER, ctx, events_of, history, passed_log, single_event, state
from .test_projections import CH, CHANNEL_DOC, ENV, OPERATOR, P0, P1, P2, SERVICE, Log

RESCUER = Actor(kind="operator", id="alice")


def override(log: Log, rid: str, stage: int, by: Actor = RESCUER) -> None:
    """What `kxr release promote` appends: an operator's pass of a held window."""
    verdict = ops.promote(log.world(), rid, "no traffic in that cohort yet", by, log.clock).event
    log.add("release.monitoring_passed", verdict.data.model_dump(), release_id=rid, actor=by)


def held_second_stage(channel: dict[str, Any] | None = None) -> Log:
    """r0 (P0) is LKG; r1 passed stage 1 on data and its stage 2 window was inconclusive."""
    log = Log()
    log.channel(channel)
    log.two_stage_success("r0", P0)
    log.through_verified("r1")
    log.stage("r1", 0, ["internal"])
    log.expanded("r1", 0, 1, ["rest"])
    log.stage("r1", 1, ["rest"], "inconclusive")
    return log


def aborted_and_held(log: Log | None = None) -> Log:
    """r1 exposed `internal`, was aborted, and its rollback escalated (no target): held."""
    log = log or history(Log())
    log.through_verified("r1")
    log.activate("r1", 0, ["internal"])
    log.started("r1", 0, ["internal"])
    log.note("r1", "aborted", "wrong pack")
    log.rollback_started("r1", {"internal": None}, "abort")
    log.add(
        "release.escalated",
        {"code": "rollback_target_unusable", "message": "internal: no rollback target", "escalation": "pager:kb"},
        release_id="r1",
    )
    return log


def decide(log: Log, rid: str = "r1", ready=None):
    world, release = state(log, rid)
    return promoter.decide(world, release, ctx("promoter"), *(() if ready is None else (ready,)))


# ---- 1. an override never becomes known-good -------------------------------------------------


def test_operator_promote_writes_a_verdict_marked_as_override() -> None:
    action = ops.promote(held_second_stage().world(), "r1", "rest is idle", RESCUER, LATER)
    assert action.event.type == "release.monitoring_passed"
    assert action.event.data.override is True
    assert action.event.data.stage == 1


def test_a_release_passed_by_override_closes_promoted_by_override_naming_stage_and_operator() -> None:
    """Before: it closed `success`."""
    log = held_second_stage()
    override(log, "r1", 1)
    event = single_event(decide(log))
    assert (event.type, event.data.outcome) == ("release.closed", "promoted_by_override")
    assert "stage(s) [2]" in event.data.summary and "alice" in event.data.summary


def test_an_override_release_is_neither_promoted_nor_success_on_a_promoting_channel() -> None:
    log = held_second_stage({**CHANNEL_DOC, "promote_to": "stable"})
    override(log, "r1", 1)
    event = single_event(decide(log))
    assert event.data.outcome == "promoted_by_override" and "not promoted to stable" in event.data.summary


def test_a_success_close_after_an_override_never_makes_its_pack_known_good() -> None:
    """Defensive fold: a `success` the evidence does not back (forged, or an older promoter) is no LKG."""
    log = held_second_stage()
    override(log, "r1", 1)
    log.closed("r1", "success")
    world = log.world()
    assert world.scope(ENV, CH, "internal").lkg.digest == P0["digest"]
    assert world.scope(ENV, CH, "rest").lkg.digest == P0["digest"]
    assert any("closed success without every stage passed" in a for a in world.release("r1").anomalies)


def test_a_pass_without_samples_is_not_data() -> None:
    log = Log()
    log.channel()
    log.through_verified("r1")
    log.activate("r1", 0, ["internal"])
    log.started("r1", 0, ["internal"])
    log.add("release.monitoring_passed", {"stage": 0, "samples": 0, "reason": "nothing seen"}, release_id="r1")
    log.expanded("r1", 0, 1, ["rest"])
    log.stage("r1", 1, ["rest"])
    release = log.world().release("r1")
    assert not release.passed_on_data and release.stages_passed_by_override == [0]


def test_a_failing_release_after_an_override_rolls_back_to_the_previous_lkg() -> None:
    log = held_second_stage()
    override(log, "r1", 1)
    (close,) = events_of(decide(log))  # the promoter's own close (before: `success`, which made P1 the LKG)
    log.add(close.type, close.data.model_dump(), release_id="r1")
    log.through_verified("r2", P2)
    log.stage("r2", 0, ["internal"], "failed", p=P2)
    world, release = state(log, "r2")
    assert rollback_targets(world, release, LATER)["internal"].digest == P0["digest"]


def test_the_monitors_trigger_names_the_rollback_trigger() -> None:
    log = history(Log())
    log.through_verified("r1")
    log.activate("r1", 0, ["internal"])
    log.started("r1", 0, ["internal"])
    log.verdict("r1", "failed", 0, "runtime rt-1 refused the pack", trigger="activation_failure")
    event = single_event(decide(log))
    assert (event.type, event.data.trigger) == ("release.rollback_started", "activation_failure")


# ---- 2. abort is final -----------------------------------------------------------------------


def refused_to_move_on(world, action: str, why: str) -> None:
    """The operator's `promote` or `extend` of r1 is refused, saying `why`."""
    with pytest.raises(OperatorError, match=why):
        if action == "promote":
            ops.promote(world, "r1", "ship it", RESCUER, LATER)
        else:
            ops.extend(world, "r1", 60, "more samples", RESCUER, LATER)


@pytest.mark.parametrize("action", ["promote", "extend"])
def test_an_aborted_held_release_cannot_be_promoted_or_extended(action: str) -> None:
    """Before: `kxr release promote` passed it, and it closed `success` with its pack as LKG."""
    world = aborted_and_held().world()
    assert world.release("r1").phase == "held"
    refused_to_move_on(world, action, "abort is final")


@pytest.mark.parametrize("action", ["promote", "extend"])
def test_a_release_held_by_an_escalated_rollback_after_it_closed_never_moves_forward(action: str) -> None:
    """Found by the lifecycle model: a release closed `success`, rolled back by an operator, the
    rollback escalated (held); `extend` reopened its window and it closed a second time."""
    log = history(Log())
    log.through_verified("r1")
    log.stage("r1", 0, ["internal"])
    log.closed("r1", "success")
    log.rollback_started("r1", {"internal": None}, trigger="operator")
    log.add(
        "release.escalated",
        {"code": "rollback_target_unusable", "message": "internal: no rollback target", "escalation": "pager"},
        release_id="r1",
    )
    world = log.world()
    assert world.release("r1").phase == "held"
    refused_to_move_on(world, action, "being rolled back")


def test_the_promoter_never_advances_an_aborted_release() -> None:
    """A pass logged after an abort (an old client, a raw publish): the release rolls back instead."""
    log = aborted_and_held()
    log.add(
        "release.monitoring_passed", {"stage": 0, "samples": 5, "reason": "forged"}, release_id="r1", actor=OPERATOR
    )
    event = single_event(decide(log))
    assert (event.type, event.data.trigger) == ("release.rollback_started", "abort")


@pytest.mark.parametrize("suffix", sorted(ILLEGAL_AFTER_ABORT - {"activated"}) + ["closed-success"])
def test_the_fold_flags_moving_on_after_an_abort(suffix: str) -> None:
    log = aborted_and_held()
    if suffix == "monitoring_passed":
        log.verdict("r1", "passed", 0)
    elif suffix == "monitoring_started":
        log.started("r1", 0, ["internal"])
    elif suffix == "expanded":
        log.expanded("r1", 0, 1, ["rest"])
    elif suffix == "promoted":
        log.promoted("r1")
    else:
        log.closed("r1", "success")
    anomalies = log.world().release("r1").anomalies
    assert any("after aborted: abort is final" in a for a in anomalies), anomalies


def test_closing_an_aborted_release_as_aborted_is_legal() -> None:
    log = aborted_and_held()
    action = ops.close(log.world(), "r1", "aborted", "no target; scope reset by hand", RESCUER, LATER)
    log.add("release.closed", action.event.data.model_dump(), release_id="r1", actor=RESCUER)
    release = log.world().release("r1")
    assert release.outcome == "aborted" and release.anomalies == ()
    assert "alice" in action.event.data.summary and "scope reset by hand" in action.event.data.summary
    assert action.expected_seq == state(aborted_and_held())[1].last_seq


def test_operator_close_is_only_for_held_releases_and_never_a_success() -> None:
    world = aborted_and_held().world()
    with pytest.raises(OperatorError, match="--outcome"):
        ops.close(world, "r1", "success", "looks fine", RESCUER, LATER)
    with pytest.raises(OperatorError, match="rationale"):
        ops.close(world, "r1", "failed", "  ", RESCUER, LATER)
    running = history(Log())
    running.through_verified("r1")
    running.activate("r1", 0, ["internal"])
    with pytest.raises(OperatorError, match="is activated: only a held release"):
        ops.close(running.world(), "r1", "failed", "stop", RESCUER, LATER)
    ops.close(
        held_second_stage().world(), "r1", "failed", "giving up on this pack", RESCUER, LATER
    )  # held, not aborted: fine


# ---- 3. strategy pinned on every rollback path -----------------------------------------------


def pinned_prior_log(targets: dict[str, Any] | None = None) -> Log:
    """P0 was pinned once (the pinned prior); P2 is LKG now; r1 (strategy pinned) failed on `internal`."""
    log = Log()
    log.channel()
    log.two_stage_success("r0", P2)
    log.through_verified(
        "r1", strategy="pinned", targets=targets if targets is not None else {"internal": P0, "rest": P0}
    )
    log.stage("r1", 0, ["internal"], "failed")
    return log


def test_the_automatic_rollback_of_a_pinned_strategy_goes_to_the_pinned_prior_not_lkg() -> None:
    """Before: to the LKG (P2)."""
    log = pinned_prior_log()
    assert log.world().scope(ENV, CH, "internal").lkg.digest == P2["digest"]
    event = single_event(decide(log))
    assert event.type == "release.rollback_started"
    assert event.data.targets["internal"].digest == P0["digest"]


def test_the_operator_rollback_of_a_pinned_strategy_goes_to_the_pinned_prior() -> None:
    log = Log()
    log.channel()
    log.two_stage_success("r0", P2)
    log.through_verified("r1", strategy="pinned", targets={"internal": P0, "rest": P0})
    log.activate("r1", 0, ["internal"])
    action = ops.rollback(log.world(), "r1", "tenant_impact", "tickets", RESCUER, LATER)
    assert action.event.data.targets["internal"].digest == P0["digest"]


def test_a_pinned_strategy_without_a_recorded_prior_holds_it_never_falls_back_to_lkg() -> None:
    event = single_event(decide(pinned_prior_log({"internal": None, "rest": None})))
    assert event.data.targets == {"internal": None}  # the activator escalates: held for an operator


def test_an_lkg_strategy_still_takes_the_pin_in_force_first() -> None:
    log = history(Log())
    log.through_verified("r1")
    log.stage("r1", 0, ["internal"], "failed")
    log.pin("internal", P2, LATER + timedelta(hours=1))
    event = single_event(decide(log))
    assert event.data.targets["internal"].digest == P2["digest"]


# ---- 4. rollback readiness, continuously ----------------------------------------------------


def passed_first_stage(channel: dict[str, Any] | None = None, stage: int = 0) -> Log:
    return passed_log(stage, channel)


def test_an_expansion_waits_for_a_usable_rollback_target() -> None:
    """Before: decide took no readiness facts and expanded whatever the target's state."""
    event = single_event(decide(passed_first_stage(), ready={P0["digest"]: "pack object missing"}))
    assert (event.type, event.data.code) == ("release.escalated", "rollback_not_ready")
    assert (
        "internal" in event.data.message
        and "rest" in event.data.message
        and "pack object missing" in event.data.message
    )


def test_an_unchecked_target_is_not_ready() -> None:
    event = single_event(decide(passed_first_stage(), ready={}))
    assert event.data.code == "rollback_not_ready" and "was not checked" in event.data.message


def test_an_expansion_holds_while_its_rollback_target_was_pulled_there() -> None:
    """r0's P0 is r1's recorded target; r0 is then rolled back (an operator pulled it): P0 is known good no
    longer where r0 ran, so r1 must not expose more with a rollback that would land there (session 27)."""
    log = passed_first_stage()
    log.rollback_started("r0", {"internal": None, "rest": None}, trigger="tenant_impact")
    event = single_event(decide(log, ready={P0["digest"]: None}))
    assert (event.type, event.data.code) == ("release.escalated", "rollback_not_ready")
    assert "rest: target 0.9.0 was rolled back there since" in event.data.message, event.data.message


def test_a_ready_target_lets_the_release_expand() -> None:
    assert single_event(decide(passed_first_stage(), ready={P0["digest"]: None})).type == "release.expanded"


@pytest.mark.parametrize(
    ("stage", "promote_to", "gone"),
    [(0, None, "internal"), (1, None, "rest"), (1, "stable", "rest")],
    ids=["expansion", "success-close", "promotion"],
)
def test_a_pass_for_a_cohort_the_channel_dropped_before_the_promoter_acts_holds_the_release(
    stage: int, promote_to: str | None, gone: str
) -> None:
    """Session 25: the monitor's append is not fenced against a channel change, so its pass may land for a
    cohort the channel no longer has; the promoter checks again before it moves the release on, and holds
    (`escalated` stale_pass) whatever the next step would have been. Ready rollback targets change nothing;
    the pass then counts for nothing in the release's own fold. (A pass naming no `channel_seq`, as logs
    before session 25: checked against the channel as it stands.)"""
    log = passed_first_stage({**CHANNEL_DOC, "promote_to": promote_to}, stage=stage)
    kept = {"internal": {"name": "everyone"}, "rest": {"name": "internal", "tenants": ["t-int"]}}[gone]
    catch_all = {"name": "everyone"}
    cohorts = [catch_all] if gone == "internal" else [kept, catch_all]
    log.channel({**CHANNEL_DOC, "promote_to": promote_to, "cohorts": cohorts, "plan": [[c["name"]] for c in cohorts]})
    event = single_event(decide(log, ready={P0["digest"]: None}))
    assert (event.type, event.data.code) == ("release.escalated", "stale_pass")
    assert event.data.message == (
        f"stage {stage + 1}'s pass counts for nothing: cohort(s) {gone} no longer in prod/canary's configuration; "
        "held for an operator"
    )
    log.add("release.escalated", event.data.model_dump(), release_id="r1")
    release = state(log, "r1")[1]
    assert release.phase == "held" and stage not in release.stages_passed_on_data


def test_a_pass_moves_the_release_on_only_while_the_configuration_it_was_judged_against_is_the_newest() -> None:
    """The monitor names the channel entry it judged the window against (`channel_seq`); any change after it
    (here a threshold, which this window was not judged by: the promoter cannot tell) holds the release, saying
    so; a pass judged against the newest entry moves it on."""
    log = watching_r1()
    log.verdict("r1", "passed", 0, channel_seq=1)
    assert single_event(decide(log, ready={P0["digest"]: None})).type == "release.expanded"
    changed = log.channel({**CHANNEL_DOC, "monitoring": {**CHANNEL_DOC["monitoring"], "min_samples": 3}})
    event = single_event(decide(log, ready={P0["digest"]: None}))
    assert (event.type, event.data.code) == ("release.escalated", "stale_pass")
    assert event.data.message == (
        "stage 1's pass counts for nothing: prod/canary's configuration changed after the window was judged "
        f"(against seq 1; newest seq {log.seq_of(changed)}); held for an operator"
    )


def test_an_operators_pass_of_a_window_whose_cohort_the_channel_dropped_moves_the_release_on() -> None:
    """The hold is for an operator: their override of the window is their word, never held again (and never
    on data: the release closes `promoted_by_override` at most)."""
    log = passed_first_stage()
    log.channel({**CHANNEL_DOC, "cohorts": [{"name": "rest"}], "plan": [["rest"]]})
    held = single_event(decide(log, ready={P0["digest"]: None}))
    log.add("release.escalated", held.data.model_dump(), release_id="r1")
    override(log, "r1", 0)
    assert single_event(decide(log, ready={P0["digest"]: None})).type == "release.expanded"
    assert state(log, "r1")[1].stages_passed_by_override == [0]


def test_a_pass_while_the_channels_newest_configuration_does_not_decode_holds_the_release() -> None:
    """Which cohorts the channel has is unknown then (never the older configuration's): held, saying why."""
    log = passed_first_stage()
    world, release = state(log, "r1")
    junk = Position(len(log.events) + 1, Subjects().channel(ENV, CH))
    world = apply_undecodable(world, junk, Subjects())
    event = single_event(promoter.decide(world, release, ctx("promoter"), {P0["digest"]: None}))
    assert event.data.code == "stale_pass"
    assert f"prod/canary's channel config at seq {junk.seq} could not be decoded" in event.data.message


def test_a_promotion_waits_for_a_usable_rollback_target() -> None:
    log = passed_first_stage({**CHANNEL_DOC, "promote_to": "stable"}, stage=1)
    event = single_event(decide(log, ready={P0["digest"]: "signature/expired: manifest expired"}))
    assert event.data.code == "rollback_not_ready" and "promotion to stable" in event.data.message
    assert [e.type for e in events_of(decide(log, ready={P0["digest"]: None}))] == [
        "release.promoted",
        "release.requested",
    ]


def test_preflight_rejects_an_unusable_rollback_target() -> None:
    log = history(Log())
    log.requested("r1", acknowledge_no_health=True)
    world, release = state(log)
    event = single_event(
        preparer.decide(world, release, ctx("preparer"), None, None, {P0["digest"]: "pack object missing"})
    )
    assert event.type == "release.rejected"
    assert [(r.code, "pack object missing" in r.message) for r in event.data.reasons] == [
        ("rollback_target_ready", True)
    ]


def test_readiness_allows_no_target_only_under_strategy_none() -> None:
    p0 = PackRef.model_validate(P0)
    assert readiness_problems({"a": None}, "none", {}) == []
    assert readiness_problems({"a": None}, "lkg", {}) == ["a: no lkg rollback target"]
    assert readiness_problems({"a": p0}, "none", {p0.digest: None}) == []


# ---- 5. policies -----------------------------------------------------------------------------


def test_a_pin_longer_than_max_pin_days_is_refused_by_the_rule_the_pinner_applies() -> None:
    log = Log()
    log.channel({**CHANNEL_DOC, "policy": {"max_pin_days": 2}})
    world = log.world()
    scope = Scope(env=ENV, channel=CH, cohort="internal")
    assert pin_too_long(world, scope, LATER + timedelta(days=3), LATER) is not None
    assert pin_too_long(world, scope, LATER + timedelta(days=2), LATER) is None
    with pytest.raises(OperatorError, match="max_pin_days"):
        pin_action(world, scope, "1.0.0", LATER + timedelta(days=3), "freeze", OPERATOR, LATER)


def test_extend_refuses_a_window_below_the_channel_minimum() -> None:
    """Before: any window was accepted (CHANNEL_DOC's minimum is 60 s)."""
    world = held_second_stage().world()
    with pytest.raises(OperatorError, match="minimum of 60s"):
        ops.extend(world, "r1", 5, "quick look", RESCUER, LATER)
    assert ops.extend(world, "r1", 60, "another window", RESCUER, LATER).event.type == "release.monitoring_started"


THREE = {
    "cohorts": [{"name": "a", "tenants": ["t-a"]}, {"name": "b", "tenants": ["t-b"]}, {"name": "c"}],
    "plan": [["a"], ["b", "c"]],
    "monitoring": {"window_s": 60, "min_samples": 1},
}


@pytest.mark.parametrize(
    ("plan", "problem"),
    [
        ([["a", "b"], ["c"]], "spans channel stages [1, 2]"),
        ([["b"], ["a"], ["c"]], "comes before channel stage 2"),
        ([["a"], ["b"], ["c"]], None),  # finer: one channel stage split in two
        ([["a"], ["c", "b"]], None),
    ],
)
def test_a_requested_plan_may_not_be_coarser_than_the_channels(plan, problem) -> None:
    log = Log()
    log.channel(THREE)
    log.requested("r1", plan=plan, rollback={"strategy": "none"}, acknowledge_no_health=True)
    world, release = state(log)
    event = single_event(preparer.decide(world, release, ctx("preparer"), None))
    if problem is None:
        assert event.type == "release.prepared" and event.data.stages == plan
    else:
        assert event.type == "release.rejected"
        assert event.data.reasons[0].code == "cohort_plan_valid" and problem in event.data.reasons[0].message


PROMOTION_ONLY = {**CHANNEL_DOC, "policy": {"accept": "promotion"}}


def _promotion_world(
    direct: bool = False,
    by: Actor = SERVICE,
    confirm: bool = True,
    accept: str = "promotion",
    batch: bool = False,
    aborted: bool = False,
):
    """r1 passed its canary; r1-stable requested on stable (`accept`). `confirm`: r1's `promoted` names it,
    after the request (as logs before session 23 have it) or, with `batch`, before it (one atomic batch);
    `aborted`: an operator aborts r1 after the request."""
    from events.codec import make_event
    from projections.position import positions
    from projections.world import fold

    log = Log()
    log.channel({**CHANNEL_DOC, "promote_to": "stable"})
    log.two_stage_success("r0", P0)
    log.through_verified("r1")
    log.stage("r1", 0, ["internal"])
    log.expanded("r1", 0, 1, ["rest"])
    log.stage("r1", 1, ["rest"])
    events = list(log.events)
    stable = Scope(env=ENV, channel="stable", cohort="all")
    events.append(
        make_event(
            "channel.configured",
            {**CHANNEL_DOC, "policy": {"accept": accept}},
            actor=OPERATOR,
            scope=stable,
            event_id="ch-stable",
            occurred_at=log.clock,
        )
    )
    request = {
        "pack": P1,
        "target": {"env": ENV, "channel": "stable"},
        "owner": "kb-team",
        "escalation": "pager:kb",
        "rollback": {"strategy": "none"},
        "acknowledge_no_health": True,
        **({} if direct else {"promoted_from": "r1"}),
    }
    linked = make_event(
        "release.requested", request, actor=by, release_id="r1-stable", event_id="req-stable", occurred_at=log.clock
    )
    promoted = make_event(
        "release.promoted",
        {"to_channel": "stable", "promoted_to": "r1-stable"},
        actor=SERVICE,
        release_id="r1",
        event_id="prom",
        occurred_at=log.clock,
    )
    events += ([promoted, linked] if batch else [linked, promoted]) if confirm else [linked]
    if aborted:
        events.append(
            make_event("release.aborted", {"rationale": "no"}, actor=OPERATOR, release_id="r1", occurred_at=log.clock)
        )
    world = fold(positions(events))
    return world, world.release("r1-stable")


def test_a_promotion_only_channel_accepts_a_confirmed_promotion() -> None:
    world, release = _promotion_world()
    assert single_event(preparer.decide(world, release, ctx("preparer"), None)).type == "release.prepared"


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"direct": True}, "names no release it was promoted from"),
        ({"by": Actor(kind="producer", id="ci")}, "written by producer:ci, not by the service"),
    ],
)
def test_a_promotion_only_channel_rejects_anything_else(kwargs, needle) -> None:
    """Before: the channel had no such policy; any request was prepared."""
    world, release = _promotion_world(**kwargs)
    event = single_event(preparer.decide(world, release, ctx("preparer"), None))
    assert event.type == "release.rejected"
    reason = next(r for r in event.data.reasons if r.code == "accepts_request")
    assert needle in reason.message


def test_a_promotion_not_yet_confirmed_by_its_source_waits() -> None:
    world, release = _promotion_world(confirm=False)  # the source is `passed`: its `promoted` is on its way
    assert preparer.decide(world, release, ctx("preparer"), None) == []


@pytest.mark.parametrize("accept", ["promotion", "any"])
def test_a_promotion_stored_in_one_batch_is_confirmed_when_its_request_folds(accept: str) -> None:
    """The promoter stores `promoted`, then the linked request, in one atomic batch: the request folds
    confirmed (before, the source's `promoted` came second and confirmed it)."""
    world, release = _promotion_world(batch=True, accept=accept)
    assert release.promotion_confirmed_by == "r1"
    assert single_event(preparer.decide(world, release, ctx("preparer"), None)).type == "release.prepared"


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"by": Actor(kind="producer", id="ci")}, "written by producer:ci, not by the service"),
        ({"by": Actor(kind="producer", id="ci"), "confirm": False}, "written by producer:ci, not by the service"),
    ],
)
def test_a_request_claiming_a_promotion_it_is_not_is_rejected_on_any_channel(kwargs, needle) -> None:
    """Session 23: a release saying it was promoted from r1 must be r1's promotion, whatever the channel
    accepts (its evidence record would say "promoted from r1"). Before, only a promotion-only channel
    asked; on any other, such a request was prepared and ran. Someone else's claim never waits on r1."""
    world, release = _promotion_world(accept="any", **kwargs)
    event = single_event(preparer.decide(world, release, ctx("preparer"), None))
    assert event.type == "release.rejected"
    reason = next(r for r in event.data.reasons if r.code == "accepts_request")
    assert "names release r1 as the one it was promoted from" in reason.message and needle in reason.message


def test_a_service_request_whose_source_moved_on_without_promoting_it_is_rejected() -> None:
    """The source's `promoted` never came (a log written by two appends, the second lost to an abort): the
    linked request is refused, not run, on a channel that accepts any request."""
    world, release = _promotion_world(accept="any", confirm=False, aborted=True)
    assert world.release("r1").aborted
    event = single_event(preparer.decide(world, release, ctx("preparer"), None))
    assert event.type == "release.rejected"
    reason = next(r for r in event.data.reasons if r.code == "accepts_request")
    assert "is not named by a `promoted` event of release r1" in reason.message


def test_a_release_whose_every_cohort_is_pinned_closes_pinned() -> None:
    """Before: it was rejected (`cohorts_to_roll_out`), as if the request were wrong."""
    log = history(Log())
    log.pin("internal", P0, LATER + timedelta(days=1))
    log.pin("rest", P0, LATER + timedelta(days=1))
    log.requested("r1", acknowledge_no_health=True)
    world, release = state(log)
    (chain,) = preparer.decide(world, release, ctx("preparer"), None)
    prepared, closed = chain.events
    assert (prepared.type, prepared.data.stages, sorted(prepared.data.skipped)) == (
        "release.prepared",
        [],
        ["internal", "rest"],
    )
    assert (closed.type, closed.data.outcome, closed.causation_id) == ("release.closed", "pinned", prepared.event_id)
    for e in chain.events:
        log.add(e.type, e.data.model_dump(), release_id="r1")
    assert log.world().release("r1").anomalies == ()


def test_a_pinned_release_that_reached_activation_still_closes_pinned() -> None:
    """If the close was lost after `prepared` (a race with the distributor), the promoter says `pinned`,
    not `failed`."""
    log = history(Log())
    log.through_verified("r1", stages=[], targets={}, skipped={"internal": "pinned", "rest": "pinned"})
    log.add(
        "release.activation_failed",
        {"stage": 0, "code": "no_such_stage", "message": "the plan has 0 stage(s)"},
        release_id="r1",
    )
    event = single_event(decide(log))
    assert (event.data.outcome, "internal: pinned" in event.data.summary) == ("pinned", True)


async def test_a_readiness_check_that_raises_is_a_problem_never_a_pass() -> None:
    """Fail closed: the activator and promoter get a reason, not an exception to retry forever."""
    from services.verification.readiness import target_check, target_problems

    class Broken:
        def current_trust_root(self):
            raise RuntimeError("trust root file vanished")

    target = PackRef.model_validate(P0)
    check = await target_check(Broken(), target, ENV, CH, ("internal",), LATER)
    assert check.problem == "readiness check failed: RuntimeError: trust root file vanished" and check.signers == ()
    assert await target_problems(Broken(), [target, None], ENV, CH, ("internal",), LATER) == {
        target.digest: check.problem
    }
