"""Health samples from runtimes (CONTRACT §8)."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator

from .manifest import DIGEST_PATTERN
from .tokens import TOKEN_PATTERN

HEALTH_MAX_BYTES = 16 * 1024


class _H(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")


class Latency(_H):
    p95: float = Field(ge=0)
    p99: float = Field(ge=0)


class Correctness(_H):
    mismatches: StrictInt = Field(ge=0)
    checked: StrictInt = Field(ge=0)


class HealthSample(_H):
    runtime_id: StrictStr = Field(pattern=TOKEN_PATTERN)
    digest: StrictStr | None = Field(default=None, pattern=DIGEST_PATTERN)
    at: AwareDatetime
    kind: Literal["activation", "sample"]
    ok: StrictBool | None = None
    took_ms: float | None = Field(default=None, ge=0)
    error: StrictStr | None = None
    requests: StrictInt = Field(default=0, ge=0)
    errors: StrictInt = Field(default=0, ge=0)
    latency_ms: Latency | None = None
    error_classes: dict[str, StrictInt] = Field(default_factory=dict)
    correctness: Correctness | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "HealthSample":
        if self.errors > self.requests:
            raise ValueError(f"errors ({self.errors}) exceed requests ({self.requests})")
        if self.correctness and self.correctness.mismatches > self.correctness.checked:
            raise ValueError("correctness mismatches exceed checked")
        return self
