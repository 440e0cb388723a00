"""A release's own events read back whole, or refused (services/jetstream/log_reads.py `release_history`).

The follower's tombstones, the projector's resume and closed releases, `kxr pin`, the dashboard and
the pack keeper fold one release from its own subjects. A one-off read that ends early folded a
partial release — listed with no target, or not closed (tests/e2e/test_history_cli, loaded CI runs):
the read is now checked against how many entries the release's subjects hold.
"""

from __future__ import annotations

import pytest

from events.signing import SigningKey
from services.actions.producer import request_release
from services.jetstream import log_reads
from services.jetstream.log_reads import ShortRead, read_back, release_history
from tests.harness import PRODUCER, make_pack, request_data


async def test_a_read_that_misses_an_entry_is_refused_and_read_again(log, monkeypatch) -> None:
    js, s = log._js, log.subjects
    key = SigningKey.generate()
    await request_release(log, "r1", request_data(make_pack("1.0.0", key)), PRODUCER)
    await request_release(log, "r2", request_data(make_pack("1.1.0", key)), PRODUCER)
    whole = await release_history(js, s, "r1", 10**9)
    assert whole is not None and whole.release_id == "r1"

    real = log_reads.log_entries
    short = {"reads": 0}

    async def short_once(*args, **kwargs):
        short["reads"] += 1
        async for item in real(*args, **kwargs):
            if short["reads"] == 1:
                return  # the first read ends before the release's only entry (as a short read did)
            yield item

    monkeypatch.setattr(log_reads, "log_entries", short_once)
    with pytest.raises(ShortRead):
        await release_history(js, s, "r1", 10**9)
    short["reads"] = 0
    again = await read_back(js, s, "r1", 10**9, believe_empty_after=1, first_delay=0.01)
    assert again == whole and short["reads"] == 2  # refused once, then read whole
    assert await release_history(js, s, "nope", 10**9) is None  # no entries, none held: no release
