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
        # each window's verdict names the channel entry it was judged against (session 25): the one configuration
        configured = svc.world.channel_state("prod", "canary")
        assert [(kind, v.channel_seq) for kind, v in release.verdicts] == [("monitoring_passed", configured.seq)] * 2
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


async def _lagging_mirror(js, origin: str, holds: str) -> str:
    """A mirror of `origin` holding only `holds` (one message on it is already stored): to the direct
    gets of the service it answers half the time (nats-server gives a mirror of a stream that allows
    direct gets `mirror_direct`), and lacks everything else, as a replica or mirror far behind."""
    import asyncio

    from nats.js.api import StreamConfig, StreamSource

    mirror = f"{origin}_AUDIT_MIRROR"
    await js.add_stream(StreamConfig(name=mirror, mirror=StreamSource(name=origin, filter_subject=holds)))
    for _ in range(400):  # (a loaded machine: up to 20 s)
        if (await js.stream_info(mirror)).state.messages:
            return mirror
        await asyncio.sleep(0.05)
    raise AssertionError(f"the mirror of {origin} mirrored nothing")


async def test_lagging_mirrors_of_health_and_packs_change_no_decision(nats_url, prefix):
    """An auditor's mirrors of the health stream and the pack store, far behind: every read the
    service makes by direct get is confirmed with the stream's leader, so a healthy release still
    passes on its data (not inconclusive, not a missing pack) and a breaching one still rolls back."""
    import json
    from datetime import UTC, datetime

    async with running_service(nats_url, prefix) as svc:
        js, s = svc.app.js, svc.app.subjects
        await js.publish(
            s.health("elsewhere", "c", "k", "early"), json.dumps({"at": datetime.now(UTC).isoformat()}).encode()
        )
        store = await js.object_store(s.packs_bucket)
        await store.put("early", b"x")
        mirrors = [
            await _lagging_mirror(js, s.health_stream, s.health("elsewhere", "c", "k", "early")),
            await _lagging_mirror(js, f"OBJ_{s.packs_bucket}", "$O." + s.packs_bucket + ".M.ZWFybHk="),
        ]
        try:
            await svc.configure()
            good, bad = make_pack("1.0.0", svc.key), make_pack("1.1.0", svc.key)
            rt = await svc.runtime("t-int-1", {bad.digest: Behaviour(error_rate=0.5)})
            await svc.runtime("tenant-42")
            await svc.request("r1", good, rollback={"strategy": "none"})
            release = await svc.wait_release("r1")
            assert release.outcome == "success", release.failure
            assert svc.world.scope("prod", "canary", "internal").lkg.digest == good.digest
            await svc.request("r2", bad)
            release = await svc.wait_release("r2")
            assert release.outcome == "rolled_back", release.failure
            assert release.rollback.trigger == "monitoring_failure"
            await wait_for(lambda: rt.active and rt.active.digest == good.digest, 5, "runtime back on LKG")
        finally:
            for mirror in mirrors:
                await js.delete_stream(mirror)
