"""`--profile DIR` of the activation benches: each `kxr serve` runs under cProfile and leaves its stats
and a table (issue 18: a miss is explained with a profile); both report the service's CPU per release.
Tiny sizes; no timing judged."""

from __future__ import annotations

from pathlib import Path

from bench import throughput, time_to_activate


def _profiled(directory: Path, name: str) -> bool:
    prof, table = directory / f"{name}.prof", directory / f"{name}.txt"
    return prof.stat().st_size > 0 and "function calls" in table.read_text()


async def test_time_to_activate_profiles_the_service(tmp_path) -> None:
    res = await time_to_activate.run(releases=2, warmup=0, profile=tmp_path)
    assert res["profiled"] and res["ours"]["n"] == 2
    assert _profiled(tmp_path, "serve")
    assert res["service_cpu_ms_per_release"] > 0  # the service's CPU over the measured releases (/proc)


async def test_throughput_profiles_each_serve_process(tmp_path) -> None:
    res = await throughput.run(channels=2, cohorts=1, profile=tmp_path)
    assert res["profiled"] and res["releases"] == 2
    assert res["end_to_end"]["service_cpu_ms_per_release"] > 0
    for name in ("preparer", "distributor", "verifier", "activator", "serve-all-1-0"):
        assert _profiled(tmp_path, name), name
