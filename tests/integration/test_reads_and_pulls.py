"""Batched direct gets and continuous pulls against the real server
(services/jetstream/direct.py, services/jetstream/pull.py)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from services.jetstream.direct import DirectGetError, SubjectStream, last_per_subject
from services.jetstream.pull import NO_RESPONDERS_FOR_S, ConsumerGone, ContinuousPull


@pytest.fixture
async def js_stream(nats_url, prefix):
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    name = prefix.upper()
    await js.add_stream(StreamConfig(name=name, subjects=[f"{prefix}.>"], allow_direct=True))
    yield nc, js, name
    await js.delete_stream(name)
    await nc.close()


async def test_last_per_subject_pages_through_every_subject(js_stream, prefix) -> None:
    nc, js, stream = js_stream
    for i in range(3):
        for runtime in "abcde":
            await js.publish(f"{prefix}.h.{runtime}", f"{runtime}{i}".encode())
    await js.publish(f"{prefix}.other.x", b"not asked for")
    got = [m async for m in last_per_subject(nc, stream, [f"{prefix}.h.>"], page=2)]  # three pages
    assert [(m.subject.rsplit(".", 1)[-1], m.data) for m in got] == [(r, f"{r}2".encode()) for r in "abcde"]
    assert all(m.stored_at is not None and m.seq > 0 for m in got)
    assert [m async for m in last_per_subject(nc, stream, [f"{prefix}.nothing.>"])] == []


async def test_subject_stream_reads_every_message_in_order_across_batches(js_stream, prefix) -> None:
    nc, js, stream = js_stream
    for i in range(23):
        await js.publish(f"{prefix}.chunks", str(i).encode())
        await js.publish(f"{prefix}.noise", b"interleaved")
    got = [m.data async for m in SubjectStream(nc, stream, f"{prefix}.chunks", batch=5)]
    assert got == [str(i).encode() for i in range(23)]
    assert [m async for m in SubjectStream(nc, stream, f"{prefix}.empty", batch=5)] == []


async def test_an_opened_stream_closed_unread_leaves_no_route(js_stream, prefix) -> None:
    nc, js, stream = js_stream
    await js.publish(f"{prefix}.chunks", b"x")
    opened = await SubjectStream(nc, stream, f"{prefix}.chunks").start()
    await opened.close()
    from services.jetstream.direct import _replies_for

    assert _replies_for(nc)._routes == {}


async def test_a_direct_get_on_a_missing_stream_fails_with_the_reason(js_stream, prefix) -> None:
    nc, _, _ = js_stream
    with pytest.raises(DirectGetError):
        [m async for m in SubjectStream(nc, "NO_SUCH_STREAM_" + prefix.upper(), "x", timeout=2)]


async def test_continuous_pull_delivers_as_stored_and_asks_again(js_stream, prefix) -> None:
    nc, js, stream = js_stream
    await js.add_consumer(
        stream,
        ConsumerConfig(name="w", durable_name="w", ack_policy=AckPolicy.EXPLICIT, filter_subject=f"{prefix}.work"),
    )
    pull = ContinuousPull(nc, stream, "w", batch=4)
    seen = []

    async def consume() -> None:
        async for msg in pull.messages():
            seen.append(msg.data)
            await msg.ack()
            if len(seen) == 10:
                return

    task = asyncio.create_task(consume())
    for i in range(10):  # more than two batches: the pull must keep asking
        await js.publish(f"{prefix}.work", str(i).encode())
    await asyncio.wait_for(task, 10)
    await pull.close()
    assert seen == [str(i).encode() for i in range(10)]
    # acks are fire-and-forget and the server applies them on the consumer's own loop, after the
    # API may already have answered an info request: ask until they land (or the deadline says they did not)
    for _ in range(100):
        info = await js.consumer_info(stream, "w")
        if info.num_ack_pending == 0:
            break
        await asyncio.sleep(0.02)
    assert info.num_ack_pending == 0 and info.delivered.stream_seq == 10


async def test_continuous_pull_says_when_its_consumer_is_deleted(js_stream, prefix) -> None:
    nc, js, stream = js_stream
    await js.add_consumer(stream, ConsumerConfig(name="gone", durable_name="gone", ack_policy=AckPolicy.EXPLICIT))
    pull = ContinuousPull(nc, stream, "gone", batch=4, heartbeat_s=0.2)

    async def consume() -> None:
        async for _ in pull.messages():
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.3)
    await js.delete_consumer(stream, "gone")
    with pytest.raises(ConsumerGone):
        await asyncio.wait_for(task, 10)
    await pull.close()


async def test_continuous_pull_asks_again_while_nobody_answers_yet(js_stream, prefix) -> None:
    """A `503` (no responders) is what a cluster answers while a new consumer's leader is not yet
    known to our server (CI, stop 24: a command's read re-made its consumer and printed the status's
    headers as the reason). The pull asks again until the consumer answers."""
    nc, js, stream = js_stream
    await js.publish(f"{prefix}.early", b"x")
    pull = ContinuousPull(nc, stream, "late", batch=4, heartbeat_s=0.2)
    task = asyncio.create_task(anext(pull.batches()))
    await asyncio.sleep(0.6)  # several requests unanswered by now
    assert not task.done()
    await js.add_consumer(stream, ConsumerConfig(name="late", durable_name="late", ack_policy=AckPolicy.NONE))
    batch = await asyncio.wait_for(task, 10)
    await pull.close()
    assert [m.data for m in batch] == [b"x"]


async def test_continuous_pull_says_in_one_line_when_nobody_ever_answers(js_stream) -> None:
    nc, _, stream = js_stream
    pull = ContinuousPull(nc, stream, "never", batch=4, heartbeat_s=0.2)
    started = asyncio.get_running_loop().time()
    with pytest.raises(ConsumerGone) as gone:
        await asyncio.wait_for(anext(pull.batches()), 10)
    waited = asyncio.get_running_loop().time() - started
    await pull.close()
    assert NO_RESPONDERS_FOR_S <= waited < NO_RESPONDERS_FOR_S + 2
    assert "\n" not in str(gone.value) and "no responders" in str(gone.value)


async def test_subject_stream_from_a_start_time_reads_what_was_stored_since(js_stream, prefix) -> None:
    """`start_time`: the server finds the first message stored at or after it; wildcards filter."""
    nc, js, stream = js_stream
    for i in range(3):
        await js.publish(f"{prefix}.h.a.rt{i}", f"before{i}".encode())
    await asyncio.sleep(0.05)
    mark = [m async for m in SubjectStream(nc, stream, f"{prefix}.h.a.rt2")][-1].stored_at
    assert mark is not None
    start = mark + timedelta(milliseconds=20)
    await asyncio.sleep(0.05)
    for i in range(7):
        await js.publish(f"{prefix}.h.a.rt{i % 2}", f"after{i}".encode())
        await js.publish(f"{prefix}.h.b.rt{i}", b"other cohort")
    got = [m.data async for m in SubjectStream(nc, stream, f"{prefix}.h.a.*", start_time=start, batch=3)]
    assert got == [f"after{i}".encode() for i in range(7)]  # three batches, in order, nothing from before
    later = datetime.now(UTC) + timedelta(minutes=1)
    assert [m async for m in SubjectStream(nc, stream, f"{prefix}.h.a.*", start_time=later)] == []


async def test_window_reports_merges_cohorts_in_stored_order_within_the_span(nats_url, prefix) -> None:
    """The monitor's read: several cohorts side by side, merged by sequence; nothing before
    `start` or after `end`; an invalid report listed by its runtime, never dropped."""
    from events.subjects import Subjects
    from services.reads.health_reads import window_reports

    s = Subjects(prefix)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=s.health_stream, subjects=[s.health_all()], allow_direct=True))
    try:

        async def report(cohort: str, runtime: str, requests: int) -> datetime:
            at = datetime.now(UTC)
            body = {"runtime_id": runtime, "at": at.isoformat(), "kind": "sample", "requests": requests}
            await js.publish(s.health("prod", "c1", cohort, runtime), json.dumps(body).encode())
            return at

        await report("a", "rt-early", 1)
        await asyncio.sleep(0.05)
        start = datetime.now(UTC)
        for i in range(5):
            await report("a" if i % 2 else "b", f"rt{i}", 10 + i)
        await js.publish(s.health("prod", "c1", "a", "rt-bad"), b"not json")
        await report("c", "rt-other-cohort", 99)
        end = datetime.now(UTC)
        await asyncio.sleep(0.05)
        got = await window_reports(js, s, "prod", "c1", ["a", "b"], start, end)
        assert [sample.requests for _, sample in got.valid] == [10, 11, 12, 13, 14]
        assert [bad.runtime for _, bad in got.invalid] == ["rt-bad"]
        assert all(start <= at <= end for at, _ in got.valid)
    finally:
        await js.delete_stream(s.health_stream)
        await nc.close()


# ---- a lagging answerer: a mirror inherits direct gets (`mirror_direct`) ------------------------


async def _lagging_mirror(js, stream: str, prefix: str) -> str:
    """A mirror of `stream` holding only `<prefix>.early.>`: to a direct get on anything else it is a
    replica that has not caught up. nats-server makes a mirror of a stream that allows direct gets
    answer them too (in the same queue group as the stream), once it has mirrored a message."""
    from nats.js.api import StreamSource

    mirror = f"{stream}_MIRROR"
    await js.add_stream(StreamConfig(name=mirror, mirror=StreamSource(name=stream, filter_subject=f"{prefix}.early.>")))
    await js.publish(f"{prefix}.early.x", b"mirrored")
    for _ in range(400):  # (a loaded machine: up to 20 s)
        if (await js.stream_info(mirror)).state.messages:
            break
        await asyncio.sleep(0.05)
    info = await js.stream_info(mirror)
    assert info.state.messages, "the mirror mirrored nothing"  # it answers direct gets once it has
    assert info.config.mirror_direct, "the mirror did not inherit direct gets"
    return mirror


async def test_a_read_answered_by_a_lagging_mirror_is_completed_from_the_leader(js_stream, prefix) -> None:
    """Half the direct gets go to a mirror that lacks the messages: unconfirmed reads come back short
    (so the mirror does answer), confirmed ones whole, from a sequence and from a start time."""
    nc, js, stream = js_stream
    mirror = await _lagging_mirror(js, stream, prefix)
    try:
        start = datetime.now(UTC)
        for i in range(12):
            await js.publish(f"{prefix}.h.a", str(i).encode())
        expected = [str(i).encode() for i in range(12)]

        unconfirmed = []
        for _ in range(20):
            reader = SubjectStream(nc, stream, f"{prefix}.h.a", batch=4, confirm=False)
            unconfirmed.append([m.data async for m in reader])
        assert any(read != expected for read in unconfirmed), "no direct get reached the lagging mirror"
        for _ in range(20):
            assert [m.data async for m in SubjectStream(nc, stream, f"{prefix}.h.a", batch=4)] == expected
            timed = SubjectStream(nc, stream, f"{prefix}.h.a", start_time=start, batch=4)
            got = [m async for m in timed]
            assert [m.data for m in got] == expected
            assert [m.seq for m in got] == sorted(m.seq for m in got) and all(m.stored_at for m in got)
    finally:
        await js.delete_stream(mirror)


async def test_read_models_answered_from_behind_their_position_are_read_again(js_stream, prefix) -> None:
    """A server behind the read models' position (a lagging replica; here a mirror that holds one early
    key) answers the operator's direct gets with older values or none, under a position read from the
    leader that says "current": `kxr status` listed fewer scopes. Each page must now come from a
    server that holds the position (its end-of-batch sequence), else it is asked again."""
    from nats.js.api import KeyValueConfig, StreamSource

    from services.jetstream.direct import Behind
    from services.reads import model_reads

    nc, js, log = js_stream
    await js.publish(f"{prefix}.log.x", b"the log's last entry: seq 1")
    bucket = f"{prefix}_read"
    kv = await js.create_key_value(KeyValueConfig(bucket=bucket, history=1, direct=True))
    stream, mirror = f"KV_{bucket}", f"KV_{bucket}_MIRROR"
    keys = ["scope.early", *(f"scope.s{i}" for i in range(5))]
    try:
        for key in keys:
            await kv.put(key, json.dumps({"seq": 1, "key": key}).encode())
        position_seq = await kv.put("position", json.dumps({"seq": 1, "ignored": [], "in_flight": []}).encode())
        await js.add_stream(
            StreamConfig(name=mirror, mirror=StreamSource(name=stream, filter_subject=f"$KV.{bucket}.scope.early"))
        )
        for _ in range(400):  # (a loaded machine: up to 20 s)
            if (await js.stream_info(mirror)).state.messages:
                break
            await asyncio.sleep(0.05)
        assert (await js.stream_info(mirror)).config.mirror_direct, "the mirror does not answer direct gets"

        async def last(at_least: int) -> list[str]:
            return [m.subject async for m in last_per_subject(nc, stream, [f"$KV.{bucket}.scope.>"], at_least=at_least)]

        short = [await last(0) for _ in range(20)]
        assert any(len(read) < len(keys) for read in short), "no direct get reached the mirror"
        refused = 0
        for _ in range(20):
            try:
                assert len(await last(position_seq)) == len(keys)
            except Behind:
                refused += 1
        assert refused, "the mirror's answers were not told apart"

        async def scopes_and_many(view: model_reads.View) -> tuple[list[str], list[str]]:
            return sorted(await view.under("scope")), sorted(await view.many(keys))

        for _ in range(10):  # every view whole: a page from behind is asked again
            got = await model_reads.read_view(nc, log, bucket, None, scopes_and_many, wait_s=10)
            assert got == (sorted(keys), sorted(keys))
    finally:
        await js.delete_stream(mirror)
        await js.delete_key_value(bucket)


async def test_a_pack_is_found_when_a_lagging_mirror_answers_its_metadata(nats_url, prefix) -> None:
    """The object store's metadata is read by a direct get: "not found" from a mirror that lacks it
    is asked of the leader before the pack is called absent; its chunks are read whole."""
    from events.subjects import Subjects
    from services.jetstream.packstore import PackStore

    s = Subjects(prefix)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    store = await js.create_object_store(s.packs_bucket)
    stream = f"OBJ_{s.packs_bucket}"
    mirror = None
    try:
        from nats.js.api import StreamSource

        packs = PackStore(js, s)
        await store.put("early", b"x")  # all the mirror holds: this object's metadata
        mirror = f"{stream}_MIRROR"
        await js.add_stream(
            StreamConfig(name=mirror, mirror=StreamSource(name=stream, filter_subject=packs._meta_subject("early")))
        )
        for _ in range(400):  # (a loaded machine: up to 20 s)
            if (await js.stream_info(mirror)).state.messages:
                break
            await asyncio.sleep(0.05)
        assert (await js.stream_info(mirror)).state.messages, "the mirror mirrored nothing"
        data = bytes(range(256)) * 2048  # 4 chunks of 128 KiB
        await packs.put("pack", data)
        for _ in range(12):
            assert await packs.stored_meta("pack") is not None
            chunks = await packs.chunks("pack")
            assert chunks is not None
            assert b"".join([c async for c in chunks]) == data
    finally:
        if mirror:
            await js.delete_stream(mirror)
        await js.delete_object_store(s.packs_bucket)
        await nc.close()


async def test_pre_flight_asks_the_leader_before_calling_a_cohort_silent(nats_url, prefix) -> None:
    """Pre-flight counts reporters with one "last of each subject" direct get, which a lagging mirror
    may answer with nothing: a cohort silent in that answer is asked of the leader before a refusal."""
    from events.subjects import Subjects
    from services.reads.health_reads import recent_reporters

    s = Subjects(prefix)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=s.health_stream, subjects=[s.health_all()], allow_direct=True))
    mirror = None
    try:
        mirror = await _lagging_mirror(js, s.health_stream, f"{prefix}.health.prod.c0")
        since = datetime.now(UTC) - timedelta(minutes=5)
        for runtime in ("rt1", "rt2"):
            body = {"runtime_id": runtime, "at": datetime.now(UTC).isoformat(), "kind": "sample", "requests": 1}
            await js.publish(s.health("prod", "c1", "a", runtime), json.dumps(body).encode())
        alone = [
            [m async for m in last_per_subject(nc, s.health_stream, [s.health_cohort("prod", "c1", "a")])]
            for _ in range(20)
        ]
        assert any(not found for found in alone), "no direct get reached the lagging mirror"
        for _ in range(20):
            counts = await recent_reporters(js, s, "prod", "c1", ["a", "b"], since)
            assert counts["a"] >= 1 and counts["b"] == 0, counts
    finally:
        if mirror:
            await js.delete_stream(mirror)
        await js.delete_stream(s.health_stream)
        await nc.close()


async def test_a_closed_pull_leaves_nothing_for_a_drain_to_wait_on(js_stream, nats_url, prefix) -> None:
    """The pull reads nats.py's own subscription queue: what it took is marked done, and what it never
    took is marked done at close, so the connection's `drain()` (which joins every subscription's
    queue) does not sit out its timeout."""
    _, js, stream = js_stream
    nc = await nats.connect(nats_url)  # its own: drained (and so closed) at the end
    await js.add_consumer(stream, ConsumerConfig(name="d", durable_name="d", ack_policy=AckPolicy.NONE))
    for i in range(10):
        await js.publish(f"{prefix}.x", str(i).encode())
    pull = ContinuousPull(nc, stream, "d", batch=8, heartbeat_s=0.2)
    got = []
    async for msg in pull.messages():
        got.append(msg.data)
        if len(got) == 3:
            break
    await asyncio.sleep(0.2)  # the rest of the batch arrives, untaken
    queue = pull._queue
    await pull.close()
    assert queue._unfinished_tasks == 0 and queue.empty()
    await asyncio.wait_for(nc.drain(), 5)


@pytest.mark.parametrize("answer", [b"not json", b"[]", b'{"message": {"seq": 1}}', b'{"message": null}'])
async def test_an_answer_from_the_leader_that_is_not_a_message_is_a_named_read_error(answer) -> None:
    """Whatever the leader's answer is, a read that cannot use it fails as a DirectGetError naming it
    (the readers' fail-closed paths name their cause), never as a stray KeyError or JSON error."""
    from services.jetstream.direct import leader_next

    class Answer:
        data = answer

    class Client:
        async def request(self, subject, payload, timeout):
            return Answer()

    with pytest.raises(DirectGetError, match="answered what is not a message"):
        await leader_next(Client(), "S", "x.>", seq=1)  # type: ignore[arg-type]
