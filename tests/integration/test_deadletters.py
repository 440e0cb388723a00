"""Dead letters: the records, the max-deliver advisory path, and `kxr deadletter`."""

from __future__ import annotations

import asyncio
import json

from nats.js.api import AckPolicy, ConsumerConfig

from services.jetstream.reader import OrderedReader
from tests.harness import running_service


async def dead_letters(svc) -> list[dict]:
    reader = OrderedReader(svc.app.js, svc.app.subjects.deadletter_stream, [svc.app.subjects.deadletter_all()])
    try:
        return [json.loads(e.data) async for e in reader.read(follow=False, idle_timeout=0.2)]
    finally:
        await reader.close()


async def test_a_message_the_server_gave_up_on_is_dead_lettered(nats_url, prefix):
    async with running_service(nats_url, prefix, roles=()) as svc:
        js, subjects = svc.app.js, svc.app.subjects
        await js.publish(subjects.release("r1", "annotated"), b"payload of a message nobody can handle")
        # one of the service's consumers (its process not running here) receives it and dies every time
        # (never acks) until max_deliver: only the service's own durables' give-ups are its dead letters
        sub = await js.pull_subscribe(
            "",
            durable="kxr-guard",
            stream=subjects.releases_stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT, ack_wait=0.3, max_deliver=2, filter_subjects=[f"{prefix}.release.*.*"]
            ),
        )
        for _ in range(4):
            try:
                await sub.fetch(1, timeout=0.5)
            except TimeoutError:
                pass
        records: list[dict] = []
        for _ in range(50):
            # (the service's own fold keeps the undecodable entry too, as consumer "undecodable")
            records = [r for r in await dead_letters(svc) if r["consumer"] == "kxr-guard"]
            if records:
                break
            await asyncio.sleep(0.1)
        assert records, "no dead letter from the max-deliver advisory"
        r = records[0]
        assert (r["consumer"], r["subject"], r["deliveries"]) == ("kxr-guard", subjects.release("r1", "annotated"), 2)
        assert "max-deliver" in r["reason"]
