"""Two service processes keep the read models at once (two `kxr serve` with the activator): every
value only moves forward, and both end at the log's last sequence (services/reads/projector.py)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

from events.channel import ChannelConfig
from events.signing import SigningKey
from events.subjects import Subjects
from services.actions import operator
from services.actions.producer import configure_channel, request_release
from services.app import App
from services.bootstrap import start_service
from services.jetstream.client import connect
from services.jetstream.log import Entry
from services.jetstream.log_reads import release_history
from services.reads import projector as projector_module
from services.reads import read_models as rm
from services.reads.projector import Projector
from services.settings import Settings
from tests.harness import CHANNEL, OPERATOR, PRODUCER, make_pack, request_data, trust_root_for


async def _app(nats_url: str, prefix: str) -> App:
    nc = await connect(nats_url, name=f"writer-{prefix}")
    app = App(nc, Settings(nats_url=nats_url, prefix=prefix), trust_root_for(SigningKey.generate()))
    await start_service(app, ())  # the follower alone: the projector is what is tested
    return app


async def _one_run(app: App) -> Projector:
    """A projector run until it has written the log's last sequence, then stopped."""
    projector = Projector(app, interval_s=0.01)
    task = asyncio.create_task(projector.run())
    try:
        last = (await app.js.stream_info(app.subjects.releases_stream)).state.last_seq
        while projector.position < last:
            await asyncio.wait_for(projector.flushed.wait(), 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return projector


async def test_two_writers_never_move_a_value_back_and_both_reach_the_end(nats_url, prefix):
    apps = [await _app(nats_url, prefix), await _app(nats_url, prefix)]
    s = Subjects(prefix)
    kv = await apps[0].js.key_value(s.read_bucket)
    seen: dict[str, list[int]] = {}

    async def watch() -> None:
        watcher = await kv.watchall()
        async for entry in watcher:
            if entry is not None and entry.value:
                seen.setdefault(entry.key, []).append(json.loads(entry.value)["seq"])

    watching = asyncio.create_task(watch())
    projectors = [Projector(app, interval_s=0.01) for app in apps]
    whole_reads = [0, 0]
    for n, p in enumerate(projectors):  # count the whole-bucket reads: at start only, never per write

        def counted(read=p._read_bucket, n=n):
            whole_reads[n] += 1
            return read()

        p._read_bucket = counted  # type: ignore[method-assign]
    tasks = [asyncio.create_task(p.run()) for p in projectors]
    try:
        config = CHANNEL
        for i in range(12):  # a channel reconfigured again and again: its value changes with every event
            config = {**config, "monitoring": {**config["monitoring"], "window_s": 60 + i}}
            await configure_channel(
                apps[i % 2].log, apps[0].js, "prod", "canary", ChannelConfig.model_validate(config), OPERATOR
            )
            await asyncio.sleep(0.02)
        last = (await apps[0].js.stream_info(s.releases_stream)).state.last_seq
        for p in projectors:
            while p.position < last:
                await asyncio.wait_for(p.flushed.wait(), 10)
        assert all(p.position == last for p in projectors)
        await asyncio.sleep(0.2)  # let the watcher see the last writes
        for key, seqs in seen.items():
            assert seqs == sorted(seqs), f"{key} went back: {seqs}"
        assert seen[rm.POSITION][-1] == last
        # each saw the other's writes, and read back only the keys it was writing (the whole bucket
        # at every write took ~10 ms per 100 keys of the activator's loop: p99 75 ms with two serves)
        assert whole_reads == [1, 1]
        value = json.loads((await kv.get(rm.channel_key("prod", "canary"))).value)
        assert value["show"]["config"]["monitoring"]["window_s"] == 71  # the last configuration
        assert value["seq"] <= last
        # a writer that is behind leaves a newer value alone
        await projectors[1]._put(rm.POSITION, {"stale": True}, 1, rm.fingerprint({"stale": True}))
        assert json.loads((await kv.get(rm.POSITION)).value)["seq"] == last
    finally:
        for t in [*tasks, watching]:
            t.cancel()
        await asyncio.gather(*tasks, watching, return_exceptions=True)
        for app in apps:
            await app.stop()
            await app.nc.close()


async def test_the_projector_starts_over_when_the_bucket_fails_it(nats_url, prefix):
    from services.jetstream.layout import ensure_layout

    app = await _app(nats_url, prefix)
    s = Subjects(prefix)
    projector = Projector(app, interval_s=0.01)
    task = asyncio.create_task(projector.run())
    try:
        await configure_channel(app.log, app.js, "prod", "canary", ChannelConfig.model_validate(CHANNEL), OPERATOR)
        while projector.position < 1:
            await asyncio.wait_for(projector.flushed.wait(), 10)
        await app.js.delete_key_value(s.read_bucket)  # gone under it: its writes fail
        await configure_channel(app.log, app.js, "prod", "other", ChannelConfig.model_validate(CHANNEL), OPERATOR)
        for _ in range(100):
            if projector.last_error is not None:
                break
            await asyncio.sleep(0.05)
        assert projector.last_error is not None
        await ensure_layout(app.js, s)  # the bucket again (as the next `kxr serve` start creates it)
        last = (await app.js.stream_info(s.releases_stream)).state.last_seq
        kv = await app.js.key_value(s.read_bucket)

        async def rewritten() -> bool:
            try:
                return json.loads((await kv.get(rm.POSITION)).value)["seq"] == last
            except Exception:
                return False

        for _ in range(200):
            if await rewritten():
                break
            await asyncio.sleep(0.05)
        assert await rewritten(), "the model was not written again"
        assert (await kv.get(rm.channel_key("prod", "canary"))).value  # every key, not only the newest
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await app.stop()
        await app.nc.close()


async def test_a_restarted_projector_resumes_only_from_a_bucket_it_can_trust(nats_url, prefix):
    """Resumed at the bucket's position when it was written under the same service keys from this log;
    a position written under other keys (or ahead of the log) makes it fold the release history again."""
    app = await _app(nats_url, prefix)
    s = Subjects(prefix)
    kv = await app.js.key_value(s.read_bucket)

    async def position_says(**changes) -> int:
        entry = await kv.get(rm.POSITION)
        doc = {**json.loads(entry.value), **changes}
        await kv.update(rm.POSITION, json.dumps(doc).encode(), last=entry.revision)
        return doc["seq"]

    try:
        await configure_channel(app.log, app.js, "prod", "canary", ChannelConfig.model_validate(CHANNEL), OPERATOR)
        assert (await _one_run(app)).resumed_at is None  # an empty bucket: the whole (one-entry) log
        at = json.loads((await kv.get(rm.POSITION)).value)["seq"]
        assert (await _one_run(app)).resumed_at == at
        await position_says(keys="sha256:" + "0" * 64)  # written by a service trusting other keys
        assert (await _one_run(app)).resumed_at is None
        assert json.loads((await kv.get(rm.POSITION)).value)["keys"] is None  # rewritten under ours
        await position_says(seq=at + 1000)  # ahead of this log (another log under the same prefix)
        assert (await _one_run(app)).resumed_at is None
    finally:
        await app.stop()
        await app.nc.close()


async def test_a_resume_takes_the_releases_the_follower_holds_and_reads_back_the_rest(nats_url, prefix, monkeypatch):
    """Resumed at the bucket's position, a release in flight there comes from the follower's world when
    nothing of it came after (no read of its events: a quarter of a restarted activator's work, read one
    by one); one that changed after is read back from its own events. Either way the history holds what
    a fold of each release's own events says (`release_history`, the oracle it replaced)."""
    app = await _app(nats_url, prefix)
    s, key = app.subjects, SigningKey.generate()
    try:
        for release_id in ("r1", "r2", "r3"):
            await request_release(app.log, release_id, request_data(make_pack("1.0.0", key)), PRODUCER)
        position = (await _one_run(app)).position  # the bucket: three releases open at `position`
        await app.follower.catch_up()
        note = operator.annotate(app.follower.world, "r2", "after the position", None, OPERATOR, datetime.now(UTC))
        await app.log.append(Entry(note.event, note.expected_seq, s.release_filter("r2")))  # r2 changes after it
        await request_release(app.log, "r4", request_data(make_pack("1.1.0", key)), PRODUCER)  # r4 begins after it

        read_back: list[str] = []
        real = projector_module.release_history

        async def counted(js, subjects, release_id, before_seq, service_keys=None):
            read_back.append(release_id)
            return await real(js, subjects, release_id, before_seq, service_keys)

        monkeypatch.setattr(projector_module, "release_history", counted)
        resumed = await _one_run(app)
        assert resumed.resumed_at == position
        assert read_back == ["r2"]
        monkeypatch.undo()
        keys = app.follower.service_keys
        for release_id in ("r1", "r2", "r3", "r4"):
            whole = await release_history(app.js, s, release_id, resumed.position + 1, keys)
            assert resumed.history.items[release_id].state == whole, release_id
        # and the follower far behind the bucket (a lagging process): every release read back, as before
        monkeypatch.setattr(projector_module, "FOLLOWER_WAIT_S", 0.05)
        monkeypatch.setattr(app.follower, "position", 0)
        left, taken = await Projector(app)._from_follower([[1, "r1", None, False]], position)
        assert (len(left), taken) == (1, 0)
    finally:
        await app.stop()
        await app.nc.close()
