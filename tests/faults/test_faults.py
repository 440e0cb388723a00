"""The fault suite (marker `faults`): concurrent releases through kills, freezes and a server restart.

The same scenario runs longer from `bench/chaos.py` (--releases, --seconds, --seed).
"""

from __future__ import annotations

import json

import pytest

from bench.chaos import run_chaos

pytestmark = pytest.mark.faults


async def test_fifty_concurrent_releases_survive_kills_freezes_and_a_server_restart(tmp_path):
    counts = await run_chaos(releases=50, seconds=20.0, seed=11, workdir=tmp_path, ack_wait=2.0)
    print(json.dumps(counts.__dict__, sort_keys=True))  # the counts, for the record
    assert counts.problems == []
    assert counts.kills >= 1 and counts.server_restarts == 1
    assert sum(counts.outcomes.values()) == 50
    assert counts.outcomes.get("success", 0) + counts.held == 50
