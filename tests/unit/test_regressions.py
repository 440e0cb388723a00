"""Defects found while writing the unit tier, kept as regression tests once fixed."""

from __future__ import annotations

from datetime import timedelta

import pytest

from events.versions import parse_version
from services.actions.producer import parse_channel_config
from services.consumers import preparer
from services.consumers.outputs import Ctx

from .test_projections import CHANNEL_DOC, NOW, P0, Log

LATER = NOW + timedelta(hours=1)


def test_pep440_epoch_orders_above_every_epoch_zero_version() -> None:
    assert parse_version("0.9") < parse_version("1!0.1")


def test_mixed_pre_release_spellings_order_consistently() -> None:
    # PEP 440 a/b/rc map onto SemVer identifiers, so both spellings share one total order.
    a0, alpha0, alpha_beta, a1 = (parse_version(v) for v in ("1.0.0a0", "1.0.0-alpha.0", "1.0.0-alpha.beta", "1.0.0a1"))
    assert a0 == alpha0
    assert a0 < a1 < alpha_beta
    assert sorted([alpha_beta, a1, a0]) == [a0, a1, alpha_beta]


def test_rollback_strategy_pinned_targets_the_pinned_prior() -> None:
    log = Log()
    log.channel()
    log.two_stage_success("r0", P0)
    for cohort in ("internal", "rest"):  # pinned once (the "pinned prior"), later lifted
        log.pin(cohort, P0, LATER + timedelta(days=1), "baseline for the audit")
        log.unpin(cohort)
    log.requested("r1", rollback={"strategy": "pinned"}, acknowledge_no_health=True)
    world = log.world()
    out = preparer.decide(world, world.release("r1"), Ctx(now=LATER, service="preparer"), None)
    event = out[0].events[0]
    assert event.type == "release.prepared", event.data
    assert {c: t.digest for c, t in event.data.rollback_targets.items()} == {
        "internal": P0["digest"],
        "rest": P0["digest"],
    }


def test_rollback_strategy_pinned_without_any_pin_is_rejected() -> None:
    log = Log()
    log.channel()
    log.two_stage_success("r0", P0)
    log.requested("r1", rollback={"strategy": "pinned"}, acknowledge_no_health=True)
    world = log.world()
    event = preparer.decide(world, world.release("r1"), Ctx(now=LATER, service="preparer"), None)[0].events[0]
    assert event.type == "release.rejected"
    assert "never been pinned" in event.data.reasons[0].message


def test_a_channel_window_over_30_days_is_refused() -> None:
    with pytest.raises(ValueError, match="window_s"):
        parse_channel_config({**CHANNEL_DOC, "monitoring": {"window_s": 31 * 24 * 3600}}, "canary")


def test_an_unreadable_pack_store_fails_distribution_closed_and_says_why() -> None:
    from services.consumers import distributor

    log = Log()
    log.channel()
    log.requested("r1", rollback={"strategy": "none"}, acknowledge_no_health=True)
    world = log.world()
    prepared = preparer.decide(world, world.release("r1"), Ctx(now=LATER, service="preparer"), None)[0].events[0]
    from projections.position import Position
    from projections.world import apply

    world = apply(world, Position(world.applied_seq + 1, "kx.release.r1.prepared"), prepared)
    event = distributor.decide(
        world.release("r1"), Ctx(now=LATER, service="distributor"), {}, "TimeoutError: no answer"
    )[0].events[0]
    assert event.type == "release.verification_failed"
    assert (event.data.gate, event.data.code) == ("distribution", "store_unreadable")
    assert "no answer" in event.data.message


def test_unreadable_runtime_health_rejects_unless_acknowledged() -> None:
    log = Log()
    log.channel()
    log.requested("r1", rollback={"strategy": "none"})
    world = log.world()
    event = preparer.decide(world, world.release("r1"), Ctx(now=LATER, service="preparer"), None, "TimeoutError")[
        0
    ].events[0]
    assert event.type == "release.rejected"
    assert any(r.code == "observability" and "could not be read" in r.message for r in event.data.reasons)


def test_an_unreadable_window_holds_the_release_with_the_reason() -> None:
    from events.model import MonitoringStarted
    from services.consumers import monitor

    log = Log()
    log.channel()
    log.two_stage_success("r0", P0)
    world = log.world()
    release = world.release("r0")
    m = MonitoringStarted(
        stage=0, cohorts=["internal"], digest=P0["digest"], starts_at=NOW, ends_at=LATER, monitoring={"window_s": 60}
    )
    from dataclasses import replace

    watching = replace(release, phase="monitoring", monitoring=m)
    event = monitor.decide_unjudgeable(watching, 0, "TimeoutError: KX_HEALTH", Ctx(now=LATER, service="monitor"))[
        0
    ].events[0]
    assert event.type == "release.monitoring_inconclusive"
    assert "could not be read" in event.data.reason and "KX_HEALTH" in event.data.reason
    assert (
        monitor.decide_unjudgeable(watching, 1, "x", Ctx(now=LATER, service="monitor")) == []
    )  # another stage: nothing
