"""A service restarted from its snapshot says what a whole fold of the log says (issue 18, contract honesty).

- the entries that count for nothing (an unsigned service event, one that does not decode) survive a
  restart from the snapshot: `kxr status` (the read models) lists what a whole fold lists;
- an entry that does not decode is listed with the ignored ones, never silently absent (status, the
  read models, `kxr release list --fold`);
- a snapshot folded under other service keys is not loaded (the log is replayed from 1);
- a tombstone the log disagrees with takes the log's word (it was retried forever), and a restore
  that cannot read the log stops after a few tries instead of looping.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import pytest
from rpds import HashTrieMap

from events.codec import encode_event, make_event
from events.model import Actor, RollbackStarted
from events.signing import SigningKey
from events.subjects import Subjects
from projections.world import World, archive_all, tombstone
from services.actions.producer import request_event
from services.jetstream.client import connect
from services.jetstream.janitor import all_consumers
from services.jetstream.log_reads import load_signed_world
from services.reads import follower as follower_module
from services.reads import model_reads
from services.reads.follower import RESTORE_TRIES, Follower
from services.reads.history import load_history
from services.reads.shapes import status_of
from services.reads.snapshots import Snapshots
from tests import harness
from tests.harness import OPERATOR, make_pack, request_data, running_service, wait_for

# a schema version no reader speaks: on a release's request subject, an entry that does not decode
JUNK = b'{"type": "release.requested", "schema_version": 99}'


async def _closed_release(svc, release_id: str = "r0") -> None:
    await svc.configure()
    await svc.runtime("t-int-1")
    await svc.runtime("tenant-42")
    await svc.request(release_id, make_pack("1.0.0", svc.key), rollback={"strategy": "none"})
    await svc.wait_release(release_id)


async def test_a_restart_from_the_snapshot_lists_what_a_whole_fold_lists(nats_url, prefix):
    async with running_service(nats_url, prefix) as svc:
        key, s, js = svc.key, svc.app.subjects, svc.app.js
        await svc.configure()
        forged = request_event(
            "rforged", request_data(make_pack("1.0.0", key)), Actor(kind="service", id="preparer")
        )  # a service actor no service key signed for
        forged_seq = (await js.publish(s.release("rforged", "requested"), encode_event(forged))).seq
        junk_seq = (await js.publish(s.release("rjunk", "requested"), JUNK)).seq
        await svc.app.follower.wait_for(junk_seq)
        before = dict(svc.app.follower.ignored)
        assert "not signed" in before[forged_seq] or "unsigned" in before[forged_seq], before
        assert before[junk_seq].startswith("undecodable: schema_version 99"), before
    # stopping saved a snapshot past both entries; the next process starts there, not at 1
    async with running_service(nats_url, prefix, key=key) as svc2:
        follower, js = svc2.app.follower, svc2.app.js
        assert follower.started_from >= junk_seq
        assert {seq: follower.ignored[seq] for seq in before if seq in follower.ignored} == before
        assert follower.ignored.total >= len(before)
        await svc2.catch_up()
        # kxr status from the read models, and from a whole fold: the same entries, the same whys
        keys = svc2.service_keys
        world, ignored = await load_signed_world(js, s, keys)
        whole = status_of(world, ignored, True)
        assert {i["seq"] for i in whole["ignored"]} >= {forged_seq, junk_seq}
        shown = await model_reads.read_view(
            svc2.app.nc, s.releases_stream, s.read_bucket, model_reads.keys_id(keys),
            lambda v: model_reads.status(v, True), wait_s=20,
        )  # fmt: skip
        assert (shown["ignored"], shown["ignored_total"]) == (whole["ignored"], whole["ignored_total"])
        # kxr release list --fold: the junk request is listed with why, not skipped
        history = await load_history(js, s, keys)
        assert history.ignored[junk_seq] == before[junk_seq] and forged_seq in history.ignored


async def test_a_snapshot_folded_under_other_service_keys_is_not_loaded(nats_url, prefix, caplog):
    async with running_service(nats_url, prefix) as svc:
        key = svc.key
        await svc.configure()
        await svc.request("r0", make_pack("1.0.0", key))
        # the service's own (signed) events move r0: under other keys they count for nothing
        await wait_for(lambda: (r := svc.world.release("r0")) is not None and r.phase != "requested", 10, "r0 moves")
    harness._SERVICE_KEYS[prefix] = SigningKey.generate()  # KX_SERVICE_KEYS changed: another service key
    with caplog.at_level(logging.WARNING, logger="services.reads.snapshots"):
        async with running_service(nats_url, prefix, key=key, roles=()) as svc2:  # the follower alone
            assert svc2.app.follower.started_from == 0  # replayed from sequence 1 instead
            # the key that signed it is not trusted any more: refused before its fold's keys are compared
            assert "not a trusted service key" in caplog.text
            await svc2.app.follower.catch_up()
            world, _ = await load_signed_world(svc2.app.js, svc2.app.subjects, svc2.app.service_keys)
            assert svc2.app.follower.world == archive_all(world)
            assert svc2.app.follower.world.release("r0").phase == "requested"


async def test_a_tombstone_the_log_disagrees_with_takes_the_logs_word(nats_url, prefix, caplog):
    async with running_service(nats_url, prefix) as svc:
        key, keys = svc.key, svc.app.service_keys
        await _closed_release(svc)
    # the snapshot says r0 ended at another sequence than its own events do (a snapshot of another history)
    nc = await connect(nats_url)
    try:
        # signed as the service signs (only such a snapshot is loaded): its content is what is tested here
        snapshots = Snapshots(nc.jetstream(), Subjects(prefix), signer=harness._SERVICE_KEYS[prefix])
        snapshot = await snapshots.read(keys)
        assert snapshot is not None
        stone = snapshot.world.tombstones["r0"]
        moved = snapshot.world.tombstones.insert("r0", tombstone(stone.last_seq - 1, stone.outcome))
        moved = moved.insert("rghost", tombstone(stone.last_seq, "success"))  # and one the log never saw
        await snapshots.save(replace(snapshot.world, tombstones=moved), keys)
    finally:
        await nc.close()
    with caplog.at_level(logging.WARNING, logger="services.reads.follower"):
        async with running_service(nats_url, prefix, key=key, roles=()) as svc2:
            assert svc2.app.follower.started_from == snapshot.world.applied_seq
            r0 = svc2.world.release("r0")  # the observer folds whole
            event = make_event(
                "release.rollback_started",
                RollbackStarted(trigger="operator", reason="after close", targets={}),
                actor=OPERATOR,
                release_id="r0",
                causation_id=r0.last_event_id,
            )
            readers = len(await all_consumers(svc2.app.js, svc2.app.subjects.releases_stream))
            seq = await svc2.app.log.append(svc2.app.log.release_entry(event, r0.last_seq))
            # r0 changes after close: restored whole first (it was retried every 0.5 s, forever,
            # each try leaving a reader on the server for a minute)
            await svc2.app.follower.wait_for(seq, timeout=10)
            await svc2.observer.wait_for(seq)
            await asyncio.sleep(1.0)  # what a retry loop would have added meanwhile
            assert len(await all_consumers(svc2.app.js, svc2.app.subjects.releases_stream)) <= readers + 1
            assert svc2.app.follower.world.release("r0") == svc2.world.release("r0")
            assert "taking the log's word" in caplog.text
            ghost = make_event(
                "release.rollback_started",
                RollbackStarted(trigger="operator", reason="never requested", targets={}),
                actor=OPERATOR,
                release_id="rghost",
            )
            seq = await svc2.app.log.append(svc2.app.log.release_entry(ghost, 0))
            await svc2.app.follower.wait_for(seq, timeout=10)
            await svc2.observer.wait_for(seq)
            assert "rghost" not in svc2.app.follower.world.tombstones  # no such release before: as a whole fold
            assert svc2.app.follower.world.release("rghost") == svc2.world.release("rghost")
            assert "taking the log's word (no such release)" in caplog.text


async def test_a_restore_that_cannot_read_the_log_stops_after_a_few_tries(nats_url, prefix, monkeypatch, caplog):
    monkeypatch.setattr(follower_module, "RESTORE_FIRST_DELAY_S", 0.01)
    nc = await connect(nats_url)
    try:
        world = World(applied_seq=3, tombstones=HashTrieMap({"r0": tombstone(3, "success")}))
        follower = Follower(nc.jetstream(), Subjects(prefix), world)  # no stream under this prefix: reads fail
        with caplog.at_level(logging.WARNING, logger="services.reads.follower"):
            with pytest.raises(RuntimeError, match=f"could not be read from the log in {RESTORE_TRIES} tries"):
                await asyncio.wait_for(follower._restore("r0", 4), 10)
        assert len([r for r in caplog.records if "not restored yet" in r.getMessage()]) == RESTORE_TRIES - 1
        assert follower.world is world  # nothing folded from a read that failed
    finally:
        await nc.close()
