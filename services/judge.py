"""Judging a monitoring window from health samples (CONTRACT §8). Pure.

Figures are computed over the samples of the new pack (by digest) in the stage's
cohorts since the window opened; "new error classes" compares against samples of
the previous pack. Fewer than `min_samples` samples is inconclusive: never a pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable

from events.health import HealthSample
from events.model import Comparison, Monitoring, MonitoringStarted
from .statistics import judge_statistically

HARD_BREACH_MIN_REQUESTS = 20


@dataclass(frozen=True)
class Verdict:
    outcome: str  # "monitoring_passed" | "monitoring_failed" | "monitoring_inconclusive"
    samples: int
    runtimes: int
    figures: dict
    comparisons: list[Comparison]
    reason: str


def window_span(window: MonitoringStarted) -> tuple[datetime, datetime]:
    """The stored-time range whose samples judge `window`: one window length of baseline before it, then the window."""
    return window.starts_at - timedelta(seconds=window.monitoring.window_s), window.ends_at


def split_window(stored: Iterable[tuple[datetime, HealthSample]], window: MonitoringStarted) -> tuple[list[HealthSample], list[HealthSample]]:
    """(samples of the new pack inside the window, samples of the previous pack just before it), by stored time."""
    stored = list(stored)
    new = [s for at, s in stored if window.starts_at <= at <= window.ends_at and s.digest == window.digest]
    baseline = [s for at, s in stored if at < window.starts_at and s.digest is not None and s.digest != window.digest]
    return new, baseline


def _weighted(values: list[tuple[float, int]]) -> float | None:
    total = sum(w for _, w in values)
    if not values:
        return None
    if total == 0:
        return sum(v for v, _ in values) / len(values)
    return sum(v * w for v, w in values) / total


def figures_of(samples: Iterable[HealthSample], baseline: Iterable[HealthSample]) -> dict:
    regular = []
    activations = []
    idle = 0
    for s in samples:
        if s.kind == "activation":
            activations.append(s)
        elif s.requests > 0:
            regular.append(s)
        else:
            idle += 1  # a runtime that served nothing is no evidence either way
    requests = sum(s.requests for s in regular)
    errors = sum(s.errors for s in regular)
    checked = sum(s.correctness.checked for s in regular if s.correctness)
    mismatches = sum(s.correctness.mismatches for s in regular if s.correctness)
    p95 = [(s.latency_ms.p95, s.requests) for s in regular if s.latency_ms]
    p99 = [(s.latency_ms.p99, s.requests) for s in regular if s.latency_ms]
    classes = sorted({c for s in regular for c, n in s.error_classes.items() if n > 0})
    known = {c for s in baseline for c, n in s.error_classes.items() if n > 0}
    took = sorted(s.took_ms for s in activations if s.took_ms is not None)
    return {
        "samples": len(regular),
        "idle_samples": idle,
        "runtimes": len({s.runtime_id for s in regular} | {s.runtime_id for s in activations}),
        "requests": requests,
        "errors": errors,
        "error_rate": (errors / requests) if requests else None,
        "latency_p95_ms": _weighted(p95),
        "latency_p99_ms": _weighted(p99),
        "latency_p95_ms_worst": max((v for v, _ in p95), default=None),
        "latency_p99_ms_worst": max((v for v, _ in p99), default=None),
        "activations": len(activations),
        "activation_success_rate": (sum(1 for s in activations if s.ok) / len(activations)) if activations else None,
        "time_to_activate_ms_p50": took[len(took) // 2] if took else None,
        "time_to_activate_ms_max": took[-1] if took else None,
        "mismatch_rate": (mismatches / checked) if checked else None,
        "error_classes": classes,
        "new_error_classes": sorted(set(classes) - known),
        "activation_errors": sorted({s.error for s in activations if not s.ok and s.error}),
    }


def compare(figures: dict, monitoring: Monitoring) -> list[Comparison]:
    t = monitoring.thresholds
    out: list[Comparison] = []

    def at_most(metric: str, limit: float | None) -> None:
        if limit is None:
            return
        value = figures.get(metric)
        out.append(Comparison(metric=metric, value=value, op="<=", threshold=limit, ok=value is None or value <= limit))

    at_most("error_rate", t.error_rate_max)
    at_most("latency_p95_ms", t.latency_p95_ms_max)
    at_most("latency_p99_ms", t.latency_p99_ms_max)
    at_most("mismatch_rate", t.mismatch_rate_max)
    # A failed activation on any runtime is a failure even without a configured minimum.
    limit = t.activation_success_min if t.activation_success_min is not None else 1.0
    rate = figures.get("activation_success_rate")
    out.append(Comparison(metric="activation_success_rate", value=rate, op=">=", threshold=limit, ok=rate is None or rate >= limit))
    if t.new_error_classes == "fail":
        new = figures.get("new_error_classes") or []
        out.append(Comparison(metric="new_error_classes", value=float(len(new)), op="none_new", threshold=0.0, ok=not new))
    return out


def per_sample(samples: Iterable[HealthSample]) -> dict[str, list[float]]:
    regular = [s for s in samples if s.kind == "sample" and s.requests > 0]
    return {
        "error_rate": [s.errors / s.requests for s in regular],
        "latency_p95_ms": [s.latency_ms.p95 for s in regular if s.latency_ms],
        "latency_p99_ms": [s.latency_ms.p99 for s in regular if s.latency_ms],
    }


def judge(samples: list[HealthSample], baseline: list[HealthSample], monitoring: Monitoring) -> Verdict:
    figures = figures_of(samples, baseline)
    comparisons = compare(figures, monitoring)
    mode = monitoring.thresholds.statistical
    if mode != "off":
        stats = judge_statistically(per_sample(samples), per_sample(baseline))
        figures["statistical"] = stats
        if mode == "enforce" and stats["result"] == "fail":
            comparisons.append(Comparison(metric="statistical_score", value=float(stats["score"]), op=">=", threshold=50.0, ok=False))
    failed = [c for c in comparisons if not c.ok]
    n, runtimes = figures["samples"], figures["runtimes"]
    if failed:
        reason = "; ".join(f"{c.metric} {_fmt(c.value)} breaches {c.op} {_fmt(c.threshold)}" for c in failed)
        if "new_error_classes" in (c.metric for c in failed):
            reason += f" (new: {', '.join(figures['new_error_classes'])})"
        return Verdict("monitoring_failed", n, runtimes, figures, comparisons, reason)
    if n < monitoring.min_samples:
        return Verdict("monitoring_inconclusive", n, runtimes, figures, comparisons, f"{n} sample(s), fewer than min_samples {monitoring.min_samples}")
    return Verdict("monitoring_passed", n, runtimes, figures, comparisons, f"{n} sample(s) from {runtimes} runtime(s) within every threshold")


def hard_breach(sample: HealthSample, monitoring: Monitoring) -> str | None:
    """A single sample bad enough to fail the window before it ends (or None)."""
    if sample.kind == "activation" and sample.ok is not True:
        return f"runtime {sample.runtime_id} failed to activate: {sample.error or 'no reason given'}"
    limit = monitoring.thresholds.error_rate_max
    if sample.kind == "sample" and limit is not None and sample.requests >= HARD_BREACH_MIN_REQUESTS:
        rate = sample.errors / sample.requests
        if rate > min(1.0, 2 * limit):
            return f"runtime {sample.runtime_id} error rate {rate:.3f} over twice the threshold {limit}"
    return None


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4g}"
