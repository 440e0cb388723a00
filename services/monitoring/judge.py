"""Judging a monitoring window from health samples (CONTRACT §8). Pure.

What the window is judged on (README "Safety semantics"):
- the samples of the new pack (by digest) stored in the stage's cohorts within the window,
  which starts at the stage's activation, not at the monitor's reaction;
- the activation reports of the new pack from the activation on: one refusal (`ok` not
  true) fails the stage (trigger `activation_failure`), and every runtime that reported in
  these cohorts before the activation with another pack (or none) must report activating
  the new one, or the window is inconclusive naming the runtimes missing;
- the baseline: samples of the pack each cohort ran before (the previous *active* pack
  recorded in the log), just before the activation — for new error classes and statistics.

Which reports count is one rule: a report is a sample at all by `events.health.accept_report`
(bounded figures, from the runtime its subject names), and evidence for a window by
`counts_for` (its env, channel and cohorts, its pack, its time span), whoever asks: the window's
verdict, the early scan when it opens, the live watch, and `kxr watch`'s live view.

Absence is never health: a configured threshold whose figure has no data, too few samples,
a runtime that never switched, or an invalid report in the window makes it inconclusive.
Each runtime is also judged on its own samples, so one runtime reporting huge healthy
traffic cannot outvote runtimes that breach.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from events.health import HealthSample
from events.model import Comparison, Monitoring, MonitoringStarted, QueryAnswer
from events.subjects import HealthParts
from services.monitoring import prometheus
from services.monitoring.statistics import judge_statistically

if TYPE_CHECKING:
    from projections.releases import ReleaseState
    from projections.world import World

HARD_BREACH_MIN_REQUESTS = 20
# A runtime with fewer requests in the window is not judged on its own (its rates are noise);
# its samples still count in the aggregate.
PER_RUNTIME_MIN_REQUESTS = HARD_BREACH_MIN_REQUESTS
# An activation report stored this long before the activation's timestamp still counts:
# the activator's clock and the NATS server's may differ a little.
CLOCK_SKEW = timedelta(seconds=5)
MAX_LISTED = 20  # names listed in a figure or a reason (the rest are counted): a verdict is one bounded event
MAX_TEXT = 200  # characters kept of a runtime's error text in a verdict

ACTIVATION_FAILURE = "activation_failure"
TENANT_IMPACT = "tenant_impact"


@dataclass(frozen=True)
class Verdict:
    outcome: str  # "monitoring_passed" | "monitoring_failed" | "monitoring_inconclusive"
    samples: int
    runtimes: int
    figures: dict
    comparisons: list[Comparison]
    reason: str
    trigger: str | None = None  # on a failure: the rollback trigger it names (None: monitoring_failure)


@dataclass(frozen=True)
class Invalid:
    """A report on a window's health subjects that is not a valid sample of the runtime it names."""

    runtime: str
    problem: str


@dataclass(frozen=True)
class WindowData:
    """Everything a window is judged on, split out of the stored reports."""

    samples: list[HealthSample]  # the new pack's: samples within the window, activations since the activation
    baseline: list[HealthSample]  # the previous active pack's, before the activation
    expected: frozenset[str] = frozenset()  # runtimes that ran something else before and must switch
    invalid: list[Invalid] = field(default_factory=list)  # invalid reports within the window
    # the channel's Prometheus queries as asked at the window's end, each with its figure or why none
    queries: tuple[QueryAnswer, ...] = ()
    # runtimes that ran something else here before, that a reconfiguration has since moved: runtime -> the
    # cohort it reports from now (`moved_away`); no longer expected to switch here
    moved: Mapping[str, str] = field(default_factory=dict)
    # the window's cohorts the channel's configuration no longer names when the window is judged (a
    # reconfiguration took them out): their runtimes now match other cohorts, so whatever the window holds
    # does not speak for them (`against_channel`)
    unconfigured: frozenset[str] = frozenset()
    # why the channel's newest configuration could not be read (None: it could): its cohorts are then unknown,
    # never taken to be the older configuration's (projections.world.ChannelProblem)
    config_problem: str | None = None
    # the stream sequence of the channel's newest configuration entry the window was checked against (the
    # verdict records it: MonitoringVerdict.channel_seq)
    channel_seq: int | None = None


