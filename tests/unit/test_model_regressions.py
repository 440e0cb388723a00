"""The counter-examples the lifecycle model found, each kept as a plain story (issue 13).

Each test replays the essence of a minimal failing example hypothesis printed for
tests/unit/test_lifecycle_model.py (the steps are in its docstring) and asserts that the
invariant it broke holds; each failed on the code before its fix (issue 13's branches, and
the activator's re-check before an expansion, the operator verbs' transition guard and
strategy `none` holding, which the model found).
"""

from __future__ import annotations

from datetime import timedelta

from .lifecycle_model_support import COHORTS, PACKS, Lifecycle

V100, V110, V120 = PACKS[0], PACKS[1], PACKS[2]


def codes(m: Lifecycle) -> set[str]:
    return {v.code for v in m.violations() + m.anomalies()}


def lines(m: Lifecycle) -> str:
    return "\n".join(v.line() for v in m.violations() + m.anomalies())


def model(history: bool = True, **channel) -> Lifecycle:
    """Both channels configured; with `history` the canary already ran 1.0.0 to success (its LKG)."""
    m = Lifecycle()
    m.configure("canary", **channel)
    m.configure("stable", **channel)
    if history:
        m.bootstrap("canary", V100)
    return m


def window_without_samples(m: Lifecycle) -> None:
    m.now += timedelta(seconds=61)
    m.sweep()
    m.settle()


def test_a_healthy_story_breaks_nothing() -> None:
    """The baseline the others differ from: data for every threshold, activation reports, success."""
    m = model(thresholds=1)
    rid = m.request(V110)
    m.settle()
    m.healthy_window()
    m.healthy_window()
    assert m.world.release(rid).outcome == "success", lines(m)
    assert not codes(m), lines(m)
    assert m.world.scope("prod", "canary", "internal").lkg.digest == V110.digest


def test_no_pass_without_an_activation_report() -> None:
    """channels(thresholds=0, min_samples=1, history='canary'); request(pack=1); window(kinds=['good'])"""
    m = model(min_samples=1)
    m.request(V110)
    m.settle()
    m.healthy_window(kinds=("good",))
    assert "pass_without_data" not in codes(m), lines(m)


def test_no_pass_while_a_configured_latency_threshold_has_no_data() -> None:
    """channels(thresholds=1); request(pack=1); window(kinds=['activation_ok', 'no_latency', 'no_latency'])"""
    m = model(thresholds=1)
    m.request(V110)
    m.settle()
    m.healthy_window(kinds=("activation_ok", "no_latency", "no_latency"))
    assert "pass_without_data" not in codes(m), lines(m)


def test_a_refusal_before_the_window_opens_is_no_pass() -> None:
    """The pointer moves, both runtimes of `internal` refuse at once, the monitor opens the window 5 s later."""
    m = model()
    rid = m.request(V110)
    for consumer in ("preparer", "distributor", "verifier", "activator"):
        m.step(consumer, rid)
    assert m.world.release(rid).phase == "activated"
    m.send_samples("refusal", ("internal",))
    m.now += timedelta(seconds=5)
    m.settle()
    m.healthy_window(kinds=("good", "good"))
    assert "pass_despite_refusal" not in codes(m), lines(m)


def test_a_refusal_in_an_earlier_stages_cohort_is_no_pass() -> None:
    """Stage 1 (`internal`) passes, stage 2's window opens, both runtimes of `internal` refuse the pack (stored,
    not seen live), then `rest` reports well and the window ends: neither stage 2's pass nor a success.
    (Found by an outside review, not the randomized model: it rarely sends a refusal to stage 1's cohort
    while stage 2's window is open.)"""
    m = model()
    rid = m.request(V110)
    m.settle()
    m.healthy_window()
    release = m.world.release(rid)
    assert (release.phase, release.stage) == ("monitoring", 1), lines(m)
    m.send_samples("refusal", ("internal",), live=False)
    m.healthy_window(kinds=("activation_ok", "good", "good"))
    assert "pass_despite_refusal" not in codes(m), lines(m)
    assert m.world.release(rid).outcome != "success"
    assert m.world.scope("prod", "canary", "internal").lkg.digest == V100.digest


