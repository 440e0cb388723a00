"""An optional statistical judgement of a window, in the style of Kayenta.

For each metric, a one-sided Mann-Whitney U test asks whether the new pack's samples
are worse (larger) than the previous pack's. The score is the share of metrics not
significantly worse: >= 75 pass, >= 50 marginal, else fail.

Small samples get the exact p-value: the share of all ways to split the pooled values
into the two groups whose rank sum is at least the observed one (midranks for ties, so
ties are exact too). The normal approximation is used only beyond EXACT_MAX_N values,
where it is accurate. A test whose smallest attainable p-value is not below ALPHA (3
against 3 values: 1/20) can never show "worse": it gives no verdict and does not count
in the score — the approximation used to call such windows "worse" (p ~ 0.04).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ALPHA = 0.05
MIN_PER_SIDE = 3
EXACT_MAX_N = 60  # pooled values; C(60, 30) ~ 1.2e17 ways, still exact integers, a few ms


@dataclass(frozen=True)
class MetricTest:
    metric: str
    n_new: int
    n_baseline: int
    u: float
    p_worse: float  # probability of a result this bad if the packs behaved the same
    p_min: float  # the smallest p-value these sample sizes (and ties) can produce
    exact: bool

    @property
    def decisive(self) -> bool:
        """Whether this test could show "worse" at all."""
        return self.p_min < ALPHA

    @property
    def worse(self) -> bool:
        return self.decisive and self.p_worse < ALPHA


def _doubled_midranks(pooled: list[float]) -> tuple[list[int], float]:
    """Twice the midrank of each value of sorted `pooled` (integers, so sums are exact), and the tie term."""
    ranks = [0] * len(pooled)
    tie_term = 0.0
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1] == pooled[i]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = i + j + 2  # 2 * ((i + 1) + (j + 1)) / 2
        t = j - i + 1
        tie_term += t**3 - t
        i = j + 1
    return ranks, tie_term


def _rank_sum_counts(ranks: list[int], k: int) -> list[int]:
    """counts[s]: how many k-element subsets of `ranks` sum to s (exact, any ties).

    The generating polynomial of each subset size is packed into one Python integer
    (a coefficient per `width` bits), so adding an element is one shift and one add.
    """
    width = 8 * ((math.comb(len(ranks), k).bit_length() + 8) // 8)  # bits per coefficient, whole bytes
    poly = [1] + [0] * k  # poly[j]: subsets of size j so far
    for seen, r in enumerate(ranks, 1):
        for j in range(min(seen, k), 0, -1):
            poly[j] += poly[j - 1] << (width * r)
    top = sum(sorted(ranks)[-k:]) if k else 0
    raw = poly[k].to_bytes(width // 8 * (top + 1), "little")
    step = width // 8
    return [int.from_bytes(raw[s * step : (s + 1) * step], "little") for s in range(top + 1)]


def _exact(ranks_new: int, ranks: list[int], n1: int) -> tuple[float, float]:
    counts = _rank_sum_counts(ranks, n1)
    total = math.comb(len(ranks), n1)
    tail = sum(counts[ranks_new:])
    best = next(c for c in reversed(counts) if c)
    return tail / total, best / total


def mann_whitney(new: list[float], baseline: list[float]) -> MetricTest:
    """U of `new` over `baseline` and the one-sided p-value that `new` tends to be larger."""
    n1, n2 = len(new), len(baseline)
    pooled = sorted([(v, 0) for v in new] + [(v, 1) for v in baseline])
    ranks, tie_term = _doubled_midranks([v for v, _ in pooled])
    r1_doubled = sum(r for r, (_, side) in zip(ranks, pooled) if side == 0)
    u = r1_doubled / 2 - n1 * (n1 + 1) / 2
    n = n1 + n2
    if n1 == 0 or n2 == 0:
        return MetricTest("", n1, n2, u, 1.0, 1.0, True)
    if n <= EXACT_MAX_N:
        p, p_min = _exact(r1_doubled, ranks, n1)
        return MetricTest("", n1, n2, u, p, p_min, True)
    variance = n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1)))
    if variance <= 0:  # every value tied: nothing can be told apart
        return MetricTest("", n1, n2, u, 1.0, 1.0, False)
    sd = math.sqrt(variance)
    p = 0.5 * math.erfc((u - n1 * n2 / 2 - 0.5) / sd / math.sqrt(2))  # continuity-corrected
    p_min = 0.5 * math.erfc((n1 * n2 / 2 - 0.5) / sd / math.sqrt(2))
    return MetricTest("", n1, n2, u, p, p_min, False)


def mann_whitney_worse(new: list[float], baseline: list[float]) -> tuple[float, float]:
    """(U, one-sided p-value that `new` tends to be larger)."""
    t = mann_whitney(new, baseline)
    return t.u, t.p_worse


def judge_statistically(new: dict[str, list[float]], baseline: dict[str, list[float]]) -> dict:
    tests = []
    for metric in sorted(new):
        a, b = new[metric], baseline.get(metric, [])
        if len(a) >= MIN_PER_SIDE and len(b) >= MIN_PER_SIDE:
            t = mann_whitney(a, b)
            tests.append(MetricTest(metric, t.n_new, t.n_baseline, t.u, t.p_worse, t.p_min, t.exact))
    rows = [
        {
            "metric": t.metric,
            "n_new": t.n_new,
            "n_baseline": t.n_baseline,
            "u": t.u,
            "p_worse": round(t.p_worse, 6),
            "p_min": round(t.p_min, 6),
            "exact": t.exact,
            "decisive": t.decisive,
            "worse": t.worse,
        }
        for t in tests
    ]
    decisive = [t for t in tests if t.decisive]
    if not decisive:  # too few samples to ever show "worse": no verdict, never a "fail"
        return {"score": None, "result": "insufficient_data", "tests": rows}
    score = round(100 * sum(1 for t in decisive if not t.worse) / len(decisive))
    result = "pass" if score >= 75 else "marginal" if score >= 50 else "fail"
    return {"score": score, "result": result, "tests": rows}
