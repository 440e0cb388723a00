"""Where a rollback lands, and which pins move a pointer (pure decisions, no NATS).

- A rollback never "lands" on the failing pack itself: the release's own pack is no target,
  at pre-flight (`rollback_target` says so and rejects), in `rollback_target` and at the
  activator's switch (it holds and escalates, as for any unusable target).
- A pin no longer in force when the pinner decides moves nothing: only its expiry is recorded.
- A rollback leaves a cohort a pin in force holds on its pack there, and `rolled_back` says so.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from events.ids import derived_event_id
from events.model import Actor, Scope
from projections.rollback import rollback_targets
from services.consumers import activator, monitor, pinner, preparer, promoter
from services.consumers.outputs import Atomic, Chain

from .test_decisions import LATER, ctx, events_of, history, only, rolling_back_log, sample, single_event, state
from .test_projections import CH, ENV, NOW, P0, P1, P2, Log

PINNER = Actor(kind="service", id=pinner.NAME)
INTERNAL = Scope(env=ENV, channel=CH, cohort="internal")


def _apply(log: Log, outputs: list) -> None:
    log.events.extend(events_of(outputs))


def moved(outputs: list) -> list[str]:
    return [w.event.scope.cohort for o in outputs if isinstance(o, Atomic) for w in o.scope_writes]


# ==== a rollback never lands on the failing pack itself =========================================


def lkg_back_on_internal() -> Log:
    """P1 earned its windows (LKG of both cohorts); an incident pin put internal on P0, since lifted."""
    log = Log()
    log.channel()
    log.two_stage_success("r0", P1)
    log.pin("internal", P0, LATER + timedelta(days=1), "incident: hold on 0.9.0")
    log.point("internal", P0, None, kind="pin")
    log.unpin("internal")
    return log


def test_preflight_rejects_a_rollback_target_that_is_the_pack_being_released() -> None:
    """Before: pre-flight recorded P1 (internal's LKG) as the target of P1's own release, so a failed
    window "rolled back" onto the failing pack: no pointer moved, the release closed `rolled_back`."""
    log = lkg_back_on_internal()
    log.requested("r1", P1, plan=[["internal"]], acknowledge_no_health=True)
    event = single_event(preparer.decide(*state(log), ctx("preparer"), None, None, {P1["digest"]: None}))
    assert event.type == "release.rejected"
    [reason] = event.data.reasons
    assert reason.code == "rollback_target"
    assert "internal's last-known-good is the pack being released (1.0.0)" in reason.message


def test_preflight_rejects_a_pinned_prior_that_is_the_pack_being_released() -> None:
    log = history(Log())
    log.pin("internal", P1, LATER + timedelta(days=1), "hold")
    log.unpin("internal")  # internal's pinned prior is P1
    log.requested("r1", P1, plan=[["internal"]], rollback={"strategy": "pinned"}, acknowledge_no_health=True)
    event = single_event(preparer.decide(*state(log), ctx("preparer"), None, None, {P1["digest"]: None}))
    assert event.type == "release.rejected"
    assert [r.code for r in event.data.reasons] == ["rollback_target"]
    assert "internal's pinned prior is the pack being released" in event.data.reasons[0].message


def refuse_pin(log: Log, cohort: str, pack: dict) -> None:
    """The pinner's answer to a pin whose pack fails a gate (the stored bytes, say): `unpinned`, `refused`."""
    log.add(
        "scope.unpinned",
        {
            "pack": pack,
            "by": "pinner",
            "reason": "refused",
            "rationale": "pinned pack refused: integrity/digest_mismatch",
        },
        cohort=cohort,
        actor=PINNER,
    )


def test_a_refused_pin_is_no_pinned_prior_the_one_before_it_is() -> None:
    """Found by a fail-closed audit (session 26): the refused pin stayed `last_pin`, so a release with the
    `pinned` strategy recorded it as its target, rolled back onto it, and the fold made it last-known-good:
    a pack that failed verification and never ran."""
    log = history(Log())  # P0 is the LKG
    log.pin("internal", P2, LATER + timedelta(days=1), "hold on 2.0")
    refuse_pin(log, "internal", P2)
    scope = log.world().scope(ENV, CH, "internal")
    assert (scope.pin, scope.last_pin) == (None, None)
    log.requested("r1", P1, plan=[["internal"]], rollback={"strategy": "pinned"}, acknowledge_no_health=True)
    event = single_event(preparer.decide(*state(log), ctx("preparer"), None, None, {P1["digest"]: None}))
    assert event.type == "release.rejected" and [r.code for r in event.data.reasons] == ["rollback_target"], event
    assert "internal has never been pinned" in event.data.reasons[0].message

    # an accepted pin before the refused one is the pinned prior again
    log = history(Log())
    log.pin("internal", P0, LATER + timedelta(days=1), "hold on 0.9")
    log.unpin("internal")
    log.pin("internal", P2, LATER + timedelta(days=2), "hold on 2.0")
    refuse_pin(log, "internal", P2)
    assert log.world().scope(ENV, CH, "internal").last_pin.pack.digest == P0["digest"]
    log.requested("r1", P1, plan=[["internal"]], rollback={"strategy": "pinned"}, acknowledge_no_health=True)
    world, release = state(log)
    _, prepared = preparer.preflight(world, release, ctx("preparer"), None)
    assert prepared is not None and prepared.rollback_targets["internal"].digest == P0["digest"]


def test_preflight_still_prepares_another_lkg() -> None:
    log = history(Log())  # P0 is the LKG, P1 is released
    log.requested("r1", P1, acknowledge_no_health=True)
    world, release = state(log)
    items, prepared = preparer.preflight(world, release, ctx("preparer"), None)
    assert prepared is not None and prepared.rollback_targets["internal"].digest == P0["digest"]
    assert [i.ok for i in items if i.item == "rollback_target"] == [True]


def test_preflight_warns_of_a_sound_target_the_channel_no_longer_admits_and_prepares() -> None:
    """`fits` (the adapter's check of where a rollback would land): a warning on the readiness item, never a
    refusal; a target that is not sound (`ready`) still refuses."""
    log = history(Log())  # P0 is the LKG of both cohorts, P1 is released
    log.requested("r1", P1, acknowledge_no_health=True)
    world, release = state(log)
    unfit = {P0["digest"]: "compatibility/runtime_mismatch: runtime 3.0.0 not in >=2.3,<3"}
    items, prepared = preparer.preflight(world, release, ctx("preparer"), None, None, {P0["digest"]: None}, unfit)
    [item] = [i for i in items if i.item == "rollback_target_ready"]
    assert prepared is not None and item.ok
    assert item.detail.startswith("warning: ") and "internal's kb@0.9.0" in item.detail and "rest's" in item.detail
    assert "compatibility/runtime_mismatch" in item.detail and "a rollback would hold and escalate" in item.detail
    _, sound = preparer.preflight(world, release, ctx("preparer"), None, None, {P0["digest"]: None}, {})
    assert [i.detail for i in sound.checklist if i.item == "rollback_target_ready"] == [
        "every target is trusted, unexpired and present in the pack store"
    ]
    _, refused = preparer.preflight(world, release, ctx("preparer"), None, None, {P0["digest"]: "expired"}, unfit)
    assert refused is None


def own_pack_recorded() -> Log:
    """A release prepared (before the rule) with its own pack recorded as internal's target; its window failed."""
    log = lkg_back_on_internal()
    log.through_verified("r1", P1, [["internal"]], targets={"internal": P1})
    log.stage("r1", 0, ["internal"], "failed")
    return log


def test_the_release_own_pack_is_no_rollback_target() -> None:
    world, release = state(own_pack_recorded())
    assert world.scope(ENV, CH, "internal").lkg.digest == P1["digest"]  # the LKG is skipped: it is this pack ...
    assert rollback_targets(world, release, LATER) == {"internal": None}  # ... and so is what pre-flight recorded


def test_a_pin_on_the_release_own_pack_is_no_rollback_target() -> None:
    log = history(Log())
    log.through_verified("r1", P1, [["internal"]])
    log.stage("r1", 0, ["internal"], "failed")
    log.pin("internal", P1, LATER + timedelta(days=1), "keep it for the investigation")
    assert rollback_targets(*state(log), LATER) == {"internal": None}


def test_a_failed_window_holds_rather_than_roll_back_onto_the_failing_pack() -> None:
    """The repro's story through the real decisions: no target, so the activator escalates and the
    release holds; it never writes `rolled_back` while the cohort runs the failing pack."""
    log = own_pack_recorded()
    _apply(log, promoter.decide(*state(log), ctx("promoter"), None))
    release = state(log)[1]
    assert release.phase == "rolling_back" and release.rollback.targets == {"internal": None}
    event = single_event(activator.decide_rollback(*state(log), ctx("activator"), {P1["digest"]: None}))
    assert (event.type, event.data.code) == ("release.escalated", "rollback_target_unusable")
    assert "internal: no rollback target" in event.data.message


def test_the_activator_never_switches_to_a_recorded_target_that_is_the_release_own_pack() -> None:
    """A `rollback_started` written before the rule may still name the release's own pack."""
    log = lkg_back_on_internal()
    log.through_verified("r1", P1, [["internal"]], targets={"internal": P1})
    log.activate("r1", 0, ["internal"])
    _apply(log, monitor.decide_start(state(log)[1], ctx("monitor")))
    bad = [sample("a", errors=60), sample("b", errors=60)]
    _apply(log, monitor.decide_verdict(state(log)[1], 0, bad, [], ctx("monitor")))
    log.rollback_started("r1", {"internal": P1})
    event = single_event(activator.decide_rollback(*state(log), ctx("activator"), {P1["digest"]: None}))
    assert (event.type, event.data.code) == ("release.escalated", "rollback_target_unusable")
    assert "internal: target 1.0.0 is the pack being rolled back" in event.data.message


# ==== a pin no longer in force moves nothing =====================================================


def pinned_log(until: datetime, p: dict = P0) -> tuple[Log, int]:
    log = Log()
    log.channel()
    log.two_stage_success("r0", P1)
    log.pin("internal", p, until, "short hold")
    return log, len(log.events)


def test_a_pin_already_expired_when_the_pinner_decides_is_only_recorded_expired() -> None:
    """Before: the pinner checked only that the pin was the newest, and switched to an expired one."""
    log, seq = pinned_log(NOW + timedelta(minutes=5))
    world = log.world()
    step = pinner.decide_pin(world, INTERNAL, seq, NOW, PINNER, NOW + timedelta(minutes=6))
    assert not step.hold  # no expiry timer, no verification, no switch
    assert step.unpinned is not None and step.unpinned.type == "scope.unpinned"
    assert step.unpinned.data.reason == "expired" and step.unpinned.data.pack.digest == P0["digest"]
    state_ = world.scope(ENV, CH, "internal")
    # the same event as the expiry timer's: whichever is stored first, the other is a duplicate
    assert step.unpinned.event_id == derived_event_id(state_.pin_event_id, pinner.NAME, "expired")


def test_a_pin_expiring_at_the_decision_is_no_longer_in_force() -> None:
    until = NOW + timedelta(minutes=5)
    log, seq = pinned_log(until)
    step = pinner.decide_pin(log.world(), INTERNAL, seq, NOW, PINNER, until)
    assert not step.hold and step.unpinned is not None and step.unpinned.data.reason == "expired"


def test_a_pin_in_force_is_held() -> None:
    log, seq = pinned_log(NOW + timedelta(minutes=5))
    step = pinner.decide_pin(log.world(), INTERNAL, seq, NOW, PINNER, NOW + timedelta(minutes=4))
    assert step.hold and step.unpinned is None


def test_an_expired_pin_too_long_is_recorded_expired_not_refused() -> None:
    until = NOW + timedelta(days=max_pin_days() + 1)
    log, seq = pinned_log(until)
    world = log.world()
    assert pinner.decide_pin(world, INTERNAL, seq, NOW, PINNER, NOW).unpinned.data.reason == "refused"  # in force
    late = pinner.decide_pin(world, INTERNAL, seq, NOW, PINNER, until + timedelta(seconds=1))
    assert late.unpinned is not None and late.unpinned.data.reason == "expired"


def test_a_pin_with_a_blank_rationale_is_refused_not_held() -> None:
    """The spec audit: pins are "recorded with rationale". `kxr pin` and the dashboard refuse a blank one,
    but another client may write it (the schema asks for one character): the pinner refused nothing
    and moved the pointer; only the auditor flagged it. Now it is refused, saying why."""
    log = Log()
    log.channel()
    log.two_stage_success("r0", P1)
    log.pin("internal", P0, NOW + timedelta(minutes=5), "   ")
    step = pinner.decide_pin(log.world(), INTERNAL, len(log.events), NOW, PINNER, NOW + timedelta(minutes=1))
    assert not step.hold and step.unpinned is not None
    assert step.unpinned.data.reason == "refused" and "no rationale" in step.unpinned.data.rationale


def test_a_superseded_pin_is_left_alone_even_expired() -> None:
    log, seq = pinned_log(NOW + timedelta(minutes=5))
    log.unpin("internal")
    step = pinner.decide_pin(log.world(), INTERNAL, seq, NOW, PINNER, NOW + timedelta(minutes=6))
    assert step == pinner.PinStep()


def max_pin_days() -> int:
    log = Log()
    log.channel()
    return log.world().channel_config(ENV, CH).policy.max_pin_days


# ==== a rollback leaves a cohort on the pin in force at the switch ==============================


def pinned_after_targets(until: datetime = LATER + timedelta(days=1)) -> Log:
    """Rollback started to P0 for both cohorts; then internal was pinned to P2 and the pinner switched it."""
    log = rolling_back_log({"internal": P0, "rest": P0})
    log.pin("internal", P2, until, "incident: hold internal on 2.0.0")
    log.point("internal", P2, None, kind="pin")
    return log


def test_a_rollback_leaves_a_cohort_on_a_pin_set_after_its_targets_were_recorded() -> None:
    """Before: the rollback rewrote internal to P0 (kind rollback, so P0 became its LKG) under the P2 pin."""
    world, release = state(pinned_after_targets())
    atomic = only(activator.decide_rollback(world, release, ctx("activator"), {P0["digest"]: None}), Atomic)
    assert [w.event.scope.cohort for w in atomic.scope_writes] == ["rest"]
    (done,) = atomic.release_events
    assert done.type == "release.rolled_back"
    assert done.data.cohorts == ["internal", "rest"]
    # truthful: internal runs the pin's pack, rest its recorded target
    assert {c: t.digest for c, t in done.data.targets.items()} == {"internal": P2["digest"], "rest": P0["digest"]}


def test_a_cohort_held_by_a_pin_needs_no_usable_target() -> None:
    log = rolling_back_log({"internal": None, "rest": P0})
    log.pin("internal", P2, LATER + timedelta(days=1), "hold")
    log.point("internal", P2, None, kind="pin")
    outputs = activator.decide_rollback(*state(log), ctx("activator"), {P0["digest"]: None})
    assert moved(outputs) == ["rest"]
    assert events_of(outputs)[-1].data.targets["internal"].digest == P2["digest"]


def test_a_rollback_of_cohorts_all_on_their_pins_moves_nothing() -> None:
    log = pinned_after_targets()
    log.pin("rest", P2, LATER + timedelta(days=1), "hold")
    log.point("rest", P2, None, kind="pin")
    event = single_event(activator.decide_rollback(*state(log), ctx("activator"), {P0["digest"]: None}))
    assert event.type == "release.rolled_back" and event.data.batch_id is None
    assert {t.digest for t in event.data.targets.values()} == {P2["digest"]}


def test_a_pin_whose_switch_has_not_happened_does_not_keep_the_cohort_on_the_failing_pack() -> None:
    """The pinner has not switched yet (it may still refuse the pin): the cohort runs the failing
    pack, so it goes to its target now; the pinner moves it to the pin afterwards."""
    log = rolling_back_log({"internal": P0, "rest": P0})
    log.pin("internal", P2, LATER + timedelta(days=1), "hold")
    outputs = activator.decide_rollback(*state(log), ctx("activator"), {P0["digest"]: None})
    assert moved(outputs) == ["internal", "rest"]
    assert {t.digest for t in events_of(outputs)[-1].data.targets.values()} == {P0["digest"]}


def test_a_pin_expired_by_the_switch_holds_nothing() -> None:
    log = pinned_after_targets(until=LATER)  # still the pointer's pack, but the pin ran out at LATER
    outputs = activator.decide_rollback(*state(log), ctx("activator"), {P0["digest"]: None})
    assert moved(outputs) == ["internal", "rest"]


def test_a_pin_holding_a_cohort_on_the_failing_pack_holds_the_rollback() -> None:
    """Leaving it there would record a rollback that did not happen: hold and escalate instead."""
    log = rolling_back_log({"internal": P0, "rest": P0})
    log.pin("internal", P1, LATER + timedelta(days=1), "keep it for the investigation")  # internal runs P1
    outputs = activator.decide_rollback(*state(log), ctx("activator"), {P0["digest"]: None})
    event = single_event(outputs)
    assert isinstance(outputs[0], Chain) and event.type == "release.escalated"
    assert "internal: pinned to 1.0.0, the pack being rolled back" in event.data.message
