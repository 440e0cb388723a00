"""bench.cli_start runs end to end (a real nats-server, real `kxr` processes) and reports every figure (no timing
asserted)."""

from __future__ import annotations

import pytest

from bench.cli_start import COMMANDS, TARGETED, main, run


def test_cli_start_bench_times_every_command_against_a_baseline():
    res = run(runs=2, events=30)
    assert res["runs"] == 2 and res["log_events"] >= 30
    assert set(res["commands"]) == set(COMMANDS) and set(res["met"]) == set(TARGETED)
    for figures in [res["baseline"], *res["commands"].values()]:
        assert figures["n"] == 2
        assert 0 < figures["min_ms"] <= figures["median_ms"] <= figures["p90_ms"]
        assert 0 < figures["cpu_median_ms"]  # the process's own CPU time (user + system)
    for figures in res["commands"].values():
        assert figures["over_baseline_ms"] == round(figures["median_ms"] - res["baseline"]["median_ms"], 1)


def test_cli_start_bench_refuses_meaningless_sizes(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--runs", "0"])
    assert exit_.value.code == 2 and "--runs" in capsys.readouterr().err
