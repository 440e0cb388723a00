"""Consumers against real JetStream: redelivery, races, poison, restarts."""

from __future__ import annotations

import asyncio
import json

from events.subjects import Subjects
from services.consumers.activator import Activator
from services.consumers.preparer import Preparer
from services.jetstream.client import connect
from services.jetstream.log import AppendConflict
from services.jetstream.reader import OrderedReader
from services.runtime.sdk import Identity
from services.runtime.simulation import simulated_runtime
from tests.harness import make_pack, running_service, wait_for

UP_TO_VERIFIED = ("preparer", "distributor", "verifier")


async def log_entries(js, subjects: Subjects, filters: list[str] | None = None) -> list:
    reader = OrderedReader(js, subjects.releases_stream, filters or subjects.log_subjects())
    try:
        return [e async for e in reader.read(follow=False, idle_timeout=0.3)]
    finally:
        await reader.close()


async def test_redelivered_input_appends_nothing_twice(nats_url, prefix):
    """A decision performed twice (crash between append and ack) stores one event."""
    async with running_service(nats_url, prefix, roles=()) as svc:
        await svc.configure()
        pack = make_pack("1.0.0", svc.key)
        await svc.request("r1", pack, rollback={"strategy": "none"})
        await wait_for(lambda: svc.world.release("r1"), 5, "the request to be folded")
        preparer = Preparer(svc.app)
        world, release = svc.world, svc.world.release("r1")
        first = await preparer.decision(world, release, svc.app.ctx("preparer"))
        await svc.app.emit(first, release)
        await asyncio.sleep(0.05)  # a redelivery decides again on the same state, a little later
        again = await preparer.decision(world, release, svc.app.ctx("preparer"))
        assert [e.event_id for o in again for e in o.events] == [e.event_id for o in first for e in o.events]
        await svc.app.emit(again, release)
        entries = await log_entries(svc.app.js, svc.app.subjects, [svc.app.subjects.release_filter("r1")])
        assert [e.subject.rsplit(".", 1)[-1] for e in entries] == ["requested", "prepared"]


async def two_verified(svc, releases: dict[str, str]) -> None:
    """Both releases verified for the same scopes, neither activated (no activator runs)."""
    await svc.configure()
    for release_id, version in releases.items():
        await svc.request(release_id, make_pack(version, svc.key), rollback={"strategy": "none"})
    for release_id in releases:
        await svc.wait_release(release_id, "verified")


async def test_two_activators_racing_on_one_scope_exactly_one_wins(nats_url, prefix):
    async with running_service(nats_url, prefix, roles=UP_TO_VERIFIED) as svc:
        await two_verified(svc, {"ra": "1.0.0", "rb": "1.1.0"})
        world = svc.world
        ctx = svc.app.ctx("activator")
        activator = Activator(svc.app)
        outs = [await activator.decision(world, world.release(rid), ctx) for rid in ("ra", "rb")]
        results = await asyncio.gather(
            svc.app.emit(outs[0], world.release("ra")),
            svc.app.emit(outs[1], world.release("rb")),
            return_exceptions=True,
        )
        assert sorted(type(r).__name__ for r in results) == ["AppendConflict", "NoneType"]
        winner = "ra" if results[0] is None else "rb"
        await svc.catch_up()
        pointers = await log_entries(svc.app.js, svc.app.subjects, [svc.app.subjects.all_activations()])
        assert len(pointers) == 1  # the loser's batch stored nothing
        assert svc.world.scope("prod", "canary", "internal").active.release_id == winner
        assert isinstance(results[1 if winner == "ra" else 0], AppendConflict)


async def test_loser_of_a_race_does_not_downgrade(nats_url, prefix):
    """Verified against an older state, a lower version must not activate over a newer one."""
    async with running_service(nats_url, prefix, roles=UP_TO_VERIFIED) as svc:
        await two_verified(svc, {"r-new": "2.0.0", "r-old": "1.5.0"})
        activator = Activator(svc.app)
        await activator.settle("r-new")
        await svc.catch_up()
        await activator.settle("r-old")
        release = await svc.wait_release("r-old", "activation_failed", timeout=5)
        assert "superseded" in release.failure
        assert svc.world.scope("prod", "canary", "internal").active.release_id == "r-new"