def _overridden_release(m: Lifecycle) -> str:
    """Stage 1 inconclusive (no samples), passed by `kxr release promote`; stage 2 passes on data."""
    rid = m.request(V110)
    m.settle()
    window_without_samples(m)
    assert m.world.release(rid).phase == "held"
    assert m.operate("promote", rid)
    m.settle()
    m.healthy_window()
    return rid


def test_an_override_never_closes_success() -> None:
    m = model()
    rid = _overridden_release(m)
    assert m.world.release(rid).closed
    assert "success_without_data" not in codes(m), lines(m)


def test_an_override_never_makes_a_pack_last_known_good() -> None:
    m = model()
    _overridden_release(m)
    assert "lkg_not_earned" not in codes(m), lines(m)


def test_an_aborted_release_is_never_promoted() -> None:
    """channels(history='none'); request(pack=0, strategy='none'); fire_timer(); abort; promote"""
    m = model(history=False)
    rid = m.request(V100, strategy="none")
    m.settle()
    window_without_samples(m)
    assert m.operate("abort", rid)
    m.settle()
    assert m.world.release(rid).phase == "held"  # escalated: no rollback target
    m.operate("promote", rid)
    m.settle()
    assert "aborted_release_advanced" not in codes(m), lines(m)
    assert m.world.release(rid).outcome not in ("success", "promoted_by_override")


def test_strategy_pinned_rolls_back_to_the_pinned_prior() -> None:
    m = model()
    r2 = m.request(V110)  # 1.1.0 passes: it becomes LKG
    m.settle()
    m.healthy_window()
    m.healthy_window()
    assert m.world.release(r2).outcome == "success"
    for cohort in ("internal", "rest"):  # 1.0.0 pinned and lifted again: the pinned prior
        assert m.pin("canary", cohort, V100.version)
        assert m.unpin("canary", cohort)
    r3 = m.request(V120, strategy="pinned")
    m.settle()
    assert m.world.release(r3).prepared.rollback_targets["internal"].digest == V100.digest
    m.healthy_window(kinds=("errors", "errors"))
    assert m.world.release(r3).rollback is not None
    assert "rollback_off_strategy" not in codes(m), lines(m)


def test_strategy_none_never_rolls_back_to_another_pack() -> None:
    """channels(history='two'): r1 1.0.0 (strategy none), then r2 1.1.0 passed (LKG); operator rollback of r1"""
    m = model()
    m.request(V110)
    m.settle()
    m.healthy_window()
    m.healthy_window()
    assert m.world.release("r1").prepared.rollback_strategy == "none"
    assert m.operate("rollback", "r1")
    assert "rollback_off_strategy" not in codes(m), lines(m)


def test_a_huge_latency_never_writes_a_non_json_number() -> None:
    """channels(thresholds=1); request(pack=1); window(kinds=['extreme_latency'])"""
    m = model(thresholds=1, min_samples=1)
    m.request(V110)
    m.settle()
    m.healthy_window(kinds=("extreme_latency",))
    assert not codes(m) & {"invalid_contract_json", "undecodable"}, lines(m)


def test_a_huge_request_count_never_wedges_the_window() -> None:
    """channels(thresholds=0); request(pack=1); window(kinds=['huge_requests'])"""
    m = model(min_samples=1)
    rid = m.request(V110)
    m.settle()
    m.healthy_window(kinds=("huge_requests",))
    assert "decide_raised" not in codes(m), lines(m)
    assert m.world.release(rid).phase != "monitoring"


def test_resume_only_applies_to_a_release_in_flight() -> None:
    """request(pack=0); pause; window(['good']) (rejected and closed while paused); resume"""
    m = model(history=False)
    rid = m.request(V100)  # strategy lkg on a fresh channel: rejected at pre-flight
    m.operate("pause", rid)
    m.settle()
    assert m.world.release(rid).closed
    m.operate("resume", rid)
    assert "illegal_transition" not in codes(m), lines(m)


