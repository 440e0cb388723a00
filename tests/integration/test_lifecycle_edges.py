"""Issue 13 against a real JetStream: overrides, abort, rollback strategy, rollback readiness, pin policy.

Each test failed on the service before issue 13 (its docstring says how).
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from events.codec import decode_event, make_event
from events.manifest import pack_object_name
from events.model import MonitoringVerdict, Scope, ScopePinned
from services.actions import operator as ops
from services.actions.pins import pin, unpin
from services.errors import OperatorError
from services.jetstream.log import Entry
from services.settings import ROLES
from tests.harness import CHANNEL, OPERATOR, Behaviour, make_pack, running_service, wait_for
from tests.integration.test_operator_model import act, now, scope_act

STARVED = {"window_s": 1, "min_samples": 1000}  # never enough samples: every window is inconclusive


async def delete_pack(svc, digest: str) -> None:
    store = await svc.app.js.object_store(svc.app.subjects.packs_bucket)
    await store.delete(pack_object_name(digest))


async def test_an_override_closes_promoted_by_override_and_the_next_rollback_skips_it(nats_url, prefix):
    """Before: r1 closed `success`, became LKG, and r2's rollback landed on it."""
    async with running_service(nats_url, prefix) as svc:
        await svc.configure()
        v1, v11, bad = make_pack("1.0.0", svc.key), make_pack("1.1.0", svc.key), make_pack("1.2.0", svc.key)
        await svc.runtime("t-int-1", {bad.digest: Behaviour(error_rate=0.5)})
        await svc.runtime("tenant-42")
        await svc.request("r0", v1, rollback={"strategy": "none"})
        assert (await svc.wait_release("r0")).outcome == "success"
        await svc.request("r1", v11, monitoring=STARVED)
        for stage in (0, 1):  # each window inconclusive; the operator passes it by hand
            await wait_for(
                lambda stage=stage: (
                    (r := svc.world.release("r1")) is not None and r.phase == "held" and r.stage == stage and r
                ),
                20,
                f"stage {stage + 1} held",
            )
            await act(svc, ops.promote(svc.world, "r1", "traffic too low to judge", OPERATOR, now(svc)))
        r1 = await svc.wait_release("r1", timeout=20)
        assert r1.outcome == "promoted_by_override"
        assert r1.overrides == ((0, OPERATOR.id), (1, OPERATOR.id))
        for cohort in ("internal", "rest"):
            scope = svc.world.scope("prod", "canary", cohort)
            assert scope.active_pack.digest == v11.digest and scope.lkg.digest == v1.digest
        await svc.request("r2", bad)
        r2 = await svc.wait_release("r2", timeout=30)
        assert r2.outcome == "rolled_back"
        assert r2.rollback.targets["internal"].digest == v1.digest  # the pack that passed on data, not the override
        assert svc.world.scope("prod", "canary", "internal").active_pack.digest == v1.digest


async def test_abort_is_final_even_when_the_rollback_holds(nats_url, prefix):
    """Before: an aborted, held release could be promoted and closed `success` with its pack as LKG."""
    async with running_service(nats_url, prefix) as svc:
        await svc.configure()
        await svc.runtime("t-int-1")
        v1 = make_pack("1.0.0", svc.key)
        await svc.request("r1", v1, rollback={"strategy": "none"}, monitoring={"window_s": 30, "min_samples": 1})
        await svc.wait_release("r1", "monitoring", timeout=15)
        await act(svc, ops.abort(svc.world, "r1", "wrong pack", OPERATOR, now(svc)))
        # strategy none: no target to go back to, so the rollback escalates and the release holds
        held = await svc.wait_release("r1", "held", timeout=15)
        assert held.aborted and "rollback_target_unusable" in held.failure
        for refused in (
            lambda: ops.promote(svc.world, "r1", "ship it anyway", OPERATOR, now(svc)),
            lambda: ops.extend(svc.world, "r1", 30, "more samples", OPERATOR, now(svc)),
        ):
            with pytest.raises(OperatorError, match="abort is final"):
                refused()
        # a pass appended anyway (an old client, a raw publish) moves nothing on: the promoter rolls back again
        forged = make_event(
            "release.monitoring_passed",
            MonitoringVerdict(stage=0, reason="operator override by mallory: go", override=True),
            actor=OPERATOR,
            release_id="r1",
            causation_id=held.last_event_id,
            occurred_at=now(svc),
        )
        seq = await svc.app.log.append(Entry(forged, held.last_seq, svc.app.subjects.release_filter("r1")))
        again = await wait_for(
            lambda: (r := svc.world.release("r1")) is not None and r.phase == "held" and r.last_seq > seq + 1 and r,
            15,
            "held again",
        )
        assert again.stage == 0 and svc.world.scope("prod", "canary", "rest").active is None
        assert any("monitoring_passed after aborted" in a for a in again.anomalies)
        await act(
            svc,
            ops.close(svc.world, "r1", "aborted", "pointer left on 1.0.0 by decision of the owner", OPERATOR, now(svc)),
        )
        closed = await svc.wait_release("r1")
        assert closed.outcome == "aborted" and closed.anomalies == again.anomalies  # the close itself is legal
        assert svc.world.scope("prod", "canary", "internal").lkg is None  # never known-good


