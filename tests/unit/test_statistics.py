"""The optional Mann-Whitney judgement (services/statistics.py)."""

from __future__ import annotations

import pytest

from services.statistics import judge_statistically, mann_whitney_worse


def test_u_matches_a_hand_computed_example() -> None:
    # new = [3, 4], baseline = [1, 2]: every new value beats every baseline value, U = 4
    u, p = mann_whitney_worse([3.0, 4.0], [1.0, 2.0])
    assert u == 4.0
    assert 0 < p < 0.5


def test_ties_count_half() -> None:
    u, _ = mann_whitney_worse([1.0, 2.0], [1.0, 2.0])
    assert u == 2.0  # n1*n2/2: indistinguishable


def test_clearly_worse_pack_fails_and_similar_pack_passes() -> None:
    base = {"error_rate": [0.01, 0.012, 0.009, 0.011, 0.01, 0.013], "latency_p95_ms": [80, 82, 79, 81, 80, 83]}
    worse = {"error_rate": [0.2, 0.22, 0.19, 0.21, 0.25, 0.2], "latency_p95_ms": [300, 310, 305, 290, 320, 301]}
    same = {"error_rate": [0.011, 0.01, 0.012, 0.009, 0.01, 0.011], "latency_p95_ms": [81, 80, 82, 79, 83, 80]}
    assert judge_statistically(worse, base)["result"] == "fail"
    assert judge_statistically(worse, base)["score"] == 0
    judged = judge_statistically(same, base)
    assert judged["result"] == "pass" and judged["score"] == 100


def test_better_is_not_worse() -> None:
    _, p = mann_whitney_worse([0.0] * 5, [0.1, 0.2, 0.3, 0.2, 0.1])
    assert p > 0.5


@pytest.mark.parametrize("new, base", [({"error_rate": [0.1, 0.2]}, {"error_rate": [0.1, 0.2, 0.3]}), ({"error_rate": [0.1] * 5}, {})])
def test_too_few_samples_is_insufficient_not_a_verdict(new, base) -> None:
    assert judge_statistically(new, base)["result"] == "insufficient_data"
