"""A promotion is stored as one atomic batch: the source's `promoted`, then the linked request (real JetStream).

Before, the promoter appended the linked request, then `promoted` on its own release. When the second
append lost a race (an operator's abort or pause between the decision and the append) the linked release
stood on the next channel though its source never promoted it. Here the race is run against the server.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from events.codec import make_event
from events.ids import derived_event_id
from events.model import Actor, Promoted, Requested
from events.signing import SigningKey
from services.app import App
from services.bootstrap import start_service
from services.consumers.outputs import Ctx, Promotion, release_event
from services.jetstream.client import connect
from services.jetstream.log import AppendConflict
from services.settings import Settings
from tests.harness import OPERATOR, PRODUCER, make_pack, request_data, trust_root_for

SERVICE = Actor(kind="service", id="promoter")


async def _app(nats_url: str, prefix: str) -> App:
    nc = await connect(nats_url, name=f"promotion-{prefix}")
    app = App(nc, Settings(nats_url=nats_url, prefix=prefix), trust_root_for(SigningKey.generate()))
    await start_service(app, ())  # the follower alone: the promoter's append is what is tested
    return app


async def _stored(app: App, release_id: str) -> list:
    """Every entry stored on the release's subjects, in order (raw messages, with their headers)."""
    info = await app.js.stream_info(
        app.subjects.releases_stream, subjects_filter=app.subjects.release_filter(release_id)
    )
    count = sum((info.state.subjects or {}).values())
    if not count:
        return []
    sub = await app.js.pull_subscribe(
        app.subjects.release_filter(release_id), stream=app.subjects.releases_stream, durable=None
    )
    msgs = await sub.fetch(count, timeout=5)
    await sub.unsubscribe()
    return msgs


async def _source(app: App, release_id: str):
    """A release on the log (a producer's request), as the follower folded it."""
    pack = make_pack("1.2.0", SigningKey.generate())
    event = make_event("release.requested", request_data(pack), actor=PRODUCER, release_id=release_id)
    seq = await app.log.append(app.log.release_entry(event, 0))
    await app.follower.wait_for(seq)
    return app.follower.world.release(release_id), pack


def _promotion(source, linked: str, pack) -> Promotion:
    """What the promoter decides for `source` (as promoter.decide builds it)."""
    ctx = Ctx(now=datetime.now(UTC), service="promoter")
    promoted = release_event(ctx, source, "promoted", Promoted(to_channel="stable", promoted_to=linked))
    data = {**request_data(pack, channel="stable"), "promoted_from": source.release_id}
    request = make_event(
        "release.requested",
        Requested.model_validate(data),
        actor=SERVICE,
        release_id=linked,
        causation_id=source.last_event_id,
        correlation_id=linked,
        event_id=derived_event_id(source.last_event_id, "promoter", "promote/request"),
    )
    return Promotion(promoted, request)


async def test_a_promotion_that_lost_its_race_stores_nothing_and_one_that_won_stores_both_in_one_batch(
    nats_url, prefix
):
    app = await _app(nats_url, prefix)
    try:
        decided_on, pack = await _source(app, "src")
        promotion = _promotion(decided_on, "src-stable", pack)

        # an operator's abort lands between the promoter's decision and its append
        abort = make_event("release.aborted", {"rationale": "wrong pack"}, actor=OPERATOR, release_id="src")
        await app.log.append(app.log.release_entry(abort, decided_on.last_seq))
        with pytest.raises(AppendConflict):
            await app.emit([promotion], decided_on)
        assert await _stored(app, "src-stable") == []  # no linked release: before, its request stood here
        assert [m.subject.rsplit(".", 1)[1] for m in await _stored(app, "src")] == ["requested", "aborted"]

        # decided on the newest state (here: as if nothing had moved), both land, in one batch, `promoted` first
        await app.follower.catch_up()
        now = app.follower.world.release("src")
        promotion = _promotion(now, "src-stable", pack)
        await app.emit([promotion], now)
        promoted = (await _stored(app, "src"))[-1]
        (request,) = await _stored(app, "src-stable")
        assert promoted.headers["Nats-Msg-Id"] == promotion.promoted.event_id
        assert request.headers["Nats-Msg-Id"] == promotion.request.event_id
        assert request.metadata.sequence.stream == promoted.metadata.sequence.stream + 1
        assert promoted.headers["Nats-Batch-Id"] == request.headers["Nats-Batch-Id"]

        # the same decision delivered again (a redelivery): recognised as stored, nothing new
        await app.emit([promotion], now)
        assert len(await _stored(app, "src")) == 3 and len(await _stored(app, "src-stable")) == 1
    finally:
        await app.stop()


async def test_a_promotion_to_a_release_id_already_taken_stores_nothing(nats_url, prefix):
    """Someone requested the linked id first: the source's `promoted` must not name a release it did not write."""
    app = await _app(nats_url, prefix)
    try:
        source, pack = await _source(app, "src2")
        squatter = make_event(
            "release.requested", request_data(pack, channel="stable"), actor=PRODUCER, release_id="src2-stable"
        )
        await app.log.append(app.log.release_entry(squatter, 0))
        with pytest.raises(AppendConflict):
            await app.emit([_promotion(source, "src2-stable", pack)], source)
        assert [m.subject.rsplit(".", 1)[1] for m in await _stored(app, "src2")] == ["requested"]
        assert len(await _stored(app, "src2-stable")) == 1
    finally:
        await app.stop()
