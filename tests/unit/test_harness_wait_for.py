"""tests/harness.py `wait_for`: a deadline that passed while the process was not running is no proof that
what it waits for did not happen (CI once failed a runtime report "not seen on the wire" in 5 s, the
report stored meanwhile)."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.harness import wait_for


async def test_a_stall_past_the_deadline_gets_one_more_look_after_the_loop_turns() -> None:
    loop = asyncio.get_running_loop()
    seen: list[str] = []
    stalled = False

    def probe() -> bool:
        nonlocal stalled
        if not stalled:  # the process loses the CPU past the deadline; meanwhile the message arrived
            stalled = True
            time.sleep(0.3)
            loop.call_soon(seen.append, "the report")
        return bool(seen)

    assert await wait_for(probe, 0.2, "the report") is True


async def test_what_never_happens_still_times_out_naming_it() -> None:
    with pytest.raises(AssertionError, match="timed out after 0.1s waiting for nothing; last state: 7"):
        await wait_for(lambda: False, 0.1, "nothing", describe=lambda: 7)