def switched(samples: Iterable[HealthSample]) -> set[str]:
    """The runtimes that reported a successful activation of the window's pack (the coverage rule's)."""
    return {s.runtime_id for s in samples if s.kind == "activation" and not _refusal(s)}


def unswitched(data: WindowData) -> set[str]:
    """The runtimes expected to switch (`WindowData.expected`) with no activation of the new pack reported."""
    return set(data.expected) - switched(data.samples)


def moved_away(
    newest: Iterable[tuple[datetime, str, HealthSample]], cohorts: Collection[str], since: datetime
) -> dict[str, str]:
    """Runtimes whose newest valid report, stored after `since`, is on a cohort outside `cohorts`:
    runtime -> that cohort. Pure.

    `newest`: (stored time, cohort, sample) of the last report on each of the channel's cohort subjects
    of each runtime asked about. A channel reconfiguration moves a runtime to another cohort (it follows
    `channel.configured`): it reported here before the activation, then reports from its new cohort, so
    it was never to switch here. Only positive evidence excuses it — a report from elsewhere after the
    activation; a runtime that went silent (it may have crashed on the new pack) stays expected.
    """
    latest: dict[str, tuple[datetime, str]] = {}
    for at, cohort, sample in newest:
        if sample.runtime_id not in latest or at > latest[sample.runtime_id][0]:
            latest[sample.runtime_id] = (at, cohort)
    return {rid: cohort for rid, (at, cohort) in latest.items() if cohort not in cohorts and at > since}


@dataclass(frozen=True)
class Breach:
    reason: str
    trigger: str | None = None


def window_span(window: MonitoringStarted) -> tuple[datetime, datetime]:
    """The stored-time range whose samples judge `window`: one window length of baseline before it, then the window."""
    return window.starts_at - timedelta(seconds=window.monitoring.window_s), window.ends_at


def read_span(window: MonitoringStarted, activated_at: datetime | None) -> tuple[datetime, datetime]:
    """`window_span`, reaching back to the stage's activation (an extended window starts later)."""
    start, end = window_span(window)
    if activated_at is not None:
        start = min(start, activated_at - CLOCK_SKEW - timedelta(seconds=window.monitoring.window_s))
    return start, end


def _refusal(s: HealthSample) -> bool:
    return s.kind == "activation" and s.ok is not True


@dataclass(frozen=True)
class Watch:
    """What a stage's window takes as evidence: which pack, from when to when (server stored time), and where."""

    digest: str
    activated_at: datetime  # activation reports count from CLOCK_SKEW before the stage's pointers moved
    starts_at: datetime  # regular samples count from the window's start
    ends_at: datetime | None = None  # None: not over yet (the scan when a window opens)
    # (env, channel, cohorts); None when the reports were read from the window's own subjects
    place: tuple[str, str, frozenset[str]] | None = None

    @classmethod
    def of(cls, window: MonitoringStarted, activated_at: datetime | None = None) -> Watch:
        """`window`'s evidence; `activated_at` is when the stage's pointers moved (default: the window's start)."""
        return cls(window.digest, activated_at or window.starts_at, window.starts_at, window.ends_at)

    @classmethod
    def of_release(cls, release: ReleaseState) -> Watch | None:
        """The open window of a release, placed in its target's cohorts (None: no window)."""
        m, prepared = release.monitoring, release.prepared
        if m is None or prepared is None:
            return None
        watch = cls.of(m, release.activated_at.get(m.stage))
        return replace(watch, place=(prepared.target.env, prepared.target.channel, frozenset(m.cohorts)))

    def placed_on(self, subject: HealthParts | None) -> bool:
        """Whether a report on `subject` is on this window's env, channel and one of its cohorts
        (a watch not placed takes any: its reports were read from its own subjects)."""
        if self.place is None:
            return True
        env, channel, cohorts = self.place
        return subject is not None and (subject.env, subject.channel) == (env, channel) and subject.cohort in cohorts

    def covers(self, at: datetime, kind: str = "sample") -> bool:
        """Is stored time `at` inside the window for a report of `kind`? An activation report counts from
        the activation on (a refusal before the window opened still fails it), a sample from the window's start."""
        start = self.activated_at - CLOCK_SKEW if kind == "activation" else self.starts_at
        return start <= at and (self.ends_at is None or at <= self.ends_at)


