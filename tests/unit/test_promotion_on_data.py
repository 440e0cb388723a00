"""A release whose every cohort is pinned AFTER pre-flight (pins set while it rolls out) exposes
nothing, yet every stage "passes" without data: it closed `success` and was PROMOTED to the next
channel — while the same situation seen at pre-flight closes `pinned` and promotes nothing.
Promotion must only follow monitoring criteria met on data (seed: "Expand ... or promote from
canary -> stable only after monitoring criteria are met")."""

from __future__ import annotations

from datetime import timedelta

from services.consumers import activator, monitor, promoter
from services.consumers.outputs import Promotion
from tests.unit.test_decisions import LATER, ctx, events_of, history, state
from tests.unit.test_projections import CHANNEL_DOC, P0, P1, Log


def _apply(log: Log, outputs: list) -> None:
    log.events.extend(events_of(outputs))


def test_a_release_that_exposed_nothing_is_not_promoted_nor_closed_success() -> None:
    log = history(Log())
    log.channel({**CHANNEL_DOC, "promote_to": "stable"})
    log.through_verified("r1", P1)
    # an operator freezes both cohorts while r1 is between verification and its first switch
    until = LATER + timedelta(days=3)
    log.pin("internal", P0, until)
    log.pin("rest", P0, until)

    _apply(log, activator.decide_rollout(*state(log), ctx("activator"), None))  # stage 0: nothing switched
    _apply(log, monitor.decide_start(state(log)[1], ctx("monitor")))  # passes at once, "all pinned"
    _apply(log, promoter.decide(*state(log), ctx("promoter"), {P0["digest"]: None}))  # expanded
    assert state(log)[1].phase == "expanding"
    _apply(log, activator.decide_rollout(*state(log), ctx("activator"), None))  # stage 1: nothing switched
    _apply(log, monitor.decide_start(state(log)[1], ctx("monitor")))
    release = state(log)[1]
    assert release.activated == ()  # nothing was ever exposed, no sample ever judged the pack
    assert all(v.samples == 0 for _, v in release.verdicts)

    outputs = promoter.decide(*state(log), ctx("promoter"), {P0["digest"]: None})
    promoted = [o for o in outputs if isinstance(o, Promotion)]
    closed = [e for e in events_of(outputs) if e.type == "release.closed"]
    assert not promoted, "a pack no window ever judged on data was promoted to the next channel"
    assert [e.data.outcome for e in closed] == ["pinned"]  # as when pre-flight finds every cohort pinned


def test_a_canary_pinned_after_pre_flight_is_not_skipped_into_the_wider_stage() -> None:
    """The canary cohort is pinned while r1 waits for its first switch (the audit found it): stage 1
    switches nothing and passes at once, and stage 2 would have been the pack's first run, in `rest`, the
    catch-all, with no canary data. The activator refuses that switch (`smallest_scope_pinned`), so the
    pack never runs and nothing is promoted."""
    log = history(Log())
    log.channel({**CHANNEL_DOC, "promote_to": "stable"})
    log.through_verified("r1", P1)
    log.pin("internal", P0, LATER + timedelta(days=3))  # only the canary cohort

    _apply(log, activator.decide_rollout(*state(log), ctx("activator"), None))  # stage 1: nothing switched
    _apply(log, monitor.decide_start(state(log)[1], ctx("monitor")))  # passes at once, "all pinned"
    _apply(log, promoter.decide(*state(log), ctx("promoter"), {P0["digest"]: None}))  # expanded
    assert state(log)[1].phase == "expanding"
    outputs = activator.decide_rollout(*state(log), ctx("activator"), None)
    assert [e.type for e in events_of(outputs)] == ["release.activation_failed"]
    failed = events_of(outputs)[0].data
    assert failed.code == "smallest_scope_pinned" and failed.stage == 1
    assert "every cohort before it (internal) was pinned" in failed.message
    _apply(log, outputs)
    release = state(log)[1]
    assert release.activated == () and not any(e.type == "scope.activated" and e.release_id == "r1" for e in log.events)
    assert not [
        o for o in promoter.decide(*state(log), ctx("promoter"), {P0["digest"]: None}) if isinstance(o, Promotion)
    ]


def test_a_stage_after_one_that_ran_the_pack_may_follow_a_pinned_one() -> None:
    """Only the pack's first run is bound to the plan's start: once a stage exposed it, a later stage whose
    cohorts are all pinned is passed over as before, and the next one switches."""
    stages = [["internal"], ["early"], ["rest"]]
    cohorts = [{"name": "internal", "tenants": ["t-int-1"]}, {"name": "early", "tenants": ["t-2"]}, {"name": "rest"}]
    log = history(Log())
    log.channel({**CHANNEL_DOC, "cohorts": cohorts, "plan": stages})
    log.through_verified("r1", P1, stages=stages)
    log.stage("r1", 0, ["internal"])  # ran the pack, passed on data
    log.expanded("r1", 0, 1, ["early"])
    log.pin("early", P0, LATER + timedelta(days=3))

    _apply(log, activator.decide_rollout(*state(log), ctx("activator"), None))  # stage 2: nothing switched
    _apply(log, monitor.decide_start(state(log)[1], ctx("monitor")))  # passes at once, "all pinned"
    _apply(log, promoter.decide(*state(log), ctx("promoter"), {P0["digest"]: None}))  # expanded to stage 3
    outputs = activator.decide_rollout(*state(log), ctx("activator"), None)
    assert [e.type for e in events_of(outputs)] == ["scope.activated", "release.activated"]
    assert events_of(outputs)[1].data.cohorts == ["rest"]
