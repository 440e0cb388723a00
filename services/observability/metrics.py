"""Prometheus metrics of the service itself (names `kx_…`).

- per consumer, counted where the worker acks, naks or dead-letters a message
  (process-wide, like any Prometheus client counter);
- consumer lag, sampled from JetStream's consumer info every few seconds (`LagSampler`);
- release-level figures, rendered at scrape time from the `ReleaseMetrics` fold.

The release-level figures (and `kx_releases_in_flight`, `kx_log_applied_sequence`) are a fold of
the whole log: every process that folds it reports the same numbers, so a deployment of several
processes exports them from one (`KX_METRICS_LOG=on`; the others `off`, compose.yaml: the
activator) and Prometheus' usual `sum()` counts each release once. The per-process series
(`kx_events_processed`, the consumers' lag, process_*) come from every process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from events.subjects import Subjects
from projections.world import World
from services.observability.release_metrics import ReleaseMetrics

log = logging.getLogger(__name__)

PROCESSED = Counter(
    "kx_events_processed",
    "Messages a durable consumer finished, by outcome (acked, nak, dead_lettered).",
    ["stream", "consumer", "outcome"],
    registry=None,
)

FAST_PATH = Counter(
    "kx_fast_path_steps",
    "Steps of a release's path decided with the step before it and stored in its batch (outcome=joined), its "
    "fail-closed event stored in the batch, ending it (failed_closed: it could not observe), or left to their "
    "own consumer's delivery: not_acting (its phase guard), not_joining (the verifier, for a large pack), "
    "raised, not_joinable (it decided more than events and a switch).",
    ["step", "outcome"],
    registry=None,
)

# What FastStream's Prometheus middleware counts for the service's FastStream subscribers (the
# notifier, the dead-letter watcher: `kx_faststream_*`): process-wide like PROCESSED, served by /metrics.
FASTSTREAM_METRICS = CollectorRegistry(auto_describe=True)

# (stream, durable) of every worker this process has built: the consumers whose lag it reports
_DURABLES: set[tuple[str, str]] = set()


def count_processed(stream: str, consumer: str, outcome: str) -> None:
    PROCESSED.labels(stream, consumer, outcome).inc()


def count_fast_path(step: str, outcome: str) -> None:
    FAST_PATH.labels(step, outcome).inc()


def track_consumer(stream: str, durable: str) -> None:
    _DURABLES.add((stream, durable))


@dataclass(frozen=True)
class Lag:
    pending: int  # not yet delivered to the consumer
    ack_pending: int  # delivered, not acked yet
    redelivered: int


class LagSampler:
    """The backlog of each durable consumer this process runs, asked of JetStream now and then.

    One consumer-info request per durable every few seconds, never per message; not a
    listing of the stream's consumers, which also holds every reader's and runtime's
    ephemeral consumer (and needs a permission the service user does not have).
    """

    def __init__(self, js: JetStreamContext, subjects: Subjects) -> None:
        self._js = js
        self._subjects = subjects
        self.lags: dict[tuple[str, str], Lag] = {}

    def durables(self) -> list[tuple[str, str]]:
        s = self._subjects
        ours = {s.releases_stream, s.timers_stream, s.health_stream}
        return sorted(d for d in _DURABLES if d[0] in ours)

    async def sample(self) -> bool:
        """Sample every durable; False if one does not exist yet (its worker is starting)."""
        lags: dict[tuple[str, str], Lag] = {}
        complete = True
        for stream, durable in self.durables():
            try:
                info = await self._js.consumer_info(stream, durable)
            except NotFoundError:
                complete = False
                continue
            lags[(stream, durable)] = Lag(info.num_pending or 0, info.num_ack_pending or 0, info.num_redelivered or 0)
        self.lags = lags  # replaced whole: the scrape thread sees one sample or the next
        return complete

    async def run(self, every: float = 5.0) -> None:
        while True:
            complete = False
            try:
                complete = await self.sample()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS away for a moment: keep the last sample, try again
                log.info("consumer lag not sampled: %s", exc)
            await asyncio.sleep(every if complete else min(every, 0.5))


# the families only a process with the log-derived series exports (KX_METRICS_LOG=on)
LOG_DERIVED = (
    "kx_log_events",
    "kx_releases_closed",
    "kx_gate_failures",
    "kx_rollbacks_started",
    "kx_release_holds",
    "kx_release_escalations",
    "kx_notifications",
    "kx_activation_latency_seconds",
    "kx_log_applied_sequence",
    "kx_releases_in_flight",
)


class ServiceCollector(Collector):
    """`world`: the service's live fold as it is at scrape time (the follower's; read, never kept).
    `releases` None: this process exports no log-derived series (KX_METRICS_LOG=off), its lag only."""

    def __init__(self, world: Callable[[], World], releases: ReleaseMetrics | None, lag: LagSampler) -> None:
        self._world = world
        self._releases = releases
        self._lag = lag

    def collect(self) -> Iterable[Metric]:
        if self._releases is not None:
            yield from self._log_derived(self._releases)
        yield from self._lags()

    def _log_derived(self, releases: ReleaseMetrics) -> Iterable[Metric]:
        view = releases.view()
        yield _counter("kx_log_events", "Events in the release log, by type.", ["type"], view.events_by_type)
        yield _counter("kx_releases_closed", "Releases closed, by outcome.", ["outcome"], view.outcomes)
        yield _counter(
            "kx_gate_failures", "Verifications that failed, by gate and code.", ["gate", "code"], view.gate_failures
        )
        yield _counter("kx_rollbacks_started", "Rollbacks started, by trigger.", ["trigger"], view.rollbacks)
        yield _counter(
            "kx_release_holds", "Monitoring windows that ended inconclusive (the release holds).", [], {(): view.holds}
        )
        yield _counter("kx_release_escalations", "Releases that escalated.", [], {(): view.escalations})
        yield _counter(
            "kx_notifications",
            "Webhook notifications recorded, by kind and result.",
            ["kind", "result"],
            view.notifications,
        )
        latency = HistogramMetricFamily(
            "kx_activation_latency_seconds", "release.requested to its first activation, from the events' timestamps."
        )
        latency.add_metric(
            [], [(_bound(b), c) for b, c in view.activation_latency.buckets], view.activation_latency.total
        )
        yield latency
        yield GaugeMetricFamily(
            "kx_log_applied_sequence", "Last log sequence folded into these metrics.", value=view.applied_seq
        )
        world = self._world()
        yield GaugeMetricFamily("kx_releases_in_flight", "Releases not closed.", value=len(world.in_flight))

    def _lags(self) -> Iterable[Metric]:
        lags = dict(self._lag.lags)
        for name, text, field in (
            ("kx_consumer_pending_messages", "Messages not yet delivered to a durable consumer.", "pending"),
            ("kx_consumer_ack_pending_messages", "Messages delivered and not yet acked.", "ack_pending"),
            ("kx_consumer_redelivered_messages", "Messages delivered more than once.", "redelivered"),
        ):
            gauge = GaugeMetricFamily(name, text, labels=["stream", "consumer"])
            for (stream, consumer), lag in sorted(lags.items()):
                gauge.add_metric([stream, consumer], getattr(lag, field))
            yield gauge


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def _counter(name: str, text: str, labels: list[str], values: dict) -> CounterMetricFamily:
    family = CounterMetricFamily(name, text, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
    return family