LIVE_PHASES = frozenset({"activated", "monitoring"})


def live_cohorts(release: ReleaseState | None) -> frozenset[tuple[str, str, str]]:
    """(env, channel, cohort) where a live report could fail `release`'s window early. Pure.

    The cohorts of its open window, and of the stage just activated (its window opens next: a feed
    that listens from the activation on leaves no report between it and the scan of the stored
    reports when the window opens). None in any other phase: the monitor's live feed then carries
    nothing of a fleet's reports, which its windows' ends and openings read from the store anyway.
    """
    if release is None or release.phase not in LIVE_PHASES or release.prepared is None:
        return frozenset()
    target, stages = release.prepared.target, release.prepared.stages
    window = release.monitoring if release.phase == "monitoring" else None
    cohorts = set(window.cohorts) if window is not None else set()
    if 0 <= release.stage < len(stages):
        cohorts.update(stages[release.stage])
    for earlier, _ in exposed_before(release):  # a refusal there fails the release too
        cohorts.update(earlier)
    return frozenset((target.env, target.channel, cohort) for cohort in cohorts)


def exposed_before(release: ReleaseState) -> list[tuple[tuple[str, ...], datetime]]:
    """The cohorts `release` switched at stages before its current one, each stage's with the time its
    pointers moved. Pure.

    A window watches its own stage's cohorts, but the pack still runs in the earlier ones: a runtime
    there that refuses it (README "Safety semantics": any refusal of the new pack after its pointer
    moved fails the release) must fail the release as much as one in the window's own cohorts, or the
    refused pack closes `success` and becomes the last-known-good where it was refused.
    """
    if release.prepared is None:
        return []
    out = []
    for stage, cohorts in enumerate(release.prepared.stages[: max(release.stage, 0)]):
        exposed = tuple(c for c in cohorts if c in release.activated)
        at = release.activated_at.get(stage)
        if exposed and at is not None:
            out.append((exposed, at))
    return out


def refusals_since(stored: Iterable[tuple[datetime, HealthSample]], digest: str, since: datetime) -> list[HealthSample]:
    """The refusals of pack `digest` stored from `since` (its pointer's move, give or take the clock skew) on. Pure."""
    return [s for at, s in stored if s.digest == digest and _refusal(s) and at >= since - CLOCK_SKEW]


def live_refusal(release: ReleaseState, cohort: str, sample: HealthSample) -> Breach | None:
    """A refusal of the watched pack arriving live on a cohort the release exposed at an earlier stage. Pure."""
    m = release.monitoring
    if m is None or sample.digest != m.digest or not _refusal(sample):
        return None
    if not any(cohort in cohorts for cohorts, _ in exposed_before(release)):
        return None
    return breach_of(sample, m.monitoring)


def counts_for(
    watch: Watch, sample: HealthSample, at: datetime | None = None, subject: HealthParts | None = None
) -> bool:
    """The one rule for which accepted samples (events.health.accept_report) are evidence for a window.

    Its pack (by digest), within its time span by server stored time (`at`; None: arriving live,
    so now, inside the open window), and, when the watch is placed, on its env, channel and one
    of its cohorts by the report's `subject`.
    """
    if not watch.placed_on(subject):
        return False
    if sample.digest != watch.digest:
        return False
    return at is None or watch.covers(at, sample.kind)


