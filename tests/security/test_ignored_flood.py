"""Resource exhaustion through ignored entries: a producer may append `release.*.requested`, and an
event claiming a service actor that no service key signed counts for nothing, listed as ignored.
A flood of them must not grow what the service writes per value without bound: the read models'
`position` (one KV value, under a message's 1 MB) carries the newest 100 and the total, so the
projector keeps writing and `kxr status` keeps answering from it (services/reads/shapes.py
IGNORED_SHOWN). The service's follower and its snapshot keep the same newest entries and the total."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from events.codec import encode_event
from events.model import Actor
from services.actions.producer import request_event
from services.reads import follower as follower_module
from services.reads import model_reads
from services.reads.shapes import IGNORED_SHOWN
from tests.harness import make_pack, request_data
from tests.security.conftest import Conns, rid

pytestmark = pytest.mark.security

FLOOD = IGNORED_SHOWN + 60
KEPT = 50


async def test_a_flood_of_forged_service_events_keeps_the_read_models_bounded(authed, service_app, monkeypatch):
    monkeypatch.setattr(follower_module, "UNDECODABLE_KEPT", KEPT)  # what the consumers may look up: bounded too
    s = authed.subjects
    conns = Conns(authed)
    try:
        producer = await conns("producer")
        pack = make_pack("1.0.0", service_app.producer_key)
        forged_seqs = []
        for _ in range(FLOOD):
            release_id = rid()
            event = request_event(release_id, request_data(pack), Actor(kind="service", id="preparer"))
            ack = await producer.js.publish(s.release(release_id, "requested"), encode_event(event))
            forged_seqs.append(ack.seq)
        app = service_app.app
        await app.follower.wait_for(forged_seqs[-1])
        assert all(seq in app.follower.undecodable for seq in forged_seqs[-KEPT:]), "a forged service event counted"
        assert len(app.follower.undecodable) == KEPT  # the older ones forgotten (still counted in `ignored`)
        # the follower keeps the newest IGNORED_SHOWN and counts the rest; so does its snapshot
        assert list(app.follower.ignored) == forged_seqs[-IGNORED_SHOWN:] and app.follower.ignored.total >= FLOOD
        await app.follower.save_snapshot()
        snapshot = await app.snapshots.read(app.service_keys)
        assert snapshot is not None and snapshot.world.applied_seq >= forged_seqs[-1]
        assert [seq for seq, _ in snapshot.ignored][-IGNORED_SHOWN:] == forged_seqs[-IGNORED_SHOWN:]
        assert len(snapshot.ignored) == IGNORED_SHOWN and snapshot.ignored_total >= FLOOD

        kv = await service_app.conn.js.key_value(s.read_bucket)
        deadline = time.monotonic() + 30
        while True:  # the projector still writes its position past the flood
            position = json.loads((await kv.get("position")).value)
            if position["seq"] >= forged_seqs[-1]:
                break
            assert time.monotonic() < deadline, f"read models stuck at {position['seq']}"
            await asyncio.sleep(0.1)
        assert len(position["ignored"]) == IGNORED_SHOWN and position["ignored_total"] >= FLOOD
        assert [i["seq"] for i in position["ignored"]][-1] == forged_seqs[-1]  # the newest kept

        reader = await conns("operator")
        shown = await model_reads.read_view(
            reader.nc, s.releases_stream, s.read_bucket, model_reads.keys_id(service_app.service_keys),
            lambda v: model_reads.status(v, True), wait_s=10,
        )  # fmt: skip
        assert len(shown["ignored"]) == IGNORED_SHOWN and shown["ignored_total"] == position["ignored_total"]
    finally:
        await conns.close()
