"""The service on a 3-node JetStream cluster with R3 streams, and a node killed mid-release.

Same service, same code paths as on one server; only KX_NATS_URL (all three URLs) and
KX_REPLICAS=3 differ. What a cluster changes, and these tests pin down:
- a publish is acknowledged once a quorum stored it, so kill -9 of any one node (even the
  leader of KX_RELEASES) loses no acknowledged event, and the release carries on once a new
  leader is elected;
- the duplicate check runs *before* the expected-sequence check (a single server does it
  the other way round): a retried append comes back as a PubAck with `duplicate` set, not
  as "wrong last sequence" (10071). A retried atomic batch is "duplicate message id"
  (10201) on both. While a proposal is in flight the cluster says two more things: the
  same message id again is 10158 ("duplicate message id is in process") and another
  write expecting the same subject sequence is 10164 ("wrong last sequence", no number).
  EventLog answers a copy of its own event with the stored sequence and a rival with
  AppendConflict, in every case.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from nats.js.errors import APIError

from events.channel import ChannelConfig
from events.codec import make_event
from events.model import Actor, Scope
from events.signing import SigningKey
from events.subjects import Subjects
from services.actions.producer import configure_channel, push_pack, request_release
from services.jetstream.client import connect
from services.jetstream.layout import LayoutSettings, ensure_layout
from services.jetstream.log import (
    BATCH_DUPLICATE_ID,
    DUPLICATE_IN_FLIGHT,
    WRONG_LAST_SEQUENCE,
    WRONG_LAST_SEQUENCE_IN_FLIGHT,
    AppendConflict,
    Entry,
    EventLog,
)
from services.jetstream.log_reads import load_world, log_entries
from services.reads.audit import replay, summary
from services.reads.health_reads import samples_between
from services.runtime.sdk import Identity
from services.runtime.simulation import simulated_runtime
from services.tasks import cancel_and_wait
from tests.e2e.support import Kx, assert_one_line_error, kxr_binary, write_trust_root
from tests.harness import (
    CHANNEL,
    OPERATOR,
    PRODUCER,
    Behaviour,
    make_pack,
    request_data,
    running_service,
    trust_root_for,
    wait_for,
)

from .conftest import Cluster, move_leader, stream_leader, wait_peer_current

pytestmark = pytest.mark.cluster

ACTOR = Actor(kind="service", id="test")
# Longer than a failover (a leader election takes about 4 s; a runtime's publish waits out
# its timeout meanwhile), so the stage after the kill still sees health samples; short
# enough to keep the suite quick.
FAILOVER_WINDOW_S = 10


# ---- the release spine on R3 ------------------------------------------------------------------


async def test_release_spine_on_r3_streams(cluster: Cluster, prefix):
    async with running_service(cluster.url, prefix, replicas=3) as svc:
        js, subjects = svc.app.js, svc.app.subjects
        for stream in (
            subjects.releases_stream,
            subjects.health_stream,
            subjects.timers_stream,
            subjects.deadletter_stream,
            f"OBJ_{subjects.packs_bucket}",
            f"OBJ_{subjects.snapshots_bucket}",
        ):
            info = await js.stream_info(stream)
            assert info.config.num_replicas == 3, stream
            assert info.cluster is not None and len(info.cluster.replicas or []) == 2, (stream, info.cluster)

        await svc.configure()
        good, bad = make_pack("1.0.0", svc.key), make_pack("1.1.0", svc.key)
        internal = await svc.runtime("t-int-1", {bad.digest: Behaviour(error_rate=0.5)})
        other = await svc.runtime("tenant-42")
        await svc.request("r1", good, rollback={"strategy": "none"})
        release = await svc.wait_release("r1")
        assert release.outcome == "success", release.failure
        assert release.activated == ("internal", "rest")
        await wait_for(lambda: internal.active and other.active, 10, "runtimes to switch")
        assert internal.active.digest == other.active.digest == good.digest

        await svc.request("r2", bad)
        release = await svc.wait_release("r2")
        assert release.outcome == "rolled_back"
        assert release.rollback.trigger == "monitoring_failure"
        assert svc.world.scope("prod", "canary", "internal").active_pack.digest == good.digest
        assert svc.world.scope("prod", "canary", "rest").active.release_id == "r1"  # never exposed
        await wait_for(lambda: internal.active and internal.active.digest == good.digest, 10, "runtime back on LKG")


# ---- `kxr serve`, unchanged, pointed at the cluster ----------------------------------------------


async def test_kxr_serve_runs_unchanged_against_the_cluster(cluster: Cluster, prefix, tmp_path):
    """Only configuration differs: KX_NATS_URL lists the three servers, KX_REPLICAS=3."""
    key = SigningKey.generate()
    kx = Kx(
        nats_url=cluster.url,
        prefix=prefix,
        workdir=tmp_path,
        key=key,
        trust_root_path=write_trust_root(tmp_path / "trust-root.json", key),
        binary=kxr_binary(),
    )
    bad = kx.run("serve", env=kx.env(KX_REPLICAS="7"))
    assert_one_line_error(bad, "KX_REPLICAS")

    nc = await connect(cluster.url)
    tasks: list[asyncio.Task] = []
    try:
        await kx.serve(env=kx.env(KX_REPLICAS="3")).ready()
        js, subjects = nc.jetstream(timeout=10), Subjects(prefix)
        log = EventLog(nc, js, subjects)
        assert (await js.stream_info(subjects.releases_stream)).config.num_replicas == 3
        await configure_channel(log, js, "prod", "canary", ChannelConfig.model_validate(CHANNEL), OPERATOR)
        for tenant in ("t-int-1", "tenant-42"):
            rt = simulated_runtime(
                nc,
                Identity("prod", "canary", tenant, f"rt-{tenant}"),
                trust_root_for(key),
                {},
                prefix=prefix,
                interval=0.1,
                seed=len(tasks),
            )
            await rt.resolve_cohort()
            tasks.append(asyncio.create_task(rt.run()))
        pack = make_pack("1.0.0", key)
        await push_pack(js, subjects, pack.body, pack.manifest, pack.digest)
        await request_release(log, "r1", request_data(pack, rollback={"strategy": "none"}), PRODUCER)

        async def closed():
            release = (await load_world(js, subjects)).release("r1")
            return release if release is not None and release.phase == "closed" else None

        deadline = time.monotonic() + 60
        while (release := await closed()) is None:
            assert time.monotonic() < deadline, "r1 did not close within 60s"
            await asyncio.sleep(0.2)
        assert release.outcome == "success", release.failure
        status = await kx.arun("status", "--json", "--all")
        assert status.returncode == 0, status.stderr
        assert {row["scope"]: row["version"] for row in json.loads(status.stdout)["scopes"]} == {
            "prod/canary/internal": "1.0.0",
            "prod/canary/rest": "1.0.0",
        }
    finally:
        await cancel_and_wait(tasks)
        kx.cleanup()
        await nc.close()


# ---- kill -9 the log's leader in the middle of a release ---------------------------------------


def record_acknowledged(log: EventLog) -> list[tuple[int, str]]:
    """(seq, event_id) of every append JetStream acknowledged, through our own port."""
    acked: list[tuple[int, str]] = []
    append, commit_batch = log.append, log.commit_batch

    async def recording_append(entry):
        seq = await append(entry)
        acked.append((seq, entry.event.event_id))
        return seq

    async def recording_commit_batch(entries, batch_id=""):
        seq = await commit_batch(entries, batch_id)
        acked.append((seq, entries[-1].event.event_id))
        return seq

    log.append, log.commit_batch = recording_append, recording_commit_batch  # type: ignore[method-assign]
    return acked


async def read_log(js, subjects: Subjects) -> list[tuple[int, str, str | None, bytes]]:
    return [(e.seq, e.subject, e.headers.get("Nats-Msg-Id"), e.data) async for e, _, _ in log_entries(js, subjects)]


async def test_killing_the_log_leader_mid_release_loses_nothing(cluster: Cluster, prefix):
    channel = {**CHANNEL, "monitoring": {**CHANNEL["monitoring"], "window_s": FAILOVER_WINDOW_S}}
    async with running_service(cluster.url, prefix, replicas=3) as svc:
        js, subjects = svc.app.js, svc.app.subjects
        acked = record_acknowledged(svc.app.log)
        await svc.configure(config=channel)
        pack = make_pack("1.0.0", svc.key)
        internal = await svc.runtime("t-int-1")
        other = await svc.runtime("tenant-42")
        await svc.request("r1", pack, rollback={"strategy": "none"})

        # stage 0 switched, its window is open and has evidence in it: now the node leading
        # KX_RELEASES dies. (Killed before the runtime reported anything, the window would
        # rightly end inconclusive and the release hold: samples published while a stream
        # elects a leader are lost, and the verdict fails closed.)
        window = (await svc.wait_release("r1", "monitoring")).monitoring
        await wait_for_samples(svc, "internal", pack.digest, window.starts_at, 3)
        victim = await stream_leader(js, subjects.releases_stream)
        cluster.kill(victim)

        release = await svc.wait_release("r1", timeout=90)
        assert release.outcome == "success", release.failure
        assert release.activated == ("internal", "rest")
        await wait_for(lambda: internal.active and other.active, 15, "runtimes to switch")
        assert internal.active.digest == other.active.digest == pack.digest
        assert (await stream_leader(js, subjects.releases_stream)) != victim

        # nothing lost: the log is gapless, every acknowledged append is stored where its ack said
        await svc.catch_up()
        last_seq = (await js.stream_info(subjects.releases_stream)).state.last_seq
        log = await read_log(js, subjects)
        assert [seq for seq, *_ in log] == list(range(1, last_seq + 1))
        by_seq = {seq: msg_id for seq, _, msg_id, _ in log}
        missing = [(seq, event_id) for seq, event_id in acked if by_seq.get(seq) != event_id]
        assert acked and not missing, f"acknowledged but not stored: {missing}"

        # the whole lifecycle, once: one switch per stage, one pointer per cohort, no re-activation
        events = [e async for _, _, e in log_entries(js, subjects)]
        assert None not in events
        r1 = [e.type for e in events if e.release_id == "r1" and e.type.startswith("release.")]
        assert r1 == [
            "release.requested",
            "release.prepared",
            "release.distributed",
            "release.verified",
            "release.activated",
            "release.monitoring_started",
            "release.monitoring_passed",
            "release.expanded",
            "release.activated",
            "release.monitoring_started",
            "release.monitoring_passed",
            "release.closed",
        ], r1
        assert [e.data.stage for e in events if e.type == "release.activated"] == [0, 1]
        pointers = Counter(e.scope.cohort for e in events if e.type == "scope.activated" and e.data.release_id == "r1")
        assert pointers == {"internal": 1, "rest": 1}
        assert len({e.event_id for e in events}) == len(events)

        audit = await replay(js, subjects)
        assert audit.violations == (), [v.line() for v in audit.violations]
        assert summary(audit)["releases"] == {"success": 1}

        # the node comes back, catches up, and its copy is the log: lead from it and read again
        await cluster.restart(victim)
        await wait_peer_current(js, subjects.releases_stream, victim)
        await move_leader(svc.app.nc, js, subjects.releases_stream, victim)
        assert (await js.stream_info(subjects.releases_stream)).state.last_seq == last_seq
        assert (await read_log(js, subjects)) == log


async def wait_for_samples(svc, cohort: str, digest: str, since: datetime, count: int, timeout: float = 15.0) -> None:
    """Until `count` health samples of `digest` from `cohort` are stored since `since`."""
    deadline = time.monotonic() + timeout
    seen = 0
    while seen < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"only {seen} sample(s) of {digest[:19]} from {cohort} after {timeout:.0f}s")
        await asyncio.sleep(0.1)
        now = datetime.now(UTC) + timedelta(seconds=1)
        samples = await samples_between(svc.app.js, svc.app.subjects, "prod", "canary", [cohort], since, now)
        seen = sum(
            1 for _, sample in samples if sample.kind == "sample" and sample.digest == digest and sample.requests
        )


# ---- retried appends and batches on R3 ---------------------------------------------------------


@pytest.fixture
async def r3_log(cluster: Cluster, prefix):
    nc = await connect(cluster.url)
    js = nc.jetstream(timeout=10)
    subjects = Subjects(prefix)
    await ensure_layout(js, subjects, LayoutSettings(replicas=3))
    yield EventLog(nc, js, subjects)
    await nc.close()


def requested(release_id: str, event_id: str | None = None):
    return make_event(
        "release.requested",
        request_data(make_pack("1.0.0", SigningKey.generate())),
        actor=ACTOR,
        release_id=release_id,
        event_id=event_id,
    )


def pointer(cohort: str, release_id: str, event_id: str | None = None):
    data = {
        "pack": {"name": "kb", "version": "1.0.0", "digest": "sha256:" + "0" * 64, "size": 1},
        "manifest": "m",
        "release_id": release_id,
        "kind": "rollout",
    }
    return make_event(
        "scope.activated",
        data,
        actor=ACTOR,
        release_id=release_id,
        scope=Scope(env="prod", channel="canary", cohort=cohort),
        event_id=event_id,
    )


async def stored_messages(log: EventLog) -> int:
    return (await log._js.stream_info(log.subjects.releases_stream)).state.messages


async def test_cluster_checks_duplicates_before_the_expected_sequence(r3_log):
    """The raw server behaviour EventLog relies on (a single server answers the retry with 10071)."""
    js, subjects = r3_log._js, r3_log.subjects
    subject = subjects.release("r1", "requested")
    headers = {
        "Nats-Msg-Id": "e-1",
        "Nats-Expected-Last-Subject-Sequence": "0",
        "Nats-Expected-Last-Subject-Sequence-Subject": subjects.release_filter("r1"),
    }
    first = await js.publish(subject, b"{}", headers=headers)
    retry = await js.publish(subject, b"{}", headers=headers)  # the expectation is stale now, the id is known
    assert (retry.seq, retry.duplicate) == (first.seq, True)
    with pytest.raises(APIError) as stale:  # another event with the same stale expectation is still refused
        await js.publish(subjects.release("r1", "annotated"), b"{}", headers={**headers, "Nats-Msg-Id": "e-2"})
    assert stale.value.err_code == WRONG_LAST_SEQUENCE

    batch = {
        "Nats-Msg-Id": "p-1",
        "Nats-Batch-Id": "b-1",
        "Nats-Batch-Sequence": "1",
        "Nats-Batch-Commit": "1",
        "Nats-Expected-Last-Subject-Sequence": "0",
    }
    scope_subject = subjects.scope("prod", "canary", "a", "activated")
    ok = json.loads((await r3_log._nc.request(scope_subject, b"{}", headers=batch, timeout=5)).data)
    again = json.loads((await r3_log._nc.request(scope_subject, b"{}", headers=batch, timeout=5)).data)
    assert "error" not in ok, ok
    assert again["error"]["err_code"] == BATCH_DUPLICATE_ID, (
        again
    )  # "atomic publish batch contains duplicate message id"

    # While the first copy is still being replicated (two publishes in one go). Whether the
    # second one finds the first in flight or already applied is a matter of timing, so look
    # at a few pairs: each answer is one of the two, and the in-flight answer does show up.
    async def raw(release_id: str, suffix: str, msg_id: str):
        h = {
            "Nats-Msg-Id": msg_id,
            "Nats-Expected-Last-Subject-Sequence": "0",
            "Nats-Expected-Last-Subject-Sequence-Subject": subjects.release_filter(release_id),
        }
        try:
            ack = await js.publish(subjects.release(release_id, suffix), b"{}", headers=h)
            return "duplicate" if ack.duplicate else ack.seq
        except APIError as exc:
            return exc.err_code

    copies, rivals = Counter(), Counter()
    for n in range(10):
        first, copy = await asyncio.gather(raw(f"c{n}", "requested", f"c-{n}"), raw(f"c{n}", "requested", f"c-{n}"))
        assert isinstance(first, int) and copy in (DUPLICATE_IN_FLIGHT, "duplicate"), (first, copy)
        copies[copy] += 1
        first, rival = await asyncio.gather(raw(f"r{n}", "requested", f"ra-{n}"), raw(f"r{n}", "annotated", f"rb-{n}"))
        assert isinstance(first, int) and rival in (WRONG_LAST_SEQUENCE_IN_FLIGHT, WRONG_LAST_SEQUENCE), (first, rival)
        rivals[rival] += 1
    assert copies[DUPLICATE_IN_FLIGHT], copies  # 10158 "duplicate message id is in process"
    assert rivals[WRONG_LAST_SEQUENCE_IN_FLIGHT], rivals  # 10164 "wrong last sequence" (no number)


async def test_retried_append_is_stored_once(r3_log):
    log = r3_log
    event = requested("r1")
    first = await log.append(log.release_entry(event, 0))
    assert await log.append(log.release_entry(event, 0)) == first
    assert await stored_messages(log) == 1
    other = make_event("release.annotated", {"rationale": "x"}, actor=ACTOR, release_id="r1")
    with pytest.raises(AppendConflict):  # a different event on a stale expectation is still a conflict
        await log.append(log.release_entry(other, 0))
    assert await log.append(log.release_entry(other, first)) == first + 1

    # the duplicate window is replicated: a retry after the leader changed is still recognised
    leader = await stream_leader(log._js, log.subjects.releases_stream)
    await log._nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{log.subjects.releases_stream}", b"", timeout=5)
    await wait_for_new_leader(log, leader)
    assert await log.append(log.release_entry(event, 0)) == first
    assert await log.append(log.release_entry(other, first)) == first + 1
    assert await stored_messages(log) == 2


async def test_retried_atomic_batch_is_stored_once(r3_log):
    log = r3_log
    entries = [Entry(pointer("a", "r1", event_id="fixed-a"), 0), Entry(pointer("b", "r1", event_id="fixed-b"), 0)]
    last = await log.commit_batch(entries, "batch-1")
    assert await log.commit_batch(entries, "batch-1") == last  # the same attempt, retried
    assert await log.commit_batch(entries, "batch-2") == last  # another instance's attempt at the same events
    assert await stored_messages(log) == 2

    # a batch on a stale expectation stores nothing, and is a conflict
    with pytest.raises(AppendConflict):
        await log.commit_batch([Entry(pointer("c", "r2"), 0), Entry(pointer("a", "r2"), 0)])
    assert await stored_messages(log) == 2

    leader = await stream_leader(log._js, log.subjects.releases_stream)
    await log._nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{log.subjects.releases_stream}", b"", timeout=5)
    await wait_for_new_leader(log, leader)
    assert await log.commit_batch(entries, "batch-1") == last
    assert await stored_messages(log) == 2


async def test_concurrent_copies_and_rivals_of_an_append(r3_log):
    """Two instances deciding the same thing at once (copies) or different things (rivals)."""
    log = r3_log
    for n in range(3):
        event = requested(f"c{n}")
        first, copy = await asyncio.gather(
            log.append(log.release_entry(event, 0)), log.append(log.release_entry(event, 0))
        )
        assert first == copy
    assert await stored_messages(log) == 3

    for n in range(3):
        a, b = requested(f"r{n}"), requested(f"r{n}")
        results = await asyncio.gather(
            log.append(log.release_entry(a, 0)), log.append(log.release_entry(b, 0)), return_exceptions=True
        )
        assert sum(isinstance(r, int) for r in results) == 1, results
        assert sum(isinstance(r, AppendConflict) for r in results) == 1, results  # a lost race, never "failed"
    assert await stored_messages(log) == 6


async def test_concurrent_copies_and_rivals_of_an_atomic_batch(r3_log):
    log = r3_log
    for n in range(3):
        entries = [
            Entry(pointer(f"a{n}", f"r{n}", event_id=f"pa-{n}"), 0),
            Entry(pointer(f"b{n}", f"r{n}", event_id=f"pb-{n}"), 0),
        ]
        first, copy = await asyncio.gather(
            log.commit_batch(entries, f"batch-{n}"), log.commit_batch(entries, f"batch-{n}")
        )
        assert first == copy
    assert await stored_messages(log) == 6

    for n in range(3):
        rivals = [
            [Entry(pointer(f"x{n}{side}", f"q{n}{side}"), 0), Entry(pointer(f"shared{n}", f"q{n}{side}"), 0)]
            for side in "ab"
        ]
        results = await asyncio.gather(*(log.commit_batch(r) for r in rivals), return_exceptions=True)
        assert sum(isinstance(r, int) for r in results) == 1, results
        assert sum(isinstance(r, AppendConflict) for r in results) == 1, results
    assert await stored_messages(log) == 12


async def wait_for_new_leader(log: EventLog, old: str) -> None:
    deadline = time.monotonic() + 30
    while (await stream_leader(log._js, log.subjects.releases_stream)) == old:
        if time.monotonic() > deadline:
            raise AssertionError(f"{old} still leads {log.subjects.releases_stream} after a step-down")
        await asyncio.sleep(0.2)
