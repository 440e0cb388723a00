"""A hole in KX_RELEASES (a deleted entry) is reported, never looped on (services/jetstream/reader.py).

`kxr serve` refuses a release log with `deny_delete` off, but the server lets `deny_delete` be
switched back on after a delete, and a restored backup or a damaged store can lose entries too:
the layout checks then pass. A read of the whole log used to re-open at the missing sequence for
ever. Now a hole the stream's leader confirms is, for the auditor's replay, a `missing_entry`
violation it reads past; for any other one-off read, a warning it reads past; for the service's
live fold, the reason it stops. A gap the leader does not confirm (a lagging replica) is read
again, and a one-off read gives up on it in bounded time.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
from dataclasses import replace

import pytest

from events.codec import make_event
from events.model import Actor
from events.subjects import Subjects
from services.cli.main import _failure
from services.jetstream import reader as reader_module
from services.jetstream.client import connect
from services.jetstream.direct import connection_of
from services.jetstream.layout import log_violations, release_log_config
from services.jetstream.log import Entry, EventLog
from services.jetstream.log_reads import load_world
from services.jetstream.reader import GapNotFilled, MissingEntries, OrderedReader, ReadRefused
from services.reads.audit import MISSING_ENTRY, replay
from services.reads.follower import Follower
from tests.e2e.support import base_env, kxr_binary
from tests.harness import running_service

OPS = Actor(kind="operator", id="ops")
BOUND_S = 20  # what "in bounded time" means here: a read of a few entries takes well under a second


@pytest.fixture
async def js(nats_url):
    nc = await connect(nats_url)
    yield nc.jetstream()
    await nc.close()


async def log_with_holes(js, prefix: str, entries: int, deleted: tuple[int, ...]) -> Subjects:
    """A release log of `entries` annotations with `deleted` removed, then sealed again (deny_delete on:
    the layout checks pass, as they would on a restored backup)."""
    subjects = Subjects(prefix)
    await js.add_stream(replace(release_log_config(subjects, 1), deny_delete=False))
    log = EventLog(connection_of(js), js, subjects)
    for i in range(entries):
        note = make_event("release.annotated", {"rationale": f"n{i}"}, actor=OPS, release_id=f"r{i}")
        await log.append(Entry(note))
    for seq in deleted:
        await js.delete_msg(subjects.releases_stream, seq)
    info = await js.stream_info(subjects.releases_stream)
    await js.update_stream(replace(info.config, deny_delete=True))
    assert log_violations((await js.stream_info(subjects.releases_stream)).config, subjects) == []
    return subjects


def missing(audit) -> list[tuple[int, str]]:
    return [(v.seq, v.message) for v in audit.violations if v.code == MISSING_ENTRY]


async def test_replay_reports_a_deleted_entry_as_missing_and_reads_on(js, prefix) -> None:
    subjects = await log_with_holes(js, prefix, 6, deleted=(2, 4, 5))
    audit = await asyncio.wait_for(replay(js, subjects), BOUND_S)
    found = missing(audit)
    assert [seq for seq, _ in found] == [2, 4]  # one violation per run of missing sequences, at its first
    assert "seq 2 is not stored" in found[0][1] and "cannot vouch" in found[0][1]
    assert "seqs 4 to 5 (2 entries)" in found[1][1]
    assert audit.events == 3 and audit.world.applied_seq == 6  # read on past each hole, to the end


async def test_replay_reports_deleted_entries_at_the_log_end(js, prefix) -> None:
    """A deleted last entry leaves the stream's last sequence where it was: the read must not wait for it."""
    subjects = await log_with_holes(js, prefix, 4, deleted=(3, 4))
    audit = await asyncio.wait_for(replay(js, subjects), BOUND_S)
    assert [seq for seq, _ in missing(audit)] == [3]
    assert audit.events == 2


async def test_replay_of_a_log_without_its_first_entry_or_without_any_ends(js, prefix) -> None:
    subjects = await log_with_holes(js, prefix, 3, deleted=(1,))
    assert [seq for seq, _ in missing(await asyncio.wait_for(replay(js, subjects), BOUND_S))] == [1]
    subjects = await log_with_holes(js, prefix + "x", 3, deleted=(1, 2, 3))
    audit = await asyncio.wait_for(replay(js, subjects), BOUND_S)
    assert [seq for seq, _ in missing(audit)] == [1] and audit.events == 0


