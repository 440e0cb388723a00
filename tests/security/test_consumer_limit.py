"""A consumer limit used up (issue 18's "left": one-off reads retried every 0.2 s for ever).

Any role that may read can make consumers, and the account's limit (services/permissions.py
AccountLimits) is shared by every user of the account: a runtime that floods it leaves readers
no consumer until the flood's idle consumers expire. Then a one-off read (an operator's or an
auditor's command) fails within REFUSED_FOR_S saying why, and a live reader (a runtime, the
service's follower) keeps trying, less and less often, and reads on once a consumer is free.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from services.cli.main import _failure
from services.jetstream import reader as reader_module
from services.jetstream.layout import ensure_layout
from services.jetstream.log_reads import load_world
from services.jetstream.reader import OrderedReader, ReadRefused
from services.permissions import AccountLimits
from tests.security.conftest import Conns, fill_consumer_limit, start_authed, stop_authed

pytestmark = pytest.mark.security
LIMIT = 12


@pytest.fixture
async def flooded(tmp_path):
    """A log with one entry, and every consumer the account allows made by the runtime user."""
    authed, lock = start_authed(tmp_path, limits=AccountLimits(max_consumers=LIMIT))
    conns = Conns(authed)
    try:
        service, runtime = await conns("service"), await conns("runtime")
        s = authed.subjects
        await ensure_layout(service.js, s)
        operator = await conns("operator")  # the role that configures channels: something to read
        await operator.js.publish(s.channel("prod", "c1"), b'{"not": "an event"}')
        made, refusal, names = await fill_consumer_limit(runtime, s, s.releases_stream, LIMIT)
        assert "maximum consumers" in refusal["description"], refusal
        yield authed, conns, service, names
    finally:
        await conns.close()
        stop_authed(authed, lock)


async def test_a_one_off_read_refused_a_consumer_fails_saying_why(flooded, monkeypatch):
    authed, conns, _, _ = flooded
    monkeypatch.setattr(reader_module, "REFUSED_FOR_S", 1.0)
    auditor = await conns("auditor")
    started = time.monotonic()
    with pytest.raises(ReadRefused) as refused:
        await asyncio.wait_for(load_world(auditor.js, authed.subjects), 20)
    assert time.monotonic() - started < 10  # the backoff's pauses (0.2, 0.4, 0.8 s) then the verdict
    assert "maximum consumers" in str(refused.value) and authed.subjects.releases_stream in str(refused.value)
    line, code = _failure(refused.value)  # what `kxr audit replay` and every other command print
    assert code == 2 and line.startswith("kxr: error: the server refused a consumer") and "\n" not in line


async def test_a_live_reader_waits_out_the_flood_and_reads_on(flooded, monkeypatch):
    authed, conns, service, names = flooded
    monkeypatch.setattr(reader_module, "REFUSED_FOR_S", 0.5)  # (a live reader never gives up: shown below)
    monkeypatch.setattr(reader_module, "RETRY_MAX_S", 0.5)
    runtime = await conns("runtime")
    s = authed.subjects
    reader = OrderedReader(runtime.js, s.releases_stream, [f"{s.prefix}.channel.>"])
    got: asyncio.Queue = asyncio.Queue()

    async def follow() -> None:
        async for entry in reader.read(follow=True):
            got.put_nowait(entry)

    task = asyncio.create_task(follow())
    try:
        await asyncio.sleep(2.0)  # four times REFUSED_FOR_S: still trying, nothing read
        assert not task.done() and got.empty()
        freed = json.loads(
            (await service.nc.request(f"$JS.API.CONSUMER.DELETE.{s.releases_stream}.{names[0]}", b"", timeout=5)).data
        )
        assert freed.get("success"), freed
        entry = await asyncio.wait_for(got.get(), 10)
        assert entry.subject == s.channel("prod", "c1") and entry.seq == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await reader.close()
