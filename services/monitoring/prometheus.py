"""Prometheus as a monitoring source: the pure parts (no IO; services/reads/prometheus.py asks).

A channel's `monitoring.prometheus` (events/channel.py `PrometheusSource`) names PromQL
queries. At a window's end each is rendered for the window (`render`), asked as an instant
query at the window's end, and its answer (`parse_answer`) becomes one figure or a reason
why there is none (`figure`). The judge (judge.py) compares each figure against the
thresholds named after its query (`error_rate` against `error_rate_max`, a custom
`queue_depth` against `queue_depth_max`), next to the figures of the runtime samples.

No data is never a pass: an error, a timeout, an unreachable server, an empty answer or a
non-finite value (NaN, ±Inf) leaves the query without a figure and the window inconclusive,
naming the query and why. Every query sent and its answer go into the verdict (`QueryAnswer`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from events.channel import PROMQL_PLACEHOLDERS, PrometheusSource, query_limits
from events.model import Comparison, QueryAnswer
from events.thresholds import Thresholds, is_limit

MAX_SERIES = 20  # series of one answer kept in the evidence (the rest are counted)
MAX_LABELS = 20  # labels kept per series
MAX_TEXT = 200  # characters kept of a label value or an error
METRIC_PREFIX = "prometheus."  # a query's comparisons are named prometheus.<query>
# A sample's value text is judged from what is kept: Prometheus writes floats in full decimal
# (1e70 is "1" and 70 zeros; the smallest double ~330 characters), so a cut below that would make a
# huge figure small. 400 keeps every float64 whole; longer text is no number, hence no data.
VALUE_MAX = 400

_PLACEHOLDER = re.compile(r"\{(" + "|".join(PROMQL_PLACEHOLDERS) + r")\}")
_RE2_SPECIAL = re.compile(r"([\\.+*?()|\[\]{}^$])")


@dataclass(frozen=True)
class Place:
    """What a query is rendered for: the window's env, channel, cohorts, pack and length."""

    env: str
    channel: str
    cohorts: tuple[str, ...]
    digest: str
    window_s: int


