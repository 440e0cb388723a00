"""The scaling bench runs end to end on two tiny points per axis (figures not judged)."""

import asyncio

from bench.scaling import run


def test_scaling_bench_reports_a_curve_per_axis():
    res = asyncio.run(run([10, 20], [0, 300], releases=2, warmup=1))
    assert res["baseline"]["p50_ms"] > 0
    for axis in ("scopes", "history"):
        rows = res["curves"][axis]
        assert [row["x"] for row in rows] == ([10, 20] if axis == "scopes" else [0, 300])
        assert all(row["p50_ms"] > 0 and row["p99_ms"] >= row["p50_ms"] and row["rss_mib"] > 0 for row in rows)
        assert set(res["slopes"][axis]) and all(isinstance(v, float) for v in res["slopes"][axis].values())
