"""Issue 14's headline attack: a producer deletes (or re-points) another team's last-known-good
pack in `kx_packs`, so that a failing release cannot roll back and the bad pack stays live.

Producers may not purge, so the pack's chunks stay; its metadata (one rollup message per
name) is theirs to overwrite. The distributor records each object's metadata in
`release.distributed`, and the service restores it from there where it needs the pack
(services/jetstream/pack_keeper.py): the rollback still lands on the LKG, and runtimes that restart
still get their pack.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from events.channel import ChannelConfig
from events.manifest import manifest_object_name, pack_object_name
from events.service_signing import ServiceKeys
from events.signing import SigningKey
from services.actions.producer import configure_channel, push_pack, request_release
from services.app import App
from services.bootstrap import start_service
from services.consumers.guard import Guard
from services.jetstream.log import EventLog
from services.jetstream.pack_keeper import RESTORED, PackKeeper
from services.jetstream.packstore import PackStore
from services.runtime.sdk import Identity
from services.runtime.simulation import Behaviour, simulated_runtime
from services.settings import ROLES as CONSUMERS
from services.settings import Settings
from services.tasks import cancel_and_wait
from tests.harness import CHANNEL, OPERATOR, PRODUCER, make_pack, request_data, trust_root_for, wait_for
from tests.security.conftest import Conns, start_authed, stop_authed

pytestmark = pytest.mark.security
ENV, CHANNEL_NAME = "prod", "canary"


async def tamper(producer_js, subjects, name: str, how: str, other: str) -> None:
    """As the producer user: mark `name` deleted, or point it at `other`'s chunks (nats.py's
    object delete, minus the purge the producer may not do; or a put's metadata message)."""
    store = PackStore(producer_js, subjects)
    meta = await store.stored_meta(name)
    if how == "delete":
        meta = meta | {"deleted": True, "size": 0, "chunks": 0, "digest": "", "mtime": ""}
    else:
        meta = (await store.stored_meta(other)) | {"name": name}
    await producer_js.publish(store._meta_subject(name), json.dumps(meta).encode(), headers={"Nats-Rollup": "sub"})


def restored_count() -> float:
    return RESTORED.labels("restored")._value.get()


@pytest.mark.parametrize("how", ["delete", "repoint", "repoint-pack"])
async def test_a_producer_tampering_with_the_lkg_pack_does_not_stop_the_rollback(tmp_path, how):
    authed, lock = start_authed(tmp_path / "kx-data", runtimes=())
    conns = Conns(authed)
    s = authed.subjects
    producer_key, service_key = SigningKey.generate(), SigningKey.generate()
    trust_root = trust_root_for(producer_key)
    service_keys = ServiceKeys.of(service_key, list(CONSUMERS))
    svc, producer, operator, runtime = (
        await conns("service", "kxr-serve"),
        await conns("producer"),
        await conns("operator"),
        await conns("runtime"),
    )
    app = App(svc.nc, Settings(nats_url=authed.url, prefix=s.prefix), trust_root, signer=service_key)
    tasks: list[asyncio.Task] = []

    async def start_runtime(tenant: str, behaviours: dict, seed: int):
        rt = simulated_runtime(
            runtime.nc,
            Identity(ENV, CHANNEL_NAME, tenant, f"rt-{tenant}-{seed}"),
            trust_root,
            behaviours,
            prefix=s.prefix,
            interval=0.1,
            seed=seed,
            service_keys=service_keys,
        )
        await rt.resolve_cohort()
        tasks.append(asyncio.create_task(rt.run()))
        return rt

    async def release(pack, **extra) -> str:
        await push_pack(producer.js, s, pack.body, pack.manifest, pack.digest)
        release_id = "r" + uuid.uuid4().hex[:8]
        await request_release(EventLog(producer.nc, producer.js, s), release_id, request_data(pack, **extra), PRODUCER)
        return release_id

    async def closed(release_id: str):
        await wait_for(
            lambda: release_id in app.follower.world.tombstones,
            60,
            f"release {release_id} to close",
            lambda: app.follower.world.release(release_id),
        )
        return await app.release_whole(release_id)

    try:
        await start_service(app, CONSUMERS)
        await configure_channel(
            EventLog(operator.nc, operator.js, s),
            operator.js,
            ENV,
            CHANNEL_NAME,
            ChannelConfig.model_validate(CHANNEL),
            OPERATOR,
        )
        good, bad = make_pack("1.0.0", producer_key), make_pack("1.1.0", producer_key)
        internal = await start_runtime("t-int-1", {bad.digest: Behaviour(error_rate=0.5)}, 0)
        await start_runtime("tenant-42", {}, 1)
        assert (await closed(await release(good, rollback={"strategy": "none"}))).outcome == "success"

        # the attack lands before the release that will need the LKG back (it used to land while the
        # bad pack was live, racing the window's early failure and the rollback's check of the LKG):
        # every check on the way, pre-flight and the rollback's, must see through it
        await push_pack(producer.js, s, bad.body, bad.manifest, bad.digest)
        # "repoint-pack": the pack alone, at the bad pack's chunks (the same size: a size check passes)
        targets = (
            (pack_object_name(good.digest),)
            if how == "repoint-pack"
            else (pack_object_name(good.digest), manifest_object_name(good.digest))
        )
        for name in targets:
            await tamper(
                producer.js, s, name, how, name.replace(pack_object_name(good.digest), pack_object_name(bad.digest))
            )
        attacked = PackStore(producer.js, s)
        if how == "delete":
            assert await attacked.size(pack_object_name(good.digest)) is None
        elif how == "repoint":
            assert await attacked.read(manifest_object_name(good.digest), 1 << 20) == bad.manifest
        else:
            assert (await attacked.stored_object(pack_object_name(good.digest))).nuid == (
                await attacked.stored_object(pack_object_name(bad.digest))
            ).nuid
            assert len(good.body) == len(bad.body)
        before = restored_count()
        r2 = await release(bad)
        # the bad pack is live in the first cohort, its window fails, the release rolls back (it was
        # live: the runtime's history says so; "active now" raced a fast window on a busy machine)
        await wait_for(
            lambda: (bad.digest, "activated") in internal.history,
            30,
            "the bad pack live",
            lambda: (
                app.follower.world.release(r2) or app.follower.world.tombstones.get(r2),
                list(internal.history)[-3:],
            ),
        )

        rolled = await closed(r2)
        assert rolled.outcome == "rolled_back", rolled.failure
        assert rolled.rollback.targets["internal"].digest == good.digest
        assert app.follower.world.scope(ENV, CHANNEL_NAME, "internal").active_pack.digest == good.digest
        await wait_for(
            lambda: internal.active and internal.active.digest == good.digest,
            30,
            "the runtime back on the LKG",
            lambda: internal.history,
        )
        assert restored_count() > before
        # what the service restored is the LKG's own bytes, as distributed
        assert await attacked.read(manifest_object_name(good.digest), 1 << 20) == good.manifest
        chunks = await attacked.chunks(pack_object_name(good.digest))
        assert b"".join([c async for c in chunks]) == good.body

        # a runtime that restarts (a fresh one: nothing cached) gets its pack
        restarted = await start_runtime("t-int-2", {}, 2)
        await wait_for(
            lambda: restarted.active and restarted.active.digest == good.digest,
            30,
            "a restarted runtime on the LKG",
            lambda: restarted.history,
        )

        # the same attack on the now active pack: the keeper's sweep puts it back before a runtime restarts
        await tamper(
            producer.js,
            s,
            pack_object_name(good.digest),
            "delete" if how == "delete" else "repoint",
            pack_object_name(bad.digest),
        )
        assert pack_object_name(good.digest) in await PackKeeper(app).sweep()
        again = await start_runtime("t-int-2", {}, 3)
        await wait_for(
            lambda: again.active and again.active.digest == good.digest,
            30,
            "a runtime restarted after the sweep",
            lambda: again.history,
        )

        # and on its manifest: the guard's read restores it rather than
        # flag (and roll back) a settled scope over tampered metadata
        manifest = manifest_object_name(good.digest)
        await tamper(
            producer.js, s, manifest, "delete" if how == "delete" else "repoint", manifest_object_name(bad.digest)
        )
        assert await attacked.read(manifest, 1 << 20) != good.manifest
        assert await Guard(app).manifest(manifest) == good.manifest
        assert await attacked.read(manifest, 1 << 20) == good.manifest
    finally:
        await cancel_and_wait(tasks)
        await app.stop()
        await conns.close()
        stop_authed(authed, lock)


