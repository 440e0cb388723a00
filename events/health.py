"""Health samples from runtimes (CONTRACT §8).

Every figure is data the monitor does arithmetic on, so every figure is bounded here, at
decode: finite, non-negative, under a sane maximum. A sample outside these bounds (NaN,
1e308, 10**400, more errors than requests) is not a sample: the monitor counts it as an
invalid report of its window, never as evidence (services/monitoring/judge.py). With these bounds no
sum or request-weighted mean over a window can overflow a float.

`accept_report` is the one rule every reader of KX_HEALTH applies to a report (the monitor's
window and live watch, pre-flight, `kxr watch`): a valid, bounded sample from the runtime its
subject names. Which accepted samples then count for a window (place, pack, time) is the
judge's `counts_for`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictStr,
    ValidationError,
    model_validator,
)

from .canonical import StrictJSONError
from .codec import DecodeError, decode_json_object
from .integers import integral
from .manifest import DIGEST_PATTERN
from .nulls import empty_if_null
from .numbers import Number
from .subjects import HealthParts
from .timestamps import Rfc3339
from .tokens import TOKEN_PATTERN

HEALTH_MAX_BYTES = 16 * 1024
MAX_COUNT = 10**9  # requests, errors, checks, tickets... per sample: a billion in one report is already absurd
MAX_MS = 86_400_000.0  # a day, in milliseconds: no latency or activation time is longer
MAX_ERROR_CLASSES = 64
MAX_ERROR_CLASS_LENGTH = 128
MAX_ERROR_TEXT = 2048


Count = Annotated[int, Strict(), Field(ge=0, le=MAX_COUNT), BeforeValidator(integral)]
Millis = Annotated[Number, Field(ge=0, le=MAX_MS)]  # a JSON number: never true, never "120"
Share = Annotated[Number, Field(ge=0, le=1)]
ErrorClass = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ERROR_CLASS_LENGTH)]


class _H(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")


class Latency(_H):
    p95: Millis
    p99: Millis


class Correctness(_H):
    mismatches: Count
    checked: Count
    # share of requests whose answer could be traced to its sources (seed "correctness")
    trace_coverage: Share | None = None


class Signals(_H):
    """Tenant-impact indicators (seed trigger "unexpected tenant impact"), counted since the last sample."""

    tickets: Count = 0
    escalations: Count = 0


class HealthSample(_H):
    runtime_id: StrictStr = Field(pattern=TOKEN_PATTERN)
    digest: StrictStr | None = Field(default=None, pattern=DIGEST_PATTERN)
    at: Rfc3339
    kind: Literal["activation", "sample"]
    ok: StrictBool | None = None
    took_ms: Millis | None = None
    error: StrictStr | None = Field(default=None, max_length=MAX_ERROR_TEXT)
    requests: Count = 0
    errors: Count = 0
    latency_ms: Latency | None = None
    error_classes: Annotated[dict[ErrorClass, Count], empty_if_null(dict)] = Field(
        default_factory=dict, max_length=MAX_ERROR_CLASSES
    )
    correctness: Correctness | None = None
    signals: Signals | None = None

    @model_validator(mode="after")
    def _consistent(self) -> HealthSample:
        if self.errors > self.requests:
            raise ValueError(f"errors ({self.errors}) exceed requests ({self.requests})")
        if self.correctness and self.correctness.mismatches > self.correctness.checked:
            raise ValueError("correctness mismatches exceed checked")
        return self


def decode_sample(data: bytes) -> HealthSample | str:
    """The sample in `data`, or why it is not one (oversized, not JSON, a figure out of bounds...)."""
    try:
        return HealthSample.model_validate(decode_json_object(data, HEALTH_MAX_BYTES))
    except (DecodeError, StrictJSONError) as exc:
        return str(exc)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)[:3]
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '$'}: {e['msg']}" for e in errors)


def accept_report(data: bytes, subject: HealthParts | None) -> HealthSample | str:
    """A report as every reader takes it: a valid sample from the runtime its subject names, or why not.

    `subject` is the report's subject parsed (events/subjects.py `Subjects.health_parts`);
    None when it is not a health subject naming a runtime. A runtime may only speak for
    itself: a sample naming another runtime is refused, never counted for either.
    """
    if subject is None:
        return "not on a health subject naming a runtime (<prefix>.health.<env>.<channel>.<cohort>.<runtime_id>)"
    checked = decode_sample(data)
    if isinstance(checked, HealthSample) and checked.runtime_id != subject.runtime_id:
        return f"runtime_id {checked.runtime_id!r} reported on the subject of runtime {subject.runtime_id!r}"
    return checked
