"""An optional statistical judgement of a window, in the style of Kayenta.

For each metric, a one-sided Mann-Whitney U test asks whether the new pack's samples
are worse than the previous pack's (normal approximation with tie correction; exact
enough from a handful of samples per side, and no heavy dependency for 30 lines). The
score is the share of metrics not significantly worse: >= 75 pass, >= 50 marginal,
else fail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ALPHA = 0.05
MIN_PER_SIDE = 3


@dataclass(frozen=True)
class MetricTest:
    metric: str
    n_new: int
    n_baseline: int
    u: float
    p_worse: float  # probability of a result this bad if the packs behaved the same

    @property
    def worse(self) -> bool:
        return self.p_worse < ALPHA


def mann_whitney_worse(new: list[float], baseline: list[float]) -> tuple[float, float]:
    """U of `new` over `baseline` and the one-sided p-value that `new` tends to be larger."""
    n1, n2 = len(new), len(baseline)
    pooled = sorted([(v, 0) for v in new] + [(v, 1) for v in baseline])
    ranks = [0.0] * len(pooled)
    tie_term = 0.0
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        rank = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[k] = rank
        t = j - i + 1
        tie_term += t ** 3 - t
        i = j + 1
    r1 = sum(r for r, (_, side) in zip(ranks, pooled) if side == 0)
    u = r1 - n1 * (n1 + 1) / 2
    n = n1 + n2
    variance = n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1))) if n > 1 else 0.0
    if variance <= 0:
        return u, 1.0
    z = (u - n1 * n2 / 2 - 0.5) / math.sqrt(variance)  # continuity-corrected
    return u, 0.5 * math.erfc(z / math.sqrt(2))


def judge_statistically(new: dict[str, list[float]], baseline: dict[str, list[float]]) -> dict:
    tests = []
    for metric in sorted(new):
        a, b = new[metric], baseline.get(metric, [])
        if len(a) >= MIN_PER_SIDE and len(b) >= MIN_PER_SIDE:
            u, p = mann_whitney_worse(a, b)
            tests.append(MetricTest(metric, len(a), len(b), u, p))
    if not tests:
        return {"score": None, "result": "insufficient_data", "tests": []}
    score = round(100 * sum(1 for t in tests if not t.worse) / len(tests))
    result = "pass" if score >= 75 else "marginal" if score >= 50 else "fail"
    return {"score": score, "result": result, "tests": [
        {"metric": t.metric, "n_new": t.n_new, "n_baseline": t.n_baseline, "u": t.u, "p_worse": round(t.p_worse, 6), "worse": t.worse}
        for t in tests
    ]}
