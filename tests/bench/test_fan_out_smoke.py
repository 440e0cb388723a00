"""bench.fan_out runs end to end with a few runtimes and reports every figure (no timing asserted)."""

from __future__ import annotations

from bench.fan_out import run


async def test_fan_out_bench_runs_with_a_few_runtimes():
    res = await run(runtimes=6, workers=2, verify=True, timeout=60)
    assert res["runtimes"] == 6 and res["workers"] == 2
    for figure in (res["ours"], res["ours_from_request"], res["baseline"]):
        assert figure["n"] == 6  # every runtime saw it
        assert 0 < figure["p50_ms"] <= figure["p99_ms"] <= figure["max_ms"]
    verified = res["verified"]
    assert verified["switched_from_stored"]["n"] == 6  # every runtime re-verified and switched
    assert verified["switched_from_stored"]["p50_ms"] >= verified["seen_from_stored"]["p50_ms"] > 0
    assert res["startup_s"] > 0 and "p99" in res["met"]
