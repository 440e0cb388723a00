"""A reader cannot make the service write dead letters.

A role's consumer on the log lives in JetStream's account, so JetStream's advisories about it are on the
very subjects the service's max-deliver watcher subscribes to (`$JS.EVENT.ADVISORY.CONSUMER.
MAX_DELIVERIES.<log>.*`). The watcher took any consumer's advisory as one of its own: an auditor (reads
the log, publishes nothing) made a consumer with `max_deliver: 1`, pulled once without acking, and the
service wrote a dead letter of a healthy entry under a name the auditor chose — once per entry per
consumer, into a stream without limits. (Found by an outside review; not new with the role accounts.)
Real per-role users, the embedded server's configuration.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from events.channel import ChannelConfig
from services.actions.producer import configure_channel
from services.jetstream.log import EventLog
from tests.harness import CHANNEL, OPERATOR

pytestmark = pytest.mark.security


async def test_an_auditors_own_consumer_giving_up_is_no_dead_letter_of_the_service(authed, as_role, service_app):
    s = authed.subjects
    operator, auditor, service = await as_role("operator"), await as_role("auditor"), await as_role("service")
    channel = "dl" + uuid.uuid4().hex[:6]
    config = ChannelConfig.model_validate(CHANNEL)
    await configure_channel(EventLog(operator.nc, operator.js, s), operator.js, "prod", channel, config, OPERATOR)
    before = (await service.js.stream_info(s.deadletter_stream)).state.messages
    name = "kxr-looks-like-the-service"  # any name but the service's own durables
    cfg = {
        "name": name,
        "ack_policy": "explicit",
        "max_deliver": 1,
        "ack_wait": 500_000_000,
        "filter_subject": s.channel("prod", channel),
        "inactive_threshold": 30_000_000_000,
    }
    created = await auditor.nc.request(
        f"$JS.API.CONSUMER.CREATE.{s.releases_stream}.{name}",
        json.dumps({"stream_name": s.releases_stream, "config": cfg}).encode(),
        timeout=5,
    )
    assert "error" not in json.loads(created.data), created.data
    inbox = auditor.nc.new_inbox()
    got = []

    async def take(msg) -> None:
        got.append(msg)  # never acked (the auditor may not ack): JetStream gives up after one delivery

    await auditor.nc.subscribe(inbox, cb=take)
    pull = json.dumps({"batch": 1, "expires": 3_000_000_000}).encode()
    await auditor.nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{s.releases_stream}.{name}", pull, reply=inbox)
    for _ in range(40):  # delivered, the ack wait passes, JetStream gives up and says so
        if got:
            break
        await asyncio.sleep(0.1)
    assert got, "the auditor's consumer never delivered"
    await asyncio.sleep(2.0)  # the advisory comes 0.5 s after the delivery; the watcher acts at once
    assert (await service.js.stream_info(s.deadletter_stream)).state.messages == before
