"""The monitoring thresholds (CONTRACT §7, §8): one model for a channel's and a release's.

A channel configures them (`channel.configured`, events/channel.py), a request may only
tighten them (services/consumers/preparer.py `effective_monitoring`), and the prepared plan
and every window carry the result (events/model.py `Monitoring`). The judge
(services/monitoring/judge.py) compares a window's figures against them.
Change a threshold here and every one of those places sees it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt


class Thresholds(BaseModel):
    # Stored events tolerate extra fields (a newer writer may add a threshold), like every payload.
    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)

    error_rate_max: float | None = None
    latency_p95_ms_max: float | None = None
    latency_p99_ms_max: float | None = None
    activation_success_min: float | None = None
    mismatch_rate_max: float | None = None
    new_error_classes: Literal["fail", "ignore"] = "fail"
    # Mann-Whitney comparison with the previous pack (services/monitoring/statistics.py): "report" puts
    # the score in the verdict's figures; "enforce" also fails the window on a "fail" score.
    statistical: Literal["off", "report", "enforce"] = "report"
    # Tenant impact (health sample `signals`): totals over the window; a breach fails the window
    # with trigger `tenant_impact`, early when a single sample already exceeds the total.
    tickets_max: StrictInt | None = Field(default=None, ge=0)
    escalations_max: StrictInt | None = Field(default=None, ge=0)
    # Correctness: the request-weighted share of answers traced to their sources (0..1).
    trace_coverage_min: float | None = Field(default=None, ge=0, le=1)