def window_data(
    stored: Iterable[tuple[datetime, HealthSample]],
    window: MonitoringStarted,
    *,
    baseline_digests: Collection[str] = (),
    activated_at: datetime | None = None,
    invalid: Iterable[tuple[datetime, Invalid]] = (),
    earlier_refusals: Iterable[HealthSample] = (),
) -> WindowData:
    """Split stored (server time, sample) pairs of the window's cohorts into what judges it.

    `activated_at` is when the stage's pointers moved (default: the window's start);
    `baseline_digests` the packs the cohorts ran before (none: no baseline, so every error
    class counts as new); `earlier_refusals` the pack's refusals in the cohorts of earlier stages
    (`exposed_before`), judged as the window's own: each fails it.
    """
    watch = Watch.of(window, activated_at)
    before = min(watch.activated_at, window.starts_at)
    new: list[HealthSample] = []
    baseline: list[HealthSample] = []
    ran_other: set[str] = set()
    for at, s in stored:
        if s.digest == window.digest:
            if counts_for(watch, s, at):
                new.append(s)
        elif at < before:
            ran_other.add(s.runtime_id)
            if s.digest is not None and s.digest in baseline_digests:
                baseline.append(s)
    bad = [i for at, i in invalid if watch.covers(at)]
    new.extend(earlier_refusals)
    return WindowData(new, baseline, frozenset(ran_other), bad)


def split_window(
    stored: Iterable[tuple[datetime, HealthSample]], window: MonitoringStarted, baseline_digests: Collection[str] = ()
) -> tuple[list[HealthSample], list[HealthSample]]:
    """(samples of the new pack inside the window, samples of the previous active pack just before it),
    by stored time."""
    data = window_data(stored, window, baseline_digests=baseline_digests)
    return data.samples, data.baseline


def against_channel(data: WindowData, world: World, release: ReleaseState) -> WindowData:
    """`data` with the open window's cohorts checked against its channel's configuration as the world holds
    it: those it no longer names (`unconfigured`), or why it cannot be read (`config_problem`)."""
    m, prepared = release.monitoring, release.prepared
    if m is None or prepared is None:
        return data
    env, channel = prepared.target.env, prepared.target.channel
    gone, problem = world.unconfigured(env, channel, m.cohorts)
    return replace(
        data,
        unconfigured=gone,
        config_problem=problem.describe() if problem is not None else None,
        channel_seq=world.channel_seq(env, channel),
    )


def baseline_digests(world: World, release: ReleaseState) -> frozenset[str]:
    """The packs the window's cohorts ran before this release: each scope's previous *active* pointer, from the log.

    Only a pointer this release wrote counts (a scope moved by anything else since has no
    baseline here): never "whatever other digest a runtime claims to run".
    """
    m, prepared = release.monitoring, release.prepared
    if m is None or prepared is None:
        return frozenset()
    out = set()
    for cohort in m.cohorts:
        active = world.scope(prepared.target.env, prepared.target.channel, cohort).active
        if (
            active is not None
            and active.release_id == release.release_id
            and active.pack.digest == m.digest
            and active.previous is not None
            and active.previous.digest != m.digest
        ):
            out.add(active.previous.digest)
    return frozenset(out)


# ---- figures ------------------------------------------------------------------------------------


def _weighted(values: list[tuple[float, int]]) -> float | None:
    """Request-weighted mean. Health figures are bounded at decode (events/health.py), so
    neither the products nor their sum can overflow; fsum keeps the sum exact enough."""
    if not values:
        return None
    total = sum(w for _, w in values)  # exact ints
    if total == 0:
        return math.fsum(v for v, _ in values) / len(values)
    return math.fsum(v * w for v, w in values) / total


def _listed(names: Iterable[str]) -> list[str]:
    return sorted(names)[:MAX_LISTED]


def _names(names: Collection[str]) -> str:
    shown = ", ".join(_listed(names))
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


