"""Audit against a real JetStream: replay, invariants, time travel, the evidence page."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

from events.codec import make_event
from events.model import Actor, Scope
from events.signing import SigningKey
from events.subjects import Subjects
from projections.invariants import Audit
from services.jetstream.client import connect
from services.jetstream.layout import ensure_layout
from services.jetstream.log import Entry, EventLog
from services.jetstream.log_reads import load_evidence
from services.reads.audit import render_html, replay, summary, world_at
from tests.harness import Behaviour, make_pack, request_data, running_service

SERVICE = Actor(kind="service", id="activator")
ROGUE = Actor(kind="runtime", id="rt-evil")


def pack_ref(version: str) -> dict:
    p = make_pack(version, SigningKey.generate())
    return {"name": "kb", "version": version, "digest": p.digest, "size": len(p.body)}


async def test_replay_of_a_real_history_is_clean_deterministic_and_equals_live_state(nats_url, prefix):
    async with running_service(nats_url, prefix) as svc:
        await svc.configure()
        bad = make_pack("1.2.0", svc.key)
        await svc.runtime("t-int-1", {bad.digest: Behaviour(error_rate=0.5)})
        await svc.runtime("tenant-42")
        await svc.request("r1", make_pack("1.0.0", svc.key), rollback={"strategy": "none"})
        await svc.wait_release("r1")
        t_between = datetime.now(UTC)
        await asyncio.sleep(0.05)
        await svc.request("r2", make_pack("1.1.0", svc.key))
        await svc.wait_release("r2")
        await svc.request("r3", bad)
        assert (await svc.wait_release("r3")).outcome == "rolled_back"
        tampered = make_pack("1.3.0", svc.key)
        await svc.publish(tampered)
        await svc.request(
            "r4", type(tampered)(tampered.body[::-1], tampered.manifest, tampered.digest, tampered.version)
        )
        await svc.wait_release("r4")
        await svc.catch_up()

        first = await replay(svc.app.js, svc.app.subjects)
        second = await replay(svc.app.js, svc.app.subjects)
        assert first.violations == (), [v.line() for v in first.violations]
        as_bytes = json.dumps(summary(first), sort_keys=True).encode()
        assert as_bytes == json.dumps(summary(second), sort_keys=True).encode()  # byte-identical
        whole = await replay(svc.app.js, svc.app.subjects, archive=False)  # every release kept whole
        assert json.dumps(summary(whole), sort_keys=True).encode() == as_bytes
        assert set(first.world.tombstones.keys()) == {"r1", "r2", "r3", "r4"} and not whole.world.tombstones
        live = Audit(world=svc.world, events=first.events)
        assert summary(live)["scopes"] == summary(first)["scopes"]
        assert summary(live)["releases"] == summary(first)["releases"] == {"failed": 1, "rolled_back": 1, "success": 2}

        # time travel: between r1 and r2 both cohorts ran 1.0.0; now they run 1.1.0
        then = await world_at(svc.app.js, svc.app.subjects, t_between)
        assert {c: then.scope("prod", "canary", c).active_pack.version for c in ("internal", "rest")} == {
            "internal": "1.0.0",
            "rest": "1.0.0",
        }
        before_all = await world_at(svc.app.js, svc.app.subjects, t_between - timedelta(hours=1))
        assert before_all.scopes.get(("prod", "canary", "internal")) is None
        now = await world_at(svc.app.js, svc.app.subjects, datetime.now(UTC))
        assert {c: now.scope("prod", "canary", c).active_pack.version for c in ("internal", "rest")} == {
            "internal": "1.1.0",
            "rest": "1.1.0",
        }

        page = render_html(await load_evidence(svc.app.js, svc.app.subjects, "r2"))
        assert "<svg" in page and "Verification gates" in page and "error_rate" in page  # figures against thresholds
        page = render_html(await load_evidence(svc.app.js, svc.app.subjects, "r3"))
        assert "monitoring_failed" in page and "rollback_started" in page and "rolled_back" in page


async def test_invariant_checker_catches_each_seeded_violation(nats_url, prefix):
    nc = await connect(nats_url)
    js = nc.jetstream()
    subjects = Subjects(prefix)
    await ensure_layout(js, subjects)
    log = EventLog(nc, js, subjects)
    scope = Scope(env="prod", channel="canary", cohort="all")
    p1 = pack_ref("1.0.0")

    async def put(event, expected=None):
        return await log.append(Entry(event, expected))

    # 1. a pointer moved outside a batch, by a runtime, for a release that was never verified
    await put(
        make_event(
            "scope.activated",
            {"pack": p1, "manifest": "m", "release_id": "ghost", "kind": "rollout"},
            actor=ROGUE,
            scope=scope,
        )
    )
    # 2. a release whose activation skips verification (illegal transition) and is never closed after rejection
    await put(
        make_event(
            "release.requested", request_data(make_pack("1.0.0", SigningKey.generate())), actor=SERVICE, release_id="r1"
        )
    )
    await put(
        make_event(
            "release.activated",
            {"stage": 0, "cohorts": ["all"], "pack": p1, "batch_id": "b"},
            actor=SERVICE,
            release_id="r1",
        )
    )
    await put(
        make_event("release.rejected", {"reasons": [{"code": "x", "message": "y"}]}, actor=SERVICE, release_id="r2")
    )
    # 3. a pin without a real rationale, a rollback without reason or target
    await put(
        make_event(
            "scope.pinned",
            {"pack": p1, "until": "2020-01-01T00:00:00Z", "rationale": " ", "by": "ops"},
            actor=SERVICE,
            scope=scope,
        )
    )
    await put(
        make_event(
            "release.rollback_started",
            {"trigger": "operator", "reason": " ", "targets": {}},
            actor=SERVICE,
            release_id="r1",
        )
    )
    # 4. garbage in the log
    await js.publish(subjects.release("r9", "closed"), b"\xff not an event")

    audit = await replay(js, subjects)
    codes = {v.code for v in audit.violations}
    assert {
        "pointer_outside_batch",
        "pointer_by_wrong_writer",
        "activation_without_verification",
        "illegal_transition",
        "not_closed",
        "pin_without_rationale_or_bound",
        "rollback_without_reason",
        "rollback_without_target",
        "undecodable",
    } <= codes
    lines = [v.line() for v in audit.violations]
    assert any(
        line.startswith("seq 1: pointer_outside_batch") for line in lines
    )  # reported at the sequence it happened
    await nc.close()


async def test_replay_reads_a_buried_release_back_from_the_log_when_it_changes_again(nats_url, prefix, monkeypatch):
    """r1 closes, then is annotated, requested again, rolled back by an operator and closed again; r2
    is rejected. Read one entry at a time, the replay buries r1 at its close and reads it back from
    its own subjects on NATS before the annotation: the violations and summary of the whole fold."""
    from tests.unit.archive_support import record_read_backs
    from tests.unit.test_tombstones import story_with_life_after_close

    nc = await connect(nats_url)
    js = nc.jetstream()
    subjects = Subjects(prefix)
    await ensure_layout(js, subjects)
    log = EventLog(nc, js, subjects)
    story = story_with_life_after_close()
    for event in story.events:
        await log.append(Entry(event))
    annotated_at = next(i + 1 for i, e in enumerate(story.events) if e.type == "release.annotated")

    reads = record_read_backs(monkeypatch)
    archived = await replay(js, subjects)
    whole = await replay(js, subjects, archive=False)
    assert reads == [("r1", annotated_at)]  # whole from then on
    assert archived.violations == whole.violations and archived.violations  # (illegal steps, pointers unbatched)
    assert summary(archived) == summary(whole)
    assert archived.world.release("r1") == whole.world.release("r1")  # read back, then folded on: the same
    await nc.close()


def _closed_then_annotated(count: int):
    """`count` releases, each failing verification and closed, then each annotated (legal after close):
    the annotations all in the read batch after the closes, so each needs its release read back."""
    from tests.unit.test_projections import P1, Log

    log = Log()
    log.channel()
    for i in range(count):
        log.requested(f"r{i}", P1)
        log.prepared(f"r{i}", P1)
        log.distributed(f"r{i}", P1)
        log.verification_failed(f"r{i}")
        log.closed(f"r{i}", "failed")
    closes = len(log.events)
    for i in range(count):
        log.note(f"r{i}", "annotated", "looked at again")
    return log.events, closes


async def _stored_in_two_batches(nats_url, prefix, monkeypatch, events, split: int):
    """The events on NATS; the replay reads them in two batches: the first `split` entries, then the rest."""
    from services.reads import audit as audit_module

    nc = await connect(nats_url)
    js = nc.jetstream()
    subjects = Subjects(prefix)
    await ensure_layout(js, subjects)
    log = EventLog(nc, js, subjects)
    for event in events:
        await log.append(Entry(event))
    real_batches = audit_module.log_batches

    async def two(*args, **kwargs):
        entries = [item async for batch in real_batches(*args, **kwargs) for item in batch]
        yield entries[:split]
        yield entries[split:]

    monkeypatch.setattr(audit_module, "log_batches", two)
    return nc, js, subjects


async def test_the_closed_releases_one_batch_touches_are_read_back_side_by_side(nats_url, prefix, monkeypatch):
    """Five closed releases, each annotated in the next read batch: their five read backs run at once
    (each waits here until all five have started: one at a time, the first would wait for ever), and the
    replay says what the whole fold says."""
    from services.reads import audit as audit_module

    events, closes = _closed_then_annotated(5)
    nc, js, subjects = await _stored_in_two_batches(nats_url, prefix, monkeypatch, events, closes)
    real_read_back = audit_module.read_back
    started: list[str] = []
    all_started = asyncio.Event()

    async def side_by_side(js, subjects, release_id, before_seq, *args, **kwargs):
        started.append(release_id)
        if len(started) == 5:
            all_started.set()
        await asyncio.wait_for(all_started.wait(), 10)
        return await real_read_back(js, subjects, release_id, before_seq, *args, **kwargs)

    monkeypatch.setattr(audit_module, "read_back", side_by_side)
    archived = await replay(js, subjects)
    whole = await replay(js, subjects, archive=False)
    assert sorted(started) == [f"r{i}" for i in range(5)]
    assert archived.violations == whole.violations and summary(archived) == summary(whole)
    assert all(archived.world.release(f"r{i}") == whole.world.release(f"r{i}") for i in range(5))
    await nc.close()


async def test_one_read_back_that_fails_fails_the_replay_and_stops_the_others(nats_url, prefix, monkeypatch):
    """Of three read backs side by side, one fails for good: the replay raises its `ReadBackFailed` (the
    one line `kxr audit replay` prints), and the two still reading are cancelled before it does."""
    from services.jetstream.log_reads import ReadBackFailed
    from services.reads import audit as audit_module

    events, closes = _closed_then_annotated(3)
    nc, js, subjects = await _stored_in_two_batches(nats_url, prefix, monkeypatch, events, closes)
    ended: dict[str, str] = {}

    async def r1_fails(js, subjects, release_id, before_seq, *args, **kwargs):
        try:
            if release_id == "r1":
                await asyncio.sleep(0.05)
                raise ReadBackFailed(f"release r1 (closed, changed again at seq {before_seq}) could not be read")
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            ended[release_id] = "cancelled"
            raise
        ended[release_id] = "failed"

    monkeypatch.setattr(audit_module, "read_back", r1_fails)
    try:
        await replay(js, subjects)
    except ReadBackFailed as exc:
        assert "release r1" in str(exc)
    else:
        raise AssertionError("the replay folded on without r1")
    assert ended == {"r0": "cancelled", "r2": "cancelled"}
    await nc.close()
