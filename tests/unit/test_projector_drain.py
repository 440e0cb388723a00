"""The projector's queue repeats entries its start-up load already folded (services/reads/projector.py).

A closed release leaves the projector's memory once written ("evicted"), and is read back whole when it
changes again. A repeated entry of such a release must be skipped, not taken as a change: restoring it
as of that older entry dropped the release from memory, and its next event then started a release with
no request in the model (`kxr release list` showed it with no target: seen once in CI).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projections.position import Position
from services.reads.projector import Projector


def _entry(seq: int, release_id: str):
    return Position(seq, f"kx.release.{release_id}.closed"), SimpleNamespace(release_id=release_id, family="release")


async def test_an_entry_already_folded_is_skipped_and_an_evicted_release_stays_evicted() -> None:
    projector = Projector(SimpleNamespace())
    projector.history.applied_seq = 10
    projector._evicted["r0"] = (5, None)

    async def restore(release_id: str, seq: int) -> None:
        raise AssertionError(f"restored {release_id} as of seq {seq}, an entry already folded")

    projector._restore = restore  # type: ignore[method-assign]
    queue: asyncio.Queue = asyncio.Queue()
    for seq in (6, 7, 10):  # the load's own entries, seen again through the listener
        queue.put_nowait(_entry(seq, "r0"))
    await projector._drain(queue)
    assert projector._evicted == {"r0": (5, None)} and "r0" not in projector.history.items
    assert projector.history.applied_seq == 10 and not projector._dirty


async def test_a_new_entry_of_an_evicted_release_restores_it_first() -> None:
    projector = Projector(SimpleNamespace())
    projector.history.applied_seq = 10
    projector._evicted["r0"] = (5, None)
    restored: list[tuple[str, int]] = []

    async def restore(release_id: str, seq: int) -> None:
        restored.append((release_id, seq))
        projector._evicted.pop(release_id)

    projector._restore = restore  # type: ignore[method-assign]
    queue: asyncio.Queue = asyncio.Queue()
    queue.put_nowait((Position(11, "kx.release.r0.annotated"), SimpleNamespace(release_id="r0", family="other")))
    await projector._drain(queue)
    assert restored == [] and projector._dirty == {"r0"}  # not a release event: nothing to restore
    queue.put_nowait(_entry(12, "r0"))
    projector.history.apply = lambda position, event: None  # type: ignore[method-assign]
    await projector._drain(queue)
    assert restored == [("r0", 12)]


async def test_a_restore_that_reads_none_of_an_evicted_releases_events_reads_again(monkeypatch) -> None:
    """An evicted release has events before a later one of its own: a read that finds none came back short
    (a busy server), and the release is read again, never started over from that one event (which is
    how a closed release showed no target). A release whose first event this is (a stopped writer
    indexed it ahead of the bucket's position) has none before it, rightly."""
    from projections.releases import ReleaseState
    from services.jetstream import log_reads
    from services.reads import projector as projector_module

    answers = [None, ReleaseState(release_id="r0", last_seq=9)]
    asked: list[tuple[str, int]] = []

    async def release_history(js, subjects, release_id, before_seq, service_keys=None):
        asked.append((release_id, before_seq))
        return answers.pop(0)

    async def no_pause(_: float) -> None:
        return None

    monkeypatch.setattr(log_reads, "release_history", release_history)  # what read_back reads with
    monkeypatch.setattr(projector_module.asyncio, "sleep", no_pause)
    app = SimpleNamespace(js=None, subjects=None, follower=SimpleNamespace(service_keys=None))
    projector = Projector(app)
    projector._evicted["r0"] = (5, None)
    await projector._restore("r0", 12)
    assert asked == [("r0", 12), ("r0", 12)] and projector.history.items["r0"].state.last_seq == 9

    answers[:] = [None]
    projector._evicted["r1"] = (12, None)  # its first event is the one being applied
    await projector._restore("r1", 12)
    assert "r1" not in projector.history.items and not answers


async def test_the_entry_waited_for_is_folded_before_those_queued_with_it() -> None:
    """The projector waits for the follower's next entry, then gathers more. It used to put the entry it
    waited for back on the queue: behind whatever the follower had queued in the same turn (a batch),
    so those were folded first and it was skipped as folded already. CI listed a rolled-back release
    in flight (its `closed` skipped), with no target (`requested` skipped) and with the wrong reason
    (`monitoring_failed` skipped): each its read models' history line missing one event."""
    writes: list[list[int]] = []
    applied: list[int] = []
    queue: asyncio.Queue = asyncio.Queue()

    async def key_value(bucket: str):
        return object()

    app = SimpleNamespace(js=SimpleNamespace(key_value=key_value), subjects=SimpleNamespace(read_bucket="kx_read"))
    projector = Projector(app, interval_s=0.0)

    async def nothing_kept() -> dict:
        return {}

    async def from_start(kept: dict) -> int:
        return 1

    async def loaded(start_seq: int = 1) -> None:
        return None

    wrote = asyncio.Event()

    async def write() -> None:
        writes.append(list(applied))
        wrote.set()

    real_apply = projector.history.apply

    def apply(position, event) -> None:
        applied.append(position.seq)
        real_apply(position, event)

    projector._read_bucket = nothing_kept  # type: ignore[method-assign]
    projector._resume = from_start  # type: ignore[method-assign]
    projector._load = loaded  # type: ignore[method-assign]
    projector.write = write  # type: ignore[method-assign]
    projector.history.apply = apply  # type: ignore[method-assign]
    task = asyncio.create_task(projector._run(queue))
    try:
        await asyncio.wait_for(wrote.wait(), 5)  # the start-up write, then it waits for the follower
        wrote.clear()
        for seq in (26, 27, 28):  # one follower turn: three entries queued before the projector wakes
            queue.put_nowait((Position(seq, f"kx.release.r2.e{seq}"), SimpleNamespace(release_id="r2", family="x")))
        await asyncio.wait_for(wrote.wait(), 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert writes[1] == [26, 27, 28], writes


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_the_history_folds_every_entry_once_in_log_order_whatever_the_follower_batches(data) -> None:
    """The invariant behind the test above, over any interleaving: the follower starts queueing at some
    entry (the projector listens), the start-up load folds the log up to at least the entry before it
    (it reads after listening), and the rest arrives in batches of any size between the projector's
    writes. The history must fold 1..N, each once, in order: what a fold of the log does. Minimal
    counter-example on the code before session 12: entry 1, then 2 and 3 in one turn -> [1, 3]."""
    total = data.draw(st.integers(1, 40), label="entries")
    listened_at = data.draw(st.integers(1, total), label="first queued")
    loaded_to = data.draw(st.integers(listened_at - 1, total), label="load reads up to")
    cuts = (
        sorted(data.draw(st.sets(st.integers(listened_at + 1, total), max_size=10), label="batch starts"))
        if listened_at < total
        else []
    )
    bounds = [listened_at, *cuts, total + 1]
    batches = [list(range(a, b)) for a, b in zip(bounds, bounds[1:]) if a < b]
    assert asyncio.run(_fold_through_run(loaded_to, batches)) == list(range(1, total + 1))


async def _fold_through_run(loaded_to: int, batches: list[list[int]]) -> list[int]:
    """What the real `Projector._run` folds: a load up to `loaded_to`, then `batches` queued one follower
    turn at a time (each after the projector's previous write)."""
    applied: list[int] = []
    queue: asyncio.Queue = asyncio.Queue()
    wrote = asyncio.Event()

    def entry(seq: int):
        return Position(seq, f"kx.release.r{seq % 3}.e"), SimpleNamespace(release_id=f"r{seq % 3}", family="x")

    async def key_value(bucket: str):
        return object()

    app = SimpleNamespace(js=SimpleNamespace(key_value=key_value), subjects=SimpleNamespace(read_bucket="kx_read"))
    projector = Projector(app, interval_s=0.0)
    real_apply = projector.history.apply

    def apply(position, event) -> None:
        if position.seq > projector.history.applied_seq:
            applied.append(position.seq)
        real_apply(position, event)

    async def nothing_kept() -> dict:
        return {}

    async def from_start(kept: dict) -> int:
        return 1

    async def load(start_seq: int = 1) -> None:
        for seq in range(start_seq, loaded_to + 1):
            projector.history.apply(*entry(seq))

    async def write() -> None:
        wrote.set()

    projector.history.apply = apply  # type: ignore[method-assign]
    projector._read_bucket = nothing_kept  # type: ignore[method-assign]
    projector._resume = from_start  # type: ignore[method-assign]
    projector._load = load  # type: ignore[method-assign]
    projector.write = write  # type: ignore[method-assign]
    first, rest = batches[0], batches[1:]
    for seq in first:  # queued while the load was reading
        queue.put_nowait(entry(seq))
    task = asyncio.create_task(projector._run(queue))
    try:
        for batch in rest:
            await asyncio.wait_for(wrote.wait(), 5)
            wrote.clear()
            for seq in batch:  # one follower turn
                queue.put_nowait(entry(seq))
        await asyncio.wait_for(wrote.wait(), 5)
        while not queue.empty():  # the last batch's write: until the queue is folded
            wrote.clear()
            await asyncio.wait_for(wrote.wait(), 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return applied