def test_pause_never_applies_to_an_aborting_release() -> None:
    """channels(history='canary'); rollback r1; abort r1; (slow service) pause r1"""
    m = model()
    assert m.operate("rollback", "r1")
    m.settle()
    assert m.operate("abort", "r1")
    m.operate("pause", "r1")  # before the promoter reacted to the abort
    assert "illegal_transition" not in codes(m), lines(m)


def test_no_stage_expands_to_a_pack_the_trust_root_dropped() -> None:
    """rotate_trust; request(pack=0); rotate_trust (drops key 1); the first window passes; stage 2 switches."""
    m = model(history=False)
    m.rotate_trust()  # v2 trusts keys 1 and 2
    rid = m.request(V110, strategy="none")  # 1.1.0: key 1 only
    m.settle()
    m.rotate_trust()  # v3 trusts keys 2 and 3
    m.guard_lags = True  # the guard has not swept yet (when it has, it rolls the release back: `policy_violation`)
    m.healthy_window()
    assert m.world.release(rid).stage == 0  # checked again before the switch, and refused:
    refusals = [e for _, e in m.log if e is not None and e.type == "release.activation_failed" and e.release_id == rid]
    assert [(e.data.stage, e.data.code) for e in refusals] == [(1, "pack_no_longer_valid")], lines(m)
    assert "pointer_untrusted" not in codes(m), lines(m)


def test_the_guard_rolls_back_a_rollout_whose_signer_the_trust_root_dropped() -> None:
    """The same story with the guard in time: the rotation makes the active pack fail the signature gate,
    and the guard rolls the release back (`policy_violation`) before the window's end could expand it."""
    m = model(history=False)
    m.rotate_trust()
    rid = m.request(V110, strategy="none")
    m.settle()
    m.rotate_trust()
    m.guard()
    started = [e for _, e in m.log if e is not None and e.type == "release.rollback_started" and e.release_id == rid]
    assert [(e.data.trigger, e.actor.id) for e in started] == [("policy_violation", "guard")], lines(m)
    assert "signature/threshold_not_met" in started[0].data.reason
    assert not [v for v in m.violations() if v.code == "violation_unattended"], lines(m)


def test_an_extended_window_still_counts_the_refusals_since_its_stages_activation() -> None:
    """The minimal example hypothesis printed (session 18), step by step: a stage-1 window of r2 held
    (inconclusive); its runtimes then refused the pack; an operator extended the window, whose new
    samples were all good. The monitor reads an extended window back to its stage's activation (a
    refusal there fails it: `read_span`, `Watch.covers`); the model's adapter had read only the new
    window's span and passed it (`pass_despite_refusal`). The window must fail, on the refusals."""
    from .test_lifecycle_model import LifecycleMachine

    def refusal_behind_a_later_stage(state: LifecycleMachine, pack: int) -> None:
        """The rule as it was then (session 27 picks an admissible pack): a blind request of PACKS[pack]."""
        rid = state.m.request(PACKS[pack], "canary")
        state.m.settle()
        state.m.healthy_window()
        release = state.m.world.release(rid)
        if release is None or release.phase != "monitoring" or release.stage < 1:
            return
        earlier = [c for stage in release.stages[: release.stage] for c in stage if c in release.activated]
        if earlier:
            state.m.send_samples("refusal", (earlier[0],), "canary", 0, False)
            state.after()

    state = LifecycleMachine()
    state.channels(thresholds=0, min_samples=1, promote=False, history="canary", stable_window=60)
    state.request(ack=True, channel="canary", pack=1, strategy="lkg")
    state.window(channel="stable", kinds=["good"])
    for _ in range(3):
        state.request(ack=True, channel="canary", pack=0, strategy="lkg")
    refusal_behind_a_later_stage(state, pack=1)
    state.refusal_where_exposed(live=False, pick=0, which=0)
    state.request(ack=True, channel="canary", pack=0, strategy="lkg")
    state.request(ack=True, channel="canary", pack=0, strategy="lkg")
    refusal_behind_a_later_stage(state, pack=1)
    state.operate(pick=7, trigger="operator", verb="extend", window_s=60)
    refusal_behind_a_later_stage(state, pack=1)
    m = state.m
    assert "pass_despite_refusal" not in codes(m), lines(m)
    verdicts = [e.type for _, e in m.log if e is not None and e.release_id == "r2" and "monitoring_" in e.type]
    assert verdicts[-1] == "release.monitoring_failed", verdicts


