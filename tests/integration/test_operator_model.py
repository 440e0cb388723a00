"""The operator model on a real JetStream: stages, promotion, pins, rollbacks, holds, aborts."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from events.model import Scope
from services.actions import operator as ops
from services.actions.pins import pin, unpin
from services.jetstream.log import Entry
from tests.harness import CHANNEL, OPERATOR, Behaviour, make_pack, running_service, wait_for

THREE_STAGES = {
    **CHANNEL,
    "cohorts": [
        {"name": "internal", "tenants": ["t-int-1"]},
        {"name": "early", "tenants": ["t-early"]},
        {"name": "rest"},
    ],
    "plan": [["internal"], ["early"], ["rest"]],
    "promote_to": "stable",
}
STABLE = {**CHANNEL, "monitoring": {**CHANNEL["monitoring"], "window_s": 2}}


async def act(svc, action) -> int:
    seq = await svc.app.log.append(
        Entry(action.event, action.expected_seq, svc.app.subjects.release_filter(action.event.release_id))
    )
    await svc.wait_for(seq)  # the next action is decided on a view that includes this one
    return seq


async def scope_act(svc, event_and_seq, scope: Scope) -> int:
    event, expected = event_and_seq
    seq = await svc.app.log.append(
        Entry(event, expected, svc.app.subjects.scope_filter(scope.env, scope.channel, scope.cohort))
    )
    await svc.wait_for(seq)
    return seq


def now(svc):
    return svc.app.clock()


async def test_three_stage_canary_then_promotion_to_stable(nats_url, prefix):
    async with running_service(nats_url, prefix) as svc:
        await svc.configure(channel="canary", config=THREE_STAGES)
        await svc.configure(channel="stable", config=STABLE)
        for tenant in ("t-int-1", "t-early", "tenant-42"):
            await svc.runtime(tenant, channel="canary")
        for tenant in ("t-int-1", "tenant-42"):
            await svc.runtime(tenant, channel="stable")
        pack = make_pack("1.0.0", svc.key)
        # the release's own criteria: stricter than either channel's error_rate_max (0.05)
        asked = {"window_s": 1, "min_samples": 1, "thresholds": {"error_rate_max": 0.02}}
        await svc.request("r1", pack, rollback={"strategy": "none"}, monitoring=asked)
        canary = await svc.wait_release("r1")
        assert canary.outcome == "success" and canary.activated == ("internal", "early", "rest")
        assert [v[1].stage for v in canary.verdicts] == [0, 1, 2]
        assert canary.promoted.to_channel == "stable"
        linked = canary.promoted.promoted_to
        stable = await svc.wait_release(linked, timeout=40)
        assert stable.outcome == "success", stable.failure
        assert stable.requested.promoted_from == "r1"
        assert stable.verified is not None  # every gate again, on the stable channel
        assert stable.prepared.monitoring.window_s == 2 and canary.prepared.monitoring.window_s == 1
        # carried to the promotion, the stricter of the request's and stable's, field by field
        assert stable.requested.monitoring.window_s == 2  # stable's longer window, not the request's 1 s
        assert stable.prepared.monitoring.thresholds.error_rate_max == 0.02
        for cohort in ("internal", "rest"):
            assert svc.world.scope("prod", "stable", cohort).active_pack.digest == pack.digest


async def test_rollback_after_promotion_returns_every_cohort_to_lkg_atomically(nats_url, prefix):
    async with running_service(nats_url, prefix) as svc:
        await svc.configure()
        good, newer, worse = make_pack("1.0.0", svc.key), make_pack("1.1.0", svc.key), make_pack("1.2.0", svc.key)
        failing = {worse.digest: Behaviour(error_rate=0.5)}
        runtimes = [await svc.runtime("t-int-1", failing), await svc.runtime("tenant-42", failing)]
        await svc.request("r1", good, rollback={"strategy": "none"})
        await svc.wait_release("r1")
        await svc.request("r2", newer)
        assert (await svc.wait_release("r2")).outcome == "success"
        assert svc.world.scope("prod", "canary", "internal").lkg.digest == newer.digest
        # tenant impact discovered after the release closed: instant rollback to the previous LKG
        await act(svc, ops.rollback(svc.world, "r2", "tenant_impact", "support tickets spiked", OPERATOR, now(svc)))
        await wait_for(
            lambda: (r := svc.world.release("r2")) is not None and r.phase == "closed" and r.outcome == "rolled_back",
            15,
            "rollback",
        )
        scopes = [svc.world.scope("prod", "canary", c) for c in ("internal", "rest")]
        assert all(s.active_pack.digest == good.digest and s.active.kind == "rollback" for s in scopes)
        # one atomic batch: both pointers share a batch id and sit next to each other in the log
        assert scopes[0].active_batch == scopes[1].active_batch is not None
        assert abs(scopes[0].active_seq - scopes[1].active_seq) == 1
        await wait_for(
            lambda: all(rt.active and rt.active.digest == good.digest for rt in runtimes), 5, "runtimes back on LKG"
        )
        assert svc.world.release("r2").rollback.trigger == "tenant_impact"
        # the service had r2 as a tombstone: it folded r2 from its own subjects to roll it back, then closed it again
        own = await wait_for(
            lambda: (t := svc.app.follower.world.tombstones.get("r2")) and t.outcome == "rolled_back" and t,
            5,
            "r2 re-closed",
        )
        assert own.last_seq == svc.world.release("r2").last_seq and svc.app.follower.world.release("r2") is None
        # the pulled pack is known good no longer (session 27): LKG is r1's again, and the next release that
        # fails goes back there, not to the 1.1.0 the operator pulled
        assert all(svc.world.scope("prod", "canary", c).lkg.digest == good.digest for c in ("internal", "rest"))
        await svc.request("r3", worse)
        failed = await svc.wait_release("r3")
        assert failed.outcome == "rolled_back", failed.failure
        assert {c: t.digest for c, t in failed.rollback.targets.items()} == {"internal": good.digest}
        assert svc.world.scope("prod", "canary", "internal").active_pack.digest == good.digest


async def test_a_pinned_canary_refuses_a_release_then_is_used_as_rollback_target(nats_url, prefix):
    async with running_service(nats_url, prefix) as svc:
        await svc.configure()
        await svc.runtime("t-int-1")
        await svc.runtime("tenant-42", {make_pack("1.2.0", svc.key).digest: Behaviour(error_rate=0.5)})
        v1, v11, bad = make_pack("1.0.0", svc.key), make_pack("1.1.0", svc.key), make_pack("1.2.0", svc.key)
        await svc.request("r1", v1, rollback={"strategy": "none"})
        await svc.wait_release("r1")
        await svc.request("r2", v11)
        await svc.wait_release("r2")
        # hold `internal` on 1.0.0: a pin to a pack other than the active one re-verifies and switches (kind pin)
        internal = Scope(env="prod", channel="canary", cohort="internal")
        await scope_act(
            svc,
            pin(svc.world, internal, "1.0.0", now(svc) + timedelta(days=1), "audit baseline", OPERATOR, now(svc)),
            internal,
        )
        await wait_for(lambda: svc.world.scope("prod", "canary", "internal").active.kind == "pin", 10, "pin switch")
        assert svc.world.scope("prod", "canary", "internal").active_pack.digest == v1.digest
        # the canary stage pinned, the pack would first run in `rest`: refused at pre-flight (smallest scope first)
        await svc.request("r3", bad)
        release = await svc.wait_release("r3")
        assert release.prepared is None and release.outcome == "rejected", release.failure
        assert "smallest_scope" in (release.failure or "") and "stage 2 (rest)" in (release.failure or "")
        assert svc.world.scope("prod", "canary", "internal").active_pack.digest == v1.digest  # never touched
        assert svc.world.scope("prod", "canary", "rest").active_pack.digest == v11.digest
        # a pin set on a cohort while a release runs there is what its rollback returns to (not LKG)
        await scope_act(svc, unpin(svc.world, internal, "baseline done", OPERATOR, now(svc)), internal)
        await wait_for(lambda: svc.world.scope("prod", "canary", "internal").pin is None, 5, "unpin")
        await svc.request("r4", make_pack("1.3.0", svc.key), monitoring={"window_s": 5, "min_samples": 1})
        await svc.wait_release("r4", "monitoring", timeout=15)
        await scope_act(
            svc,
            pin(svc.world, internal, "1.0.0", now(svc) + timedelta(hours=1), "incident 42", OPERATOR, now(svc)),
            internal,
        )
        await wait_for(lambda: svc.world.scope("prod", "canary", "internal").pin is not None, 5, "pin on internal")
        await act(
            svc, ops.rollback(svc.world, "r4", "operator", "hold internal on the audited pack", OPERATOR, now(svc))
        )
        rolled = await svc.wait_release("r4")
        assert rolled.outcome == "rolled_back"
        assert rolled.rollback.targets["internal"].digest == v1.digest  # the pin, not LKG (1.1.0)
        assert svc.world.scope("prod", "canary", "internal").active_pack.digest == v1.digest


async def test_pin_expiry_fires_after_a_service_restart(nats_url, prefix):
    key = None
    async with running_service(nats_url, prefix) as svc:
        key = svc.key
        await svc.configure()
        await svc.runtime("t-int-1")
        await svc.runtime("tenant-42")
        await svc.request("r1", make_pack("1.0.0", svc.key), rollback={"strategy": "none"})
        await svc.wait_release("r1")
        internal = Scope(env="prod", channel="canary", cohort="internal")
        await scope_act(
            svc,
            pin(svc.world, internal, "1.0.0", now(svc) + timedelta(seconds=2), "short freeze", OPERATOR, now(svc)),
            internal,
        )
        await wait_for(lambda: svc.world.scope("prod", "canary", "internal").pin is not None, 5, "pin")
    await asyncio.sleep(2.5)  # the pin expires while no service runs
    async with running_service(nats_url, prefix, key=key) as svc2:
        state = await wait_for(
            lambda: (
                svc2.world.scope("prod", "canary", "internal").pin is None
                and svc2.world.scope("prod", "canary", "internal")
            ),
            15,
            "the pin to be lifted",
        )
        assert state.last_pin is not None and state.pin_seq > 0


async def test_inconclusive_window_holds_until_an_operator_decides(nats_url, prefix):
    async with running_service(nats_url, prefix) as svc:
        await svc.configure()
        pack = make_pack("1.0.0", svc.key)
        await svc.request("r1", pack, rollback={"strategy": "none"})  # no runtime reports: no samples
        held = await svc.wait_release("r1", "held", timeout=15)
        assert held.verdicts[-1][0] == "monitoring_inconclusive"
        await asyncio.sleep(1.5)
        assert svc.world.release("r1").phase == "held"  # never promotes by itself
        assert svc.world.scope("prod", "canary", "rest").active is None
        await svc.runtime("t-int-1")
        await act(svc, ops.extend(svc.world, "r1", 1, "runtime came up; gather samples", OPERATOR, now(svc)))
        await wait_for(
            lambda: (r := svc.world.release("r1")) is not None and r.stage == 1 and r.phase == "held",
            15,
            "stage 2 to hold as well (no runtime in rest)",
        )
        await act(svc, ops.promote(svc.world, "r1", "rest has no live tenants yet", OPERATOR, now(svc)))
        release = await svc.wait_release("r1", timeout=15)
        # issue 13: a stage passed on an operator's word closes promoted_by_override, never success
        assert release.outcome == "promoted_by_override"
        assert "operator override" in release.verdicts[-1][1].reason and release.verdicts[-1][1].override


async def test_operator_abort_mid_stage_returns_activated_cohorts(nats_url, prefix):
    async with running_service(nats_url, prefix) as svc:
        await svc.configure()
        await svc.runtime("t-int-1")
        await svc.runtime("tenant-42")
        v1, v2 = make_pack("1.0.0", svc.key), make_pack("2.0.0", svc.key)
        await svc.request("r1", v1, rollback={"strategy": "none"})
        await svc.wait_release("r1")
        await svc.request("r2", v2, monitoring={"window_s": 5, "min_samples": 1})
        await svc.wait_release("r2", "monitoring")
        await act(svc, ops.pause(svc.world, "r2", "looking at a graph", OPERATOR, now(svc)))
        await act(svc, ops.abort(svc.world, "r2", "wrong pack for this week", OPERATOR, now(svc)))
        release = await svc.wait_release("r2", timeout=15)
        assert release.outcome == "aborted" and release.rollback.trigger == "abort"
        assert svc.world.scope("prod", "canary", "internal").active_pack.digest == v1.digest
        assert svc.world.scope("prod", "canary", "rest").active.release_id == "r1"  # stage 2 never ran


async def test_preflight_lists_every_failed_item(nats_url, prefix):
    async with running_service(nats_url, prefix) as svc:
        await svc.configure()
        pack = make_pack("1.0.0", svc.key)
        await svc.request(
            "r1",
            pack,
            plan=[["internal", "nowhere"]],
            monitoring={"window_s": 1, "min_samples": 1},
            acknowledge_no_health=False,
        )
        release = await svc.wait_release("r1")
        assert release.outcome == "rejected"
        for item in ("cohort_plan_valid", "rollback_target", "observability"):
            assert item in release.failure
