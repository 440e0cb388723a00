"""What runs beside the activations does not hold the event loop for long.

Rounds over everything in flight let the event loop turn (services/consumers/reactor.py, guard.py).

A decision that finds nothing due awaits nothing, so a reconcile round over thousands of
releases in flight, or a guard sweep over thousands of scopes, used to hold the event loop for
the whole round: every activation in flight waited behind it (a p99 spike every 5 or 10 s).
A snapshot's dump in its worker thread shortens the GIL's switch interval while it runs
(services/reads/snapshots.py).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from services.consumers.reactor import ReleaseReactor

RELEASES = 2000


class _Reactor(ReleaseReactor):
    name = "test"

    def __init__(self, port) -> None:
        super().__init__(port)
        self.settled = 0
        self.round_done = asyncio.Event()

    def may_act(self, release) -> bool:
        return True

    async def settle(self, release_id, step=None):  # nothing due: returns without awaiting anything
        self.settled += 1
        if self.settled == RELEASES:
            self.round_done.set()
        return []


async def test_a_reconcile_round_lets_other_tasks_run_between_releases() -> None:
    world = SimpleNamespace(in_flight={f"r{i:05d}" for i in range(RELEASES)}, release=lambda _: object())
    reactor = _Reactor(SimpleNamespace(follower=SimpleNamespace(world=world)))
    ticks_during_round: list[int] = []
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            if 0 < reactor.settled < RELEASES:
                ticks_during_round.append(reactor.settled)
            await asyncio.sleep(0)

    beside = asyncio.create_task(ticker())
    round_ = asyncio.create_task(reactor.reconcile(every=60))
    await reactor.round_done.wait()
    round_.cancel()
    beside.cancel()
    await asyncio.gather(round_, beside, return_exceptions=True)
    # the other task ran all through the round, not only before and after it
    assert len(ticks_during_round) > RELEASES // 2


async def _turns_beside(work):
    """(what `work` gave, how many times a task beside it ran while it did)."""
    ran = 0

    async def beside() -> None:
        nonlocal ran
        while True:
            ran += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(beside())
    await asyncio.sleep(0)
    before = ran
    try:
        return await work, ran - before
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_guard_sweep_lets_other_tasks_run_between_scopes() -> None:
    from services.consumers.guard import Guard

    scopes = {("prod", f"c{i}", "all"): SimpleNamespace(active=None) for i in range(RELEASES)}
    port = SimpleNamespace(
        follower=SimpleNamespace(world=SimpleNamespace(scopes=scopes)),
        current_trust_root=lambda: object(),
        clock=lambda: None,
    )
    guard = Guard(port)
    result, turns = await _turns_beside(guard.check(list(scopes)))
    assert result == ({}, [])
    assert turns >= RELEASES // 100 - 1  # a turn of the loop every 100 scopes


async def test_a_snapshot_dump_runs_with_a_short_switch_interval_and_puts_it_back(monkeypatch) -> None:
    """The dump holds the GIL in a worker thread: the event loop's wait for it after each send or
    poll is bounded by the switch interval, short while the dump runs, as it was after."""
    import sys

    from services.reads import snapshots

    seen: list[float] = []
    monkeypatch.setattr(snapshots, "dump_world", lambda *a: seen.append(sys.getswitchinterval()) or b"{}")
    before = sys.getswitchinterval()
    assert await asyncio.to_thread(snapshots._dump_aside, None, None, None) == b"{}"
    assert seen == [snapshots.DUMP_SWITCH_INTERVAL_S] and snapshots.DUMP_SWITCH_INTERVAL_S < before
    assert sys.getswitchinterval() == before


def test_a_started_service_puts_what_start_up_loaded_out_of_the_collectors_reach() -> None:
    """`serve` calls `settle_heap` once ready: full collections no longer walk the loaded world."""
    import gc

    from services.serve import settle_heap

    held = [{"release": i} for i in range(1000)]  # as a world loaded at start-up
    try:
        settle_heap()
        assert gc.get_freeze_count() >= len(held)
    finally:
        gc.unfreeze()


async def test_a_read_model_write_lets_the_loop_turn_while_it_builds_many_values(monkeypatch) -> None:
    """The projector builds a write's values from one immutable world, turning the event loop every
    few ms (services/tasks.py `Turns`): a thousand channels built at once held it ~250 ms."""
    from services import tasks
    from services.tasks import Turns

    clock = [0.0]  # a clock the test moves a step of building at a time (exact binary fractions)
    monkeypatch.setattr(tasks.time, "perf_counter", lambda: clock[0])
    turns = Turns(every_s=2.0)

    async def build() -> None:
        for _ in range(100):
            clock[0] += 0.5
            await turns.maybe()

    _, turned = await _turns_beside(build())
    assert turned == 25  # once every four steps, not at every step


def test_a_ctrl_c_the_command_swallowed_is_repeated_until_it_stops() -> None:
    """Ctrl-C cancels a `kxr` command's main task; on Python 3.11 a cancellation that meets an inner
    wait_for completing can be swallowed (nats.py), and the command ran on (`kxr watch` of a held
    release, once under load). `run_async` cancels again until it stops, and exits as Ctrl-C does."""
    import os
    import signal
    import time

    import pytest

    from services.cli.common import run_async

    async def stubborn() -> None:
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGINT)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass  # swallowed
        await asyncio.sleep(10)  # and on it runs

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_async(stubborn())
    assert time.monotonic() - started < 5  # (it would run 10 s more)


def test_a_timeout_inside_a_command_is_not_turned_into_a_cancellation() -> None:
    """Only Ctrl-C is repeated: asyncio.timeout's own cancellations end as TimeoutError, however many."""
    from services.cli.common import run_async

    async def timeouts() -> int:
        caught = 0
        for _ in range(60):
            try:
                async with asyncio.timeout(0.01):
                    await asyncio.sleep(1)
            except TimeoutError:
                caught += 1
        return caught

    assert run_async(timeouts()) == 60


