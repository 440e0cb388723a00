"""OrderedReader (services/jetstream/reader.py): drops its filters only when they name every subject of
the stream; a one-off read ends only where the stream's leader says nothing more is on its filters."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import nats
import pytest
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError

from services.jetstream import reader as reader_module
from services.jetstream.reader import OrderedReader


@pytest.fixture
async def js(nats_url):
    nc = await nats.connect(nats_url)
    yield nc.jetstream()
    await nc.close()


async def _read(js, stream: str, filters: list[str], **kwargs) -> list[tuple[int, str, bytes]]:
    reader = OrderedReader(js, stream, filters, **kwargs)
    try:
        return [(e.seq, e.subject, e.data) async for e in reader.read(follow=False, idle_timeout=0.3)]
    finally:
        await reader.close()


async def test_filters_naming_every_stream_subject_read_the_whole_stream_in_order(js, prefix) -> None:
    stream = f"{prefix.upper()}_COVER"
    subjects = [f"{prefix}.a.>", f"{prefix}.b.>", f"{prefix}.c"]
    await js.add_stream(StreamConfig(name=stream, subjects=subjects))
    try:
        sent = [(f"{prefix}.a.x", b"1"), (f"{prefix}.c", b"2"), (f"{prefix}.b.y.z", b"3"), (f"{prefix}.a.y", b"4")] * 5
        for subject, data in sent:
            await js.publish(subject, data)
        reader = OrderedReader(js, stream, subjects + [f"{prefix}.d.>"], contiguous=True)
        assert await reader._consumer_filters() == []  # the server's fast path: no filter at all
        got = await _read(js, stream, subjects + [f"{prefix}.d.>"], contiguous=True)
        assert got == [(i + 1, s, d) for i, (s, d) in enumerate(sent)]
        assert await _read(js, stream, subjects, start_seq=19) == [(19, *sent[18]), (20, *sent[19])]
    finally:
        await js.delete_stream(stream)


async def test_filters_missing_a_stream_subject_are_kept(js, prefix) -> None:
    stream = f"{prefix.upper()}_PART"
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{prefix}.a.>", f"{prefix}.b.>", f"{prefix}.other"]))
    try:
        for subject in [f"{prefix}.a.1", f"{prefix}.other", f"{prefix}.b.2", f"{prefix}.other", f"{prefix}.a.3"]:
            await js.publish(subject, b"x")
        filters = [f"{prefix}.a.>", f"{prefix}.b.>"]
        assert await OrderedReader(js, stream, filters)._consumer_filters() == filters
        got = await _read(js, stream, filters)
        assert [(seq, subject) for seq, subject, _ in got] == [
            (1, f"{prefix}.a.1"),
            (3, f"{prefix}.b.2"),
            (5, f"{prefix}.a.3"),
        ]
    finally:
        await js.delete_stream(stream)


async def test_a_missing_stream_still_fails_a_one_off_read(js, prefix) -> None:
    with pytest.raises(NotFoundError):
        await _read(js, f"{prefix.upper()}_NOPE", [f"{prefix}.a", f"{prefix}.b"])


# ---- a consumer's pending count is an estimate: the read's end is the leader's word -----------------
def _says_caught_up_at(monkeypatch, seqs: set[int]) -> None:
    """The server's pending estimate, wrong: "0 pending" on the messages at `seqs` (seen under load on one
    server: a release's last events never read). Everything else is the real server's."""
    real = reader_module._delivery

    def delivery(msg):
        seq, stored_at, pending = real(msg)
        return seq, stored_at, 0 if seq in seqs else pending

    monkeypatch.setattr(reader_module, "_delivery", delivery)


async def test_a_read_told_it_is_caught_up_too_soon_reads_on_to_what_the_leader_holds(
    js, prefix, monkeypatch, caplog
) -> None:
    stream = f"{prefix.upper()}_EST"
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{prefix}.a.>", f"{prefix}.b"]))
    try:
        sent = []
        for i in range(10):
            sent.append((await js.publish(f"{prefix}.a.{i}", b"%d" % i)).seq)
            await js.publish(f"{prefix}.b", b"other")
        _says_caught_up_at(monkeypatch, {sent[3], 12})
        with caplog.at_level(logging.INFO, logger=reader_module.__name__):
            filtered = await _read(js, stream, [f"{prefix}.a.>"])
            whole = await _read(js, stream, [f"{prefix}.a.>", f"{prefix}.b"], contiguous=True)
        assert [seq for seq, _, _ in filtered] == sent  # ended at sent[3] without the leader's word
        assert [seq for seq, _, _ in whole] == list(range(1, 21))  # ended at 12
        told = [r for r in caplog.records if "nothing is pending after" in r.getMessage()]
        assert f"nothing is pending after seq {sent[3]}; the stream holds seq {sent[4]}" in told[0].getMessage()
        # corrected within the read: at info, never on a command's stderr (Python's last resort shows warnings)
        assert {r.levelno for r in told} == {logging.INFO}
        assert [seq for seq, _, _ in await _read(js, stream, [f"{prefix}.a.>"], start_seq=sent[8])] == sent[8:]
    finally:
        await js.delete_stream(stream)


async def test_a_read_from_a_start_time_reads_what_was_stored_since(js, prefix, monkeypatch) -> None:
    stream = f"{prefix.upper()}_EST_T"
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{prefix}.a.>", f"{prefix}.b"]))
    try:
        for i in range(3):
            await js.publish(f"{prefix}.a.{i}", b"before")
        await asyncio.sleep(0.05)
        since = datetime.now(UTC)
        assert await _read(js, stream, [f"{prefix}.a.>"], start_time=since) == []  # the leader: nothing since
        await asyncio.sleep(0.05)
        after = [(await js.publish(f"{prefix}.a.{i}", b"after")).seq for i in range(3)]
        await js.publish(f"{prefix}.b", b"other")
        _says_caught_up_at(monkeypatch, {after[0]})
        got = await _read(js, stream, [f"{prefix}.a.>"], start_time=since)
        assert [seq for seq, _, _ in got] == after
    finally:
        await js.delete_stream(stream)


async def test_a_one_off_read_ends_at_the_stream_end_it_began_with(js, prefix, monkeypatch) -> None:
    """The leader is asked about the span from the read's start to the stream's last sequence then:
    messages stored later are no reason to read on (a busy log would keep a one-off read going), and
    an empty span is answered without a consumer."""
    stream = f"{prefix.upper()}_EST_END"
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{prefix}.a.>", f"{prefix}.b"]))
    try:
        assert await _read(js, stream, [f"{prefix}.a.>"]) == []  # an empty stream
        sent = [(await js.publish(f"{prefix}.a.{i}", b"x")).seq for i in range(4)]
        asked: list[int] = []
        real = reader_module.leader_next

        async def leader_next(nc, stream_name, subject, **kwargs):
            asked.append(kwargs["seq"])
            return await real(nc, stream_name, subject, **kwargs)

        monkeypatch.setattr(reader_module, "leader_next", leader_next)
        assert [seq for seq, _, _ in await _read(js, stream, [f"{prefix}.a.>"])] == sent
        assert asked == [1]  # anything at all? then the last delivered was the stream's last: nothing more
        await js.publish(f"{prefix}.b", b"later, not ours")
        asked.clear()
        assert [seq for seq, _, _ in await _read(js, stream, [f"{prefix}.a.>"])] == sent
        assert asked == [1, sent[-1] + 1]  # and: is anything of ours after the last delivered?
        asked.clear()
        assert await _read(js, stream, [f"{prefix}.a.>"], start_seq=sent[-1] + 1) == []
        assert asked == [sent[-1] + 1]

        # a consumer that says more is pending (stored after the read began): the read still ends
        real_delivery = reader_module._delivery
        monkeypatch.setattr(reader_module, "_delivery", lambda msg: (*real_delivery(msg)[:2], 7))
        got = await asyncio.wait_for(_read(js, stream, [f"{prefix}.a.>", f"{prefix}.b"], contiguous=True), 10)
        assert [seq for seq, _, _ in got] == [*sent, sent[-1] + 1]
    finally:
        await js.delete_stream(stream)


async def test_a_one_off_read_re_made_once_says_so_in_one_info_line(js, prefix, monkeypatch, caplog) -> None:
    """A command's stderr is its own (one line when it fails): a read whose consumer had to be made
    again once (routine in a cluster) says so at info, in one line whatever the error's text; a
    second time in the same read is a warning."""
    stream = f"{prefix.upper()}_REOPEN"
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{prefix}.a.>"]))
    try:
        sent = [(await js.publish(f"{prefix}.a.{i}", b"x")).seq for i in range(3)]
        real = reader_module.ContinuousPull.batches
        failures = {"left": 1}

        async def batches(self):
            if failures["left"]:
                failures["left"] -= 1
                raise reader_module.ConsumerGone("\nNats-Subject: $JS.API.CONSUMER.MSG.NEXT.X.y")
            async for batch in real(self):
                yield batch

        monkeypatch.setattr(reader_module.ContinuousPull, "batches", batches)
        with caplog.at_level(logging.INFO, logger=reader_module.__name__):
            assert [seq for seq, _, _ in await _read(js, stream, [f"{prefix}.a.>"])] == sent
        reopens = [r for r in caplog.records if "re-opening" in r.getMessage()]
        assert [(r.levelno, r.getMessage().count("\n")) for r in reopens] == [(logging.INFO, 0)]
        assert "Nats-Subject: $JS.API.CONSUMER.MSG.NEXT.X.y; re-opening at seq 1" in reopens[0].getMessage()

        caplog.clear()
        failures["left"] = 2
        with caplog.at_level(logging.INFO, logger=reader_module.__name__):
            assert [seq for seq, _, _ in await _read(js, stream, [f"{prefix}.a.>"])] == sent
        levels = [r.levelno for r in caplog.records if "re-opening" in r.getMessage()]
        assert levels == [logging.INFO, logging.WARNING]
    finally:
        await js.delete_stream(stream)
