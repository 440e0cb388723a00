"""The scaling bench runs end to end on two tiny points per axis (figures not judged)."""

import asyncio

from bench.common import Progress
from bench.scaling import drain_timeout, run


def test_scaling_bench_reports_a_curve_per_axis():
    res = asyncio.run(run([10, 20], [0, 300], releases=2, warmup=1))
    assert res["baseline"]["p50_ms"] > 0
    for axis in ("scopes", "history"):
        rows = res["curves"][axis]
        assert [row["x"] for row in rows] == ([10, 20] if axis == "scopes" else [0, 300])
        assert all(row["p50_ms"] > 0 and row["p99_ms"] >= row["p50_ms"] and row["rss_mib"] > 0 for row in rows)
        assert set(res["slopes"][axis]) and all(isinstance(v, float) for v in res["slopes"][axis].values())
    grown = res["curves"]["history"][1]
    assert grown["start"] == "snapshot" and grown["fold_s"] >= 0 and grown["generate_events_per_s"] > 0


def test_scaling_bench_cold_start_on_a_small_history():
    res = asyncio.run(run([], [300], releases=2, warmup=1, snapshot=False))
    (row,) = res["curves"]["history"]
    assert row["start"] == "cold" and "fold_s" not in row and row["ready_s"] >= 0


def test_scaling_bench_restart_with_read_models_in_the_bucket(tmp_path):
    """--restart: a first start writes the read models, the measured second start resumes them;
    --profile: that service runs under cProfile and leaves its stats."""
    res = asyncio.run(run([], [300], releases=2, warmup=1, restart=True, profile=tmp_path))
    (row,) = res["curves"]["history"]
    assert row["start"] == "snapshot+restart" and row["first_start_model_s"] > 0 and row["said_ready_s"] > 0
    assert res["history_start"] == "snapshot+restart"
    assert (tmp_path / "serve-sch300.prof").stat().st_size > 0


def test_drain_timeout_grows_with_the_history():
    assert drain_timeout(1_000_000) > drain_timeout(100_000) > drain_timeout(0) > 0


def test_progress_ends_its_line_once_even_past_the_total(capsys):
    bar = Progress("filling", 100, every_s=0)
    bar.update(50)
    bar.update(130)  # a generator stops at whole clones: past the total
    bar.update(130)
    err = capsys.readouterr().err
    assert "130/100" in err and err.endswith("\n") and err.count("130/100") == 1