async def test_a_one_off_read_of_the_whole_log_reads_past_a_hole_with_a_warning(js, prefix, caplog) -> None:
    subjects = await log_with_holes(js, prefix, 3, deleted=(2,))
    with caplog.at_level(logging.WARNING, logger=reader_module.__name__):
        world = await asyncio.wait_for(load_world(js, subjects), BOUND_S)
    assert world.applied_seq == 3 and world.release("r2") is not None and world.release("r1") is None
    said = [r.getMessage() for r in caplog.records if r.name == reader_module.__name__]
    assert len(said) == 1 and "seq 2 is not stored" in said[0], said


async def test_a_gap_the_leader_does_not_confirm_is_read_again_then_refused(js, prefix, monkeypatch) -> None:
    """A consumer that skipped what the leader holds (a lagging replica) is read again, not taken for a hole;
    a one-off read gives up after GAP_FOR_S, in one line (`kxr: error: …`), instead of looping for ever."""
    subjects = await log_with_holes(js, prefix, 3, deleted=(2,))
    real = OrderedReader._leader_first
    asked: list[int] = []
    lagging_for = [2]  # the leader "holds" seq 2 the first two times it is asked

    async def leader_first(self, seq: int) -> int | None:
        if seq == 2:
            asked.append(seq)
            if lagging_for[0] > 0:
                lagging_for[0] -= 1
                return 2
        return await real(self, seq)

    monkeypatch.setattr(OrderedReader, "_leader_first", leader_first)
    audit = await asyncio.wait_for(replay(js, subjects), BOUND_S)  # read again twice, then confirmed
    assert [seq for seq, _ in missing(audit)] == [2] and len(asked) >= 3

    lagging_for[0] = 10**6  # never catches up
    monkeypatch.setattr(reader_module, "GAP_FOR_S", 1.0)
    with pytest.raises(GapNotFilled) as refused:
        await asyncio.wait_for(replay(js, subjects), BOUND_S)
    assert isinstance(refused.value, ReadRefused)
    line, status = _failure(refused.value)
    assert line.startswith("kxr: error: reading") and "seq 2" in line and status == 2, line


async def test_the_follower_stops_at_a_hole_and_says_why(js, prefix) -> None:
    """The live fold must not fold over an entry it never saw, nor spin on it: it stops, says why in
    `halted`, and every wait on it (start-up's catch-up included) fails with the reason at once."""
    subjects = await log_with_holes(js, prefix, 4, deleted=(3,))
    follower = Follower(js, subjects)
    task = asyncio.create_task(follower.run())
    try:
        with pytest.raises(MissingEntries) as stopped:
            await asyncio.wait_for(asyncio.shield(task), BOUND_S)
        assert follower.position == 2 and follower.halted is stopped.value
        assert (stopped.value.first, stopped.value.last) == (3, 3)
        assert "seq 3 is not stored" in str(stopped.value)
        with pytest.raises(MissingEntries):
            await asyncio.wait_for(follower.wait_for(4), 1)
        with pytest.raises(MissingEntries):
            await asyncio.wait_for(follower.catch_up_from_start(), 1)
        assert _failure(stopped.value) == (f"kxr: error: {stopped.value}", 2)  # `kxr serve` ends in one line
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_service_does_not_start_on_a_log_with_a_hole(nats_url, js, prefix) -> None:
    await log_with_holes(js, prefix, 3, deleted=(2,))

    async def start() -> None:
        async with running_service(nats_url, prefix, roles=()):
            pass

    with pytest.raises(MissingEntries, match="seq 2 is not stored"):
        await asyncio.wait_for(start(), BOUND_S)  # not after start-up's 60 s stall


async def test_kxr_audit_replay_prints_the_hole_in_one_line(nats_url, js, prefix, tmp_path) -> None:
    await log_with_holes(js, prefix, 3, deleted=(2,))
    env = {**base_env(), "KX_NATS_URL": nats_url, "KX_PREFIX": prefix, "KX_DATA_DIR": str(tmp_path / "kx")}

    def kxr(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [kxr_binary(), *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=BOUND_S * 2
        )

    result = await asyncio.to_thread(kxr, "audit", "replay")
    out = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in out, out
    lines = [line for line in result.stdout.splitlines() if "missing_entry" in line]
    assert len(lines) == 1 and lines[0].startswith("seq 2: missing_entry: seq 2 is not stored"), out
    assert "re-opening" not in out, out

    shown = await asyncio.to_thread(kxr, "audit", "at", "2100-01-01T00:00:00Z")
    assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
    assert [line for line in shown.stderr.splitlines() if line.strip()] == [
        f"reader on {prefix.upper()}_RELEASES: seq 2 is not stored (deleted: the stream's leader confirms it);"
        " reading on past the hole"
    ]
