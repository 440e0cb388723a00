"""The follower shows readers whole atomic batches only (services/reads/follower.py `mid_batch`).

A batch's entries can reach the follower in several reads, with the event loop turning between them.
A consumer woken in between used to decide on half a batch: a pointer without its `release.activated`,
or the fast path's `prepared` without the `distributed` and `verified` stored with it, which it then
decided again (and whose duplicate failed the group commit it joined). The reader here is a stand-in
that hands the entries over one at a time, yielding between them (pure logic: the real reader is
exercised by every integration test).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from events.codec import encode_event, make_event
from events.model import Actor, OperatorNote
from events.signing import SigningKey
from events.subjects import Subjects
from services.actions.producer import request_event
from services.jetstream.reader import RawEntry
from services.reads import follower as follower_module
from services.reads.follower import Follower, mid_batch
from tests.harness import make_pack, request_data

SUBJECTS = Subjects("kx")
OPERATOR = Actor(kind="operator", id="ops")
AT = datetime(2026, 12, 6, tzinfo=UTC)


def entries() -> list[RawEntry]:
    """A request alone, then a three-entry atomic batch, then a note alone."""
    pack = make_pack("1.0.0", SigningKey.generate())
    events = [request_event("r1", request_data(pack), OPERATOR)]
    events += [
        make_event("release.annotated", OperatorNote(rationale=f"note {n}"), actor=OPERATOR, release_id="r1")
        for n in range(4)
    ]
    out = []
    for seq, event in enumerate(events, 1):
        headers = {"Nats-Msg-Id": event.event_id}
        if seq in (2, 3, 4):
            headers |= {"Nats-Batch-Id": "b1", "Nats-Batch-Sequence": str(seq - 1)}
            if seq == 4:
                headers["Nats-Batch-Commit"] = "1"
        subject = SUBJECTS.release("r1", event.type.split(".", 1)[1])
        out.append(RawEntry(seq, subject, encode_event(event), headers, AT, len(events) - seq))
    return out


class OneAtATime:
    """A stand-in for OrderedReader: the entries one by one, the event loop turning between them."""

    def __init__(self, *args, **kwargs) -> None:
        self.entries = entries()

    async def read(self, follow: bool = True):
        for entry in self.entries:
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            yield entry
        await asyncio.Event().wait()  # following: nothing more comes

    async def close(self) -> None:
        pass


class CutShort(OneAtATime):
    """A batch whose last stored entry has no commit header (`eob`), and nothing after it."""

    def __init__(self, *args, **kwargs) -> None:
        self.entries = entries()[:3]


class CutThenAnother(OneAtATime):
    """A batch cut short (seqs 2-3, no commit header), then at once another batch (seqs 4-5)."""

    def __init__(self, *args, **kwargs) -> None:
        self.entries = entries()
        for entry, n in ((self.entries[3], "1"), (self.entries[4], "2")):
            entry.headers.pop("Nats-Batch-Commit", None)
            entry.headers.update({"Nats-Batch-Id": "b2", "Nats-Batch-Sequence": n})
        self.entries[4].headers["Nats-Batch-Commit"] = "1"


async def followed_to_the_end(follower: Follower, *others) -> list[tuple[int, int]]:
    """Run the follower (and `others`) until it shows seq 5; (position, what the world has applied) as
    readers saw them at every turn of the loop."""
    seen: list[tuple[int, int]] = []

    async def watch() -> None:
        while True:
            seen.append((follower.position, follower.world.applied_seq))
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(t) for t in (follower.run(), watch(), *others)]
    try:
        await follower.wait_for(5, timeout=5)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return seen


def test_mid_batch_is_every_entry_of_a_batch_but_its_last():
    assert [mid_batch(e) for e in entries()] == [False, True, True, False, False]
    # said by the headers alone: an entry of a batch may be delivered before the rest is stored, with
    # nothing pending yet (seen on nats-server 2.15.1)
    first = entries()[1]
    assert mid_batch(RawEntry(2, first.subject, first.data, first.headers, AT, 0))


async def test_readers_and_waiters_never_see_half_a_batch(monkeypatch):
    monkeypatch.setattr(follower_module, "OrderedReader", OneAtATime)
    follower = Follower(None, SUBJECTS)  # type: ignore[arg-type]
    woken: list[int] = []

    async def wait_for_batch_start() -> None:
        await follower.wait_for(2)
        woken.append(follower.position)

    listener = follower.listen()
    seen = await followed_to_the_end(follower, wait_for_batch_start())
    positions = {position for position, _ in seen}
    assert positions <= {0, 1, 4, 5} and {1, 4}.issubset(positions), positions
    assert all(position == applied for position, applied in seen)  # the world is the position's own
    assert woken == [4]  # woken with the batch's last entry, not its first
    handed = [listener.get_nowait()[0].seq for _ in range(listener.qsize())]
    assert handed == [1, 2, 3, 4, 5]  # the listeners get every entry, in order, a batch at its end


async def test_a_batch_whose_last_entry_does_not_come_is_shown_after_a_pause(monkeypatch):
    monkeypatch.setattr(follower_module, "OrderedReader", CutShort)
    monkeypatch.setattr(follower_module, "BATCH_STALL_S", 0.05)
    follower = Follower(None, SUBJECTS)  # type: ignore[arg-type]
    task = asyncio.create_task(follower.run())
    try:
        await follower.wait_for(1, timeout=5)
        assert follower.position == 1  # the batch's entries are folded, not shown yet
        await follower.wait_for(3, timeout=5)  # ... until the pause is over
        assert follower.world.applied_seq == 3
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_batch_cut_short_is_shown_when_another_begins_and_never_with_half_of_it(monkeypatch):
    """Before, the next batch's first entry did not show the cut-short one: readers waited for the pause,
    whose timer then showed whatever was folded by then, half of the next batch included."""
    monkeypatch.setattr(follower_module, "OrderedReader", CutThenAnother)
    monkeypatch.setattr(follower_module, "BATCH_STALL_S", 60)  # no pause: the next batch shows it
    follower = Follower(None, SUBJECTS)  # type: ignore[arg-type]
    seen = await followed_to_the_end(follower)
    positions = {position for position, _ in seen}
    assert 3 in positions and positions <= {0, 1, 3, 5}, positions  # never 4: half of the second batch
    assert all(position == applied for position, applied in seen)
