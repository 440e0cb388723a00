"""bench.rollback runs end to end with a few runtimes and reports every figure (no timing asserted)."""

from __future__ import annotations

import math

from bench.rollback import run


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and value > 0 and math.isfinite(value)


async def test_rollback_bench_runs_with_a_few_runtimes() -> None:
    res = await run([(2, 2)], workers=1, timeout=60)
    (size,) = res["sizes"]
    assert size["runtimes"] == 2 and size["rounds"] == 2
    for side in ("ours", "baseline"):
        assert size[side]["n"] == 2  # every round ended with every runtime back on the LKG, reported and stored
        assert all(_positive(size[side][k]) for k in ("p50_ms", "p99_ms", "max_ms"))
        hops = size["hops_ms_since_sample"][side]
        # every hop of the chain was seen, in the order of the chain
        order = ["monitoring_failed", "rollback_started", "pointer_and_rolled_back", "first_runtime_has_pointer"]
        assert all(_positive(hops[h]["p50_ms"]) for h in order + ["last_report_stored"])
        assert [hops[h]["p50_ms"] for h in order] == sorted(hops[h]["p50_ms"] for h in order)
        assert hops["last_report_stored"]["p50_ms"] == size[side]["p50_ms"]
    # each runtime said where its switch back went: trust chain read, gates over the pack, the report
    assert all(size["runtime_parts"][part]["n"] == 4 for part in ("trust_chain", "gates", "report"))
    assert size["runtime_verify_and_switch"]["n"] == 4 and not size["profiled"]
    # the runtimes ran as deployed: each pointer's service signature checked (and the chain, always)
    assert size["runtimes_check_signatures"] is True and size["worker_gc"] == "scaled"
    # every runtime ran the LKG before: its record answered, nothing was read from the store
    assert size["switches_read_from_store"] == 0
    # where the CPU went: each side's runtimes measured their own CPU per pointer (GC part included)
    for side in ("ours", "baseline"):
        cpu = size["runtime_cpu"][side]
        assert _positive(cpu["us_per_pointer"]) and 0 <= cpu["gc_us_per_pointer"] <= cpu["us_per_pointer"]
        assert set(size["cpu_per_round"][side]) == {"nats_server_ms", "service_ms", "runtimes_ms", "bench_ms"}
    assert _positive(size["ratio_p50"]) and size["target_p99_ms"] == 25.0
    assert res["met"] == {"p99_2": size["met"]} and isinstance(size["met"], bool)


async def test_rollback_profile_covers_the_service_and_each_side_of_the_runtimes_on_the_pointer(tmp_path) -> None:
    res = await run([(2, 1)], workers=1, timeout=60, profile=tmp_path)
    (size,) = res["sizes"]
    assert size["profiled"] and size["ours"]["n"] == 1 and size["baseline"]["n"] == 1
    where = tmp_path / "n2"
    # the service's whole run; the runtimes' worker only while it handled a rollback pointer, one per side
    for name in ("serve", "runtimes-0-ours", "runtimes-0-raw"):
        assert (where / f"{name}.prof").stat().st_size > 0, name
        assert "function calls" in (where / f"{name}.txt").read_text(), name