def promql_string(value: str) -> str:
    """`value` escaped to sit inside a PromQL double-quoted string ("...")."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")


def cohort_regex(cohorts: tuple[str, ...]) -> str:
    """The cohorts as one RE2 alternation (`internal|rest`); one cohort is its own name, exactly."""
    return "|".join(_RE2_SPECIAL.sub(r"\\\1", c) for c in cohorts)


def duration(seconds: int) -> str:
    """A PromQL duration for a range selector: `[{window}]` -> `[90s]`."""
    return f"{int(seconds)}s"


def render(template: str, place: Place) -> str:
    """The template with its placeholders filled in; nothing else of it changes (PromQL braces stay).

    `{env}`, `{channel}`, `{digest}` are label values, escaped for a PromQL string (write them
    inside quotes: `env="{env}"`); `{cohort}` is the window's cohorts as a regex alternation
    (write `cohort=~"{cohort}"`); `{window}` is the window's length as a PromQL duration.
    """
    values = {
        "env": promql_string(place.env),
        "channel": promql_string(place.channel),
        "digest": promql_string(place.digest),
        "cohort": promql_string(cohort_regex(place.cohorts)),
        "window": duration(place.window_s),
    }
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


@dataclass(frozen=True)
class Asked:
    """One query as sent: its name, its text and its evaluation time."""

    name: str
    query: str
    at: datetime


def queries_for(source: PrometheusSource, place: Place, at: datetime) -> list[Asked]:
    """Every query of the source rendered for the window, evaluated at `at` (the window's end)."""
    return [Asked(name, render(template, place), at) for name, template in sorted(source.queries.items())]


def _text(value: object) -> str:
    return str(value)[:MAX_TEXT]


def _series(item: object) -> dict[str, Any] | None:
    """One vector element {"metric": {...}, "value": [t, "v"]} as evidence, or None if malformed."""
    if not isinstance(item, dict) or not isinstance(item.get("metric"), dict):
        return None
    value = item.get("value")
    if not isinstance(value, list) or len(value) != 2 or not isinstance(value[1], str):
        return None
    labels = dict(sorted((_text(k), _text(v)) for k, v in item["metric"].items())[:MAX_LABELS])
    return {"metric": labels, "value": value[1][:VALUE_MAX]}


def unanswered(asked: Asked, status: str, problem: str) -> QueryAnswer:
    """A query that got no usable answer: `status` timeout, unreachable, error, invalid, not_configured."""
    return QueryAnswer(
        name=asked.name, query=asked.query, at=asked.at, status=status, no_data=f"{status}: {problem[:MAX_TEXT]}"
    )


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _labels(series: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in series["metric"].items()) or "scalar"


def parse_answer(asked: Asked, http_status: int, body: object, thresholds: Thresholds) -> QueryAnswer:
    """What Prometheus answered (its JSON body, decoded) as evidence, with the figure it gives.

    The figure is the worst series against the query's thresholds: the highest value for a
    `_max` threshold, the lowest for a `_min` one alone. Any series that is not a finite
    number makes the whole query no data. The evidence keeps the MAX_SERIES worst series.
    """
    if not isinstance(body, dict) or body.get("status") not in ("success", "error"):
        return unanswered(asked, "invalid", f"HTTP {http_status}: not a Prometheus API answer")
    if body["status"] == "error":
        error_type = _text(body.get("errorType") or "error")
        status = "timeout" if error_type == "timeout" else "error"
        return unanswered(asked, status, f"{error_type}: {_text(body.get('error') or 'no message')}")
    data = body.get("data")
    if not isinstance(data, dict):
        return unanswered(asked, "invalid", "the answer has no data")
    kind, result = data.get("resultType"), data.get("result")
    series: list[dict[str, Any]] = []
    if kind == "vector" and isinstance(result, list):
        for item in result:
            one = _series(item)
            if one is None:
                return unanswered(asked, "invalid", "a series of the answer is malformed")
            series.append(one)
    elif kind == "scalar" and isinstance(result, list) and len(result) == 2 and isinstance(result[1], str):
        series.append({"metric": {}, "value": result[1][:VALUE_MAX]})
    else:
        # a range vector (matrix) or a string is not one figure: aggregate it over time in the query
        return unanswered(asked, "invalid", f"result type {_text(kind)!r}, not an instant vector or a scalar")
    ops = {op for op, _ in query_limits(thresholds, asked.name)}
    low = ops == {">="}
    numbers = [_number(s["value"]) for s in series]
    # worst first: non-finite values (they alone make the query no data), then the furthest out
    order = sorted(
        range(len(series)),
        key=lambda i: (0, 0.0) if numbers[i] is None else (1, numbers[i] if low else -numbers[i]),  # type: ignore[operator]
    )
    kept = [series[i] for i in order[:MAX_SERIES]]
    value = lowest = None
    no_data = None
    if not series:
        no_data = "empty result: no series matched"
    elif numbers[order[0]] is None:
        no_data = f"non-finite value {series[order[0]]['value']} ({_labels(series[order[0]])})"
    else:
        value = numbers[order[0]]
        if ops == {"<=", ">="}:  # a band: the lowest series is judged against the `_min` too
            lowest = min(n for n in numbers if n is not None)
    return QueryAnswer(
        name=asked.name,
        query=asked.query,
        at=asked.at,
        status="success",
        result=kept,
        series=len(series),
        value=value,
        lowest=lowest,
        no_data=no_data,
    )


def comparisons(answers: list[QueryAnswer], thresholds: Thresholds) -> list[Comparison]:
    """Each query's figure against each threshold named after it; no figure is never ok."""
    out = []
    for a in answers:
        for op, limit in query_limits(thresholds, a.name):
            if not is_limit(limit):
                continue  # refused at `kxr channel set`; a stored one judges nothing (and the query no pass)
            bound = float(limit)  # type: ignore[arg-type]  # a finite int or float (is_limit)
            value = a.lowest if op == ">=" and a.lowest is not None else a.value
            ok = value is not None and (value <= bound if op == "<=" else value >= bound)
            out.append(Comparison(metric=METRIC_PREFIX + a.name, value=value, op=op, threshold=bound, ok=ok))
    return out


def gaps(answers: list[QueryAnswer], thresholds: Thresholds) -> list[str]:
    """Why each query gave no figure, one sentence each (the window is inconclusive for any)."""
    out = []
    for a in answers:
        if a.value is None:
            out.append(f"no data from Prometheus query {a.name}: {a.no_data or 'no value'}")
        elif not any(is_limit(limit) for _, limit in query_limits(thresholds, a.name)):
            out.append(f"Prometheus query {a.name} has no numeric threshold to be judged against")
    # a custom threshold (no runtime figure stands for it) judged by nothing is no pass: e.g. the
    # channel's query was removed while the release's window, with its thresholds, was open
    asked = {a.name for a in answers}
    for key in sorted(thresholds.__pydantic_extra__ or {}):
        name = key.removesuffix("_max").removesuffix("_min")
        if name != key and name not in asked:
            out.append(f"threshold {key} has no figure: no Prometheus query {name} was asked")
    return out


def covered(answers: list[QueryAnswer]) -> set[str]:
    """The figures the queries speak for (a query named `error_rate` speaks for the runtimes' error rate)."""
    return {a.name for a in answers}