def test_a_promotion_that_loses_its_race_to_an_operator_leaves_no_linked_release() -> None:
    """The minimal example hypothesis printed (session 23): channels(thresholds=0, min_samples=1,
    promote=False, history='none', stable_window=120); promotion_races_an_operator(pack=1, verb='abort').
    The promoter decided to promote r1 to stable while an operator aborted it. Stored as two appends, the
    linked request landed and `promoted` lost the race: r1-stable ran on stable though r1 never promoted it
    (`promotion_unrecorded` at its first pointer). One atomic batch now: the stale promotion stores nothing,
    the abort rolls r1 back, and no release on stable exists."""
    from .test_lifecycle_model import LifecycleMachine

    for verb, written in (("abort", "release.aborted"), ("pause", "release.paused")):
        state = LifecycleMachine()
        state.channels(thresholds=0, min_samples=1, promote=False, history="none", stable_window=120)
        state.promotion_races_an_operator(pack=1, verb=verb)
        m = state.m
        assert not codes(m), lines(m)
        operated = [e for _, e in m.log if e is not None and e.type == written]
        assert [e.release_id for e in operated] == ["r1"], lines(m)  # the race was run
        assert not m.world.known("r1-stable") and not [
            e for _, e in m.log if e is not None and e.type == "release.promoted"
        ], [e.type for _, e in m.log if e is not None]


def test_a_violation_back_after_another_is_flagged_again() -> None:
    """The minimal example hypothesis printed (session 23), once a rotation could trust a dropped key again
    (root v4): the canary's packs expired and were flagged `expiry/expired`; root v3 dropped their signer
    (flagged `signature/threshold_not_met`); v4 trusted it again, so they failed on expiry once more. The
    guard's flag for that derived the first one's event id (pointer and code), and the append was taken
    for a duplicate: each scope kept saying the signer was dropped (`violation_unattended`). Flag ids now
    also name the flag before them."""
    from .test_lifecycle_model import LifecycleMachine

    state = LifecycleMachine()
    state.channels(thresholds=0, min_samples=1, promote=False, history="two", stable_window=120)
    state.promotion(ack=False, pack=1, stable=0)
    state.rotate_trust(guard=False)
    state.tick(seconds=10800)
    state.guard()
    state.rotate_trust(guard=True)
    state.rotate_trust(guard=True)
    m = state.m
    assert not codes(m), lines(m)
    flags = [e.data.code for _, e in m.log if e is not None and e.type == "scope.flagged" and e.scope.cohort == "rest"]
    assert flags[-3:] == ["expiry/expired", "signature/threshold_not_met", "expiry/expired"], flags
    assert m.world.scope("prod", "canary", "rest").flag.code == "expiry/expired"


