"""Given a world, when a consumer decides, then it emits ... (pure decide functions, no NATS)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from events.codec import encode_event
from events.health import HealthSample
from events.ids import derived_event_id
from events.model import Monitoring
from events.tokens import is_token
from projections.releases import ReleaseState
from projections.rollback import pulled_there, rollback_targets
from projections.world import World
from services.consumers import activator, distributor, monitor, preparer, promoter
from services.consumers.outputs import Atomic, Chain, Ctx, Promotion, Timer, appended
from services.monitoring.judge import HARD_BREACH_MIN_REQUESTS, compare, figures_of, hard_breach, judge

from .test_projections import CH, CHANNEL_DOC, ENV, NOW, P0, P1, P2, STAGES, Log, manifest_of

# ---- builders --------------------------------------------------------------------------------

LATER = NOW + timedelta(hours=1)  # decisions happen after the log's events


def ctx(service: str, now: datetime = LATER) -> Ctx:
    return Ctx(now=now, service=service)


def state(log: Log, rid: str = "r1") -> tuple[World, ReleaseState]:
    world = log.world()
    return world, world.release(rid)


def history(log: Log) -> Log:
    """Channel configured; both cohorts ran P0, which closed with success (so P0 is their LKG)."""
    log.channel()
    log.two_stage_success("r0", P0)
    return log


def only(outputs: list, kind: type) -> Any:
    assert len(outputs) == 1 and isinstance(outputs[0], kind), outputs
    return outputs[0]


def single_event(outputs: list):
    chain = only(outputs, Chain)
    assert len(chain.events) == 1, chain.events
    return chain.events[0]


def events_of(outputs: list) -> list:
    return appended(outputs)


def ids_of(outputs: list) -> list[str]:
    """The ids of what `outputs` append, then of the timers they set (each with its message id)."""
    return [e.event_id for e in appended(outputs)] + [o.msg_id for o in outputs if isinstance(o, Timer)]


def sample(
    rid: str = "rt-1",
    requests: int = 100,
    errors: int = 0,
    p95: float = 100.0,
    p99: float = 200.0,
    classes: dict[str, int] | None = None,
    mismatches: int | None = None,
    checked: int | None = None,
    d: str = P1["digest"],
) -> HealthSample:
    body: dict[str, Any] = {
        "runtime_id": rid,
        "digest": d,
        "at": NOW.isoformat(),
        "kind": "sample",
        "requests": requests,
        "errors": errors,
        "latency_ms": {"p95": p95, "p99": p99},
        "error_classes": classes or {},
    }
    if checked is not None:
        body["correctness"] = {"mismatches": mismatches or 0, "checked": checked}
    return HealthSample.model_validate(body)


def activation(rid: str = "rt-1", ok: bool = True, error: str | None = None, took_ms: float = 50.0) -> HealthSample:
    return HealthSample.model_validate(
        {
            "runtime_id": rid,
            "digest": P1["digest"],
            "at": NOW.isoformat(),
            "kind": "activation",
            "ok": ok,
            "error": error,
            "took_ms": took_ms,
        }
    )


def monitoring(min_samples: int = 1, **thresholds: Any) -> Monitoring:
    return Monitoring.model_validate({"window_s": 60, "min_samples": min_samples, "thresholds": thresholds})


# ==== preparer ================================================================================


def requested_log(rid: str = "r1", p: dict[str, Any] = P1, with_history: bool = True, **request: Any) -> Log:
    log = history(Log()) if with_history else Log()
    request.setdefault("acknowledge_no_health", True)
    log.requested(rid, p, **request)
    return log


def prepare(log: Log, health: dict[str, int] | None = None, rid: str = "r1"):
    world, release = state(log, rid)
    return preparer.decide(world, release, ctx("preparer"), health)


def test_preparer_prepares_plan_stages_and_rollback_targets() -> None:
    event = single_event(prepare(requested_log()))
    assert event.type == "release.prepared"
    p = event.data
    assert p.stages == STAGES
    assert p.skipped == {}
    assert {c: t.digest for c, t in p.rollback_targets.items()} == {"internal": P0["digest"], "rest": P0["digest"]}
    assert p.rollback_strategy == "lkg"
    assert p.monitoring == Monitoring.model_validate(CHANNEL_DOC["monitoring"])
    assert p.pack.digest == P1["digest"] and (p.target.env, p.target.channel) == (ENV, CH)
    assert (p.owner, p.escalation) == ("kb-team", "pager:kb")
    assert [i.item for i in p.checklist] == [
        "target_exists",
        "cohort_plan_valid",
        "monitoring_window",
        "monitoring_min_samples",
        "smallest_scope",
        "cohorts_to_roll_out",
        "concurrent_releases",
        "rollback_target",
        "observability",
        "alert_route",  # a warning here: CHANNEL_DOC has no sink (tests/unit/test_alert_route.py)
        "owner_and_escalation",
    ]
    assert all(i.ok for i in p.checklist)
    assert event.release_id == "r1" and event.causation_id == state(requested_log())[1].last_event_id
    assert event.occurred_at == LATER and event.actor.id == "preparer"


def test_preparer_uses_the_requested_plan_and_monitoring() -> None:
    # (issue 13: a requested plan may no longer merge channel stages, so this one covers `rest` alone)
    log = requested_log(
        plan=[["rest"]], monitoring={"window_s": 600, "min_samples": 5, "thresholds": {"latency_p95_ms_max": 300}}
    )
    p = single_event(prepare(log)).data
    assert p.stages == [["rest"]]
    assert (p.monitoring.window_s, p.monitoring.min_samples) == (600, 5)
    assert p.monitoring.thresholds.latency_p95_ms_max == 300
    assert p.monitoring.thresholds.error_rate_max == 0.05  # channel default kept, field by field


def test_preparer_strategy_none_on_a_never_activated_channel() -> None:
    log = Log()
    log.channel()
    log.requested("r1", rollback={"strategy": "none"}, acknowledge_no_health=True)
    p = single_event(prepare(log)).data
    assert p.rollback_strategy == "none"
    assert p.rollback_targets == {"internal": None, "rest": None}


def test_preparer_records_targets_only_for_cohorts_that_roll_out() -> None:
    """A pinned cohort is skipped, so the recorded targets only cover cohorts that roll out."""
    log = requested_log()
    log.pin("rest", P0, LATER + timedelta(days=1), "freeze for audit")
    p = single_event(prepare(log)).data
    assert p.stages == [["internal"]]
    assert set(p.rollback_targets) == {"internal"}


def test_a_plan_whose_first_stage_is_pinned_is_refused_not_started_wider() -> None:
    """The seed: start in the smallest safe scope. With the canary stage (`internal`) pinned, the pack
    would first run in `rest`, the catch-all, with no canary data: pre-flight refuses, saying how to
    go on. (Before, the pinned stage was dropped and the release started in `rest`.)"""
    log = requested_log()
    log.pin("internal", P0, LATER + timedelta(days=1), "freeze for audit")
    world, release = state(log)
    items, prepared = preparer.preflight(world, release, ctx("preparer"), None)
    assert prepared is None
    item = next(i for i in items if i.item == "smallest_scope")
    assert not item.ok
    assert item.detail.startswith("every cohort of the plan's first stage (internal) is pinned: the pack would")
    assert "stage 2 (rest)" in item.detail and "kxr channel set" in item.detail


def test_preparer_skips_and_records_pinned_cohorts() -> None:
    log = history(Log())
    log.pin("rest", P0, LATER + timedelta(days=1), "quarter close")
    log.requested("r1", acknowledge_no_health=True)
    p = single_event(prepare(log)).data
    assert p.stages == [["internal"]]
    assert list(p.skipped) == ["rest"]
    assert "pinned to 0.9.0" in p.skipped["rest"] and "quarter close" in p.skipped["rest"]
    item = next(i for i in p.checklist if i.item == "cohorts_to_roll_out")
    assert item.ok and "1 pinned and skipped" in item.detail


def test_preparer_ignores_an_expired_pin() -> None:
    log = history(Log())
    log.pin("rest", P0, LATER - timedelta(seconds=1))
    log.requested("r1", acknowledge_no_health=True)
    p = single_event(prepare(log)).data
    assert p.stages == STAGES and p.skipped == {}


REJECTIONS = [
    # (id, log builder, health, expected failed items, needle in the first reason)
    (
        "unconfigured-channel",
        lambda: requested_log(with_history=False, rollback={"strategy": "none"}),
        None,
        ["target_exists"],
        "channel prod/canary has no configuration",
    ),
    (
        "unknown-cohort-in-plan",
        lambda: requested_log(plan=[["ghost"]], rollback={"strategy": "none"}),
        None,
        ["cohort_plan_valid"],
        "unknown cohorts ['ghost']",
    ),
    (
        "cohort-named-twice",
        lambda: requested_log(plan=[["internal"], ["internal", "rest"]]),
        None,
        ["cohort_plan_valid"],
        "cohorts named twice ['internal']",
    ),
    (
        "window-below-channel-minimum",
        lambda: requested_log(monitoring={"window_s": 30, "min_samples": 2}),
        None,
        ["monitoring_window"],
        "window 30s (channel minimum 60s)",
    ),
    (
        "min-samples-below-channel-minimum",
        lambda: requested_log(monitoring={"window_s": 60, "min_samples": 1}),
        None,
        ["monitoring_min_samples"],
        "min_samples 1 (channel minimum 2)",
    ),
    (
        "strategy-none-on-an-active-scope",
        lambda: requested_log(rollback={"strategy": "none"}),
        None,
        ["rollback_target"],
        "internal has had an active pack, so rollback strategy 'none' is not allowed",
    ),
    (
        "no-lkg-never-activated-with-hint",
        lambda: (lambda log: (log.channel(), log.requested("r1", acknowledge_no_health=True), log)[-1])(Log()),
        None,
        ["rollback_target"],
        "internal has no last-known-good pack (request rollback strategy 'none' for a never-activated scope)",
    ),
    (
        "no-health-reporters",
        lambda: requested_log(acknowledge_no_health=False),
        {"internal": 2, "rest": 0},
        ["observability"],
        "for ['rest'] (set acknowledge_no_health to proceed)",
    ),
    ("blank-owner", lambda: requested_log(owner="  "), None, ["owner_and_escalation"], "owner '  '"),
    (
        "threshold-nothing-judges",
        lambda: requested_log(monitoring={"window_s": 60, "min_samples": 2, "thresholds": {"queue_depth_max": 5}}),
        None,
        ["monitoring_thresholds"],
        "threshold 'queue_depth_max' names no Prometheus query of this channel",
    ),
    (
        "threshold-misspelt",
        lambda: requested_log(monitoring={"window_s": 60, "min_samples": 2, "thresholds": {"error_rate_mx": 0.01}}),
        None,
        ["monitoring_thresholds"],
        "unknown threshold 'error_rate_mx'",
    ),
]


@pytest.mark.parametrize(
    ("build", "health", "failed", "needle"), [r[1:] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS]
)
def test_preparer_rejects_naming_the_failed_item(build, health, failed: list[str], needle: str) -> None:
    event = single_event(prepare(build(), health))
    assert event.type == "release.rejected"
    assert [r.code for r in event.data.reasons] == failed
    assert needle in event.data.reasons[0].message, event.data.reasons[0].message


def test_preparer_no_lkg_without_hint_for_a_scope_that_was_active() -> None:
    log = Log()
    log.channel()
    log.point("internal", P0)  # active, but no release ever closed with success on it
    log.requested("r1", plan=[["internal"]], acknowledge_no_health=True)
    reason = single_event(prepare(log)).data.reasons[0]
    assert reason.code == "rollback_target"
    assert reason.message == "internal has no last-known-good pack"


def test_preparer_names_a_pulled_lkg_and_a_pulled_pinned_prior() -> None:
    """Session 27: r1 earned P1 with nothing earned before it and was pulled by an operator; P2 was pinned
    there and lifted before. Strategy `lkg`: no LKG, and the message says what happened; strategy `pinned`:
    the pinned prior P2 was itself rolled back there since (a release of it), so it is refused as a target
    until an operator pins it again."""
    log = Log()
    log.channel()
    log.point("internal", P0)
    log.pin("internal", P2, NOW + timedelta(hours=1))
    log.unpin("internal")
    log.two_stage_success("r1", P1)
    log.rollback_started("r1", {"internal": P0}, trigger="tenant_impact")
    log.rolled_back("r1", {"internal": P0})
    log.closed("r1", "rolled_back")
    log.requested("r2", P2, plan=[["internal"]], acknowledge_no_health=True)
    reason = single_event(prepare(log, rid="r2")).data.reasons[0]
    assert (
        reason.message
        == "internal has no last-known-good pack (its last one was rolled back there: pin a pack to vouch for it)"
    )
    log.through_verified("r3", P2, stages=[["internal"]], targets={"internal": P0})
    log.activate("r3", 0, ["internal"], P2)
    log.rollback_started("r3", {"internal": P0})
    log.rolled_back("r3", {"internal": P0})
    log.closed("r3", "rolled_back")
    log.requested("r4", P1, plan=[["internal"]], rollback={"strategy": "pinned"}, acknowledge_no_health=True)
    reasons = [r.message for r in single_event(prepare(log, rid="r4")).data.reasons]
    assert "internal's pinned prior 2.0.0 was rolled back there since it was pinned" in reasons[0], reasons


def test_preparer_rejection_lists_every_failed_item() -> None:
    log = requested_log(
        plan=[["internal"], ["ghost"]],
        monitoring={"window_s": 10, "min_samples": 1},
        rollback={"strategy": "none"},
        owner=" ",
        acknowledge_no_health=False,
    )
    reasons = single_event(prepare(log, {"internal": 1})).data.reasons
    assert [r.code for r in reasons] == [
        "cohort_plan_valid",
        "monitoring_window",
        "monitoring_min_samples",
        "rollback_target",
        "observability",
        "owner_and_escalation",
    ]
    text = " | ".join(r.message for r in reasons)
    for needle in (
        "unknown cohorts ['ghost']",
        "window 10s",
        "min_samples 1",
        "internal has had an active pack",
        "['ghost']",
        "owner ' '",
    ):
        assert needle in text, text


def test_preparer_observability_acknowledged_or_unchecked() -> None:
    acked = single_event(prepare(requested_log(acknowledge_no_health=True), {"internal": 0, "rest": 0}))
    assert acked.type == "release.prepared"
    assert "acknowledged" in next(i.detail for i in acked.data.checklist if i.item == "observability")
    unchecked = single_event(prepare(requested_log(acknowledge_no_health=False), None))
    assert unchecked.type == "release.prepared"
    watched = single_event(prepare(requested_log(acknowledge_no_health=False), {"internal": 1, "rest": 3}))
    assert watched.type == "release.prepared"


@pytest.mark.parametrize("phase_story", ["prepared", "none"], ids=["already-prepared", "unknown-release"])
def test_preparer_acts_only_on_requested(phase_story: str) -> None:
    log = requested_log()
    if phase_story == "prepared":
        log.prepared("r1")
        world, release = state(log)
    else:
        world, release = log.world(), ReleaseState(release_id="nobody")
    assert preparer.decide(world, release, ctx("preparer"), None) == []


def test_effective_monitoring() -> None:
    cfg = history(Log()).world().channel_config(ENV, CH)
    assert preparer.effective_monitoring(None, cfg) == Monitoring(
        window_s=60, min_samples=2, thresholds={"error_rate_max": 0.05}
    )
    no_thresholds = preparer.effective_monitoring(Monitoring(window_s=90, min_samples=3), cfg)
    assert (no_thresholds.window_s, no_thresholds.min_samples, no_thresholds.thresholds.error_rate_max) == (90, 3, 0.05)
    merged = preparer.effective_monitoring(
        Monitoring.model_validate(
            {"window_s": 90, "thresholds": {"error_rate_max": 0.01, "new_error_classes": "ignore"}}
        ),
        cfg,
    )
    assert merged.thresholds.error_rate_max == 0.01  # a request may tighten a threshold...
    assert merged.thresholds.new_error_classes == "fail"  # ...but not switch a check off
    looser = preparer.effective_monitoring(
        Monitoring.model_validate({"window_s": 90, "thresholds": {"error_rate_max": 0.5, "latency_p95_ms_max": 300}}),
        cfg,
    )
    assert looser.thresholds.error_rate_max == 0.05  # ...nor loosen one
    assert looser.thresholds.latency_p95_ms_max == 300  # a threshold the channel did not set may be added
    dropped = preparer.effective_monitoring(
        Monitoring.model_validate({"window_s": 90, "thresholds": {"error_rate_max": None}}), cfg
    )
    assert dropped.thresholds.error_rate_max == 0.05


def test_a_request_may_tighten_the_tenant_impact_and_trace_coverage_thresholds_never_loosen_them() -> None:
    cfg = history(Log()).world().channel_config(ENV, CH)
    cfg = cfg.model_copy(
        update={
            "monitoring": cfg.monitoring.model_copy(
                update={
                    "thresholds": cfg.monitoring.thresholds.model_copy(
                        update={"tickets_max": 5, "escalations_max": 2, "trace_coverage_min": 0.9}
                    )
                }
            )
        }
    )
    tighter = preparer.effective_monitoring(
        Monitoring.model_validate(
            {"window_s": 90, "thresholds": {"tickets_max": 1, "escalations_max": 0, "trace_coverage_min": 0.99}}
        ),
        cfg,
    )
    assert (
        tighter.thresholds.tickets_max,
        tighter.thresholds.escalations_max,
        tighter.thresholds.trace_coverage_min,
    ) == (1, 0, 0.99)
    looser = preparer.effective_monitoring(
        Monitoring.model_validate(
            {"window_s": 90, "thresholds": {"tickets_max": 50, "escalations_max": 9, "trace_coverage_min": 0.5}}
        ),
        cfg,
    )
    assert (looser.thresholds.tickets_max, looser.thresholds.escalations_max, looser.thresholds.trace_coverage_min) == (
        5,
        2,
        0.9,
    )


def test_preflight_returns_the_checklist_even_when_rejecting() -> None:
    log = requested_log(with_history=False)
    world, release = state(log)
    items, prepared = preparer.preflight(world, release, ctx("preparer"), None)
    assert prepared is None
    assert {i.item: i.ok for i in items}["target_exists"] is False
    assert len(items) == 11


# ==== distributor ==============================================================================

PACK_OBJ = "sha256-" + P1["digest"][7:]
MANIFEST_OBJ = PACK_OBJ + ".manifest"


def prepared_release() -> ReleaseState:
    log = requested_log()
    log.prepared("r1")
    return state(log)[1]


def test_distributor_records_both_objects_with_sizes() -> None:
    event = single_event(
        distributor.decide(prepared_release(), ctx("distributor"), {PACK_OBJ: 4096, MANIFEST_OBJ: 900})
    )
    assert event.type == "release.distributed"
    assert event.data.pack.size == 4096 and event.data.pack.digest == P1["digest"]
    assert event.data.manifest == MANIFEST_OBJ == manifest_of(P1)
    assert event.data.objects == {PACK_OBJ: 4096, MANIFEST_OBJ: 900}


@pytest.mark.parametrize(
    ("objects", "code", "needles"),
    [
        ({PACK_OBJ: None, MANIFEST_OBJ: 900}, "pack_missing", [PACK_OBJ]),
        ({PACK_OBJ: 4096}, "manifest_missing", [MANIFEST_OBJ]),
        ({}, "manifest_missing", [MANIFEST_OBJ, f"also missing: {PACK_OBJ}"]),
    ],
    ids=["pack", "manifest", "both"],
)
def test_distributor_fails_closed_on_a_missing_object(objects: dict, code: str, needles: list[str]) -> None:
    event = single_event(distributor.decide(prepared_release(), ctx("distributor"), objects))
    assert event.type == "release.verification_failed"
    assert (event.data.gate, event.data.code) == ("distribution", code)
    assert [(g.gate, g.ok, g.code) for g in event.data.gates] == [("distribution", False, code)]
    assert event.data.reference_time == LATER
    for needle in needles:
        assert needle in event.data.message


def test_distributor_acts_only_on_prepared() -> None:
    release = state(requested_log())[1]
    assert distributor.decide(release, ctx("distributor"), {PACK_OBJ: 1, MANIFEST_OBJ: 1}) == []


# ==== activator =================================================================================


def verified_log(stages: list[list[str]] | None = None) -> Log:
    log = history(Log())
    log.through_verified("r1", P1, stages)
    return log


def test_activator_stage_zero_on_verified() -> None:
    log = verified_log()
    world, release = state(log)
    atomic = only(activator.decide_rollout(world, release, ctx("activator")), Atomic)
    (write,) = atomic.scope_writes
    assert write.event.type == "scope.activated"
    assert (write.event.scope.env, write.event.scope.channel, write.event.scope.cohort) == (ENV, CH, "internal")
    assert write.expected_seq == world.scope(ENV, CH, "internal").active_seq > 0
    pointer = write.event.data
    assert (pointer.pack.digest, pointer.kind, pointer.release_id, pointer.manifest) == (
        P1["digest"],
        "rollout",
        "r1",
        manifest_of(P1),
    )
    assert pointer.previous.digest == P0["digest"]
    (activated,) = atomic.release_events
    assert activated.type == "release.activated"
    assert (activated.data.stage, activated.data.cohorts, activated.data.kind) == (0, ["internal"], "rollout")
    assert activated.data.previous["internal"].version == "0.9.0"
    assert activated.data.batch_id == derived_event_id(release.last_event_id, "activator", "rollout/0")


def test_activator_next_stage_on_expanded() -> None:
    log = verified_log()
    log.stage("r1", 0, ["internal"])
    log.expanded("r1", 0, 1, ["rest"])
    world, release = state(log)
    atomic = only(activator.decide_rollout(world, release, ctx("activator")), Atomic)
    assert [w.event.scope.cohort for w in atomic.scope_writes] == ["rest"]
    assert atomic.release_events[0].data.stage == 1


def test_activator_expected_seqs_come_from_each_scope() -> None:
    log = Log()
    log.channel({**CHANNEL_DOC, "plan": [["internal", "rest"]]})
    log.point("rest", P0)
    log.point("rest", P0)  # `rest` has moved twice; `internal` never
    log.through_verified("r1", P1, [["internal", "rest"]], strategy="none", targets={"internal": None, "rest": None})
    world, release = state(log)
    atomic = only(activator.decide_rollout(world, release, ctx("activator")), Atomic)
    seqs = {w.event.scope.cohort: w.expected_seq for w in atomic.scope_writes}
    assert seqs == {"internal": 0, "rest": 3}
    previous = atomic.release_events[0].data.previous
    assert previous["internal"] is None and previous["rest"].digest == P0["digest"]


def test_activator_does_nothing_while_paused() -> None:
    log = verified_log()
    log.note("r1", "paused", "wait")
    assert activator.decide_rollout(*state(log), ctx("activator")) == []
    log.note("r1", "resumed")
    assert isinstance(only(activator.decide_rollout(*state(log), ctx("activator")), Atomic), Atomic)


@pytest.mark.parametrize("phase", ["prepared", "activated", "monitoring", "passed"])
def test_activator_rollout_only_on_verified_or_expanding(phase: str) -> None:
    log = history(Log())
    log.requested("r1")
    log.prepared("r1")
    if phase != "prepared":
        log.distributed("r1")
        log.verified("r1")
        log.activate("r1", 0, ["internal"])
        if phase in ("monitoring", "passed"):
            log.started("r1", 0, ["internal"])
        if phase == "passed":
            log.verdict("r1", "passed", 0)
    world, release = state(log)
    assert release.phase == phase
    assert activator.decide_rollout(world, release, ctx("activator")) == []


def test_activator_skips_a_cohort_pinned_after_preparation() -> None:
    log = verified_log([["internal", "rest"]])
    log.pin("rest", P0, LATER + timedelta(hours=1))
    world, release = state(log)
    atomic = only(activator.decide_rollout(world, release, ctx("activator")), Atomic)
    assert [w.event.scope.cohort for w in atomic.scope_writes] == ["internal"]
    assert atomic.release_events[0].data.cohorts == ["internal"]


def test_activator_expired_pin_does_not_skip() -> None:
    log = verified_log([["internal", "rest"]])
    log.pin("rest", P0, LATER)  # ends exactly when we decide
    atomic = only(activator.decide_rollout(*state(log), ctx("activator")), Atomic)
    assert [w.event.scope.cohort for w in atomic.scope_writes] == ["internal", "rest"]


def test_activator_fails_a_stage_the_plan_does_not_have() -> None:
    log = verified_log()
    log.stage("r1", 0, ["internal"])
    log.expanded("r1", 0, 1, ["rest"])
    log.stage("r1", 1, ["rest"])
    log.expanded("r1", 1, 2, [])  # illegal, but the log is the truth
    event = single_event(activator.decide_rollout(*state(log), ctx("activator")))
    assert event.type == "release.activation_failed"
    assert (event.data.stage, event.data.code) == (2, "no_such_stage")


def rolling_back_log(targets: dict[str, Any] | None = None) -> Log:
    """r1 exposed both cohorts to P1, stage 1 failed, rollback started to `targets`."""
    log = verified_log()
    log.stage("r1", 0, ["internal"])
    log.expanded("r1", 0, 1, ["rest"])
    log.stage("r1", 1, ["rest"], "failed")
    log.rollback_started("r1", targets if targets is not None else {"internal": P0, "rest": P0})
    return log


def test_activator_rolls_back_every_cohort_in_one_atomic_batch() -> None:
    world, release = state(rolling_back_log())
    atomic = only(activator.decide_rollback(world, release, ctx("activator"), {P0["digest"]: None}), Atomic)
    assert [w.event.scope.cohort for w in atomic.scope_writes] == ["internal", "rest"]
    for w in atomic.scope_writes:
        scope = world.scope(ENV, CH, w.event.scope.cohort)
        assert w.expected_seq == scope.active_seq
        assert (w.event.data.kind, w.event.data.pack.digest, w.event.data.manifest) == (
            "rollback",
            P0["digest"],
            manifest_of(P0),
        )
        assert w.event.data.previous.digest == P1["digest"]
    (done,) = atomic.release_events
    assert done.type == "release.rolled_back"
    assert done.data.cohorts == ["internal", "rest"]
    assert done.data.batch_id == derived_event_id(release.last_event_id, "activator", "rollback")


@pytest.mark.parametrize(
    ("targets", "problems", "needle"),
    [
        ({"internal": P0, "rest": None}, {}, "rest: no rollback target"),
        ({"internal": P0}, {}, "rest: no rollback target"),
        (
            {"internal": P0, "rest": P2},
            {P2["digest"]: "manifest expired"},
            "rest: target 2.0.0 is not valid: manifest expired",
        ),
    ],
    ids=["none-target", "missing-target", "invalid-target"],
)
def test_activator_escalates_when_a_target_is_unusable(targets: dict, problems: dict, needle: str) -> None:
    world, release = state(rolling_back_log(targets))
    event = single_event(activator.decide_rollback(world, release, ctx("activator"), problems))
    assert event.type == "release.escalated"
    assert event.data.code == "rollback_target_unusable"
    assert event.data.escalation == "pager:kb"
    assert needle in event.data.message


def test_activator_does_not_rewrite_cohorts_already_on_target() -> None:
    log = rolling_back_log()
    log.point("rest", P0, None, kind="pin")  # an operator already put `rest` back
    world, release = state(log)
    atomic = only(activator.decide_rollback(world, release, ctx("activator"), {P0["digest"]: None}), Atomic)
    assert [w.event.scope.cohort for w in atomic.scope_writes] == ["internal"]
    assert atomic.release_events[0].data.cohorts == ["internal", "rest"]


def test_activator_rollback_with_every_cohort_on_target_is_a_plain_chain() -> None:
    log = rolling_back_log()
    log.point("internal", P0, None, kind="pin")
    log.point("rest", P0, None, kind="pin")
    event = single_event(activator.decide_rollback(*state(log), ctx("activator"), {P0["digest"]: None}))
    assert event.type == "release.rolled_back"
    assert event.data.batch_id is None


def test_activator_rollback_only_while_rolling_back() -> None:
    log = verified_log()
    log.stage("r1", 0, ["internal"], "failed")
    assert activator.decide_rollback(*state(log), ctx("activator"), {}) == []


# ==== monitor ===================================================================================


def activated_log(cohorts: list[str] | None = None, stages: list[list[str]] | None = None) -> Log:
    log = verified_log(stages)
    log.activate("r1", 0, ["internal"] if cohorts is None else cohorts)
    return log


def test_monitor_start_opens_a_window() -> None:
    release = state(activated_log())[1]
    event = single_event(monitor.decide_start(release, ctx("monitor")))
    assert event.type == "release.monitoring_started"
    d = event.data
    assert (d.stage, d.cohorts, d.digest) == (0, ["internal"], P1["digest"])
    # the window starts when the pointers moved, not when the monitor got to it (issue 13)
    assert d.starts_at == release.activated_at[0] != LATER and d.ends_at == d.starts_at + timedelta(seconds=60)
    assert d.monitoring == release.prepared.monitoring


def test_monitor_emits_the_window_timer_while_monitoring() -> None:
    log = activated_log()
    log.started("r1", 0, ["internal"], window_s=60)
    release = state(log)[1]
    timer = only(monitor.decide_start(release, ctx("monitor")), Timer)
    assert timer.key == "r1.0"
    assert timer.at == release.monitoring.ends_at
    assert timer.payload == {"release_id": "r1", "stage": 0}
    assert timer.msg_id == only(monitor.decide_start(release, ctx("monitor", LATER + timedelta(hours=3))), Timer).msg_id


def test_monitor_zero_cohort_stage_passes_at_once() -> None:
    release = state(activated_log(cohorts=[]))[1]
    chain = only(monitor.decide_start(release, ctx("monitor")), Chain)
    assert [e.type for e in chain.events] == ["release.monitoring_started", "release.monitoring_passed"]
    assert chain.events[0].data.cohorts == []
    assert "all pinned" in chain.events[1].data.reason
    assert chain.events[0].event_id != chain.events[1].event_id


def test_monitor_start_only_on_activated_or_monitoring() -> None:
    assert monitor.decide_start(state(verified_log())[1], ctx("monitor")) == []


def monitoring_log() -> Log:
    log = activated_log()
    log.started("r1", 0, ["internal"])
    return log


@pytest.mark.parametrize(
    ("samples", "outcome"),
    [
        ([sample("a"), sample("b")], "release.monitoring_passed"),
        ([sample("a", errors=50), sample("b")], "release.monitoring_failed"),
        ([sample("a")], "release.monitoring_inconclusive"),
    ],
    ids=["passed", "failed", "inconclusive"],
)
def test_monitor_verdict(samples: list[HealthSample], outcome: str) -> None:
    release = state(monitoring_log())[1]
    event = single_event(monitor.decide_verdict(release, 0, samples, [], ctx("monitor")))
    assert event.type == outcome
    assert event.data.stage == 0 and event.data.samples == len(samples)
    assert any(c.metric == "error_rate" for c in event.data.comparisons)


def test_monitor_verdict_only_for_the_matching_stage() -> None:
    release = state(monitoring_log())[1]
    assert monitor.decide_verdict(release, 1, [sample()], [], ctx("monitor")) == []
    assert monitor.decide_verdict(state(activated_log())[1], 0, [sample()], [], ctx("monitor")) == []


def test_monitor_breach_fails_the_window_early() -> None:
    release = state(monitoring_log())[1]
    event = single_event(
        monitor.decide_breach(
            release, "runtime rt-1 failed to activate: boom", {"breach_runtime": "rt-1"}, ctx("monitor")
        )
    )
    assert event.type == "release.monitoring_failed"
    assert event.data.early is True and event.data.stage == 0
    assert event.data.reason == "hard breach: runtime rt-1 failed to activate: boom"
    assert event.data.figures == {"breach_runtime": "rt-1"}
    assert monitor.decide_breach(state(activated_log())[1], "x", {}, ctx("monitor")) == []


def test_monitor_breach_and_verdict_share_one_event_id() -> None:
    """Whichever lands first, the other is a duplicate JetStream drops."""
    release = state(monitoring_log())[1]
    early = single_event(monitor.decide_breach(release, "x", {}, ctx("monitor")))
    late = single_event(monitor.decide_verdict(release, 0, [sample("a"), sample("b")], [], ctx("monitor")))
    assert early.event_id == late.event_id


# ==== judge =====================================================================================

THRESHOLD_BREACHES = [
    ("error_rate", {"error_rate_max": 0.05}, [sample("a", requests=100, errors=10)], "error_rate 0.1 breaches <= 0.05"),
    ("latency_p95_ms", {"latency_p95_ms_max": 250}, [sample("a", p95=300)], "latency_p95_ms 300 breaches <= 250"),
    ("latency_p99_ms", {"latency_p99_ms_max": 400}, [sample("a", p99=500)], "latency_p99_ms 500 breaches <= 400"),
    (
        "mismatch_rate",
        {"mismatch_rate_max": 0.01},
        [sample("a", mismatches=5, checked=100)],
        "mismatch_rate 0.05 breaches <= 0.01",
    ),
    (
        "activation_success_rate",
        {"activation_success_min": 0.9},
        [sample("a"), activation("a", ok=False, error="boom"), activation("b")],
        "activation_success_rate 0.5 breaches >= 0.9",
    ),
    (
        "new_error_classes",
        {},
        [sample("a", errors=1, classes={"KeyError": 1})],
        "new_error_classes 1 breaches none_new 0 (new: KeyError)",
    ),
]


@pytest.mark.parametrize(
    ("metric", "thresholds", "samples", "reason"), THRESHOLD_BREACHES, ids=[t[0] for t in THRESHOLD_BREACHES]
)
def test_judge_fails_naming_the_breached_metric(
    metric: str, thresholds: dict, samples: list[HealthSample], reason: str
) -> None:
    v = judge(samples, [], monitoring(**thresholds))
    assert v.outcome == "monitoring_failed"
    assert reason in v.reason, v.reason
    failed = [c.metric for c in v.comparisons if not c.ok]
    # first the metric itself; then, since issue 13/14, its echoes: the runtime judged on its own
    # (`runtimes_breaching`) and, for a refusal, `activation_refusals` (a refusal always fails)
    assert failed[0] == metric and set(failed[1:]) <= {"runtimes_breaching", "activation_refusals"}, failed


@pytest.mark.parametrize(
    ("thresholds", "samples"),
    [
        ({"error_rate_max": 0.05}, [sample("a", requests=100, errors=5)]),
        ({"latency_p95_ms_max": 250}, [sample("a", p95=250)]),
        ({"latency_p99_ms_max": 400}, [sample("a", p99=400)]),
        ({"mismatch_rate_max": 0.01}, [sample("a", mismatches=1, checked=100)]),
        # a refusal now fails whatever the minimum (issue 13): at the limit means every activation succeeded
        ({"activation_success_min": 1.0}, [sample("a"), activation("a"), activation("b")]),
        ({"new_error_classes": "ignore"}, [sample("a", errors=1, classes={"KeyError": 1})]),
    ],
    ids=[
        "error-rate-at-limit",
        "p95-at-limit",
        "p99-at-limit",
        "mismatch-at-limit",
        "activation-at-min",
        "new-classes-ignored",
    ],
)
def test_judge_passes_at_the_limit(thresholds: dict, samples: list[HealthSample]) -> None:
    v = judge(samples, [], monitoring(**thresholds))
    assert v.outcome == "monitoring_passed", v.reason
    assert all(c.ok for c in v.comparisons)


def test_judge_new_error_class_is_relative_to_the_baseline() -> None:
    baseline = [sample("a", errors=1, classes={"Timeout": 1}, d=P0["digest"])]
    known = judge([sample("a", errors=1, classes={"Timeout": 3})], baseline, monitoring())
    assert known.outcome == "monitoring_passed"
    new = judge([sample("a", errors=2, classes={"Timeout": 1, "KeyError": 1})], baseline, monitoring())
    assert new.outcome == "monitoring_failed"
    assert new.figures["new_error_classes"] == ["KeyError"]
    zero = judge([sample("a", classes={"KeyError": 0})], [], monitoring())  # a class with count 0 is not an error
    assert zero.outcome == "monitoring_passed"


def test_judge_fewer_than_min_samples_is_inconclusive() -> None:
    v = judge([sample("a"), sample("b")], [], monitoring(min_samples=3))
    assert v.outcome == "monitoring_inconclusive"
    assert v.reason == "2 sample(s), fewer than min_samples 3"
    nothing = judge([], [], monitoring(min_samples=1))
    assert nothing.outcome == "monitoring_inconclusive"
    activations_only = judge([activation("a"), activation("b")], [], monitoring(min_samples=1))
    assert activations_only.outcome == "monitoring_inconclusive"  # activations are not samples


def test_judge_breach_beats_too_few_samples() -> None:
    v = judge([sample("a", errors=50)], [], monitoring(min_samples=10, error_rate_max=0.05))
    assert v.outcome == "monitoring_failed"


def test_judge_failed_activation_fails_without_a_configured_minimum() -> None:
    v = judge(
        [sample("a"), sample("b"), activation("a"), activation("b", ok=False, error="digest mismatch")],
        [],
        monitoring(),
    )
    assert v.outcome == "monitoring_failed"
    assert "activation_refusals 1 breaches <= 0 (refused by: b)" in v.reason  # its own comparison since issue 13
    assert v.trigger == "activation_failure"
    assert v.figures["activation_errors"] == ["digest mismatch"]


def test_judge_passed_reason_and_counts() -> None:
    v = judge([sample("a"), sample("a"), sample("b"), activation("c")], [], monitoring(min_samples=3))
    assert v.outcome == "monitoring_passed"
    assert (v.samples, v.runtimes) == (3, 3)
    assert v.reason == "3 sample(s) from 3 runtime(s) within every threshold"


def test_figures() -> None:
    f = figures_of(
        [
            sample("a", requests=100, errors=2, p95=100, p99=300, mismatches=1, checked=50),
            sample("b", requests=300, errors=6, p95=200, p99=500, mismatches=1, checked=50),
            activation("a", took_ms=30),
            activation("b", took_ms=10),
            activation("c", ok=False, error="boom", took_ms=90),
        ],
        [],
    )
    assert (f["samples"], f["runtimes"], f["requests"], f["errors"]) == (2, 3, 400, 8)
    assert f["error_rate"] == pytest.approx(0.02)
    assert f["latency_p95_ms"] == pytest.approx(175.0)  # request-weighted mean
    assert f["latency_p99_ms"] == pytest.approx(450.0)
    assert (f["latency_p95_ms_worst"], f["latency_p99_ms_worst"]) == (200, 500)
    assert f["mismatch_rate"] == pytest.approx(0.02)
    assert f["activations"] == 3 and f["activation_success_rate"] == pytest.approx(2 / 3)
    assert (f["time_to_activate_ms_p50"], f["time_to_activate_ms_max"]) == (30, 90)
    assert f["activation_errors"] == ["boom"]


def test_figures_without_traffic() -> None:
    f = figures_of([sample("a", requests=0, p95=10), sample("b", requests=0, p95=30)], [])
    assert f["error_rate"] is None
    assert (f["samples"], f["idle_samples"]) == (0, 2)  # a runtime that served nothing is no evidence
    assert f["latency_p95_ms"] is None
    assert f["activation_success_rate"] is None and f["mismatch_rate"] is None


def test_compare_lists_every_configured_threshold() -> None:
    comps = compare(
        figures_of([sample()], []),
        monitoring(error_rate_max=0.1, latency_p95_ms_max=1, latency_p99_ms_max=1000, mismatch_rate_max=0.5),
    )
    assert [(c.metric, c.op) for c in comps] == [
        ("error_rate", "<="),
        ("latency_p95_ms", "<="),
        ("latency_p99_ms", "<="),
        ("mismatch_rate", "<="),
        ("activation_refusals", "<="),
        ("new_error_classes", "none_new"),
    ]
    # sample() carries no correctness: no data for mismatch_rate is not ok (inconclusive, issue 13)
    assert [c.ok for c in comps] == [True, False, True, False, True, True]
    assert comps[3].value is None
    # a refusal fails whatever is configured (issue 13): activation_success_rate only when a minimum is set
    assert [c.metric for c in compare({}, monitoring(new_error_classes="ignore"))] == ["activation_refusals"]


HARD_BREACHES = [
    (
        "activation-failed",
        activation("rt-9", ok=False, error="bad digest"),
        {},
        "runtime rt-9 failed to activate: bad digest",
    ),
    ("activation-failed-no-reason", activation("rt-9", ok=False), {}, "failed to activate: no reason given"),
    (
        "error-spike",
        sample("rt-9", requests=HARD_BREACH_MIN_REQUESTS, errors=3),
        {"error_rate_max": 0.05},
        "error rate 0.150 over twice the threshold 0.05",
    ),
    ("activation-ok", activation("rt-9"), {"error_rate_max": 0.05}, None),
    ("exactly-twice", sample(requests=20, errors=2), {"error_rate_max": 0.05}, None),
    ("too-few-requests", sample(requests=HARD_BREACH_MIN_REQUESTS - 1, errors=19), {"error_rate_max": 0.05}, None),
    ("no-error-threshold", sample(requests=100, errors=100), {}, None),
    ("high-threshold-caps-at-100pct", sample(requests=100, errors=100), {"error_rate_max": 0.6}, None),
    (
        "zero-threshold",
        sample(requests=20, errors=1),
        {"error_rate_max": 0.0},
        "error rate 0.050 over twice the threshold 0.0",
    ),
]


@pytest.mark.parametrize(
    ("s", "thresholds", "expected"), [h[1:] for h in HARD_BREACHES], ids=[h[0] for h in HARD_BREACHES]
)
def test_hard_breach(s: HealthSample, thresholds: dict, expected: str | None) -> None:
    got = hard_breach(s, monitoring(**thresholds))
    if expected is None:
        assert got is None
    else:
        assert got is not None and expected in got, got


# ==== promoter ==================================================================================


def promote(log: Log, rid: str = "r1", now: datetime = LATER):
    world, release = state(log, rid)
    return promoter.decide(world, release, ctx("promoter", now))


def passed_log(stage: int = 0, channel: dict[str, Any] | None = None) -> Log:
    log = Log()
    log.channel(channel)
    log.two_stage_success("r0", P0)
    log.through_verified("r1")
    log.stage("r1", 0, ["internal"])
    if stage == 1:
        log.expanded("r1", 0, 1, ["rest"])
        log.stage("r1", 1, ["rest"])
    return log


def test_promoter_expands_to_the_next_stage() -> None:
    event = single_event(promote(passed_log(0)))
    assert event.type == "release.expanded"
    assert (event.data.from_stage, event.data.to_stage, event.data.cohorts) == (0, 1, ["rest"])


def test_promoter_closes_with_success_after_the_last_stage() -> None:
    event = single_event(promote(passed_log(1)))
    assert event.type == "release.closed"
    assert event.data.outcome == "success"
    assert event.data.summary == "all 2 stage(s) passed monitoring"


def test_promoter_promotes_to_the_next_channel_with_a_linked_release() -> None:
    log = passed_log(1, {**CHANNEL_DOC, "promote_to": "stable"})
    out = promote(log)
    (promotion,) = out  # one atomic batch: the source's `promoted`, then the linked request
    assert isinstance(promotion, Promotion)
    new = promotion.request
    assert new.type == "release.requested"
    assert new.release_id == "r1-stable" == promoter.linked_release_id("r1", "stable")
    req = new.data
    assert (req.target.env, req.target.channel) == (ENV, "stable")
    assert req.promoted_from == "r1"
    assert req.pack.digest == P1["digest"] and req.pack.size is None
    assert (req.owner, req.escalation) == ("kb-team", "pager:kb")
    assert new.causation_id == state(log)[1].last_event_id
    promoted = promotion.promoted
    assert promoted.type == "release.promoted"
    assert (promoted.data.to_channel, promoted.data.promoted_to) == ("stable", "r1-stable")


def test_promoter_closes_a_promoted_release() -> None:
    log = passed_log(1, {**CHANNEL_DOC, "promote_to": "stable"})
    log.promoted("r1")
    event = single_event(promote(log))
    assert (event.type, event.data.outcome, event.data.summary) == ("release.closed", "success", "promoted to stable")


def _failed(log: Log) -> Log:
    log.through_verified("r1")
    log.stage("r1", 0, ["internal"], "failed")
    return log


CLOSING = [
    (
        "rejected",
        lambda log: (
            log.requested("r1"),
            log.add(
                "release.rejected", {"reasons": [{"code": "target_exists", "message": "unconfigured"}]}, release_id="r1"
            ),
        ),
        "rejected",
        "rejected: target_exists: unconfigured",
    ),
    (
        "verification-failed",
        lambda log: (log.requested("r1"), log.prepared("r1"), log.distributed("r1"), log.verification_failed("r1")),
        "failed",
        "never activated: verification_failed: signature/bad_signature",
    ),
    (
        "activation-failed-before-exposure",
        lambda log: (log.through_verified("r1"), log.activation_failed("r1", 0)),
        "failed",
        "never activated: activation_failed: superseded: lost",
    ),
    (
        "aborted-before-activation",
        lambda log: (log.through_verified("r1"), log.note("r1", "aborted", "wrong pack")),
        "aborted",
        "aborted: wrong pack",
    ),
    (
        "rolled-back",
        lambda log: (
            _failed(log),
            log.rollback_started("r1", {"internal": P0}),
            log.rolled_back("r1", {"internal": P0}),
        ),
        "rolled_back",
        "cohorts internal back on their targets",
    ),
    (
        "rolled-back-after-abort",
        lambda log: (
            log.through_verified("r1"),
            log.activate("r1", 0, ["internal"]),
            log.note("r1", "aborted", "stop"),
            log.rollback_started("r1", {"internal": P0}, "abort"),
            log.rolled_back("r1", {"internal": P0}),
        ),
        "aborted",
        "aborted: stop; cohorts internal back",
    ),
]


@pytest.mark.parametrize(("story", "outcome", "needle"), [c[1:] for c in CLOSING], ids=[c[0] for c in CLOSING])
def test_promoter_closes(story, outcome: str, needle: str) -> None:
    log = history(Log())
    story(log)
    event = single_event(promote(log))
    assert event.type == "release.closed"
    assert event.data.outcome == outcome
    assert needle in event.data.summary, event.data.summary


ROLLBACKS = [
    ("monitoring-failed", lambda log: log.stage("r1", 0, ["internal"], "failed"), "monitoring_failure", "failed"),
    (
        "activation-failed-after-exposure",
        lambda log: (
            log.stage("r1", 0, ["internal"]),
            log.expanded("r1", 0, 1, ["rest"]),
            log.activation_failed("r1", 1),
        ),
        "activation_failure",
        "activation_failed: superseded: lost",
    ),
    (
        "aborted-after-exposure",
        lambda log: (log.activate("r1", 0, ["internal"]), log.note("r1", "aborted", "bad data")),
        "abort",
        "aborted: bad data",
    ),
]


@pytest.mark.parametrize(("story", "trigger", "reason"), [r[1:] for r in ROLLBACKS], ids=[r[0] for r in ROLLBACKS])
def test_promoter_starts_a_rollback(story, trigger: str, reason: str) -> None:
    log = history(Log())
    log.through_verified("r1")
    story(log)
    event = single_event(promote(log))
    assert event.type == "release.rollback_started"
    assert event.data.trigger == trigger
    assert event.data.reason == reason
    assert {c: t.digest for c, t in event.data.targets.items()} == {"internal": P0["digest"]}


@pytest.mark.parametrize("story", ["inconclusive", "paused-after-pass", "monitoring", "rolling-back", "closed"])
def test_promoter_holds(story: str) -> None:
    log = history(Log())
    log.through_verified("r1")
    if story == "inconclusive":
        log.stage("r1", 0, ["internal"], "inconclusive")
    elif story == "paused-after-pass":
        log.stage("r1", 0, ["internal"])
        log.note("r1", "paused")
    elif story == "monitoring":
        log.activate("r1", 0, ["internal"])
        log.started("r1", 0, ["internal"])
    elif story == "rolling-back":
        log.stage("r1", 0, ["internal"], "failed")
        log.rollback_started("r1", {"internal": P0})
    else:
        log.closed("r1", "aborted")
    assert promote(log) == []


def _exposed(log: Log, prepared_targets: dict[str, Any] | None = None) -> Log:
    log.through_verified("r1", targets=prepared_targets)
    log.stage("r1", 0, ["internal"], "failed")
    return log


def test_rollback_targets_prefer_the_pin_over_lkg() -> None:
    log = _exposed(history(Log()))
    log.pin("internal", P2, LATER + timedelta(hours=1))
    world, release = state(log)
    assert world.scope(ENV, CH, "internal").lkg.digest == P0["digest"]
    assert rollback_targets(world, release, LATER)["internal"].digest == P2["digest"]


def test_rollback_targets_use_lkg_when_the_pin_has_expired() -> None:
    log = _exposed(history(Log()))
    log.pin("internal", P2, LATER)
    world, release = state(log)
    assert rollback_targets(world, release, LATER)["internal"].digest == P0["digest"]


def test_rollback_targets_fall_back_to_the_plan() -> None:
    log = Log()
    log.channel()
    log.point("internal", P0)  # active but never known good
    _exposed(log, {"internal": P2, "rest": None})
    world, release = state(log)
    assert world.scope(ENV, CH, "internal").lkg is None
    assert rollback_targets(world, release, LATER) == {"internal": release.prepared.rollback_targets["internal"]}


def test_rollback_targets_never_return_the_failing_pack() -> None:
    log = Log()
    log.channel()
    log.two_stage_success("r-old", P1)  # P1 became LKG once ...
    _exposed(log, {"internal": P0, "rest": P0})  # ... and is now being released again and fails
    world, release = state(log)
    assert world.scope(ENV, CH, "internal").lkg.digest == P1["digest"]
    assert rollback_targets(world, release, LATER)["internal"].digest == P0["digest"]


def test_rollback_targets_cover_only_exposed_cohorts() -> None:
    world, release = state(_exposed(history(Log())))
    assert set(rollback_targets(world, release, LATER)) == {"internal"}


@pytest.mark.parametrize(
    ("rid", "channel"),
    [("r1", "stable"), ("a" * 64, "stable"), ("a" * 57, "stable"), ("rel_812", "x" * 64)],
    ids=["short", "max-id", "just-over", "long-channel"],
)
def test_linked_release_id_is_a_token(rid: str, channel: str) -> None:
    linked = promoter.linked_release_id(rid, channel)
    assert is_token(linked)
    assert linked == promoter.linked_release_id(rid, channel)
    assert linked != rid
    if is_token(f"{rid}-{channel}"):
        assert linked == f"{rid}-{channel}"
    else:
        assert linked.startswith(rid[:40] + "-") and len(linked) == len(rid[:40]) + 17


def test_linked_release_ids_differ_per_channel_when_hashed() -> None:
    rid = "r" * 64
    assert promoter.linked_release_id(rid, "stable") != promoter.linked_release_id(rid, "stable2")


# ==== determinism ===============================================================================


def _decisions() -> list[tuple[str, Any]]:
    rolled = rolling_back_log()
    mon = monitoring_log()
    return [
        ("preparer-prepared", lambda: prepare(requested_log())),
        ("preparer-rejected", lambda: prepare(requested_log(with_history=False))),
        (
            "distributor",
            lambda: distributor.decide(prepared_release(), ctx("distributor"), {PACK_OBJ: 1, MANIFEST_OBJ: 1}),
        ),
        ("activator-rollout", lambda: activator.decide_rollout(*state(verified_log()), ctx("activator"))),
        (
            "activator-rollback",
            lambda: activator.decide_rollback(*state(rolled), ctx("activator"), {P0["digest"]: None}),
        ),
        ("monitor-start", lambda: monitor.decide_start(state(activated_log())[1], ctx("monitor"))),
        ("monitor-timer", lambda: monitor.decide_start(state(mon)[1], ctx("monitor"))),
        (
            "monitor-verdict",
            lambda: monitor.decide_verdict(state(mon)[1], 0, [sample("a"), sample("b")], [], ctx("monitor")),
        ),
        ("promoter-expand", lambda: promote(passed_log(0))),
        ("promoter-promote", lambda: promote(passed_log(1, {**CHANNEL_DOC, "promote_to": "stable"}))),
        ("promoter-rollback", lambda: promote(_failed(history(Log())))),
    ]


@pytest.mark.parametrize("decide", [d for _, d in _decisions()], ids=[n for n, _ in _decisions()])
def test_deciding_twice_gives_identical_event_ids(decide) -> None:
    first, second = decide(), decide()
    assert ids_of(first) and ids_of(first) == ids_of(second)
    assert [encode_event(e) for e in events_of(first)] == [encode_event(e) for e in events_of(second)]  # byte for byte


def test_ids_change_with_the_state_and_the_consumer() -> None:
    log = requested_log()
    before = ids_of(prepare(log))
    log.note("r1", "annotated", "note")
    after = ids_of(prepare(log))
    assert before != after  # derived from the event that put the release where it is
    world, release = state(verified_log())
    assert ids_of(activator.decide_rollout(world, release, ctx("activator"))) != ids_of(
        activator.decide_rollout(world, release, ctx("activator-2"))
    )


def test_ids_do_not_depend_on_the_clock() -> None:
    world, release = state(verified_log())
    a = activator.decide_rollout(world, release, ctx("activator", LATER))
    b = activator.decide_rollout(world, release, ctx("activator", LATER + timedelta(minutes=5)))
    assert ids_of(a) == ids_of(b)


def test_scope_event_ids_are_distinct_per_cohort() -> None:
    world, release = state(verified_log([["internal", "rest"]]))
    atomic = only(activator.decide_rollout(world, release, ctx("activator")), Atomic)
    ids = ids_of([atomic])
    assert len(ids) == len(set(ids)) == 3


def test_the_first_switch_checks_the_pack_again_when_its_verification_is_old() -> None:
    """A release paused before its first switch, or a slow activator: the manifest may have expired since.
    Found by a fail-closed audit (session 26): the pointer moved on a verification a month old."""
    log = history(Log())
    log.through_verified("r1", P1)
    world, release = state(log)
    verified_at = release.verified.reference_time
    fresh = timedelta(seconds=activator.VERIFICATION_FRESH_S)
    assert not activator.needs_recheck(world, release, verified_at + fresh)
    assert activator.needs_recheck(world, release, verified_at + fresh + timedelta(seconds=1))


def test_the_first_switch_checks_the_pack_again_when_the_channels_newest_entry_does_not_decode() -> None:
    """An unreadable configuration after the verification: the recheck judges the pack against no
    configuration (the compatibility gate fails closed), never the older one it replaced."""
    from events.subjects import Subjects
    from projections.position import Position
    from projections.world import apply_undecodable
    from services.verification.context import configured_channel

    log = history(Log())
    log.through_verified("r1", P1)
    world, release = state(log)
    assert configured_channel(world, ENV, CH)[0] is not None
    entry = Position(seq=world.applied_seq + 1, subject=f"kx.channel.{ENV}.{CH}.configured")
    world = apply_undecodable(world, entry, Subjects())
    release = world.release("r1")
    config, unreadable = configured_channel(world, ENV, CH)
    assert world.channel_problem(ENV, CH) is not None and config is None
    assert unreadable == world.channel_problem(ENV, CH).describe()
    assert activator.needs_recheck(world, release, release.verified.reference_time)
    exposing = activator.exposing(world, release, LATER)
    assert exposing is not None and exposing.config is None and exposing.problem == unreadable


def test_the_first_switch_checks_the_pack_again_when_the_channel_was_configured_after_its_verification() -> None:
    """The verification a moment ago stands for the first stage, unless the channel's configuration came
    after it: then the switch judges the pack against the channel as it is (activator.exposing)."""
    log = history(Log())
    log.through_verified("r1", P1)
    assert not activator.needs_recheck(*state(log), NOW)
    compatibility = {"schema": "kx-pack/1", "profiles": ["standard"], "runtime_version": "3.0.0"}
    log.channel({**CHANNEL_DOC, "compatibility": compatibility})
    world, release = state(log)
    assert activator.needs_recheck(world, release, NOW)
    exposing = activator.exposing(world, release, LATER)
    assert exposing is not None and exposing.cohorts == ("internal",)
    assert exposing.config is not None and exposing.config.compatibility.runtime_version == "3.0.0"


def test_preflight_names_the_channels_other_releases_in_flight() -> None:
    """Two releases of one channel may run at once (every safety rule holds then: the lifecycle model drives
    it), but the checklist says so: each other release in flight, its pack and phase, the cohorts both plans
    share; a warning, never a refusal."""
    alone = next(i for i in single_event(prepare(requested_log())).data.checklist if i.item == "concurrent_releases")
    assert (alone.ok, alone.detail) == (True, "no other release of prod/canary in flight")

    log = history(Log())
    log.requested("r9", P2)
    log.prepared("r9", P2, stages=[["rest"]])
    log.requested("r8", P2)  # requested, not prepared yet: its plan is not known
    log.channel(channel="stable")
    log.requested("r7", P2, target={"env": ENV, "channel": "stable"})  # another channel: not named
    log.requested("r1", P1, acknowledge_no_health=True)
    event = single_event(prepare(log))
    assert event.type == "release.prepared"  # a warning, not a refusal
    item = next(i for i in event.data.checklist if i.item == "concurrent_releases")
    assert item.ok
    assert item.detail == (
        "warning: 2 other release(s) of prod/canary in flight: r8 (2.0.0, requested), r9 (2.0.0, prepared, sharing "
        "rest); a cohort runs the pack of whichever release switches it last, and a rollback leaves a cohort "
        "another release has switched since"
    )


def _successes(*packs: dict[str, Any]) -> Log:
    """r0, r1, … each closed `success` in both cohorts (each pre-flight recorded P0 as its target)."""
    log = Log()
    log.channel()
    for n, p in enumerate(packs):
        log.two_stage_success(f"r{n}", p)
    return log


def test_a_pulled_closed_release_falls_back_to_its_recorded_target_while_the_scope_names_it() -> None:
    """r1 (P1) closed success with P0, the LKG before it, recorded: an operator pulling r1 goes back there."""
    world, r1 = state(_successes(P0, P1), "r1")
    assert world.scope(ENV, CH, "internal").lkg_prior.pack.digest == P0["digest"]
    targets = rollback_targets(world, r1, LATER)
    assert {c: t.digest for c, t in targets.items()} == {"internal": P0["digest"], "rest": P0["digest"]}


def test_a_pulled_closed_release_keeps_a_recorded_target_known_pulled_so_the_activator_says_why() -> None:
    log = _successes(P0, P1)
    log.rollback_started("r0", {"internal": None, "rest": None}, trigger="tenant_impact")  # P0 pulled
    world, r1 = state(log, "r1")
    target = rollback_targets(world, r1, LATER)["internal"]
    assert target.digest == P0["digest"]
    assert pulled_there(world, r1, "internal", target) == (
        "internal: target 0.9.0 was rolled back there since (a release of it): known good no longer"
    )


def test_a_pulled_closed_release_holds_where_the_scope_names_its_recorded_target_no_longer() -> None:
    """r2 pulled: the LKG goes back to r1's P1 and nothing before it is kept. Pulling r1 then would fall back to
    the P0 recorded at its pre-flight, which the scope names no longer: a pull of it since might not be
    remembered (session 28's model counter-example), so the rollback holds rather than land there."""
    log = _successes(P0, P1, P2)
    log.rollback_started("r2", {"internal": None, "rest": None}, trigger="tenant_impact")
    world, r1 = state(log, "r1")
    scope = world.scope(ENV, CH, "internal")
    assert scope.lkg.digest == P1["digest"] and scope.lkg_prior is None
    assert rollback_targets(world, r1, LATER) == {"internal": None, "rest": None}