async def test_strategy_pinned_is_honoured_by_the_operator_and_the_automatic_rollback(nats_url, prefix):
    """Before: both went to the last-known-good (1.1.0) instead of the pinned prior (1.0.0)."""
    async with running_service(nats_url, prefix) as svc:
        await svc.configure()
        v1, v11, v12, bad = (make_pack(v, svc.key) for v in ("1.0.0", "1.1.0", "1.2.0", "1.3.0"))
        await svc.runtime("t-int-1")
        await svc.runtime("tenant-42", {bad.digest: Behaviour(error_rate=0.5)})
        await svc.request("r0", v1, rollback={"strategy": "none"})
        await svc.wait_release("r0")
        await svc.request("r1", v11)
        assert (await svc.wait_release("r1")).outcome == "success"
        for cohort in ("internal", "rest"):  # pinned once to 1.0.0 (the pinned prior), then lifted
            scope = Scope(env="prod", channel="canary", cohort=cohort)
            await scope_act(
                svc,
                pin(svc.world, scope, "1.0.0", now(svc) + timedelta(hours=1), "audit baseline", OPERATOR, now(svc)),
                scope,
            )
            await wait_for(
                lambda cohort=cohort: svc.world.scope("prod", "canary", cohort).active.kind == "pin",
                10,
                f"{cohort} switched to its pin",
            )
            await scope_act(svc, unpin(svc.world, scope, "baseline done", OPERATOR, now(svc)), scope)
        assert svc.world.scope("prod", "canary", "internal").lkg.digest == v11.digest
        # the operator's rollback
        await svc.request(
            "r2",
            v12,
            plan=[["internal"]],
            rollback={"strategy": "pinned"},
            monitoring={"window_s": 30, "min_samples": 1},
        )
        await svc.wait_release("r2", "monitoring", timeout=15)
        await act(svc, ops.rollback(svc.world, "r2", "operator", "wrong week", OPERATOR, now(svc)))
        r2 = await svc.wait_release("r2", timeout=15)
        assert r2.outcome == "rolled_back" and r2.rollback.targets["internal"].digest == v1.digest
        assert svc.world.scope("prod", "canary", "internal").active_pack.digest == v1.digest
        # the automatic rollback (rest's LKG is still 1.1.0)
        assert svc.world.scope("prod", "canary", "rest").lkg.digest == v11.digest
        await svc.request("r3", bad, plan=[["rest"]], rollback={"strategy": "pinned"})
        r3 = await svc.wait_release("r3", timeout=30)
        assert r3.outcome == "rolled_back" and r3.rollback.trigger == "monitoring_failure"
        assert r3.rollback.targets["rest"].digest == v1.digest
        assert svc.world.scope("prod", "canary", "rest").active_pack.digest == v1.digest


