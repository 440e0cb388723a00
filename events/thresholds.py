"""The monitoring thresholds (CONTRACT §7, §8): one model for a channel's and a release's.

A channel configures them (`channel.configured`, events/channel.py), a request may only
tighten them (`Thresholds.tightened_by`, applied by the preparer), and the prepared plan
and every window carry the result (events/model.py `Monitoring`). The judge
(services/monitoring/judge.py) compares a window's figures against them.
Change a threshold here and every one of those places sees it.
"""

from __future__ import annotations

import math
import sys
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from .integers import NonNegativeInt
from .numbers import Number


class Thresholds(BaseModel):
    # Stored events tolerate extra fields (a newer writer may add a threshold), like every payload.
    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)

    error_rate_max: Number | None = None
    latency_p95_ms_max: Number | None = None
    latency_p99_ms_max: Number | None = None
    activation_success_min: Number | None = None
    # The slowest switch a runtime reported in the window (activation reports' `took_ms`), in ms: the
    # seed's "time-to-activate" as a success criterion. No activation report in the window is no data.
    time_to_activate_ms_max: Number | None = None
    mismatch_rate_max: Number | None = None
    new_error_classes: Literal["fail", "ignore"] = "fail"
    # Mann-Whitney comparison with the previous pack (services/monitoring/statistics.py): "report" puts
    # the score in the verdict's figures; "enforce" also fails the window on a "fail" score.
    statistical: Literal["off", "report", "enforce"] = "report"
    # Tenant impact (health sample `signals`): totals over the window; a breach fails the window
    # with trigger `tenant_impact`, early when a single sample already exceeds the total.
    tickets_max: NonNegativeInt | None = None
    escalations_max: NonNegativeInt | None = None
    # Correctness: the request-weighted share of answers traced to their sources (0..1).
    trace_coverage_min: Annotated[Number, Field(ge=0, le=1)] | None = None

    def tightened_by(self, request: Thresholds) -> Thresholds:
        """These (a channel's) thresholds with a request's on top: a request may tighten, never loosen.

        The direction is in the name: for each `*_max` the lower bound wins, for each `*_min` the
        higher; new error classes fail, and the statistics enforce, if either side says so. So a
        new threshold named that way is tightened here without another change.
        """
        merged = self.model_dump()
        asked = request.model_dump(exclude_unset=True)
        for key in type(self).model_fields:
            if key.endswith(("_max", "_min")):
                values = [v for v in (merged.get(key), asked.get(key)) if v is not None]
                merged[key] = (min if key.endswith("_max") else max)(values) if values else None
        # A custom threshold (a channel's Prometheus query `queue_depth` is judged on `queue_depth_max`)
        # tightens the same way; a request's value that is not a finite number a double holds is ignored.
        for key in request.__pydantic_extra__ or {}:
            if not key.endswith(("_max", "_min")) or not is_limit(asked.get(key)):
                continue
            mine = merged.get(key)
            if mine is None:
                merged[key] = asked[key]
            elif is_limit(mine):
                merged[key] = (min if key.endswith("_max") else max)(mine, asked[key])
            # else the channel's own value is unusable: left as it is (the judge holds the window on it)
        if asked.get("new_error_classes") == "fail":
            merged["new_error_classes"] = "fail"
        if asked.get("statistical") == "enforce":
            merged["statistical"] = "enforce"
        return Thresholds(**merged)


DOUBLE_MAX = sys.float_info.max  # the largest finite 64-bit double: what every judge compares in


def is_limit(value: object) -> bool:
    """A threshold value that can judge: an int or float a 64-bit double holds, finite (a bool is not
    one). Total: an integer past the double's range (JSON numbers have no size limit: a 400-digit
    literal is valid JSON) is not a limit, where `math.isfinite` raised OverflowError on it and took
    every reader of the log down with it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, int):
        return -DOUBLE_MAX <= value <= DOUBLE_MAX
    return math.isfinite(value)
