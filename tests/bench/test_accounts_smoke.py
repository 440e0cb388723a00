"""The accounts bench runs end to end on tiny sizes (figures not judged): both sides read every entry."""

import asyncio

from bench.accounts import run


def test_accounts_bench_reports_both_sides():
    res = asyncio.run(run(gets=20, entries=300, rounds=1))
    for side in ("direct_get_same_account", "direct_get_cross_account"):
        assert res[side]["n"] == 20 and res[side]["p99_ms"] >= res[side]["p50_ms"] > 0
    assert res["read_entries_per_s_same_account"] > 0 and res["read_entries_per_s_cross_account"] > 0
    assert res["entries"] == 300