def test_a_rollback_landing_after_its_pin_was_replaced_does_not_make_an_unearned_pack_known_good() -> None:
    """The minimal example hypothesis printed (session 23, once a channel's policy could turn against every
    pack): an operator rolled back r2 while 1.2.0 was pinned on `internal` (the target recorded: the pin in
    force); the operator then pinned 1.0.0 and lifted it; the slow activator landed the rollback on 1.2.0,
    as recorded, and the fold made 1.2.0 (which never passed a window) last-known-good: `lkg_not_earned`,
    and the next request of 1.2.0 was refused as "the pack being released is the LKG". A rollback's pack
    now becomes LKG only as the scope's last pin (projections/scopes.py)."""
    from .test_lifecycle_model import LifecycleMachine

    state = LifecycleMachine()
    state.channels(thresholds=0, min_samples=1, promote=False, history="two", stable_window=120)
    state.pin_and_lift(channel="canary", pack=0)
    state.guard()
    state.service_speed()
    state.service_speed()
    state.decide_now_commit_later(consumer="activator", pick=0)
    state.policy_changes_under_a_rollout(pack=1, promote=False)
    state.pin(channel="canary", cohort="internal", hours=1, pack=2)
    state.service_speed()
    state.operate(pick=1, trigger="operator", verb="rollback", window_s=30)
    state.pin_and_lift(channel="canary", pack=0)
    state.policy_changes_under_a_rollout(pack=1, promote=False)
    m = state.m
    assert not codes(m), lines(m)
    internal = m.world.scope("prod", "canary", "internal")
    assert internal.active_pack.version == "1.2.0" and internal.active.kind == "rollback"  # the race was run
    # never 1.2.0; and not 1.1.0 either since session 27: the release rolled back is r2, 1.1.0's, which closed
    # success (its pack is pulled: the LKG goes back to the one before it, r1's 1.0.0)
    assert (internal.lkg.version, internal.lkg_release) == ("1.0.0", "r1")


def test_a_window_never_passes_for_a_cohort_taken_out_of_the_channel() -> None:
    """cohorts_change_under_a_rollout(to='one'), reduced (session 24): the first stage's runtimes report well,
    then the canary's cohorts become one (`rest`): internal's runtimes now follow rest. The window passed on the
    reports they sent before they moved, and the release expanded over a cohort that no longer exists (the
    auditor's `cohorts_gone`, under `pass_without_data`). Now the window holds, saying why, for an operator."""
    m = model()
    rid = m.request(V110)
    m.settle()
    for kind in ("activation_ok", "good", "good"):
        m.send_samples(kind)
    m.configure("canary", cohorts="one")
    window_without_samples(m)
    release = m.world.release(rid)
    assert release.phase == "held", lines(m)
    verdict = release.verdicts[-1][1]
    assert "cohort(s) internal no longer in the channel's configuration" in verdict.reason
    assert verdict.figures["coverage"]["unconfigured"] == ["internal"]
    assert release.activated == ("internal",)  # nothing expanded
    assert not codes(m), lines(m)


def test_a_cohort_added_to_a_channel_that_ran_packs_is_brought_in_by_a_release_of_its_own() -> None:
    """cohorts_change_under_a_rollout(to='three'), reduced (session 24): a cohort `early` joins a canary that
    ran packs while a release is watched. The release closed `success`, "all 2 stage(s) passed", though the
    channel's new cohort never got its pack; then every release over the channel's plan was refused, whatever
    its strategy (lkg: early has no last-known-good, "request 'none'"; none: the others ran packs). Now the
    success says which cohorts its plan left out, the refusal names the remedy, and the remedy works."""
    m = model()
    rid = m.request(V110)
    m.settle()
    m.configure("canary", cohorts="three")
    m.healthy_window()
    m.healthy_window()
    closed = m.world.release(rid)
    assert closed.outcome == "success", lines(m)
    assert "cohort(s) early of prod/canary not in its plan: this release did not roll 1.1.0 to them" in str(
        m.log[-1][1].data.summary
    )
    refused = m.request(V120)
    m.settle()
    reason = m.world.release(refused).failure or ""
    assert "first roll a pack out to early alone (plan [['early']], rollback strategy 'none')" in reason, reason
    assert "request rollback strategy 'none' for a never-activated scope" not in reason  # a hint that cannot work
    m.request(V110, "canary", "none", plan=[["early"]])  # what the others run, to early alone
    m.settle()
    m.healthy_window()
    assert m.world.scope("prod", "canary", "early").lkg.digest == V110.digest, lines(m)
    rid = m.request(V120)
    m.settle()
    for _ in range(3):
        m.healthy_window()
    assert m.world.release(rid).outcome == "success", lines(m)
    assert {m.world.scope("prod", "canary", c).active_pack.version for c in COHORTS} == {"1.2.0"}
    assert not codes(m), lines(m)