async def test_malformed_request_is_rejected_with_reasons_and_closed(nats_url, prefix):
    async with running_service(nats_url, prefix) as svc:
        js, subjects = svc.app.js, svc.app.subjects
        await js.publish(subjects.release("bad1", "requested"), b'{"type": "release.requested", "oops": ')
        await js.publish(
            subjects.release("bad2", "requested"),
            b'{"event_id":"x","type":"release.requested","schema_version":1,"occurred_at":"2026-01-01T00:00:00Z",'
            b'"actor":{"kind":"producer","id":"p"},"release_id":"bad2","data":{"pack":{"name":"kb"}}}',
        )
        for rid in ("bad1", "bad2"):
            release = await svc.wait_release(rid)
            assert release.outcome == "rejected"
        assert "malformed_json" in svc.world.release("bad1").failure
        failure = svc.world.release("bad2").failure
        for field in ("data.pack.version", "data.target", "data.owner", "data.escalation"):
            assert field in failure
        # and the service still works
        await svc.configure()
        await svc.request("good", make_pack("1.0.0", svc.key), rollback={"strategy": "none"})
        await svc.wait_release("good", "monitoring")


async def test_poison_on_other_subjects_is_dead_lettered_and_consumers_keep_going(nats_url, prefix):
    async with running_service(nats_url, prefix) as svc:
        js, subjects = svc.app.js, svc.app.subjects
        await js.publish(subjects.release("x1", "verified"), b"not json at all")
        await js.publish(f"{prefix}.release.{'y' * 200}.requested", b"{}")
        await js.publish(subjects.release("x2", "requested"), b"{}" + b" " * (70 * 1024))  # over the event cap
        await svc.configure()
        await svc.request("good", make_pack("1.0.0", svc.key), rollback={"strategy": "none"})
        await svc.wait_release("good", "monitoring")

        async def dead_letters():
            reader = OrderedReader(js, subjects.deadletter_stream, [subjects.deadletter_all()])
            try:
                return [e async for e in reader.read(follow=False, idle_timeout=0.3)]
            finally:
                await reader.close()

        letters = []
        for _ in range(50):
            letters = await dead_letters()
            consumers = {e.subject.rsplit(".", 1)[-1] for e in letters}
            if {"kxr-preparer", "kxr-verifier", "kxr-activator"} <= consumers and len(letters) >= 6:
                break
            await asyncio.sleep(0.1)
        subjects_seen = {json.loads(e.data)["subject"] for e in letters}
        assert subjects.release("x1", "verified") in subjects_seen
        assert f"{prefix}.release.{'y' * 200}.requested" in subjects_seen
        assert svc.world.release("x2").outcome in (None, "rejected")


async def test_window_timer_fires_across_a_service_restart(nats_url, prefix):
    nc = await connect(nats_url)  # the runtime outlives the service restart
    runtime_task = None
    try:
        async with running_service(nats_url, prefix) as svc:
            await svc.configure()
            rt = simulated_runtime(
                nc, Identity("prod", "canary", "t-int-1", "rt-1"), svc.trust_root, {}, prefix=prefix, interval=0.1
            )
            await rt.resolve_cohort()
            runtime_task = asyncio.create_task(rt.run())
            pack = make_pack("1.0.0", svc.key)
            await svc.request(
                "r1",
                pack,
                rollback={"strategy": "none"},
                plan=[["internal"]],
                monitoring={"window_s": 2, "min_samples": 1},
            )
            await svc.wait_release("r1", "monitoring")
            key = svc.key
        # the service is down when the window ends; its timer is a stored scheduled message
        await asyncio.sleep(2.5)
        async with running_service(nats_url, prefix, key=key) as svc2:
            release = await svc2.wait_release("r1", timeout=20)
            assert release.outcome == "success", release.failure
            assert [v[0] for v in release.verdicts] == ["monitoring_passed"]
    finally:
        if runtime_task:
            runtime_task.cancel()
        await nc.close()
