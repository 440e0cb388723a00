"""bench.operator_reads runs end to end on two tiny logs (a real nats-server, the projector, real `kxr`
processes) and reports every figure; the commands answer from the read models (no timing asserted)."""

from __future__ import annotations

import pytest

from bench.operator_reads import main, run


def test_operator_reads_bench_times_the_model_and_the_fold_at_each_size():
    res = run((100, 300), runs=1, fold_runs=1)
    assert [p["events"] >= size for p, size in zip(res["points"], (100, 300), strict=True)] == [True, True]
    for point in res["points"]:
        assert point["releases"] > 0 and point["project_s"] > 0
        assert set(point["commands"]) == {
            "kxr status",
            "kxr release list",
            "kxr channel show",
            "kxr release show",
            "kxr pin",  # from the read models too (`timed` fails on a "folding the log" line)
            "kxr release annotate",
            "kxr ui (first paint)",  # from the read models (`first_paint` fails if it folded), and --fold
        }
        for name, figures in point["commands"].items():
            assert figures["model_s"] > 0
            if name not in ("kxr release show", "kxr pin", "kxr release annotate"):
                assert figures["fold_s"] > 0 and figures["speedup"] > 0
    assert set(res["met_at_largest"]) == set(res["points"][-1]["commands"])


def test_operator_reads_bench_refuses_meaningless_sizes(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--sizes", "300,100"])
    assert exit_.value.code == 2 and "--sizes" in capsys.readouterr().err
