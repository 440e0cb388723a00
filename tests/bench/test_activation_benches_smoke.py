"""The activation benches run end to end on tiny sizes (figures are not judged here: no timing asserts)."""

from __future__ import annotations

import math

from bench import throughput, time_to_activate


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and value > 0 and math.isfinite(value)


async def test_time_to_activate_bench_runs_on_a_tiny_size() -> None:
    res = await time_to_activate.run(releases=4, warmup=1)
    assert res["ours"]["n"] == 4 and res["baseline"]["n"] >= 4
    assert all(_positive(res[side][k]) for side in ("ours", "baseline") for k in ("p50_ms", "p99_ms", "max_ms"))
    assert _positive(res["ratio_p50"]) and set(res["met"]) == {"p50", "p99"}
    assert res["fast_path"] and _positive(res["raw_fast_shape"]["p50_ms"]) and _positive(res["ratio_to_fast_shape_p50"])
    assert _positive(res["ratio_to_fast_shape_p99"]) and res["turns"] == time_to_activate.TURNS
    # every turn's raw rounds are in: 200 each at least, over the turns
    assert all(res[side]["n"] >= 200 for side in ("baseline", "raw_atomic_commit", "raw_fast_shape"))


def test_the_turns_share_out_every_release_and_round() -> None:
    assert time_to_activate.shares(200, 4) == [50, 50, 50, 50]
    assert time_to_activate.shares(5, 4) == [2, 1, 1, 1] and time_to_activate.shares(3, 4) == [1, 1, 1, 0]


async def test_time_to_activate_bench_step_by_step() -> None:
    """`--fast-path off`: every step from its own consumer's delivery, the shape issue 18's floor is of."""
    res = await time_to_activate.run(releases=3, warmup=1, fast_path=False)
    assert res["fast_path"] is False and res["ours"]["n"] == 3 and _positive(res["ratio_to_floor_p50"])


async def test_time_to_activate_bench_with_two_serve_processes() -> None:
    """Issue 18: time to activate with two `kxr serve` sharing the durable consumers (a report)."""
    res = await time_to_activate.run(releases=3, warmup=1, processes=2)
    assert res["processes"] == 2 and res["ours"]["n"] == 3 and _positive(res["ratio_to_floor_p50"])


async def test_throughput_bench_runs_on_a_tiny_size() -> None:
    res = await throughput.run(channels=4, cohorts=2, processes=(1, 2))
    assert res["scopes"] == 8 and res["releases"] == 4
    assert set(res["consumers_per_s"]) == {"preparer", "distributor", "verifier", "activator"}
    assert all(_positive(v) for v in res["consumers_per_s"].values()) and _positive(res["raw_loop_per_s"])
    runs = res["raw_loop_runs_per_s"]
    assert len(runs) == 3 and sorted(runs)[1] == res["raw_loop_per_s"]  # the baseline: the runs' median
    assert _positive(res["end_to_end"]["releases_per_s"])
    assert set(res["end_to_end_by_processes"]) == {"1", "2"}  # two serve processes sharing the durables
    assert all(_positive(e["releases_per_s"]) for e in res["end_to_end_by_processes"].values())
    # the activator ran after its read models had folded the backlog (4 requests, prepared, distributed
    # and the channels' configurations at least): its projector's first start is not in its figure
    assert res["activator_read_models_warmed_to"] >= 3 * 4
    # where each consumer's time went (a few releases may all land between two polls: not metered then)
    assert set(res["cpu_ms_per_release"]) == set(res["consumers_per_s"])
    assert all(set(v) == {"service_ms", "server_ms"} for v in res["cpu_ms_per_release"].values())
    assert _positive(res["raw_loop_server_cpu_ms_per_message"])
