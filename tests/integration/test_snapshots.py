"""Snapshot + tail equals a full replay; a bad snapshot falls back to replay."""

from __future__ import annotations

import pytest

from events.subjects import Subjects
from projections.world import archive_all
from services.jetstream.client import connect
from services.reads.audit import replay
from services.reads.model_reads import keys_id
from tests.harness import make_pack, running_service


async def test_restart_from_snapshot_plus_tail_equals_full_replay(nats_url, prefix):
    async with running_service(nats_url, prefix) as svc:
        key = svc.key
        await svc.configure()
        await svc.runtime("t-int-1")
        await svc.runtime("tenant-42")
        for i in range(3):
            await svc.request(
                f"r{i}", make_pack(f"1.{i}.0", svc.key), rollback={"strategy": "none" if i == 0 else "lkg"}
            )
            await svc.wait_release(f"r{i}")
        first_end = svc.app.follower.position
    # stopping saved a snapshot at `first_end`; the next process starts there, not at 1
    async with running_service(nats_url, prefix, key=key) as svc2:
        assert svc2.app.follower.started_from == first_end
        await svc2.runtime("t-int-1")
        await svc2.runtime("tenant-42")
        await svc2.request("r9", make_pack("2.0.0", key))
        await svc2.wait_release("r9")
        await svc2.catch_up()
        full = await replay(svc2.app.js, svc2.app.subjects, archive=False)  # every release whole
        # every release, scope, channel, pin, rotation (a service keeps closed releases as tombstones)
        own = svc2.app.follower.world
        assert archive_all(full.world) == own
        assert full.world.release("r0").verdicts and own.release("r0") is None and own.known("r0")
        assert own.tombstones["r9"].outcome == full.world.release("r9").outcome == "success"
        assert svc2.world.release("r0") == full.world.release("r0")  # the test's observer folds whole


async def test_an_unreadable_snapshot_is_ignored(nats_url, prefix):
    async with running_service(nats_url, prefix) as svc:
        key = svc.key
        await svc.configure()
    nc = await connect(nats_url)
    store = await nc.jetstream().object_store(Subjects(prefix).snapshots_bucket)
    await store.put("world", b"\x00 this is not a snapshot")
    await nc.close()
    async with running_service(nats_url, prefix, key=key) as svc2:
        assert svc2.app.follower.started_from == 0  # replayed from sequence 1 instead
        assert svc2.world.channel_state("prod", "canary") is not None


async def test_only_a_snapshot_a_trusted_service_key_signed_is_loaded(nats_url, prefix):
    """The world a service restarts from decides pointers and last-known-goods until the tail is folded:
    one that no trusted service key signed (unsigned, signed by another key, or its bytes changed after
    signing) is ignored and the log replayed from sequence 1. JetStream can be made to store an answer
    on the snapshot bucket's subjects by any role (docs/permissions.md "JetStream's answers")."""
    from events.signing import SigningKey
    from projections.snapshot import dump_world
    from services.reads.snapshots import SEALED, sealed
    from tests.harness import _SERVICE_KEYS

    async with running_service(nats_url, prefix) as svc:
        key = svc.key
        await svc.configure()
        await svc.app.follower.save_snapshot()
        world, keys = svc.app.follower.world, svc.app.service_keys
    nc = await connect(nats_url)
    store = await nc.jetstream().object_store(Subjects(prefix).snapshots_bucket)
    assert (await store.get("world")).data.startswith(SEALED)  # the service signs what it saves
    honest = dump_world(world, keys_id(keys))
    signed = sealed(honest, _SERVICE_KEYS[prefix])
    forged = {
        "unsigned": honest,
        "another key": sealed(honest, SigningKey.generate()),
        "changed after signing": signed[:-1] + bytes([signed[-1] ^ 1]),
    }
    try:
        for what, data in forged.items():
            await store.put("world", data)
            async with running_service(nats_url, prefix, key=key) as again:
                assert again.app.follower.started_from == 0, what  # replayed from sequence 1 instead
        await store.put("world", signed)
        async with running_service(nats_url, prefix, key=key) as again:
            assert again.app.follower.started_from == world.applied_seq  # the genuine one is loaded
    finally:
        await nc.close()


async def _long_log(nats_url: str, prefix: str, events: int):
    from bench.history import generate
    from events.signing import SigningKey

    nc = await connect(nats_url)
    js = nc.jetstream(timeout=30)
    await generate(js, Subjects(prefix), events, SigningKey.generate(), channels=2)
    return nc, js


async def test_a_cold_start_catches_up_for_as_long_as_the_fold_moves(nats_url, prefix):
    """No fixed deadline at start-up (a cold start on a long log takes minutes): only a stall fails it."""
    import asyncio

    from services.reads.follower import Follower

    nc, js = await _long_log(nats_url, prefix, 3000)
    try:
        follower = Follower(js, Subjects(prefix), archive_closed=True)
        task = asyncio.create_task(follower.run())
        await follower.catch_up_from_start(stall_s=2.0, report_every_s=0.01)
        last = (await js.stream_info(Subjects(prefix).releases_stream)).state.last_seq
        assert follower.position == last and follower.world.tombstones and not follower.world.in_flight
        task.cancel()
        stalled = Follower(js, Subjects(prefix))  # never run: nothing is applied
        with pytest.raises(TimeoutError, match=f"stalled at seq 0 of {last} "):
            await stalled.catch_up_from_start(stall_s=0.3, report_every_s=0.05)
    finally:
        await nc.close()


async def test_listeners_hold_an_entry_before_a_snapshot_save_awaits(log, prefix):
    """The projector writes the read models at the follower's position from its listener queue: while a
    snapshot is being saved, that queue must already hold the entry the position names (it got it
    after the save, and a release closed at that position read as still open meanwhile)."""
    import asyncio

    from events.channel import ChannelConfig
    from services.actions.producer import configure_channel
    from services.reads.follower import Follower
    from tests.harness import CHANNEL, OPERATOR

    class SlowStore:  # the follower's snapshot store, as slow as a loaded object store
        def __init__(self) -> None:
            self.seen: list[tuple[int, int | None]] = []

        async def save(self, world, keys, ignored) -> None:
            queued = list(queue._queue)  # type: ignore[attr-defined]
            self.seen.append((follower.position, queued[-1][0].seq if queued else None))
            await asyncio.sleep(0.05)

    js = log._js
    store = SlowStore()
    follower = Follower(js, log.subjects, snapshots=store, snapshot_every=1, snapshot_min_interval_s=0)
    queue = follower.listen()
    task = asyncio.create_task(follower.run())
    try:
        for i in range(3):
            config = {**CHANNEL, "monitoring": {**CHANNEL["monitoring"], "window_s": 60 + i}}
            await configure_channel(log, js, "prod", "canary", ChannelConfig.model_validate(config), OPERATOR)
            await follower.wait_for((await js.stream_info(log.subjects.releases_stream)).state.last_seq)
            await asyncio.sleep(0.1)
        assert store.seen, "no snapshot saved"
        assert all(position == queued for position, queued in store.seen), store.seen
    finally:
        task.cancel()
