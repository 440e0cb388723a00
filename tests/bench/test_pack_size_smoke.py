"""bench.pack_size runs end to end on tiny packs and reports every figure (no timing asserted)."""

from __future__ import annotations

from bench.pack_size import parse_size, run


async def test_pack_size_bench_runs_on_a_tiny_pack():
    res = await run([parse_size("256K")], repeats=2)
    [row] = res["sizes"]
    assert row["bytes"] == 256 * 1024 and row["repeats"] == 2
    for way in ("ours", "raw", "raw_fetch"):
        assert row[way]["mib_s"] > 0 and row[way]["median_s"] > 0
        assert row[way]["rss_growth_mib"] >= 0
    assert row["ours"]["verify_s"] > 0 and row["ours"]["distribute_ms"] > 0
    assert row["ratio"] > 0 and row["ratio_vs_fetch"] > 0
    assert set(res["met"]) == {"rss_growth", "rss_growth_measured_at", "throughput_vs_raw"}


def test_sizes_are_parsed_with_units_and_refused_when_meaningless():
    import argparse

    import pytest

    assert parse_size("1G") == 1 << 30 and parse_size("100M") == 100 << 20 and parse_size("4096") == 4096
    for bad in ("0", "-1M", "lots"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_size(bad)
