"""A trigger JetStream relayed onto a release subject pages nobody.

On a server whose users share one account, any role can have JetStream store an API answer (bytes it
stored first) on a subject it may not publish to (docs/permissions.md "JetStream's answers"; embedded
`kxr serve` gives each role its own account, so the relay here goes through the service's own user);
every reader refuses such an entry as written by no role. The notifier reads its triggers through its
own durable consumer, so it must refuse them too (services/consumers/notifier/consumer.py
`Notifier.decode`): otherwise a producer forges a
`release.rolled_back` or `release.escalated` of its own (never activated) release, and the ops
webhook is paged, signed with the real secret, with the post recorded in the release's evidence.
Real per-role users, the embedded server's configuration.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from events.channel import ChannelConfig
from events.codec import encode_event, make_event
from events.model import Actor
from events.signing import SigningKey
from services.actions.producer import configure_channel, request_release
from services.consumers.notifier.consumer import DURABLE
from services.jetstream.log import EventLog
from tests.harness import CHANNEL, OPERATOR, PRODUCER, make_pack, request_data, wait_for
from tests.integration.webhook_server import WebhookServer
from tests.security.test_relayed_answers import relay

pytestmark = pytest.mark.security

FORGED = {
    "rolled_back": {"cohorts": ["internal"], "targets": {"internal": None}},
    "escalated": {"code": "monitoring/failed", "message": "page everyone", "escalation": "ops"},
}


@pytest.mark.parametrize("suffix", sorted(FORGED))
async def test_a_trigger_jetstream_relayed_pages_nobody(authed, as_role, service_app, suffix) -> None:
    s, app = authed.subjects, service_app.app
    producer, operator = await as_role("producer"), await as_role("operator")
    channel = "nt" + uuid.uuid4().hex[:6]
    rid = "r" + uuid.uuid4().hex[:8]
    with WebhookServer() as server:
        sink = {"name": "ops", "url": server.url("/ops"), "on": ["rolled_back", "escalated"]}
        await configure_channel(
            EventLog(operator.nc, operator.js, s),
            operator.js,
            "prod",
            channel,
            ChannelConfig.model_validate({**CHANNEL, "notifications": [sink]}),
            OPERATOR,
        )
        # the producer's right: request a release (its pack is never pushed: it ends rejected)
        pack = make_pack("1.0.0", SigningKey.generate())
        requested = await request_release(
            EventLog(producer.nc, producer.js, s), rid, request_data(pack, channel=channel), PRODUCER
        )
        # folded (by position: the service archives the release once it is rejected, which can come first)
        await app.follower.wait_for(requested, timeout=15)
        forged = make_event(
            f"release.{suffix}",
            FORGED[suffix],
            actor=Actor(kind="service", id="activator"),
            release_id=rid,
            correlation_id=rid,
        )
        subject = s.release(rid, suffix)
        # through the one user still in JetStream's account (every role's, on a one-account server)
        await relay(producer, s, encode_event(forged), subject, asker=await as_role("service"))
        seq = await wait_for(
            lambda: next((q for q, p in app.follower.undecodable.items() if p.subject == subject), None),
            15,
            "the relayed entry in the log (refused by the fold)",
        )

        async def handled() -> bool:  # the notifier's consumer has been given it and is done with it
            info = await app.js.consumer_info(s.releases_stream, DURABLE)
            return info.delivered.stream_seq >= seq and info.num_ack_pending == 0

        for _ in range(300):
            if await handled():
                break
            await asyncio.sleep(0.05)
        assert await handled(), "the notifier never finished with the relayed trigger"
        posts = server.posts("/ops")
    assert not posts, f"a producer's relayed {suffix} paged the ops webhook: {posts[0].body[:200]!r}"
