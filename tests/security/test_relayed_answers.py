"""JetStream's answers relayed onto subjects a role may not publish to are never taken as written.

Every role and stream share one account, and nats-server checks no permission when JetStream
publishes an API answer on the reply subject a request named; a stream that captures that subject
stores it (docs/permissions.md "JetStream's answers"). With a direct get the bytes are the
requester's own: a producer stores them as a pack chunk (its right), then asks for that chunk with
an operator's or a runtime's subject as the reply. Until the account is split per role, the readers
refuse what JetStream relayed (services/jetstream/client.py `RELAYED`): the log's readers take such an
entry as undecodable, the window's health reads as an invalid report (never evidence), the live
feed ignores it. Real per-role users, the embedded server's configuration.
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


async def relay(producer, s, payload: bytes, onto: str) -> None:
    """The producer stores `payload` as a pack chunk, then has JetStream answer a direct get of it on `onto`."""
    chunk = f"$O.{s.packs_bucket}.C.relay{uuid.uuid4().hex[:8]}"
    await producer.js.publish(chunk, payload)
    await producer.nc.publish(f"$JS.API.DIRECT.GET.OBJ_{s.packs_bucket}.{chunk}", b"", reply=onto)
    await producer.nc.flush()


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
    await relay(producer, s, forged_configuration(1), s.channel("prod", channel))
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
        producer, s, json.dumps({**sample, "errors": 0}).encode(), s.health("prod", "canary", "internal", victim)
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
