"""Release-level metrics as a fold over the log. Pure: no IO, no clock.

Everything here is derived from the events themselves (their types, payloads and
`occurred_at`), so every process that has read the same log reports the same numbers,
whichever consumers it runs and whenever it started.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from events.model import Event

# release.requested -> first activation: seconds to hours (the preparer, gates, runtimes' health)
LATENCY_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, float("inf"))


@dataclass(frozen=True)
class Histogram:
    buckets: tuple[tuple[float, int], ...]  # (upper bound, cumulative count)
    total: float
    count: int


@dataclass(frozen=True)
class MetricsView:
    """A consistent copy of the projection, for one scrape."""

    applied_seq: int
    events_by_type: dict[str, int]
    outcomes: dict[str, int]
    gate_failures: dict[tuple[str, str], int]
    rollbacks: dict[str, int]
    holds: int
    escalations: int
    notifications: dict[tuple[str, str], int]
    activation_latency: Histogram


class ReleaseMetrics:
    """Folded on the event loop, read by the scrape thread: both under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.applied_seq = 0
        self._by_type: Counter[str] = Counter()
        self._outcomes: Counter[str] = Counter()
        self._gates: Counter[tuple[str, str]] = Counter()
        self._rollbacks: Counter[str] = Counter()
        self._holds = 0
        self._escalations = 0
        self._notifications: Counter[tuple[str, str]] = Counter()
        self._requested_at: dict[str, datetime] = {}  # releases not activated yet
        self._latency_counts = [0] * len(LATENCY_BUCKETS)
        self._latency_sum = 0.0
        self._latency_count = 0

    def apply(self, seq: int, event: Event | None) -> None:
        """Fold one log entry (None: it did not decode); an entry already applied is ignored."""
        with self._lock:
            if seq <= self.applied_seq:
                return
            self.applied_seq = seq
            if event is not None:
                self._apply(event)

    def _apply(self, event: Event) -> None:
        self._by_type[event.type] += 1
        data = event.data
        release_id = event.release_id or ""
        match event.type:
            case "release.requested":
                self._requested_at.setdefault(release_id, event.occurred_at)
            case "release.activated":
                started = self._requested_at.pop(release_id, None)
                if started is not None:  # the first activation of this release
                    self._observe_latency(max(0.0, (event.occurred_at - started).total_seconds()))
            case "release.verification_failed":
                self._gates[(data.gate, data.code)] += 1  # type: ignore[attr-defined]
            case "release.rollback_started":
                self._rollbacks[data.trigger] += 1  # type: ignore[attr-defined]
            case "release.monitoring_inconclusive":
                self._holds += 1
            case "release.escalated":
                self._escalations += 1
            case "release.closed":
                self._outcomes[data.outcome] += 1  # type: ignore[attr-defined]
                self._requested_at.pop(release_id, None)
            case "notification.sent" | "notification.failed":
                self._notifications[(data.kind, event.type.split(".", 1)[1])] += 1  # type: ignore[attr-defined]

    def _observe_latency(self, seconds: float) -> None:
        for index, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self._latency_counts[index] += 1
                break
        self._latency_sum += seconds
        self._latency_count += 1

    def view(self) -> MetricsView:
        with self._lock:
            cumulative, buckets = 0, []
            for bound, count in zip(LATENCY_BUCKETS, self._latency_counts):
                cumulative += count
                buckets.append((bound, cumulative))
            return MetricsView(
                applied_seq=self.applied_seq,
                events_by_type=dict(self._by_type),
                outcomes=dict(self._outcomes),
                gate_failures=dict(self._gates),
                rollbacks=dict(self._rollbacks),
                holds=self._holds,
                escalations=self._escalations,
                notifications=dict(self._notifications),
                activation_latency=Histogram(tuple(buckets), self._latency_sum, self._latency_count),
            )