async def test_a_rollback_target_that_disappears_holds_the_release_before_it_expands(nats_url, prefix):
    """Before: the release expanded and closed `success` with no way back; pre-flight never looked at the store."""
    async with running_service(nats_url, prefix) as svc:
        await svc.configure()
        await svc.runtime("t-int-1")
        await svc.runtime("tenant-42")
        v1, v11, v12 = make_pack("1.0.0", svc.key), make_pack("1.1.0", svc.key), make_pack("1.2.0", svc.key)
        await svc.request("r0", v1, rollback={"strategy": "none"})
        await svc.wait_release("r0")
        await svc.request("r1", v11, monitoring={"window_s": 3, "min_samples": 1})
        await svc.wait_release("r1", "monitoring", timeout=15)
        await delete_pack(svc, v1.digest)  # the LKG both cohorts would roll back to
        held = await svc.wait_release("r1", "held", timeout=20)
        assert (
            "rollback_not_ready" in held.failure
            and "internal" in held.failure
            and "pack object missing" in held.failure
        )
        assert held.stage == 0 and svc.world.scope("prod", "canary", "rest").active_pack.digest == v1.digest
        # and pre-flight refuses a new release whose target is gone
        await svc.request("r2", v12)
        r2 = await svc.wait_release("r2", timeout=15)
        assert r2.outcome == "rejected" and "rollback_target_ready" in r2.failure


async def test_the_pinner_refuses_a_pin_longer_than_max_pin_days(nats_url, prefix):
    """Before: only the CLI checked max_pin_days; a pin appended by any other client held for months."""
    async with running_service(nats_url, prefix) as svc:
        await svc.configure(config={**CHANNEL, "policy": {**CHANNEL["policy"], "max_pin_days": 1}})
        await svc.runtime("t-int-1")
        await svc.runtime("tenant-42")
        v1 = make_pack("1.0.0", svc.key)
        await svc.request("r0", v1, rollback={"strategy": "none"})
        r0 = await svc.wait_release("r0")
        scope = Scope(env="prod", channel="canary", cohort="internal")
        long_pin = make_event(
            "scope.pinned",
            ScopePinned(pack=r0.verified.pack, until=now(svc) + timedelta(days=3), rationale="freeze", by=OPERATOR.id),
            actor=OPERATOR,
            scope=scope,
            occurred_at=now(svc),
        )
        await scope_act(svc, (long_pin, svc.world.scope("prod", "canary", "internal").last_seq), scope)
        await wait_for(lambda: svc.world.scope("prod", "canary", "internal").pin is None, 10, "the pin to be refused")
        msg = await svc.app.js.get_last_msg(
            svc.app.subjects.releases_stream, f"{svc.app.subjects.prefix}.scope.prod.canary.internal.unpinned"
        )
        refusal = decode_event(msg.data, msg.subject, svc.app.subjects).data
        assert refusal.reason == "refused" and "max_pin_days" in refusal.rationale


async def test_a_channel_reconfigured_mid_release_is_checked_before_the_next_stage_switches(nats_url, prefix):
    """The spec audit's case: the channel's compatibility moves (runtime 2.4.0 -> 3.0.0, which the pack's
    `>=2.3,<3` excludes) while stage 1 is watched. Before stage 2 switches, the activator judges the pack
    against the channel as it stands now, as its verification did: the switch fails
    (`pack_no_longer_valid`, naming the gate), and `rest` never runs the pack. Before, only the manifest's
    signature, expiry and identity were checked again. (The guard, which rolls back a pack that breaks the
    channel's rules after it switched, is not running here: it would hold the release at stage 1 first;
    the activator's check must stand on its own, as where the guard runs in another process, or later.)"""
    config = {**CHANNEL, "monitoring": {**CHANNEL["monitoring"], "window_s": 3}}
    roles = tuple(role for role in ROLES if role != "guard")
    async with running_service(nats_url, prefix, roles=roles) as svc:
        await svc.configure(config=config)
        await svc.runtime("t-int-1")
        await svc.runtime("tenant-42")
        before = svc.world.scope("prod", "canary", "rest").active_pack
        pack = make_pack("1.0.0", svc.key)
        await svc.request("r1", pack, rollback={"strategy": "none"})
        await svc.wait_release("r1", "monitoring")
        await svc.configure(
            config={**config, "compatibility": {**CHANNEL["compatibility"], "runtime_version": "3.0.0"}}
        )
        # strategy none: nothing to go back to on `internal`, so the release holds for an operator, saying why
        release = await svc.wait_release("r1", "held")
        assert release.activated == ("internal",), release.activated
        assert release.rollback is not None and release.rollback.trigger == "activation_failure", release.rollback
        why = release.rollback.reason
        assert "pack_no_longer_valid" in why and "compatibility/runtime_mismatch" in why, why
        assert svc.world.scope("prod", "canary", "rest").active_pack == before


