"""Reading health samples back from KX_HEALTH (for pre-flight and window verdicts).

Every report read is taken by `events.health.accept_report`, the rule every reader shares.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from nats.js import JetStreamContext

from events.health import HealthSample, accept_report
from events.subjects import Subjects
from services.jetstream.direct import Stored, SubjectStream, connection_of, last_per_subject, leader_next
from services.monitoring.judge import Invalid

READ_BATCH = 256  # reports per direct-get answer


async def recent_reporters(
    js: JetStreamContext, subjects: Subjects, env: str, channel: str, cohorts: list[str], since: datetime
) -> dict[str, int]:
    """Per cohort: how many runtimes published health since `since` (last message per runtime;
    a cohort found only by asking the leader counts 1, "at least one")."""
    if not cohorts:
        return {}
    counts = {c: 0 for c in cohorts}
    # one round trip: the last sample of every runtime in these cohorts (a batched direct get)
    filters = [subjects.health_cohort(env, channel, c) for c in cohorts]
    nc = connection_of(js)
    async for entry in last_per_subject(nc, subjects.health_stream, filters):
        parts = subjects.health_parts(entry.subject)
        if entry.relayed is not None:
            continue  # stored by JetStream on a reply subject: no runtime reported it
        if entry.stored_at and entry.stored_at >= since and parts is not None and parts.cohort in counts:
            counts[parts.cohort] += 1
    # A lagging replica or mirror may have answered (services/jetstream/direct.py), and no leader
    # answers "the last of each": a cohort silent in that answer is asked of the stream's leader
    # (anything stored there since `since`) before pre-flight refuses a release for it.
    for cohort in [c for c, n in counts.items() if n == 0]:
        first = await leader_next(
            nc, subjects.health_stream, subjects.health_cohort(env, channel, cohort), start_time=since
        )
        if first is not None and subjects.health_parts(first.subject) is not None:
            counts[cohort] = 1  # at least one runtime: how many, the leader does not say in one request
    return counts


async def newest_reports(
    js: JetStreamContext, subjects: Subjects, env: str, channel: str, runtime_ids: Iterable[str]
) -> list[tuple[datetime, str, HealthSample]]:
    """(stored time, cohort, sample) of each runtime's last valid report on each cohort of the channel: one
    batched direct get. Relayed and invalid reports are no evidence of where a runtime is."""
    filters = [subjects.health_runtime(env, channel, rid) for rid in sorted(runtime_ids)]
    out: list[tuple[datetime, str, HealthSample]] = []
    if not filters:
        return out
    async for entry in last_per_subject(connection_of(js), subjects.health_stream, filters):
        parts = subjects.health_parts(entry.subject)
        if entry.relayed is not None or parts is None or entry.stored_at is None:
            continue
        checked = accept_report(entry.data, parts)
        if isinstance(checked, HealthSample):
            out.append((entry.stored_at, parts.cohort, checked))
    return out


@dataclass
class Reports:
    """What a window's health subjects hold: valid samples and invalid reports, with server stored time."""

    valid: list[tuple[datetime, HealthSample]] = field(default_factory=list)
    invalid: list[tuple[datetime, Invalid]] = field(default_factory=list)


async def _cohort_reports(
    js: JetStreamContext, stream: str, subject: str, start: datetime, end: datetime
) -> list[Stored]:
    """What one cohort's subjects hold from `start` (server time) to a second past `end`, in order."""
    out: list[Stored] = []
    reader = SubjectStream(connection_of(js), stream, subject, start_time=start, batch=READ_BATCH)
    try:
        async for stored in reader:
            if stored.stored_at is not None and stored.stored_at > end + timedelta(seconds=1):
                break  # stored in order: nothing later is in the span
            out.append(stored)
    finally:
        await reader.close()
    return out


async def window_reports(
    js: JetStreamContext, subjects: Subjects, env: str, channel: str, cohorts: list[str], start: datetime, end: datetime
) -> Reports:
    """Every report stored in [start, end] (server time) on the cohorts' health subjects, in stored order.

    Batched direct gets from `start`, one per cohort side by side: no consumer to create, ask
    about and drop for a read the monitor makes at every activation and window.
    """
    out = Reports()
    if not cohorts:
        return out
    per_cohort = await asyncio.gather(
        *(
            _cohort_reports(js, subjects.health_stream, subjects.health_cohort(env, channel, c), start, end)
            for c in dict.fromkeys(cohorts)
        )
    )
    for entry in heapq.merge(*per_cohort, key=lambda stored: stored.seq):
        if entry.stored_at is None or entry.stored_at > end:
            continue
        parts = subjects.health_parts(entry.subject)
        if entry.relayed is not None:  # stored by JetStream on a reply subject, not published by a runtime
            why = f"relayed by JetStream from stream {entry.relayed[:100]}: not a runtime's report"
            out.invalid.append((entry.stored_at, Invalid(parts.runtime_id if parts else entry.subject, why)))
            continue
        checked = accept_report(entry.data, parts)
        if isinstance(checked, HealthSample):
            out.valid.append((entry.stored_at, checked))
        else:  # a report that names no valid runtime is listed by its subject
            out.invalid.append((entry.stored_at, Invalid(parts.runtime_id if parts else entry.subject, checked)))
    return out


async def samples_between(
    js: JetStreamContext, subjects: Subjects, env: str, channel: str, cohorts: list[str], start: datetime, end: datetime
) -> list[tuple[datetime, HealthSample]]:
    """Valid samples stored in [start, end] (server time) on the cohorts' health subjects."""
    return (await window_reports(js, subjects, env, channel, cohorts, start, end)).valid
