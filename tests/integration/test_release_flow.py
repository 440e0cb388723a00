"""The release spine against a real JetStream: healthy, tampered, regressed."""

from __future__ import annotations

from tests.harness import Behaviour, make_pack, running_service, wait_for


async def test_healthy_release_rolls_out_stage_by_stage_and_becomes_lkg(nats_url, prefix):
    async with running_service(nats_url, prefix) as svc:
        await svc.configure()
        pack = make_pack("1.0.0", svc.key)
        internal = await svc.runtime("t-int-1")
        other = await svc.runtime("tenant-42")
        assert (internal.cohort, other.cohort) == ("internal", "rest")
        await svc.request("r1", pack, rollback={"strategy": "none"})
        release = await svc.wait_release("r1")
        assert release.outcome == "success", release.failure
        assert release.activated == ("internal", "rest")
        for cohort in ("internal", "rest"):
            scope = svc.world.scope("prod", "canary", cohort)
            assert scope.active_pack.digest == pack.digest
            assert scope.lkg.digest == pack.digest
        await wait_for(lambda: internal.active and other.active, 5, "runtimes to switch")
        assert internal.active.digest == other.active.digest == pack.digest


async def test_tampered_pack_never_activates(nats_url, prefix):
    async with running_service(nats_url, prefix) as svc:
        await svc.configure()
        pack = make_pack("1.0.0", svc.key)
        await svc.publish(pack)
        tampered = make_pack("1.0.0", svc.key)
        tampered = type(tampered)(tampered.body[:-1] + b"!", tampered.manifest, tampered.digest, tampered.version)
        await svc.request("r1", tampered, rollback={"strategy": "none"})
        release = await svc.wait_release("r1")
        assert release.outcome == "failed"
        assert release.activated == ()
        assert "digest_mismatch" in (release.failure or "")
        assert svc.world.scope("prod", "canary", "internal").active is None


async def test_failing_window_rolls_back_to_last_known_good(nats_url, prefix):
    async with running_service(nats_url, prefix) as svc:
        await svc.configure()
        good = make_pack("1.0.0", svc.key)
        bad = make_pack("1.1.0", svc.key)
        rt = await svc.runtime("t-int-1", {bad.digest: Behaviour(error_rate=0.5)})
        await svc.runtime("tenant-42")  # the second stage needs samples too, or it holds inconclusive
        await svc.request("r1", good, rollback={"strategy": "none"})
        assert (await svc.wait_release("r1")).outcome == "success"
        await svc.request("r2", bad)
        release = await svc.wait_release("r2")
        assert release.outcome == "rolled_back"
        assert release.rollback.trigger == "monitoring_failure"
        assert release.rollback.targets["internal"].digest == good.digest
        scope = svc.world.scope("prod", "canary", "internal")
        assert scope.active_pack.digest == good.digest and scope.active.kind == "rollback"
        # the second stage was never exposed
        assert svc.world.scope("prod", "canary", "rest").active.release_id == "r1"
        await wait_for(lambda: rt.active and rt.active.digest == good.digest, 5, "runtime back on LKG")