def test_no_promotion_into_a_channel_whose_new_cohort_would_get_it_refused() -> None:
    """Session 24, found reading the model's log: stable gained a cohort (`early`) that never ran a pack; the
    canary's release passed and promoted, and stable's pre-flight refused the linked release (no one rollback
    strategy fits a plan over early and cohorts that ran packs), while the canary's record said "promoted to
    stable". Now the promotion is withheld, saying why and what to do, and no linked release is written."""
    m = model(history=False)
    m.configure("stable", window_s=120)
    m.bootstrap("canary", V100)
    m.bootstrap("stable", V100)
    m.configure("stable", window_s=120, cohorts="three")
    m.configure("canary", promote=True)
    rid = m.request(V110)
    m.settle()
    for _ in range(3):
        m.healthy_window()
    release = m.world.release(rid)
    assert release.outcome == "success", lines(m)
    summary = m.log[-1][1].data.summary
    assert "promotion to stable withheld: stable's cohort(s) early never ran a pack while its others did" in summary
    assert f"{rid}-stable" not in m.world.releases
    assert not codes(m), lines(m)


def window_ended_well() -> tuple[Lifecycle, str]:
    """A release's first stage watched, its runtimes reporting well, the window's time over (not judged yet)."""
    m = model()
    rid = m.request(V110)
    m.settle()
    for kind in ("activation_ok", "good", "good"):
        m.send_samples(kind)
    m.now += timedelta(seconds=61)
    return m, rid


def test_a_pass_stored_after_the_channel_dropped_its_cohort_carries_nothing_on() -> None:
    """verdict_decided_now_stored_later + reconfigure, reduced (session 25): the monitor judged the first stage's
    window (internal reported well) but its append was delayed; meanwhile the canary's cohorts became one (`rest`).
    The pass landed (its append expects the release's subjects alone) and the release expanded over a cohort that
    no longer exists (the auditor: `pass_without_data`). Now the promoter, acting on the pass, holds the release
    (`escalated` stale_pass), the pass counts for nothing, and an operator's word moves it on as an override:
    never `success`, its pack never last-known-good."""
    m, rid = window_ended_well()
    decided_on = m.world
    verdict = m.fire_slowly(next(key for key in m.timers if not key.startswith("pin.")))
    m.configure("canary", cohorts="one")
    assert m.emit(verdict, decided_on)  # stored: nothing happened to the release meanwhile
    m.settle()
    release = m.world.release(rid)
    assert release.phase == "held" and release.activated == ("internal",), lines(m)
    judged_on = m.world.release(rid).verdicts[-1][1].channel_seq
    assert (
        "stage 1's pass counts for nothing: prod/canary's configuration changed after the window was judged "
        f"(against seq {judged_on}; newest seq {m.world.channel_seq('prod', 'canary')})"
    ) in (release.failure or ""), release.failure
    assert release.stages_passed_on_data == frozenset()
    assert m.operate("promote", rid)  # the operator's word on the window
    m.settle()
    m.healthy_window()
    closed = m.world.release(rid)
    assert closed.outcome == "promoted_by_override", lines(m)
    assert not codes(m), lines(m)


def test_a_channel_change_after_the_pass_is_stored_does_not_make_it_stale() -> None:
    """The promoter decides after the pass is stored, and its own append is not fenced against the channel either:
    a change landing between its decision and its append lets the release expand. That is no violation: the pass
    was judged against the configuration that stood when it was stored (`stale_when_stored` judges at the pass),
    and a change before the promoter's decision holds it (the story above). (Session 25: the first version of the
    auditor's check judged where the release moved on, and reported this interleaving.)"""
    m, rid = window_ended_well()
    m.sweep()  # the monitor passes the window; the promoter has not acted yet
    assert m.world.release(rid).phase == "passed"
    decided_on = m.world
    expansion = m.decide("promoter", rid)
    m.configure("canary", cohorts="one")
    assert m.emit(expansion, decided_on)
    m.settle()
    assert m.world.release(rid).activated == ("internal", "rest"), lines(m)
    assert not codes(m), lines(m)