async def test_a_rollback_does_not_land_on_a_pack_the_channel_no_longer_admits(nats_url, prefix):
    """The last-known-good was built for runtime `<3`; while a release built for `>=2.3,<4` is watched, the
    channel moves to runtime 3.0.0, and then the release is rolled back (an operator's, after tenant
    reports). The rollback's target is judged against the channel as it stands (as a verification would,
    no downgrade rule): it no longer fits, so the rollback holds and escalates, saying which gate, instead
    of switching 3.0 runtimes to a pack the compatibility gate refuses (the runtimes' own check does not
    judge compatibility). The guard is not running: it would flag the settled `rest` (still on the old
    pack) and is tested on its own."""
    config = {**CHANNEL, "monitoring": {**CHANNEL["monitoring"], "window_s": 30}}
    roles = tuple(role for role in ROLES if role != "guard")
    async with running_service(nats_url, prefix, roles=roles) as svc:
        await svc.configure(config={**config, "monitoring": CHANNEL["monitoring"]})
        lkg = make_pack("1.0.0", svc.key)  # runtime >=2.3,<3
        new = make_pack("1.1.0", svc.key, runtime=">=2.3,<4")
        await svc.runtime("t-int-1")
        await svc.runtime("tenant-42")
        await svc.request("r0", lkg, rollback={"strategy": "none"})
        assert (await svc.wait_release("r0")).outcome == "success"
        await svc.configure(config=config)  # a long window: r1 is watched while the channel moves
        await svc.request("r1", new)
        await svc.wait_release("r1", "monitoring")
        moved = {**config, "compatibility": {**CHANNEL["compatibility"], "runtime_version": "3.0.0"}}
        await svc.configure(config=moved)
        await act(svc, ops.rollback(svc.world, "r1", "tenant_impact", "tickets from acme", OPERATOR, now(svc)))
        release = await svc.wait_release("r1", "held")
        assert release.rollback is not None and release.rollback.trigger == "tenant_impact", release.rollback
        assert release.failure is not None and "rollback_target_unusable" in release.failure, release.failure
        assert "compatibility/runtime_mismatch" in release.failure, release.failure
        assert svc.world.scope("prod", "canary", "internal").active_pack.digest == new.digest  # nothing moved


async def test_pre_flight_warns_when_a_rollback_would_hold_on_a_target_the_channel_no_longer_admits(nats_url, prefix):
    """The same channel move seen at pre-flight: the LKG is sound (trusted, unexpired, present), so the
    release is not refused (a tightened channel must not refuse every release while its LKG predates the
    change), but the readiness item says that a rollback would hold there, naming the gate."""
    roles = tuple(role for role in ROLES if role != "guard")
    async with running_service(nats_url, prefix, roles=roles) as svc:
        await svc.configure()
        await svc.runtime("t-int-1")
        await svc.runtime("tenant-42")
        await svc.request("r0", make_pack("1.0.0", svc.key), rollback={"strategy": "none"})  # runtime <3
        assert (await svc.wait_release("r0")).outcome == "success"
        await svc.configure(
            config={**CHANNEL, "compatibility": {**CHANNEL["compatibility"], "runtime_version": "3.0.0"}}
        )
        await svc.request("r1", make_pack("1.1.0", svc.key, runtime=">=2.3,<4"))
        release = await svc.wait_release("r1", "monitoring")
        [item] = [i for i in release.prepared.checklist if i.item == "rollback_target_ready"]
        assert item.ok, item
        assert item.detail.startswith("warning: ") and "compatibility/runtime_mismatch" in item.detail, item.detail
        assert "a rollback would hold and escalate" in item.detail, item.detail
