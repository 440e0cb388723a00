"""What a client built from CONTRACT.md alone reads with its stock JetStream API, under the real per-role users.

Packs. CONTRACT §2 puts them in the object store bucket `kx_packs` and §5 has producers put them
there; a runtime or producer in another language reads them with its client's object-store get
(nats.py's `ObjectStore.get`, nats.go's `ObjectStore.Get`): it looks the stream up by subject, creates
an ordered push consumer without a name and answers its flow control. Under embedded `kxr serve`
each role lives in its own account, so the consumer's deliveries (made in `KX`, JetStream's account)
reach the reader only through its account's stream import of its own inbox. Before that, a stock
get timed out for every role (`$JS.API.STREAM.NAMES` denied; then no delivery).

The log. §4 has a runtime read the last message per subject and follow new ones, §4 an auditor read
from sequence 1: with a consumer named in the subject (pull or push; the nameless legacy create stays
refused on the log: a body naming a service durable would update it).

And what the new rights must not give: one runtime receiving another's deliveries, or a reader's
push consumer copying packs onto a subject the log or health captures.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid

import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.permissions import API
from tests.security.conftest import until

pytestmark = pytest.mark.security

READERS = ("runtime-rt-a", "runtime", "producer")
GET_S = 10.0


async def stock_put(producer, bucket: str, data: bytes) -> str:
    """CONTRACT §5 step 1 with nats.py's own put: the object named by the bytes' digest."""
    name = f"sha256-{hashlib.sha256(data).hexdigest()}"
    await (await producer.js.object_store(bucket)).put(name, data)
    return name


@pytest.mark.parametrize("reader", READERS)
async def test_a_pack_reader_gets_a_pack_with_its_clients_stock_object_get(authed, as_role, reader):
    s = authed.subjects
    producer, conn = await as_role("producer"), await as_role(reader)
    data = READERS.index(reader).to_bytes(1, "big") + b"kb-core pack bytes " * 20_000  # 3 chunks of 128 KiB
    name = await stock_put(producer, s.packs_bucket, data)
    store = await conn.js.object_store(s.packs_bucket)
    got = await asyncio.wait_for(store.get(name), GET_S)
    assert got.data == data and got.info.size == len(data)
    assert not conn.permission_errors() and not producer.permission_errors(), (conn.errors, producer.errors)


async def test_one_runtimes_pack_deliveries_reach_no_other_runtime(authed, as_role):
    """KX lends each runtime user's inbox to the runtimes' account: another runtime (its own user,
    or the shared one) may not listen there, and receives nothing of a get made while it tries."""
    s = authed.subjects
    producer, rt_a = await as_role("producer"), await as_role("runtime-rt-a")
    name = await stock_put(producer, s.packs_bucket, b"rt-a's own pack " * 30_000)
    inbox = authed.creds["runtime-rt-a"].inbox_prefix
    for spy_name in ("runtime-rt-b", "runtime"):
        spy = await as_role(spy_name)
        got: list = []

        async def on_msg(msg, got=got) -> None:
            got.append(msg)

        await spy.nc.subscribe(f"{inbox}.>", cb=on_msg)
        await spy.violation("subscription", f"{inbox}.>")
        await asyncio.wait_for((await rt_a.js.object_store(s.packs_bucket)).get(name), GET_S)
        await asyncio.sleep(0.3)
        assert not got, f"{spy_name} received {len(got)} of rt-a's deliveries"
    assert not rt_a.permission_errors(), rt_a.errors


@pytest.mark.parametrize("reader", READERS)
async def test_a_readers_push_consumer_copies_no_pack_onto_the_log_or_health(authed, as_role, reader):
    """The legacy `CONSUMER.CREATE.OBJ_<packs>` lets a reader name any deliver subject in the body:
    one the log or health captures, one the service listens on. Nothing arrives there and nothing is
    stored; the same consumer delivering to the reader's own inbox does deliver (the control)."""
    s = authed.subjects
    packs = f"OBJ_{s.packs_bucket}"
    producer, conn, service = await as_role("producer"), await as_role(reader), await as_role("service")
    await stock_put(producer, s.packs_bucket, reader.encode() + b" bytes an attacker would copy " * 10_000)
    heard: list = []

    async def on_msg(msg) -> None:
        heard.append(msg.subject)

    await service.nc.subscribe(s.health_all(), cb=on_msg)  # the service's live health
    streams = (s.releases_stream, s.health_stream)
    before = {x: (await service.js.stream_info(x)).state.messages for x in streams}
    targets = (
        f"{s.prefix}.health.prod.canary.all.rt-a",
        f"{s.prefix}.scope.prod.canary.all.activated",
        f"{s.prefix}.release.evil.requested",
    )
    for target in targets:
        cfg = ConsumerConfig(deliver_subject=target, ack_policy=AckPolicy.NONE)
        await conn.nc.request(f"{API}.CONSUMER.CREATE.{packs}", _create(packs, cfg), timeout=5)
    own: list = []

    async def on_own(msg) -> None:
        own.append(msg)

    mine = f"{conn.nc._inbox_prefix.decode()}.copy"
    await conn.nc.subscribe(mine, cb=on_own)
    await conn.nc.request(
        f"{API}.CONSUMER.CREATE.{packs}",
        _create(packs, ConsumerConfig(deliver_subject=mine, ack_policy=AckPolicy.NONE)),
        timeout=5,
    )
    await until(lambda: own, "the control: the reader's own push consumer delivers to its inbox")
    await asyncio.sleep(1.0)
    assert not heard, heard[:3]
    assert {x: (await service.js.stream_info(x)).state.messages for x in streams} == before