def test_a_rollback_off_a_pin_pointer_leaves_the_lkg_as_it_was() -> None:
    """The model's minimal example against a first version of `lkg_pulled` (session 27), replayed through the
    machine itself:
        channels(thresholds=0, min_samples=1, promote=False, history='canary', stable_window=120)
        policy_changes_under_a_rollout(pack=1, promote=False)
        rollback_races_a_pin(lift=True, pack=1, pin=2, pinned_first=True, trigger='operator')
    r3's rollback, recorded for the pin 1.2.0, lands after the operator pinned 1.0.0 (the LKG; the pinner
    switched to it) and lifted that pin: internal moves off 1.0.0, which r3 never ran. That version took the
    LKG's name from any pack a rollback moved a scope off and left internal with none; a rollback pulls only
    its own release's pack, so 1.0.0 stays known good."""
    from .test_lifecycle_model import LifecycleMachine

    machine = LifecycleMachine()
    machine.channels(thresholds=0, min_samples=1, promote=False, history="canary", stable_window=120)
    machine.policy_changes_under_a_rollout(pack=1, promote=False)
    machine.rollback_races_a_pin(lift=True, pack=1, pin=2, pinned_first=True, trigger="operator")
    m = machine.m
    internal = m.world.scope("prod", "canary", "internal")
    assert internal.active.kind == "rollback" and internal.active_pack.digest == V120.digest
    assert internal.lkg.digest == V100.digest
    assert not codes(m), lines(m)
    machine.safe()


def test_an_operator_pulling_a_successful_release_takes_lkg_from_its_pack() -> None:
    """The model's minimal example against the fold before session 27, replayed through the machine itself:
        channels(thresholds=0, min_samples=1, promote=False, history='two', stable_window=120)
        pull_a_success(pick=1, trigger='tenant_impact')
    `lkg_pulled` at both pointers: r2 (1.1.0, closed success) rolled back to 1.0.0 by an operator, and 1.1.0
    stayed each cohort's LKG, so the next failed release would have gone back to the pack just pulled."""
    from .test_lifecycle_model import LifecycleMachine

    machine = LifecycleMachine()
    machine.channels(thresholds=0, min_samples=1, promote=False, history="two", stable_window=120)
    machine.pull_a_success(pick=1, trigger="tenant_impact")
    m = machine.m
    assert m.world.release("r2").outcome == "rolled_back", lines(m)
    for cohort in ("internal", "rest"):
        scope = m.world.scope("prod", "canary", cohort)
        assert (scope.active_pack.digest, scope.lkg.digest) == (V100.digest, V100.digest)
    assert not codes(m), lines(m)
    machine.safe()


