"""Reading health samples back from KX_HEALTH (for pre-flight and window verdicts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from nats.js import JetStreamContext
from pydantic import ValidationError

from events.canonical import StrictJSONError
from events.codec import DecodeError, decode_json_object
from events.health import HEALTH_MAX_BYTES, HealthSample
from events.subjects import Subjects
from services.jetstream.direct import connection_of, last_per_subject
from services.consumers.monitoring.judge import Invalid
from services.jetstream.reader import OrderedReader


def check_sample(data: bytes) -> HealthSample | str:
    """The sample in `data`, or why it is not one (oversized, not JSON, a figure out of bounds...)."""
    try:
        return HealthSample.model_validate(decode_json_object(data, HEALTH_MAX_BYTES))
    except (DecodeError, StrictJSONError) as exc:
        return str(exc)
    except ValidationError as exc:
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '$'}: {e['msg']}" for e in exc.errors(include_url=False)[:3])


def parse_sample(data: bytes) -> HealthSample | None:
    checked = check_sample(data)
    return checked if isinstance(checked, HealthSample) else None


def accept(data: bytes, subject: str) -> HealthSample | str:
    """The acceptance rule of every reader: a valid sample from the runtime its subject names."""
    checked = check_sample(data)
    owner = subject.rsplit(".", 1)[-1]
    if isinstance(checked, HealthSample) and checked.runtime_id != owner:
        return f"runtime_id {checked.runtime_id!r} reported on the subject of runtime {owner!r}"
    return checked


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
    reader = OrderedReader(js, subjects.health_stream, [subjects.health_cohort(env, channel, c) for c in cohorts], start_time=start)
    try:
        async for entry in reader.read(follow=False, idle_timeout=0.25):
            if entry.stored_at is None or entry.stored_at > end:
                if entry.stored_at and entry.stored_at > end + timedelta(seconds=1):
                    break
                continue
            checked = accept(entry.data, entry.subject)
            if isinstance(checked, HealthSample):
                out.valid.append((entry.stored_at, checked))
            else:
                out.invalid.append((entry.stored_at, Invalid(entry.subject.rsplit(".", 1)[-1], checked)))
    finally:
        await reader.close()
    return out


async def samples_between(
    js: JetStreamContext, subjects: Subjects, env: str, channel: str, cohorts: list[str], start: datetime, end: datetime
) -> list[tuple[datetime, HealthSample]]:
    """Valid samples stored in [start, end] (server time) on the cohorts' health subjects."""
    return (await window_reports(js, subjects, env, channel, cohorts, start, end)).valid
