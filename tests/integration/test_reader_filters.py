"""OrderedReader drops its filters only when they name every subject of the stream (services/jetstream/reader.py)."""

from __future__ import annotations

import nats
import pytest
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError

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