def test_a_clean_stop_of_its_own_is_never_cut_short() -> None:
    """`kxr serve` / `kxr ui` (SignalStop: its own SIGINT handler) shut down while their cancellation
    propagates (consumers stopped, a snapshot saved): that shutdown is not cancelled again."""
    import os
    import signal

    from services.cli.common import run_async
    from services.tasks import SignalStop

    async def serving() -> str:
        stop = SignalStop()
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGINT)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            assert stop.requested
            await asyncio.sleep(0.6)  # the clean shutdown, past several of the repeat's checks
            return "stopped cleanly"
        return "not stopped"

    assert run_async(serving()) == "stopped cleanly"


async def test_a_live_report_with_no_open_window_on_its_cohort_is_not_decoded(monkeypatch) -> None:
    """The monitor's live watch validates a report only when a window could count it: after a rollback
    a thousand runtimes report their switch back, none of it evidence (~80 us of validation each)."""
    from events.subjects import Subjects
    from services.consumers import monitor as monitor_module
    from services.consumers.monitor import Monitor

    decoded: list[bytes] = []
    monkeypatch.setattr(monitor_module, "accept_report", lambda data, parts: decoded.append(data))

    from datetime import UTC, datetime

    def release(phase: str, channel: str, cohorts: list[str]) -> SimpleNamespace:
        now = datetime.now(UTC)
        window = SimpleNamespace(cohorts=cohorts, stage=0, digest="sha256:" + "ab" * 32, starts_at=now, ends_at=now)
        return SimpleNamespace(
            phase=phase,
            monitoring=window,
            stage=0,
            activated=tuple(cohorts),
            activated_at={0: now},
            prepared=SimpleNamespace(target=SimpleNamespace(env="prod", channel=channel), stages=[cohorts]),
        )

    releases = {
        "r-rolled-back": release("rolled_back", "canary", ["internal"]),
        "r-other-channel": release("monitoring", "stable", ["internal"]),
        "r-other-cohort": release("monitoring", "canary", ["rest"]),
    }
    world = SimpleNamespace(in_flight=set(releases), releases=releases)
    subjects = Subjects("kx")
    monitor = Monitor.__new__(Monitor)  # the live check needs only its port
    monitor.port = SimpleNamespace(subjects=subjects, follower=SimpleNamespace(world=world))
    report = b'{"runtime_id": "rt-1", "kind": "activation", "ok": true}'
    await monitor.check_breach(subjects.health("prod", "canary", "internal", "rt-1"), report)
    assert decoded == []
