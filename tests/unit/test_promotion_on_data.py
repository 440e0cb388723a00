"""A release whose every cohort is pinned AFTER pre-flight (pins set while it rolls out) exposes
nothing, yet every stage "passes" without data: it closed `success` and was PROMOTED to the next
channel — while the same situation seen at pre-flight closes `pinned` and promotes nothing.
Promotion must only follow monitoring criteria met on data (seed: "Expand ... or promote from
canary -> stable only after monitoring criteria are met")."""

from __future__ import annotations

from datetime import timedelta

from services.consumers import activator, monitor, promoter
from services.consumers.outputs import NewRelease
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
    promoted = [o for o in outputs if isinstance(o, NewRelease)]
    closed = [e for e in events_of(outputs) if e.type == "release.closed"]
    assert not promoted, "a pack no window ever judged on data was promoted to the next channel"
    assert [e.data.outcome for e in closed] == ["pinned"]  # as when pre-flight finds every cohort pinned