def _regular(samples: Iterable[HealthSample]) -> list[HealthSample]:
    return [s for s in samples if s.kind == "sample" and s.requests > 0]


def _rates(regular: list[HealthSample]) -> dict:
    """The figures of some samples that a per-runtime judgement can use too."""
    requests = sum(s.requests for s in regular)
    errors = sum(s.errors for s in regular)
    checked = sum(s.correctness.checked for s in regular if s.correctness)
    mismatches = sum(s.correctness.mismatches for s in regular if s.correctness)
    traced = [
        (s.correctness.trace_coverage, s.requests)
        for s in regular
        if s.correctness and s.correctness.trace_coverage is not None
    ]
    return {
        "requests": requests,
        "errors": errors,
        "error_rate": (errors / requests) if requests else None,
        "latency_p95_ms": _weighted([(s.latency_ms.p95, s.requests) for s in regular if s.latency_ms]),
        "latency_p99_ms": _weighted([(s.latency_ms.p99, s.requests) for s in regular if s.latency_ms]),
        "mismatch_rate": (mismatches / checked) if checked else None,
        "trace_coverage": _weighted(traced),
    }


def figures_of(samples: Iterable[HealthSample], baseline: Iterable[HealthSample]) -> dict:
    samples = list(samples)
    regular = _regular(samples)
    activations = [s for s in samples if s.kind == "activation"]
    idle = sum(1 for s in samples if s.kind == "sample" and s.requests == 0)  # served nothing: no evidence either way
    signalled = [s.signals for s in samples if s.kind == "sample" and s.signals is not None]
    classes = {c for s in regular for c, n in s.error_classes.items() if n > 0}
    known = {c for s in baseline for c, n in s.error_classes.items() if n > 0}
    new_classes = classes - known
    took = sorted(s.took_ms for s in activations if s.took_ms is not None)
    p95 = [s.latency_ms.p95 for s in regular if s.latency_ms]
    p99 = [s.latency_ms.p99 for s in regular if s.latency_ms]
    refused = {s.runtime_id for s in activations if _refusal(s)}
    return {
        "samples": len(regular),
        "idle_samples": idle,
        "runtimes": len({s.runtime_id for s in regular} | {s.runtime_id for s in activations}),
        **_rates(regular),
        "latency_p95_ms_worst": max(p95, default=None),
        "latency_p99_ms_worst": max(p99, default=None),
        "activations": len(activations),
        "activation_success_rate": (sum(1 for s in activations if not _refusal(s)) / len(activations))
        if activations
        else None,
        "activation_refusals": len(refused),
        "refused_by": _listed(refused),
        "time_to_activate_ms_p50": took[len(took) // 2] if took else None,
        "time_to_activate_ms_max": took[-1] if took else None,
        "tickets": sum(s.tickets for s in signalled) if signalled else None,
        "escalations": sum(s.escalations for s in signalled) if signalled else None,
        "error_classes": _listed(classes),
        "error_classes_count": len(classes),
        "new_error_classes": _listed(new_classes),
        "new_error_classes_count": len(new_classes),
        "activation_errors": sorted({s.error[:MAX_TEXT] for s in activations if _refusal(s) and s.error})[:MAX_LISTED],
    }


# ---- comparisons --------------------------------------------------------------------------------

# (metric, threshold field, op) of the rate thresholds, judged on the aggregate and per runtime
_RATES = (
    ("error_rate", "error_rate_max", "<="),
    ("latency_p95_ms", "latency_p95_ms_max", "<="),
    ("latency_p99_ms", "latency_p99_ms_max", "<="),
    ("mismatch_rate", "mismatch_rate_max", "<="),
    ("trace_coverage", "trace_coverage_min", ">="),
)


def _holds(value: float, op: str, limit: float) -> bool:
    return value <= limit if op == "<=" else value >= limit


def _compare(metric: str, value: float | None, op: str, limit: float) -> Comparison:
    # No data is not a pass: ok stays False and the judge calls the window inconclusive.
    return Comparison(
        metric=metric, value=value, op=op, threshold=limit, ok=value is not None and _holds(value, op, limit)
    )


def compare(figures: dict, monitoring: Monitoring) -> list[Comparison]:
    """Every configured threshold against its figure; `value None` means no data (never ok)."""
    t = monitoring.thresholds
    out: list[Comparison] = []
    for metric, name, op in _RATES:
        if getattr(t, name) is not None:
            out.append(_compare(metric, figures.get(metric), op, getattr(t, name)))
    if t.activation_success_min is not None:
        out.append(
            _compare("activation_success_rate", figures.get("activation_success_rate"), ">=", t.activation_success_min)
        )
    if t.time_to_activate_ms_max is not None:
        slowest = figures.get("time_to_activate_ms_max")
        out.append(_compare("time_to_activate_ms_max", slowest, "<=", t.time_to_activate_ms_max))
    # A runtime refusing the pack fails the stage whatever the thresholds say.
    out.append(_compare("activation_refusals", float(figures.get("activation_refusals") or 0), "<=", 0.0))
    for metric, limit in (("tickets", t.tickets_max), ("escalations", t.escalations_max)):
        if limit is not None:
            value = figures.get(metric)
            out.append(_compare(metric, float(value) if value is not None else None, "<=", float(limit)))
    if t.new_error_classes == "fail":
        count = figures.get("new_error_classes_count", len(figures.get("new_error_classes") or []))
        out.append(
            Comparison(metric="new_error_classes", value=float(count), op="none_new", threshold=0.0, ok=not count)
        )
    return out


def per_runtime(samples: Iterable[HealthSample], monitoring: Monitoring) -> dict[str, dict]:
    """Each runtime with enough requests judged on its own samples: its rates and what it breaches."""
    t = monitoring.thresholds
    by_runtime: dict[str, list[HealthSample]] = {}
    for s in _regular(samples):
        by_runtime.setdefault(s.runtime_id, []).append(s)
    out = {}
    for runtime, own in by_runtime.items():
        rates = _rates(own)
        if rates["requests"] < PER_RUNTIME_MIN_REQUESTS:
            continue
        breaches = [
            f"{metric} {_fmt(rates[metric])} breaches {op} {_fmt(getattr(t, name))}"
            for metric, name, op in _RATES
            if getattr(t, name) is not None
            and rates[metric] is not None
            and not _holds(rates[metric], op, getattr(t, name))
        ]
        out[runtime] = {**{k: v for k, v in rates.items() if v is not None}, "samples": len(own), "breaches": breaches}
    return out


def _runtime_rows(judged: dict[str, dict]) -> dict:
    """The per-runtime verdicts for the figures, breaching runtimes first, bounded."""
    order = sorted(judged, key=lambda r: (not judged[r]["breaches"], r))
    return {
        "judged": len(judged),
        "breaching": sum(1 for r in judged.values() if r["breaches"]),
        "runtimes": {r: judged[r] for r in order[:MAX_LISTED]},
    }


def per_sample(samples: Iterable[HealthSample]) -> dict[str, list[float]]:
    regular = _regular(samples)
    return {
        "error_rate": [s.errors / s.requests for s in regular],
        "latency_p95_ms": [s.latency_ms.p95 for s in regular if s.latency_ms],
        "latency_p99_ms": [s.latency_ms.p99 for s in regular if s.latency_ms],
    }


def _trigger(failed: list[Comparison]) -> str | None:
    metrics = {c.metric for c in failed}
    if "activation_refusals" in metrics:
        return ACTIVATION_FAILURE
    if metrics & {"tickets", "escalations"}:
        return TENANT_IMPACT
    return None


def judge(
    samples: list[HealthSample],
    baseline: list[HealthSample],
    monitoring: Monitoring,
    *,
    expected: Collection[str] = (),
    invalid: Collection[Invalid] = (),
    queries: Collection[QueryAnswer] = (),
    unconfigured: Collection[str] = (),
    config_problem: str | None = None,
) -> Verdict:
    """The verdict on a window: failed on any breach, else inconclusive on any missing evidence, else passed.

    `unconfigured`: the window's cohorts the channel no longer names (`WindowData.unconfigured`): missing
    evidence, since no runtime is in them any more — the window holds for an operator rather than pass on
    what the other cohorts, or a runtime yet to see the new configuration, reported. `config_problem`: the
    channel's newest configuration does not decode, so which cohorts it has is unknown: missing evidence too.

    `queries`: the channel's Prometheus queries with their figures, judged against the thresholds named
    after them. A query named like a figure of the samples (`error_rate`, `latency_p99_ms`, ...) speaks
    for it: when the samples hold no such figure, that is not a gap (when they do, both must hold).
    """
    figures = figures_of(samples, baseline)
    answers = list(queries)
    spoken_for = prometheus.covered(answers)
    comparisons = [
        c for c in compare(figures, monitoring) if not (c.value is None and c.metric in spoken_for)
    ] + prometheus.comparisons(answers, monitoring.thresholds)
    judged = per_runtime(samples, monitoring)
    if any(getattr(monitoring.thresholds, name) is not None for _, name, _ in _RATES):
        rows = _runtime_rows(judged)
        figures["per_runtime"] = rows
        comparisons.append(
            Comparison(
                metric="runtimes_breaching",
                value=float(rows["breaching"]),
                op="<=",
                threshold=0.0,
                ok=rows["breaching"] == 0,
            )
        )
    mode = monitoring.thresholds.statistical
    if mode != "off":
        stats = judge_statistically(per_sample(samples), per_sample(baseline))
        figures["statistical"] = stats
        if mode == "enforce" and stats["result"] in ("fail", "insufficient_data"):
            # enforced, a comparison that cannot be made is no data, never a pass (no baseline: a first release,
            # or the old pack's runtimes silent before the activation; too few samples a side): the window holds
            score = None if stats["score"] is None else float(stats["score"])
            comparisons.append(Comparison(metric="statistical_score", value=score, op=">=", threshold=50.0, ok=False))
    activated = switched(samples)
    missing_runtimes = set(expected) - activated
    figures["coverage"] = {
        "expected": len(expected),
        "activated": len(set(expected) & activated),
        "missing": _listed(missing_runtimes),
    }
    if invalid:
        figures["invalid_reports"] = len(invalid)
        figures["invalid_examples"] = [f"{i.runtime}: {i.problem[:MAX_TEXT]}" for i in list(invalid)[:3]]
    n, runtimes = figures["samples"], figures["runtimes"]

    breached = [c for c in comparisons if not c.ok and c.value is not None]
    if breached:
        reason = "; ".join(f"{c.metric} {_fmt(c.value)} breaches {c.op} {_fmt(c.threshold)}" for c in breached)
        if any(c.metric == "new_error_classes" for c in breached):
            reason += f" (new: {_names(figures['new_error_classes'])})"
        if any(c.metric == "activation_refusals" for c in breached):
            reason += f" (refused by: {_names(figures['refused_by'])})"
        failing = {r: row["breaches"] for r, row in judged.items() if row["breaches"]}
        if failing:
            reason += "; " + "; ".join(f"runtime {r}: {', '.join(b)}" for r, b in sorted(failing.items())[:3])
            if len(failing) > 3:
                reason += f"; and {len(failing) - 3} more runtime(s)"
        return Verdict("monitoring_failed", n, runtimes, figures, comparisons, reason, _trigger(breached))

    gaps = [
        f"no data for {c.metric} (threshold {c.op} {_fmt(c.threshold)})"
        for c in comparisons
        if not c.ok and not c.metric.startswith(prometheus.METRIC_PREFIX)
    ] + prometheus.gaps(answers, monitoring.thresholds)
    if missing_runtimes:
        gaps.append(
            f"{len(missing_runtimes)} runtime(s) reported before the activation but not activating the new pack: "
            f"{_names(missing_runtimes)}"
        )
    if invalid:
        gaps.append(
            f"{len(invalid)} invalid health report(s) in the window ({_names({i.runtime for i in invalid})}): "
            f"{list(invalid)[0].problem[:MAX_TEXT]}"
        )
    if n < monitoring.min_samples:
        gaps.append(f"{n} sample(s), fewer than min_samples {monitoring.min_samples}")
    if unconfigured:
        figures["coverage"]["unconfigured"] = sorted(unconfigured)
        gaps.append(
            f"cohort(s) {', '.join(sorted(unconfigured))} no longer in the channel's configuration: no runtime "
            "reports for them now, so this window cannot pass for them (an operator decides: abort, or override)"
        )
    if config_problem:
        gaps.append(f"{config_problem}: the window's cohorts cannot be checked against the channel's configuration")
    if gaps:
        return Verdict("monitoring_inconclusive", n, runtimes, figures, comparisons, "; ".join(gaps))
    return Verdict(
        "monitoring_passed",
        n,
        runtimes,
        figures,
        comparisons,
        f"{n} sample(s) from {runtimes} runtime(s)"
        + (f" and {len(answers)} Prometheus quer{'y' if len(answers) == 1 else 'ies'}" if answers else "")
        + " within every threshold",
    )


def judge_window(data: WindowData, monitoring: Monitoring) -> Verdict:
    verdict = judge(
        data.samples,
        data.baseline,
        monitoring,
        expected=data.expected - data.moved.keys(),
        invalid=data.invalid,
        queries=data.queries,
        unconfigured=data.unconfigured,
        config_problem=data.config_problem,
    )
    if data.moved:  # said, so a reader sees why they are not missing
        verdict.figures["coverage"]["moved"] = _listed({f"{r} (now in {c})" for r, c in data.moved.items()})
    return verdict


# ---- early failure ------------------------------------------------------------------------------


def breach_of(sample: HealthSample, monitoring: Monitoring) -> Breach | None:
    """A single report bad enough to fail the window before it ends (or None)."""
    if _refusal(sample):
        return Breach(
            f"runtime {sample.runtime_id} failed to activate: {(sample.error or 'no reason given')[:MAX_TEXT]}",
            ACTIVATION_FAILURE,
        )
    if sample.kind != "sample":
        return None
    t = monitoring.thresholds
    if sample.signals is not None:
        for metric, cap in (("tickets", t.tickets_max), ("escalations", t.escalations_max)):
            value = getattr(sample.signals, metric)
            if cap is not None and value > cap:
                return Breach(
                    f"runtime {sample.runtime_id} reported {value} {metric} in one sample, "
                    f"over the window's {metric}_max {cap}",
                    TENANT_IMPACT,
                )
    limit = t.error_rate_max
    if limit is not None and sample.requests >= HARD_BREACH_MIN_REQUESTS:
        rate = sample.errors / sample.requests
        if rate > min(1.0, 2 * limit):
            return Breach(f"runtime {sample.runtime_id} error rate {rate:.3f} over twice the threshold {limit}")
    return None


def hard_breach(sample: HealthSample, monitoring: Monitoring) -> str | None:
    breach = breach_of(sample, monitoring)
    return breach.reason if breach else None


def first_breach(
    stored: Iterable[tuple[datetime, HealthSample]], digest: str, monitoring: Monitoring, since: datetime
) -> tuple[Breach, HealthSample] | None:
    """The first report of pack `digest` stored since its activation that fails the window early."""
    # The window is not open yet: everything of the pack since the activation (give or take the clock skew).
    watch = Watch(digest, since, since - CLOCK_SKEW)
    for at, s in sorted(stored, key=lambda pair: pair[0]):
        if counts_for(watch, s, at):
            breach = breach_of(s, monitoring)
            if breach is not None:
                return breach, s
    return None


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4g}"