def _create(stream: str, cfg: ConsumerConfig) -> bytes:
    return json.dumps({"stream_name": stream, "config": cfg.as_dict()}).encode()


@pytest.mark.parametrize("role", ["runtime-rt-a", "runtime", "auditor", "operator", "producer"])
async def test_every_role_follows_the_log_with_a_named_consumer_as_the_contract_reads_it(authed, as_role, role):
    """CONTRACT §4's read: the last message per subject, then each new one, with nats.py's stock push
    subscription and pull subscription, each consumer named (`ConsumerConfig(name=...)`)."""
    s = authed.subjects
    operator, reader = await as_role("operator"), await as_role(role)
    subject = s.channel("prod", f"c-{uuid.uuid4().hex[:8]}")  # a subject of the log any role may read
    for n in (1, 2):
        await operator.js.publish(subject, json.dumps({"n": n}).encode())
    pushed: list = []

    async def on_msg(msg) -> None:
        pushed.append(json.loads(msg.data)["n"])

    config = ConsumerConfig(
        name=f"rd-{uuid.uuid4().hex[:8]}",
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=30.0,
    )
    await reader.js.subscribe(subject, cb=on_msg, stream=s.releases_stream, config=config)
    pull = await reader.js.pull_subscribe(
        subject,
        stream=s.releases_stream,
        config=ConsumerConfig(
            name=f"rp-{uuid.uuid4().hex[:8]}", deliver_policy=DeliverPolicy.LAST_PER_SUBJECT, inactive_threshold=30.0
        ),
    )
    assert [json.loads(m.data)["n"] for m in await pull.fetch(1, timeout=5)] == [2]
    await until(lambda: pushed == [2], f"{role}'s push consumer: the last message of the subject")
    await operator.js.publish(subject, json.dumps({"n": 3}).encode())
    await until(lambda: pushed == [2, 3], f"{role}'s push consumer: the next message")
    assert [json.loads(m.data)["n"] for m in await pull.fetch(1, timeout=5)] == [3]
    assert not reader.permission_errors(), reader.errors


@pytest.mark.parametrize("role", ["runtime-rt-a", "runtime", "auditor", "operator", "producer"])
async def test_a_nameless_consumer_on_the_log_is_refused(authed, as_role, role):
    """The legacy `CONSUMER.CREATE.<stream>` takes the consumer's name from the body, and a body naming an
    existing durable updates it: on the log it stays the service's alone (README "Readers name their
    consumers"): here the very request a client's nameless consumer sends, with a body naming a durable."""
    s = authed.subjects
    reader = await as_role(role)
    body = {"stream_name": s.releases_stream, "config": {"name": "kxr-preparer", "max_ack_pending": 1}}
    await reader.publish_denied(f"{API}.CONSUMER.CREATE.{s.releases_stream}", json.dumps(body).encode())
