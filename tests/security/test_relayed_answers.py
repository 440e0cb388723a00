"""JetStream's answers relayed onto subjects a role may not publish to: never stored, never taken as written.

nats-server checks no permission when JetStream publishes an API answer on the reply subject a request
named, and a stream that captures that subject stores it (docs/permissions.md "JetStream's answers").
With a direct get the bytes are the requester's own: a producer stores them as a pack chunk (its
right), then asks for that chunk with an operator's or a runtime's subject as the reply.

Embedded `kxr serve` puts every role but the service in its own account: the answer goes back through
the import to the requester's account, where no stream captures anything (the first test, every role
against every stream). A server whose users share one account (`kxr creds nats-config` for an external
server) still relays, so the readers refuse what JetStream relayed (services/jetstream/client.py
`RELAYED`): the log's readers take such an entry as undecodable, the window's health reads as an
invalid report (never evidence), the live feed ignores it. Those tests relay through the one user
still in JetStream's account, the service's own. Real per-role users, the embedded server's configuration.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from events.channel import ChannelConfig
from services.actions.producer import configure_channel
from services.jetstream.client import connect
from services.jetstream.log import EventLog
from services.reads.audit import replay
from services.reads.health_reads import window_reports
from tests.harness import CHANNEL, OPERATOR, wait_for

pytestmark = pytest.mark.security


async def relay(producer, s, payload: bytes, onto: str, asker=None) -> None:
    """The producer stores `payload` as a pack chunk, then has JetStream answer a direct get of it on `onto`
    (asked by `asker`, the producer itself unless given)."""
    chunk = f"$O.{s.packs_bucket}.C.relay{uuid.uuid4().hex[:8]}"
    await producer.js.publish(chunk, payload)
    asker = asker or producer
    await asker.nc.publish(f"$JS.API.DIRECT.GET.OBJ_{s.packs_bucket}.{chunk}", b"", reply=onto)
    await asker.nc.flush()


async def test_no_role_can_have_jetstream_store_an_answer_on_a_subject_it_may_not_publish(authed, as_role):
    """Every outside role, a direct get (bytes it chose) and a STREAM.INFO, each answered onto a subject of
    the log, health, timers and dead letters: nothing is stored anywhere, and the role still gets its own
    answers (the import returns them to its account: an unanswered request would be a broken role, not a
    closed door)."""
    s = authed.subjects
    producer, service = await as_role("producer"), await as_role("service")
    streams = (s.releases_stream, s.health_stream, s.timers_stream, s.deadletter_stream)
    onto = (
        s.release("r-relay", "verified"),
        s.health("prod", "canary", "internal", "rt-x"),
        s.timer_fire("w-relay"),
        s.deadletter("relay"),
    )
    before = {name: (await service.js.stream_info(name)).state.messages for name in streams}
    chunk = f"$O.{s.packs_bucket}.C.relay{uuid.uuid4().hex[:8]}"
    await producer.js.publish(chunk, b'{"type": "channel.configured"}')
    for role in ("producer", "runtime", "operator", "auditor"):
        conn = await as_role(role)
        for subject in onto:
            await conn.nc.publish(f"$JS.API.DIRECT.GET.OBJ_{s.packs_bucket}.{chunk}", b"", reply=subject)
            await conn.nc.publish(f"$JS.API.STREAM.INFO.{s.releases_stream}", b"", reply=subject)
        await conn.nc.flush()
        info = await conn.js.stream_info(s.releases_stream)  # its own answers still come back
        assert info.config.name == s.releases_stream, role
    await asyncio.sleep(0.5)
    after = {name: (await service.js.stream_info(name)).state.messages for name in streams}
    assert after == before


def forged_configuration(window_s: int) -> bytes:
    return json.dumps(
        {
            "event_id": f"forged-{uuid.uuid4().hex[:8]}",
            "type": "channel.configured",
            "schema_version": 1,
            "occurred_at": datetime.now(UTC).isoformat(),
            "actor": {"kind": "operator", "id": "not-the-operator"},
            "data": {**CHANNEL, "monitoring": {**CHANNEL["monitoring"], "window_s": window_s}},
        }
    ).encode()


async def test_a_relayed_channel_configuration_is_refused_by_every_reader(authed, as_role, service_app):
    """The producer cannot reconfigure a channel (e.g. loosen its thresholds) by relaying an
    operator-looking event onto its subject: the service's follower and the auditor's replay refuse it."""
    s, app = authed.subjects, service_app.app
    producer, operator = await as_role("producer"), await as_role("operator")
    channel = "relay" + uuid.uuid4().hex[:6]
    config = ChannelConfig.model_validate({**CHANNEL, "monitoring": {**CHANNEL["monitoring"], "window_s": 60}})
    await configure_channel(EventLog(operator.nc, operator.js, s), operator.js, "prod", channel, config, OPERATOR)
    await relay(producer, s, forged_configuration(1), s.channel("prod", channel), asker=await as_role("service"))
    stored = await wait_for(
        lambda: [seq for seq, p in app.follower.undecodable.items() if "relayed by JetStream" in str(p)] or None,
        10,
        "the relayed entry refused by the follower",
    )
    assert app.follower.world.channel_config("prod", channel).monitoring.window_s == 60  # the operator's stands
    audit = await asyncio.wait_for(replay(operator.js, s), 60)
    assert {(v.code, v.seq) for v in audit.violations} >= {("undecodable", stored[0])}


async def test_a_relayed_health_report_is_never_a_runtimes(authed, as_role):
    """A sample relayed onto another runtime's health subject is listed as an invalid report, never as
    that runtime's sample (read by the service's own client, as `kxr serve` reads)."""
    s = authed.subjects
    producer = await as_role("producer")
    victim = "rt-victim-" + uuid.uuid4().hex[:6]
    since = datetime.now(UTC) - timedelta(seconds=5)
    sample = {"runtime_id": victim, "digest": None, "at": since.isoformat(), "kind": "sample", "requests": 10**9}
    await relay(
        producer,
        s,
        json.dumps({**sample, "errors": 0}).encode(),
        s.health("prod", "canary", "internal", victim),
        asker=await as_role("service"),
    )
    await asyncio.sleep(0.3)
    service = await connect(authed.url, name="test-service-reader", **authed.creds["service"].connect_options())
    try:
        reports = await window_reports(
            service.jetstream(), s, "prod", "canary", ["internal"], since, datetime.now(UTC) + timedelta(seconds=5)
        )
    finally:
        await service.close()
    assert [x for _, x in reports.valid if x.runtime_id == victim] == []
    assert [i.problem for _, i in reports.invalid if i.runtime == victim] == [
        f"relayed by JetStream from stream OBJ_{s.packs_bucket}: not a runtime's report"
    ]


async def test_a_relayed_read_model_makes_the_reader_fold_instead(nats_url, prefix):
    """A value JetStream relayed into the read-model bucket (any role can: an API answer on a `$KV`
    subject) is not the service's: the read models give no view (the command folds the log instead)."""
    from nats.js.api import StreamConfig

    from events.subjects import Subjects
    from services.jetstream.layout import read_bucket_config
    from services.reads import model_reads

    s = Subjects(prefix)
    nc = await connect(nats_url, name="test-read-model-relay")
    try:
        js = nc.jetstream()
        kv = await js.create_key_value(read_bucket_config(s, 1))  # as the service lays it out
        await kv.put("position", json.dumps({"seq": 0, "keys": None}).encode())
        assert await model_reads._position(nc, s.read_bucket) is not None  # the writer's own: read
        await js.add_stream(
            StreamConfig(name=f"{prefix.upper()}_ELSEWHERE", subjects=[f"{prefix}.elsewhere"], allow_direct=True)
        )
        await js.publish(f"{prefix}.elsewhere", json.dumps({"seq": 0, "keys": None}).encode())
        reply = f"$KV.{s.read_bucket}.position"
        await nc.publish(f"$JS.API.DIRECT.GET.{prefix.upper()}_ELSEWHERE.{prefix}.elsewhere", b"", reply=reply)
        await nc.flush()
        await asyncio.sleep(0.3)
        with pytest.raises(model_reads.NoView, match="relayed by JetStream"):
            await model_reads._position(nc, s.read_bucket)
    finally:
        await nc.close()
