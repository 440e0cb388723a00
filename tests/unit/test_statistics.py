"""The optional Mann-Whitney judgement (services/monitoring/statistics.py)."""

from __future__ import annotations

from itertools import combinations
from math import comb

import pytest

from services.monitoring.statistics import ALPHA, EXACT_MAX_N, judge_statistically, mann_whitney, mann_whitney_worse


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


@pytest.mark.parametrize(
    "new, base", [({"error_rate": [0.1, 0.2]}, {"error_rate": [0.1, 0.2, 0.3]}), ({"error_rate": [0.1] * 5}, {})]
)
def test_too_few_samples_is_insufficient_not_a_verdict(new, base) -> None:
    assert judge_statistically(new, base)["result"] == "insufficient_data"


# ---- exact p-values for small samples (issue 13) ------------------------------------------------


@pytest.mark.parametrize(
    ("new", "base", "p"),
    [
        ([4.0, 5.0, 6.0], [1.0, 2.0, 3.0], 1 / 20),  # every split as extreme: 1 of C(6, 3)
        ([5.0, 6.0, 7.0, 8.0], [1.0, 2.0, 3.0, 4.0], 1 / 70),
        ([6.0, 7.0, 8.0, 9.0, 10.0], [1.0, 2.0, 3.0, 4.0, 5.0], 1 / 252),
        ([3.0, 4.0], [1.0, 2.0], 1 / 6),
        ([3.0, 5.0, 6.0], [1.0, 2.0, 4.0], 2 / 20),  # rank sums 14 and 15 of C(6, 3) = 20
    ],
)
def test_exact_p_values_of_known_cases(new, base, p) -> None:
    t = mann_whitney(new, base)
    assert t.exact
    assert t.p_worse == pytest.approx(p, rel=1e-12)


def _brute_force_p(new: list[float], base: list[float]) -> float:
    """Every way to split the pooled values, counted by hand (midranks for ties)."""
    pooled = sorted(new + base)
    rank = {v: (pooled.index(v) + 1 + len(pooled) - pooled[::-1].index(v)) / 2 for v in pooled}
    observed = sum(rank[v] for v in new)
    splits = list(combinations(range(len(pooled)), len(new)))
    return sum(1 for idx in splits if sum(rank[pooled[i]] for i in idx) >= observed - 1e-9) / comb(
        len(pooled), len(new)
    )


@pytest.mark.parametrize(
    ("new", "base"),
    [
        ([0.1, 0.1, 0.2, 0.3], [0.0, 0.1, 0.1, 0.2, 0.2]),  # ties across both sides
        ([1.0, 1.0, 1.0], [1.0, 1.0, 2.0]),
        ([0.0, 0.5, 0.5, 0.9, 0.9, 0.9], [0.0, 0.0, 0.5, 0.5, 0.9]),
    ],
)
def test_exact_p_values_with_ties_match_counting_every_split(new, base) -> None:
    assert mann_whitney(new, base).p_worse == pytest.approx(_brute_force_p(new, base), rel=1e-12)


def test_three_against_three_can_never_be_worse() -> None:
    """The smallest p-value 3 vs 3 can reach is 1/20 = ALPHA: the approximation called it ~0.04, "worse"."""
    t = mann_whitney([300.0, 310.0, 320.0], [80.0, 81.0, 82.0])
    assert t.p_min == pytest.approx(0.05) and not t.decisive and not t.worse
    judged = judge_statistically({"latency_p95_ms": [300.0, 310.0, 320.0]}, {"latency_p95_ms": [80.0, 81.0, 82.0]})
    assert judged["result"] == "insufficient_data" and judged["score"] is None
    assert judged["tests"][0]["decisive"] is False


def test_four_against_four_clearly_worse_is_worse() -> None:
    t = mann_whitney([300.0, 310.0, 320.0, 330.0], [80.0, 81.0, 82.0, 83.0])
    assert t.decisive and t.worse and t.p_worse == pytest.approx(1 / 70)


def test_large_samples_use_the_normal_approximation_close_to_exact() -> None:
    new = [float(i % 17) + 3 for i in range(EXACT_MAX_N)]
    base = [float(i % 13) for i in range(EXACT_MAX_N)]
    approx = mann_whitney(new, base)
    assert not approx.exact
    exact = mann_whitney(new[:30], base[:30])
    assert exact.exact and exact.p_worse < ALPHA and approx.p_worse < ALPHA


def test_all_tied_is_never_worse() -> None:
    assert not mann_whitney([0.0] * 40, [0.0] * 40).worse
    assert not mann_whitney([0.0] * 10, [0.0] * 10).worse
