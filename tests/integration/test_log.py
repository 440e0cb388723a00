"""The log's JetStream guarantees, on a real server: layout, dedup, CAS, atomic batches."""

from __future__ import annotations

import pytest
from nats.js.api import StorageType, StreamConfig

from events.codec import make_event
from events.model import Actor, Scope
from events.signing import SigningKey
from events.subjects import Subjects
from services.jetstream.client import connect
from services.jetstream.layout import LayoutError, ensure_layout, read_bucket_config, release_log_config
from services.jetstream.log import AppendConflict, Entry
from tests.harness import make_pack, request_data

ACTOR = Actor(kind="service", id="test")


def requested(release_id: str, event_id: str | None = None):
    pack = make_pack("1.0.0", SigningKey.generate())
    return make_event("release.requested", request_data(pack), actor=ACTOR, release_id=release_id, event_id=event_id)


def pointer(prefix_scope: tuple[str, str, str], release_id: str, event_id: str | None = None):
    pack = make_pack("1.0.0", SigningKey.generate())
    env, channel, cohort = prefix_scope
    data = {
        "pack": {"name": "kb", "version": "1.0.0", "digest": pack.digest, "size": 1},
        "manifest": "m",
        "release_id": release_id,
        "kind": "rollout",
    }
    return make_event(
        "scope.activated",
        data,
        actor=ACTOR,
        release_id=release_id,
        scope=Scope(env=env, channel=channel, cohort=cohort),
        event_id=event_id,
    )


async def test_layout_is_idempotent_and_matches_the_contract(log):
    js, subjects = log._js, log.subjects
    await ensure_layout(js, subjects)  # second time: no error, nothing changes
    info = await js.stream_info(subjects.releases_stream)
    cfg = info.config
    assert cfg.deny_delete and cfg.deny_purge and cfg.allow_atomic
    assert cfg.storage == StorageType.FILE and not cfg.max_age and cfg.duplicate_window >= 120
    assert set(cfg.subjects) == set(subjects.log_subjects())
    assert (await js.stream_info(subjects.health_stream)).config.max_age > 0
    assert (await js.stream_info(subjects.timers_stream)).config.allow_msg_schedules
    await js.object_store(subjects.packs_bucket)


@pytest.mark.parametrize(
    "breakage, reason",
    [
        ({"deny_delete": False}, "deny_delete is off"),
        ({"deny_purge": False}, "deny_purge is off"),
        ({"max_age": 3600.0}, "max_age"),
        ({"allow_atomic": False}, "allow_atomic is off"),
        ({"duplicate_window": 10.0}, "duplicate window"),
        ({"max_msgs_per_subject": 1}, "max_msgs_per_subject"),
    ],
)
async def test_refuses_a_log_that_breaks_the_guarantees(nats_url, prefix, breakage, reason):
    nc = await connect(nats_url)
    js = nc.jetstream()
    subjects = Subjects(prefix)
    cfg = release_log_config(subjects, 1)
    await js.add_stream(
        StreamConfig(
            **{
                **cfg.as_dict(),
                **breakage,
                "duplicate_window": breakage.get("duplicate_window", 300.0),
                "max_age": breakage.get("max_age", 0),
            }
        )
    )
    with pytest.raises(LayoutError, match=reason):
        await ensure_layout(js, subjects)
    await nc.close()


@pytest.mark.parametrize(
    "breakage, reason",
    [({"history": 5}, "keeps 5 values per key"), ({"direct": False}, "does not allow direct gets")],
)
async def test_refuses_a_read_model_bucket_readers_cannot_rely_on(nats_url, prefix, breakage, reason):
    nc = await connect(nats_url)
    js = nc.jetstream()
    subjects = Subjects(prefix)
    cfg = read_bucket_config(subjects, 1)
    for field, value in breakage.items():
        setattr(cfg, field, value)
    await js.create_key_value(cfg)
    with pytest.raises(LayoutError, match=reason):
        await ensure_layout(js, subjects)
    await nc.close()


async def test_a_release_id_is_requested_once(log):
    await log.append(log.release_entry(requested("r1"), 0))
    with pytest.raises(AppendConflict):
        await log.append(log.release_entry(requested("r1"), 0))


async def test_a_retried_append_is_recognised_not_duplicated(log):
    event = requested("r1")
    first = await log.append(log.release_entry(event, 0))
    # the retry meets "wrong last sequence" (expected-seq is checked before dedup) and must
    # still be reported as the same stored message
    again = await log.append(log.release_entry(event, 0))
    assert again == first
    info = await log._js.stream_info(log.subjects.releases_stream)
    assert info.state.messages == 1


async def test_stale_expected_sequence_is_a_conflict(log):
    await log.append(log.release_entry(requested("r1"), 0))
    other = make_event("release.annotated", {"rationale": "x"}, actor=ACTOR, release_id="r1")
    with pytest.raises(AppendConflict):
        await log.append(log.release_entry(other, 0))
    assert await log.append(log.release_entry(other, 1)) == 2


async def test_atomic_batch_is_all_or_nothing(log):
    js = log._js
    s1, s2 = ("prod", "canary", "a"), ("prod", "canary", "b")
    # b already has a pointer, so a batch expecting b at 0 must store nothing at all
    await log.append(Entry(pointer(s2, "r0"), 0))
    before = (await js.stream_info(log.subjects.releases_stream)).state.messages
    with pytest.raises(AppendConflict):
        await log.commit_batch([Entry(pointer(s1, "r1"), 0), Entry(pointer(s2, "r1"), 0)])
    assert (await js.stream_info(log.subjects.releases_stream)).state.messages == before
    # with the right expectations both switch together, in consecutive sequences
    last = await log.commit_batch([Entry(pointer(s1, "r1"), 0), Entry(pointer(s2, "r1"), 1)])
    a = await js.get_last_msg(log.subjects.releases_stream, log.subjects.scope(*s1, "activated"))
    b = await js.get_last_msg(log.subjects.releases_stream, log.subjects.scope(*s2, "activated"))
    assert (a.seq, b.seq) == (last - 1, last)
    assert a.headers["Nats-Batch-Id"] == b.headers["Nats-Batch-Id"]


async def test_a_retried_batch_is_recognised(log):
    s1 = ("prod", "canary", "a")
    entries = [Entry(pointer(s1, "r1", event_id="fixed-1"), 0)]
    first = await log.commit_batch(entries)
    assert await log.commit_batch(entries) == first
    assert (await log._js.stream_info(log.subjects.releases_stream)).state.messages == 1
