"""One log entry holding a number past a double's range is reported, never fatal (a real JetStream).

A `channel.configured` whose custom threshold is a 400-digit integer (valid JSON, and the operator role
may write it) made `decode_event` raise OverflowError: `kxr audit replay` died with a traceback and the
service's follower task stopped — on every restart again, since the log keeps the entry for ever.
"""

from __future__ import annotations

import asyncio
import json

from events.subjects import Subjects
from services.jetstream.client import connect
from services.jetstream.layout import ensure_layout
from services.reads.audit import replay
from tests.harness import make_pack, running_service

CONFIG = {
    "cohorts": [{"name": "all"}],
    "plan": [["all"]],
    "monitoring": {
        "window_s": 60,
        "thresholds": {"error_rate_max": 0.1, "queue_depth_max": 10**400},
        "prometheus": {"url": "http://127.0.0.1:9", "queries": {"queue_depth": "max(q)"}},
    },
}


def configured(event_id: str) -> bytes:
    doc = {
        "event_id": event_id,
        "type": "channel.configured",
        "schema_version": 1,
        "occurred_at": "2030-01-01T00:00:00Z",
        "actor": {"kind": "operator", "id": "ops"},
        "data": CONFIG,
    }
    return json.dumps(doc).encode()


async def test_the_auditors_replay_reports_the_entry_as_undecodable(nats_url, prefix) -> None:
    nc = await connect(nats_url)
    try:
        js, subjects = nc.jetstream(), Subjects(prefix)
        await ensure_layout(js, subjects)
        ack = await js.publish(subjects.channel("prod", "canary"), configured("e-big"))
        audit = await asyncio.wait_for(replay(js, subjects), 30)
    finally:
        await nc.close()
    assert [(v.code, v.seq) for v in audit.violations] == [("undecodable", ack.seq)]


async def test_the_service_keeps_serving_after_the_entry(nats_url, prefix) -> None:
    async with running_service(nats_url, prefix, roles=("preparer",)) as svc:
        await svc.configure()
        await svc.app.js.publish(svc.app.subjects.channel("prod", "other"), configured("e-big"))
        await svc.request("r1", make_pack("1.0.0", svc.key), rollback={"strategy": "none"})
        release = await svc.wait_release("r1", "prepared", timeout=20)  # the follower folded past the entry
        assert release.prepared is not None
        assert svc.app.follower.world.channel_problems  # the channel's entry is known as a problem, not a config