def test_a_rollback_target_whose_name_holds_other_bytes_holds_the_release() -> None:
    """The model's minimal example against a rollback readiness that compared the size only (before session 28),
    replayed through the machine itself:
        channels(thresholds=0, min_samples=1, promote=False, history='two', stable_window=120)
        cohorts_change_under_a_rollout(after_windows=0, back=False, kinds=('activation_ok', 'good', 'good'),
                                       pack=2, to='one')
        swap_pack(pack=6)
        refusal_behind_a_later_stage(live=False, pack=1)
        fire_timer(which=0)
    1.1.0 (r2's pack, both cohorts' LKG) is re-pointed at other bytes of its size; that readiness passed it,
    r4's expansion went on and its failed window rolled internal back onto bytes no runtime could load
    (`pointer_to_other_bytes`). Now the metadata's SHA-256 says so: the expansion holds, and so does an
    operator's rollback."""
    from .test_lifecycle_model import LifecycleMachine

    machine = LifecycleMachine()
    machine.channels(thresholds=0, min_samples=1, promote=False, history="two", stable_window=120)
    machine.cohorts_change_under_a_rollout(
        after_windows=0, back=False, kinds=("activation_ok", "good", "good"), pack=2, to="one"
    )
    machine.swap_pack(pack=6)
    assert PACKS[-7].digest == V110.digest
    machine.refusal_behind_a_later_stage(live=False, pack=1)
    m = machine.m
    held = [e for _, e in m.log if e is not None and e.type == "release.escalated"]
    assert [(e.release_id, e.data.code) for e in held] == [("r4", "rollback_not_ready")], lines(m)
    assert "holds other bytes" in held[0].data.message
    internal = m.world.scope("prod", "canary", "internal")
    r4_pack = m.world.release("r4").pack
    assert internal.active_pack.digest == r4_pack.digest and internal.lkg.digest == V110.digest

    m.operate("rollback", "r4", trigger="operator", window_s=60)
    m.settle()
    event = m.log[-1][1]
    assert (event.type, event.data.code) == ("release.escalated", "rollback_target_unusable"), lines(m)
    assert "holds other bytes" in event.data.message
    assert m.world.scope("prod", "canary", "internal").active_pack.digest == r4_pack.digest
    assert not codes(m), lines(m)
    machine.safe()


def test_a_pulled_release_does_not_fall_back_to_a_target_the_scope_names_no_longer() -> None:
    """The model's minimal example against session 27's fold, found by a 100,000-step run (session 28), replayed
    through the machine itself:
        channels(thresholds=0, min_samples=1, promote=False, history='canary', stable_window=120)
        cohorts_change_under_a_rollout(after_windows=1, back=False, kinds=('activation_ok', 'good', 'good'),
                                       pack=1, to='one')
        decide_now_commit_later(consumer='activator', pick=0)
        promotion(ack=False, pack=1, stable=0)
        pin(channel='canary', cohort='internal', hours=1, pack=0)
        pull_a_success(pick=0, trigger='tenant_impact')   # r1 (1.0.0)
        pull_a_success(pick=1, trigger='tenant_impact')   # r3 (1.5.0): rest back on 1.2.0, r2's
        pull_a_success(pick=0, trigger='tenant_impact')   # r2 (1.2.0)
    r1's pull was not remembered in rest (`scopes.pull` keeps a pull only where the scope names the pack, and
    there it named 1.5.0 and 1.2.0), and r2, closed long before, fell back to the 1.0.0 its pre-flight recorded:
    `lkg_pulled`. A recorded target the scope no longer names is no evidence: rest holds."""
    from .test_lifecycle_model import LifecycleMachine

    machine = LifecycleMachine()
    machine.channels(thresholds=0, min_samples=1, promote=False, history="canary", stable_window=120)
    machine.cohorts_change_under_a_rollout(
        after_windows=1, back=False, kinds=("activation_ok", "good", "good"), pack=1, to="one"
    )
    machine.decide_now_commit_later(consumer="activator", pick=0)
    machine.promotion(ack=False, pack=1, stable=0)
    machine.pin(channel="canary", cohort="internal", hours=1, pack=0)
    for pick in (0, 1, 0):
        machine.pull_a_success(pick=pick, trigger="tenant_impact")
    m = machine.m
    started = [e for _, e in m.log if e is not None and e.type == "release.rollback_started"]
    assert [e.release_id for e in started] == ["r1", "r3", "r2"], lines(m)
    assert started[-1].data.targets["rest"] is None
    event = m.log[-1][1]
    assert (event.type, event.data.code) == ("release.escalated", "rollback_target_unusable"), lines(m)
    assert event.data.message == "rest: no rollback target"
    assert m.world.scope("prod", "canary", "rest").active_pack.version == "1.2.0"
    assert not codes(m), lines(m)
    machine.safe()
