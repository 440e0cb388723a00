"""Atomic batches of different releases committed together (EventLog's group commit), on a real server.

The server syncs every atomic batch to disk before it answers and does not sync batches sent side by
side together, so the log writer commits the batches waiting behind one in flight as one atomic batch.
Every message keeps its own expected last subject sequence; a group the server refuses is committed
again one batch at a time, so each caller gets the answer it would have had alone.
"""

from __future__ import annotations

import asyncio

from events.codec import make_event
from events.model import Actor, Scope
from services.consumers.activator import Activator
from services.jetstream.log import AppendConflict, Entry, EventLog
from services.reads.audit import replay
from tests.harness import CHANNEL, make_pack, running_service

ACTOR = Actor(kind="service", id="activator")


def pointer(channel: str, cohort: str, release_id: str, event_id: str | None = None):
    data = {
        "pack": {"name": "kb", "version": "1.0.0", "digest": "sha256:" + "ab" * 32, "size": 1},
        "manifest": "m",
        "release_id": release_id,
        "kind": "rollout",
    }
    scope = Scope(env="prod", channel=channel, cohort=cohort)
    return make_event("scope.activated", data, actor=ACTOR, release_id=release_id, scope=scope, event_id=event_id)


def switch(channel: str, release_id: str, expected: int = 0, event_id: str | None = None) -> list[Entry]:
    """Two pointers of one release, each expecting its scope subject at `expected`."""
    return [Entry(pointer(channel, c, release_id, event_id and f"{event_id}-{c}"), expected) for c in ("a", "b")]


async def stored(log: EventLog, channel: str, cohort: str):
    return await log._js.get_last_msg(
        log.subjects.releases_stream, log.subjects.scope("prod", channel, cohort, "activated")
    )


async def test_batches_asked_for_together_are_one_commit_each_answered_with_its_own_sequence(log):
    channels = [f"ch{i}" for i in range(5)]
    seqs = await asyncio.gather(*(log.commit_batch(switch(ch, f"r{i}")) for i, ch in enumerate(channels)))
    batch_ids = []
    for i, ch in enumerate(channels):
        a, b = await stored(log, ch, "a"), await stored(log, ch, "b")
        assert (a.seq, b.seq) == (seqs[i] - 1, seqs[i]), "each caller gets its own batch's last sequence"
        assert a.data and f'"release_id":"r{i}"'.encode() in a.data
        assert a.headers["Nats-Batch-Id"] == b.headers["Nats-Batch-Id"]
        batch_ids.append(a.headers["Nats-Batch-Id"])
    # the first was sent at once, alone; the four asked for while it was in flight went as one atomic batch
    assert len(set(batch_ids[1:])) == 1 and batch_ids[0] != batch_ids[1]
    assert seqs == sorted(seqs) and seqs[-1] - seqs[0] == 8  # consecutive, in the order asked


async def test_a_stale_expectation_in_a_group_refuses_only_its_own_batch(log):
    await log.commit_batch(switch("taken", "r0"))  # taken.a and taken.b now have pointers
    before = (await log._js.stream_info(log.subjects.releases_stream)).state.messages
    results = await asyncio.gather(
        log.commit_batch(switch("free1", "r1")),
        log.commit_batch(switch("taken", "r2", expected=0)),  # stale: a lost race
        log.commit_batch(switch("free2", "r3")),
        return_exceptions=True,
    )
    assert isinstance(results[1], AppendConflict)
    assert all(isinstance(r, int) for r in (results[0], results[2])), results
    assert (await log._js.stream_info(log.subjects.releases_stream)).state.messages == before + 4
    assert b'"release_id":"r0"' in (await stored(log, "taken", "a")).data  # nothing of r2 was stored
    for ch, rid in (("free1", "r1"), ("free2", "r3")):
        assert f'"release_id":"{rid}"'.encode() in (await stored(log, ch, "b")).data


async def test_a_refused_group_is_split_until_each_batch_gets_its_own_answer(log):
    await log.commit_batch(switch("held1", "h1"))
    await log.commit_batch(switch("held2", "h2"))
    asked = [("g0", None), ("held1", "g1"), ("g2", None), ("g3", None), ("held2", "g4"), ("g5", None)]
    results = await asyncio.gather(
        *(log.commit_batch(switch(ch, rid or ch)) for ch, rid in asked), return_exceptions=True
    )
    refused = [i for i, r in enumerate(results) if isinstance(r, AppendConflict)]
    assert refused == [1, 4], results  # the two stale ones, and only they
    for i in (0, 2, 3, 5):
        channel = asked[i][0]
        last = await stored(log, channel, "b")
        assert last.seq == results[i] and f'"release_id":"{channel}"'.encode() in last.data


async def test_two_batches_on_one_scope_are_never_grouped_and_exactly_one_wins(log):
    results = await asyncio.gather(
        log.commit_batch(switch("same", "ra")), log.commit_batch(switch("same", "rb")), return_exceptions=True
    )
    assert sorted(type(r).__name__ for r in results) == ["AppendConflict", "int"], results
    winner = "ra" if isinstance(results[0], int) else "rb"
    for cohort in ("a", "b"):
        assert f'"release_id":"{winner}"'.encode() in (await stored(log, "same", cohort)).data


async def test_a_retried_batch_in_a_group_is_recognised_and_the_others_stored(log):
    first = await log.commit_batch(switch("again", "r1", event_id="fixed"), batch_id="b-fixed")
    results = await asyncio.gather(
        log.commit_batch(switch("again", "r1", event_id="fixed"), batch_id="b-fixed-retry"),
        log.commit_batch(switch("other", "r2")),
    )
    assert results[0] == first  # the retry is our own stored batch, not a conflict
    assert b'"release_id":"r2"' in (await stored(log, "other", "a")).data


async def test_releases_switching_at_once_through_the_activator(nats_url, prefix):
    """Three releases on three channels activate at once: two of them share one synced commit,
    each pointer is its own release's, and the audit finds nothing."""
    channels = {"ra": "canary", "rb": "beta", "rc": "gamma"}
    async with running_service(nats_url, prefix, roles=("preparer", "distributor", "verifier")) as svc:
        for n, (rid, channel) in enumerate(channels.items()):
            await svc.configure(channel=channel, config=CHANNEL)
            await svc.request(rid, make_pack(f"1.{n}.0", svc.key), channel=channel, rollback={"strategy": "none"})
        for rid in channels:
            await svc.wait_release(rid, "verified")
        await svc.app.follower.catch_up()
        activator = Activator(svc.app)
        decided = await asyncio.gather(*(activator.settle(rid) for rid in channels))
        assert all(decided)
        await svc.catch_up()
        world = svc.world
        batches = set()
        for rid, channel in channels.items():
            assert world.release(rid).phase == "activated"
            scope = world.scope("prod", channel, "internal")
            assert scope.active.release_id == rid
            batches.add(scope.active_batch)
        assert len(batches) == 2  # the first alone, the two decided while it was in flight together
        audit = await replay(svc.app.js, svc.app.subjects, service_keys=svc.service_keys)
        assert not audit.violations, [v.line() for v in audit.violations]
