"""The notifier on FastStream against a real nats-server: its durable is the one it always had (an
existing deployment keeps its position), a durable removed under a running service is bound again,
and a `cloudevents` sink receives the triggering event as a CloudEvent."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

from nats.js.api import AckPolicy, DeliverPolicy
from nats.js.errors import NotFoundError

from events.codec import make_event
from events.model import Actor, Scope
from services.consumers.notifier import consumer
from services.consumers.notifier.consumer import DURABLE, trigger_subject
from services.jetstream import subscribers
from services.jetstream.log import Entry
from tests.harness import CHANNEL, running_service, wait_for
from tests.integration.webhook_server import WebhookServer
from tests.unit.test_cloudevents import problems

GUARD = Actor(kind="service", id="guard")


async def test_the_durable_is_kept_rebound_when_removed_and_a_cloudevents_sink_gets_a_cloudevent(
    nats_url, prefix, monkeypatch
):
    monkeypatch.setattr(subscribers, "KEEP_EVERY_S", 0.1)
    monkeypatch.setattr(consumer, "PULL_TIMEOUT_S", 0.5)  # a pull on the removed durable expires soon
    with WebhookServer() as hooks:
        async with running_service(nats_url, prefix, roles=("notifier",)) as svc:
            js, s = svc.app.js, svc.app.subjects

            async def pulling() -> bool:  # FastStream's fetch loop has a pull request waiting: it runs
                try:
                    return bool((await js.consumer_info(s.releases_stream, DURABLE)).num_waiting)
                except NotFoundError:  # not bound yet: the subscriber binds it as it starts, after the service
                    return False

            for _ in range(100):
                if await pulling():
                    break
                await asyncio.sleep(0.05)
            assert await pulling(), "the notifier never pulled"
            info = await js.consumer_info(s.releases_stream, DURABLE)
            assert info.config.deliver_policy == DeliverPolicy.NEW and info.config.ack_policy == AckPolicy.EXPLICIT
            assert set(info.config.filter_subjects or ()) == {
                trigger_subject(prefix, t)
                for t in (
                    "release.rolled_back",
                    "release.monitoring_inconclusive",
                    "release.escalated",
                    "scope.flagged",
                )
            }

            # removed under the running service (by hand, or with its stream): bound again, same name
            await js.delete_consumer(s.releases_stream, DURABLE)

            async def exists() -> bool:
                try:
                    await js.consumer_info(s.releases_stream, DURABLE)
                    return True
                except NotFoundError:
                    return False

            for _ in range(100):
                if await exists():
                    break
                await asyncio.sleep(0.05)
            assert await exists(), "the notifier's durable was not bound again"

            await svc.configure(
                config={
                    **CHANNEL,
                    "notifications": [
                        {"name": "bus", "url": hooks.url("/ce"), "on": ["flagged"], "format": "cloudevents"}
                    ],
                }
            )
            flag = make_event(
                "scope.flagged",
                {
                    "pack": {"name": "kb", "version": "1.0.0", "digest": "sha256:" + "b" * 64},
                    "code": "signature/threshold_not_met",
                    "message": "the keys that signed it were rotated out",
                    "detected_at": datetime.now(UTC).isoformat(),
                },
                actor=GUARD,
                scope=Scope(env="prod", channel="canary", cohort="internal"),
            )
            await svc.app.log.append(Entry(flag))
            await wait_for(lambda: hooks.posts("/ce"), 15, "the CloudEvent post")
            (post,) = hooks.posts("/ce")
            assert post.headers["content-type"] == "application/cloudevents+json"
            doc = json.loads(post.body)
            assert problems(doc) == []
            assert (doc["id"], doc["type"], doc["source"], doc["subject"], doc["kxkind"]) == (
                flag.event_id,
                "io.konnaxion.releases.scope.flagged",
                f"urn:konnaxion:releases:{prefix}",
                "prod/canary/internal",
                "flagged",
            )