async def test_chunks_a_producer_appends_to_a_pack_are_not_part_of_it(authed, as_role):
    """Whoever may put chunks may publish on an existing object's chunk subject: readers read
    no more chunks than the metadata counts, so the pack reads as it was put."""
    s = authed.subjects
    producer = await as_role("producer")
    body = b"pack bytes " * 100
    name = f"sha256-{uuid.uuid4().hex}"
    store = PackStore(producer.js, s)
    await store.put(name, body)
    nuid = (await store.stored_object(name)).nuid
    await producer.js.publish(f"$O.{s.packs_bucket}.C.{nuid}", b"appended by an attacker")
    chunks = await store.chunks(name)
    assert b"".join([c async for c in chunks]) == body


async def test_a_target_re_pointed_at_other_bytes_of_its_size_is_not_ready(service_app, as_role):
    """A rollback lands without hashing the pack again, so its readiness once compared only the size: a name
    re-pointed at another pack's chunks of the same size, where no record can put it back (a pack no release
    distributed here, or one whose recorded chunks an admin purged), passed, the pointer moved, and only the
    runtimes' hash refused the bytes. The metadata's SHA-256 names the other bytes: not ready, saying why."""
    from datetime import UTC, datetime

    from events.model import PackRef
    from services.verification.readiness import target_check

    app, s = service_app.app, as_role.authed.subjects
    producer = await as_role("producer")
    good, bad = make_pack("4.0.0", service_app.producer_key), make_pack("4.1.0", service_app.producer_key)
    assert len(good.body) == len(bad.body)
    for pack in (good, bad):
        await push_pack(producer.js, s, pack.body, pack.manifest, pack.digest)
    target = PackRef(name=good.name, version=good.version, digest=good.digest)
    now = datetime.now(UTC)
    assert (await target_check(app, target, ENV, CHANNEL_NAME, ("internal",), now)).problem is None

    await tamper(producer.js, s, pack_object_name(good.digest), "repoint", pack_object_name(bad.digest))
    check = await target_check(app, target, ENV, CHANNEL_NAME, ("internal",), now)
    assert check.problem is not None and check.problem.startswith("pack object holds other bytes"), check
    assert check.signers == ()
