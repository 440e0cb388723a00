"""The guard's pure parts: which gate an active pack fails now, and what to do about it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from events.channel import ChannelConfig
from events.model import PackRef, RollbackStarted, ScopeFlagged
from events.signing import SigningKey
from services.consumers.guard import Violation, check_active, decide, decide_release, flag_event
from services.consumers.outputs import Chain, Ctx
from tests.harness import CHANNEL, make_pack, trust_root_for
from tests.unit.test_projections import CH, ENV, NOW, P0, Log

KEY, OTHER = SigningKey.generate(), SigningKey.generate()
PACK = make_pack("1.0.0", KEY, expires=NOW + timedelta(days=30))
ACTIVE = PackRef(name=PACK.name, version=PACK.version, digest=PACK.digest)
P1 = {"name": PACK.name, "version": PACK.version, "digest": PACK.digest}
CTX = Ctx(now=NOW, service="guard")
KEY_INTERNAL = (ENV, CH, "internal")


def channel(**sections: dict[str, Any]) -> ChannelConfig:
    doc = {**CHANNEL, **{name: {**CHANNEL.get(name, {}), **value} for name, value in sections.items()}}
    return ChannelConfig.model_validate(doc)


def check(**overrides: Any) -> Violation | None:
    args: dict[str, Any] = dict(
        manifest=PACK.manifest,
        key=KEY_INTERNAL,
        active=ACTIVE,
        config=channel(),
        trust_root=trust_root_for(KEY),
        now=NOW,
    )
    args.update(overrides)
    return check_active(**args)


# ---- the check: the verifier's gates, under what is in force now -------------------------------
def test_an_active_pack_that_still_passes_has_no_violation() -> None:
    assert check() is None


@pytest.mark.parametrize(
    "overrides, code",
    [
        # a rotation that drops every key that signed the active manifest
        (dict(trust_root=trust_root_for(OTHER)), "signature/threshold_not_met"),
        # the manifest expires while the pack runs
        (dict(now=NOW + timedelta(days=31)), "expiry/expired"),
        # the channel's policy changes under the active pack
        (dict(config=channel(policy={"allowed_builders": ["other-pipeline"]})), "policy/builder_forbidden"),
        (dict(config=channel(policy={"allowed_sources": ["https://git.example/other"]})), "policy/source_forbidden"),
        (dict(config=channel(compatibility={"runtime_version": "3.1.0"})), "compatibility/runtime_mismatch"),
        (dict(config=channel(compatibility={"profiles": ["lite"]})), "compatibility/profile_mismatch"),
        # the policy starts asking evidence the pack lacks (its revision is `rev-1.0.0`, no commit id)
        (dict(config=channel(policy={"require_commit_revision": True})), "evidence/revision_not_commit"),
        # what can no longer be checked is not a pass
        (dict(manifest=None), "manifest/manifest_missing"),
        (dict(active=ACTIVE.model_copy(update={"digest": "sha256:" + "0" * 64})), "identity/digest_mismatch"),
    ],
)
def test_each_violation_names_its_gate_and_code(overrides: dict, code: str) -> None:
    violation = check(**overrides)
    assert (
        violation is not None and violation.code == code and violation.digest == overrides.get("active", ACTIVE).digest
    )
    assert violation.message


def test_forbid_downgrade_is_not_a_post_activation_violation() -> None:
    # The pack runs because a rollback or pin put it there; "newer than what runs" orders rollouts only.
    assert check(config=channel(policy={"forbid_downgrade": True})) is None


# ---- deciding: roll back a rollout in flight, flag a settled scope ------------------------------
def in_flight(phase_after: str = "monitoring") -> Log:
    log = Log()
    log.channel()
    log.point("internal", P0)
    log.point("rest", P0)
    log.through_verified("r1", P1)
    log.activate("r1", 0, ["internal"], P1)
    log.started("r1", 0, ["internal"], P1)
    if phase_after == "failed":
        log.verdict("r1", "failed", 0)
    return log


VIOLATION = Violation(PACK.digest, "signature/threshold_not_met", "0 of 1 required distinct trusted keys signed")


def test_a_rollout_in_flight_is_rolled_back_with_trigger_policy_violation() -> None:
    world = in_flight().world()
    plan = decide(world, {KEY_INTERNAL: VIOLATION}, CTX)
    assert plan.rollbacks == ("r1",) and plan.flags == ()
    [out] = decide_release(world, world.release("r1"), {KEY_INTERNAL: VIOLATION}, CTX)
    assert isinstance(out, Chain)
    [event] = out.events
    assert event.type == "release.rollback_started" and event.actor.id == "guard"
    data = event.data
    assert isinstance(data, RollbackStarted) and data.trigger == "policy_violation"
    assert "signature/threshold_not_met" in data.reason and "prod/canary/internal" in data.reason
    assert data.targets == {"internal": PackRef.model_validate(P0)}
    # a second instance, or a redelivery, decides the same event
    assert (
        decide_release(world, world.release("r1"), {KEY_INTERNAL: VIOLATION}, CTX)[0].events[0].event_id
        == event.event_id
    )


def test_a_release_already_failing_is_left_to_the_promoter() -> None:
    world = in_flight("failed").world()
    assert decide(world, {KEY_INTERNAL: VIOLATION}, CTX).rollbacks == ()
    assert decide(world, {KEY_INTERNAL: VIOLATION}, CTX).flags == ()
    assert decide_release(world, world.release("r1"), {KEY_INTERNAL: VIOLATION}, CTX) == []


def settled() -> Log:
    log = Log()
    log.channel()
    log.point("internal", P0)
    log.point("rest", P0)
    log.through_verified("r1", P1, stages=[["internal"]])
    log.stage("r1", 0, ["internal"], p=P1)
    log.closed("r1", "success")
    return log


def test_a_settled_scope_is_flagged_once() -> None:
    log = settled()
    world = log.world()
    plan = decide(world, {KEY_INTERNAL: VIOLATION}, CTX)
    assert plan.rollbacks == ()
    [(key, event)] = plan.flags
    assert key == KEY_INTERNAL and event.type == "scope.flagged" and event.release_id == "r1"
    data = event.data
    assert isinstance(data, ScopeFlagged) and data.code == VIOLATION.code and data.pack.digest == PACK.digest
    assert data.detected_at == NOW and "prod/canary/internal" in data.message
    # the same flag decided again later (another instance) has the same id
    assert (
        flag_event(world.scope(*KEY_INTERNAL), VIOLATION, Ctx(now=NOW + timedelta(seconds=5), service="guard")).event_id
        == event.event_id
    )

    log.add("scope.flagged", data.model_dump(mode="json"), cohort="internal", release_id="r1")
    flagged = log.world()
    state = flagged.scope(*KEY_INTERNAL)
    assert state.flag == data and state.last_seq == len(log.events)  # pins and flags CAS on this
    assert decide(flagged, {KEY_INTERNAL: VIOLATION}, CTX).flags == ()  # recorded: nothing new
    other = Violation(PACK.digest, "expiry/expired", "manifest expired")
    assert [e.data.code for _, e in decide(flagged, {KEY_INTERNAL: other}, CTX).flags] == ["expiry/expired"]


def test_a_flag_ends_when_the_pointer_moves() -> None:
    log = settled()
    log.add(
        "scope.flagged",
        {"pack": P1, "code": VIOLATION.code, "message": "m", "detected_at": NOW.isoformat()},
        cohort="internal",
    )
    assert log.world().scope(*KEY_INTERNAL).flag is not None
    log.point("internal", P0, kind="pin")
    world = log.world()
    assert world.scope(*KEY_INTERNAL).flag is None
    # a violation found on the pack that ran before is not about what runs now
    assert decide(world, {KEY_INTERNAL: VIOLATION}, CTX) == decide(world, {}, CTX)


def test_a_switch_after_a_policy_change_is_rolled_back_as_soon_as_it_lands() -> None:
    # verified under the old configuration, switched after the new one: caught at the switch
    log = in_flight()
    log.events.pop()  # no window yet: the release is `activated`
    world = log.world()
    assert world.release("r1").phase == "activated"
    assert decide(world, {KEY_INTERNAL: VIOLATION}, CTX).rollbacks == ("r1",)


def test_a_cohort_the_release_has_not_reached_yet_is_flagged_not_rolled_back() -> None:
    # `rest` still runs the pack from before the release: rolling the release back would not change it
    world = in_flight().world()
    before = Violation(P0["digest"], "expiry/expired", "manifest expired")
    plan = decide(world, {(ENV, CH, "rest"): before}, CTX)
    assert plan.rollbacks == () and [(k, e.data.code) for k, e in plan.flags] == [((ENV, CH, "rest"), "expiry/expired")]
    assert plan.flags[0][1].release_id is None  # put there by no release: nothing to record a webhook under


def test_a_release_held_after_an_escalation_gets_its_scope_flagged() -> None:
    # its rollback target was unusable: another rollback would escalate again; the flag records the violation
    log = in_flight()
    log.rollback_started("r1", {"internal": P0})
    log.add(
        "release.escalated",
        {"code": "rollback_target_unusable", "message": "no target", "escalation": "pager:kb"},
        release_id="r1",
    )
    world = log.world()
    assert world.release("r1").phase == "held"
    plan = decide(world, {KEY_INTERNAL: VIOLATION}, CTX)
    assert plan.rollbacks == () and [k for k, _ in plan.flags] == [KEY_INTERNAL]


def test_a_flag_on_a_pinned_pointer_still_makes_a_complete_webhook_body() -> None:
    import json

    from events.notifications import NotificationSink
    from services.consumers.notifier.webhook import notification_body

    log = settled()
    log.point("internal", P1, kind="pin")  # no release put it there
    [(_, event)] = decide(log.world(), {KEY_INTERNAL: VIOLATION}, CTX).flags
    sink = NotificationSink(name="ops", url="https://hooks.example/kx", on=["flagged"])
    body = json.loads(notification_body("flagged", sink, event, None))
    assert (body["kind"], body["release_id"], body["code"], body["scope"]["cohort"]) == (
        "flagged",
        None,
        VIOLATION.code,
        "internal",
    )
    assert body["pack"]["digest"] == PACK.digest and body["target"] == {"env": ENV, "channel": CH}
    assert body["summary"] == event.data.message
