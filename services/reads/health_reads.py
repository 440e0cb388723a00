"""Reading health samples back from KX_HEALTH (for pre-flight and window verdicts).

Every report read is taken by `events.health.accept_report`, the rule every reader shares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from nats.js import JetStreamContext

from events.health import HealthSample, accept_report
from events.subjects import Subjects
from services.jetstream.direct import connection_of, last_per_subject
from services.jetstream.reader import OrderedReader
from services.monitoring.judge import Invalid


async def recent_reporters(
    js: JetStreamContext, subjects: Subjects, env: str, channel: str, cohorts: list[str], since: datetime
) -> dict[str, int]:
    """Per cohort: how many runtimes published health since `since` (last message per runtime)."""
    if not cohorts:
        return {}
    counts = {c: 0 for c in cohorts}
    # one round trip: the last sample of every runtime in these cohorts (a batched direct get)
    filters = [subjects.health_cohort(env, channel, c) for c in cohorts]
    async for entry in last_per_subject(connection_of(js), subjects.health_stream, filters):
        parts = subjects.health_parts(entry.subject)
        if entry.stored_at and entry.stored_at >= since and parts is not None and parts.cohort in counts:
            counts[parts.cohort] += 1
    return counts


@dataclass
class Reports:
    """What a window's health subjects hold: valid samples and invalid reports, with server stored time."""

    valid: list[tuple[datetime, HealthSample]] = field(default_factory=list)
    invalid: list[tuple[datetime, Invalid]] = field(default_factory=list)


async def window_reports(
    js: JetStreamContext, subjects: Subjects, env: str, channel: str, cohorts: list[str], start: datetime, end: datetime
) -> Reports:
    """Every report stored in [start, end] (server time) on the cohorts' health subjects."""
    out = Reports()
    if not cohorts:
        return out
    reader = OrderedReader(
        js, subjects.health_stream, [subjects.health_cohort(env, channel, c) for c in cohorts], start_time=start
    )
    try:
        async for entry in reader.read(follow=False, idle_timeout=0.25):
            if entry.stored_at is None or entry.stored_at > end:
                if entry.stored_at and entry.stored_at > end + timedelta(seconds=1):
                    break
                continue
            parts = subjects.health_parts(entry.subject)
            checked = accept_report(entry.data, parts)
            if isinstance(checked, HealthSample):
                out.valid.append((entry.stored_at, checked))
            else:  # a report that names no valid runtime is listed by its subject
                out.invalid.append((entry.stored_at, Invalid(parts.runtime_id if parts else entry.subject, checked)))
    finally:
        await reader.close()
    return out


async def samples_between(
    js: JetStreamContext, subjects: Subjects, env: str, channel: str, cohorts: list[str], start: datetime, end: datetime
) -> list[tuple[datetime, HealthSample]]:
    """Valid samples stored in [start, end] (server time) on the cohorts' health subjects."""
    return (await window_reports(js, subjects, env, channel, cohorts, start, end)).valid
