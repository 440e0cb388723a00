"""Reading health samples back from KX_HEALTH (for pre-flight and window verdicts)."""

from __future__ import annotations

from datetime import datetime, timedelta

from nats.js import JetStreamContext
from pydantic import ValidationError

from events.canonical import StrictJSONError
from events.codec import DecodeError, decode_json_object
from events.health import HEALTH_MAX_BYTES, HealthSample
from events.subjects import Subjects
from .direct import connection_of, last_per_subject
from .reader import OrderedReader


def parse_sample(data: bytes) -> HealthSample | None:
    try:
        return HealthSample.model_validate(decode_json_object(data, HEALTH_MAX_BYTES))
    except (DecodeError, StrictJSONError, ValidationError):
        return None


async def recent_reporters(js: JetStreamContext, subjects: Subjects, env: str, channel: str, cohorts: list[str], since: datetime) -> dict[str, int]:
    """Per cohort: how many runtimes published health since `since` (last message per runtime)."""
    if not cohorts:
        return {}
    counts = {c: 0 for c in cohorts}
    # one round trip: the last sample of every runtime in these cohorts (a batched direct get)
    filters = [subjects.health_cohort(env, channel, c) for c in cohorts]
    async for entry in last_per_subject(connection_of(js), subjects.health_stream, filters):
        cohort = entry.subject.split(".")[4]
        if entry.stored_at and entry.stored_at >= since and cohort in counts:
            counts[cohort] += 1
    return counts


async def samples_between(
    js: JetStreamContext, subjects: Subjects, env: str, channel: str, cohorts: list[str], start: datetime, end: datetime
) -> list[tuple[datetime, HealthSample]]:
    """Valid samples stored in [start, end] (server time) on the cohorts' health subjects."""
    if not cohorts:
        return []
    out = []
    reader = OrderedReader(js, subjects.health_stream, [subjects.health_cohort(env, channel, c) for c in cohorts], start_time=start)
    try:
        async for entry in reader.read(follow=False, idle_timeout=0.25):
            if entry.stored_at is None or entry.stored_at > end:
                if entry.stored_at and entry.stored_at > end + timedelta(seconds=1):
                    break
                continue
            sample = parse_sample(entry.data)
            if sample is not None and sample.runtime_id == entry.subject.rsplit(".", 1)[-1]:
                out.append((entry.stored_at, sample))
    finally:
        await reader.close()
    return out
