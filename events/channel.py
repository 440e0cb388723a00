"""Channel configuration and cohort resolution (CONTRACT §7).

Cohort resolution is shared by the service (which scopes a stage covers) and the
runtime SDK (which scope a runtime follows), so both sides always agree.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, model_validator

from .integers import JsonInt
from .notifications import NotificationSink
from .numbers import Number
from .schema_patterns import NOT_BLANK, WHITESPACE
from .thresholds import Thresholds, is_limit
from .tokens import TOKEN_PATTERN

BUCKETS = 10_000
DEFAULT_COHORT = "all"


class _Cfg(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)


class CohortRule(_Cfg):
    name: StrictStr = Field(pattern=TOKEN_PATTERN)
    tenants: list[StrictStr] | None = None
    regions: list[StrictStr] | None = None
    percent: tuple[JsonInt, JsonInt] | None = None

    @property
    def is_catch_all(self) -> bool:
        return self.tenants is None and self.regions is None and self.percent is None

    def matches(self, tenant: str, region: str | None, bucket: int) -> bool:
        if self.tenants is not None and tenant not in self.tenants:
            return False
        if self.regions is not None and region not in self.regions:
            return False
        if self.percent is not None and not (self.percent[0] <= bucket < self.percent[1]):
            return False
        return True


MAX_WINDOW_S = 30 * 24 * 3600


# Prometheus as a monitoring source (services/monitoring/prometheus.py renders and judges, services/reads/
# prometheus.py asks). A query template may name these placeholders; everything else in it is PromQL.
PROMQL_PLACEHOLDERS = ("env", "channel", "cohort", "digest", "window")
QUERY_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
MAX_QUERIES = 20
MAX_QUERY_CHARS = 2000
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# What `prometheus_problems` checks of a URL and a query, as patterns for the schema (events/schema_patterns.py):
# the URL starts with a scheme and a host; a query holds something, and a `{name}` in it is a known placeholder
# (a `{` not followed by a name and `}`, as in a label matcher `{job="api"}`, is PromQL's own; a `{` right
# after `{` or after `{name` is refused, stricter than the check, for want of lookahead)
PROMETHEUS_URL = f"^https?://[^{WHITESPACE}/]"
_IDENT = "[A-Za-z_][A-Za-z0-9_]*"
PROMQL_TEMPLATE = (
    f"^(?:[^{{]|\\{{(?:[^A-Za-z_{{]|{_IDENT}(?:[^A-Za-z0-9_{{}}]|$)|$)|\\{{(?:{'|'.join(PROMQL_PLACEHOLDERS)})\\}})*$"
)
QUERIES_NOTE = (
    "Named PromQL queries. A name is a letter or _ then letters, digits or _ (at most 64); a query is not "
    f"blank, at most {MAX_QUERY_CHARS} characters, and a `{{name}}` in it is one of the known placeholders "
    f"({', '.join('{' + p + '}' for p in PROMQL_PLACEHOLDERS)}). Each query needs a threshold named after it "
    "in monitoring.thresholds (`<name>_max` and/or `<name>_min`), a finite number a 64-bit double holds "
    "(at most 1.7976931348623157e308 either way)."
)


class PrometheusSource(_Cfg):
    """Named PromQL queries judged at a window's end against the thresholds named after them.

    A query named `error_rate` is judged against `error_rate_max` (and/or `error_rate_min`);
    a custom name such as `queue_depth` needs `queue_depth_max` or `queue_depth_min` among the
    channel's thresholds. The base URL falls back to the service's KX_PROMETHEUS_URL.
    """

    url: StrictStr | None = Field(default=None, max_length=500, json_schema_extra={"pattern": PROMETHEUS_URL})
    timeout_s: Number = Field(default=5.0, gt=0, le=60)
    queries: dict[StrictStr, StrictStr] = Field(
        min_length=1,
        max_length=MAX_QUERIES,
        description=QUERIES_NOTE,
        json_schema_extra={
            "propertyNames": {"pattern": QUERY_NAME_PATTERN},
            "additionalProperties": {
                "type": "string",
                "maxLength": MAX_QUERY_CHARS,
                "allOf": [{"pattern": NOT_BLANK}, {"pattern": PROMQL_TEMPLATE}],
            },
        },
    )


class ChannelMonitoring(_Cfg):
    window_s: JsonInt = Field(ge=1, le=MAX_WINDOW_S)
    min_samples: JsonInt = Field(default=1, ge=1)
    thresholds: Thresholds = Field(default_factory=Thresholds)
    # optional: older configurations validate as before, and one without it is written as before
    prometheus: PrometheusSource | None = Field(default=None, exclude_if=lambda source: source is None)


class ChannelCompatibility(_Cfg):
    schema_: StrictStr | None = Field(default=None, alias="schema")
    profiles: list[StrictStr] | None = None
    runtime_version: StrictStr | None = None

    @property
    def configured(self) -> bool:
        return self.schema_ is not None and bool(self.profiles) and self.runtime_version is not None


class ChannelPolicy(_Cfg):
    allowed_sources: list[StrictStr] | None = None
    allowed_builders: list[StrictStr] | None = None
    forbid_downgrade: StrictBool = True
    max_pin_days: JsonInt = Field(default=30, ge=0)  # the pinner refuses a longer pin (a recorded `unpinned` refused)
    # A DSSE-signed in-toto/SLSA provenance `sha256-<hex>.attestation` must sit beside the pack,
    # signed by a `builders` key of the trust root trusted for the attested builder id.
    require_attestation: StrictBool = False
    # The seed's pitfall "floating latest": the manifest's `provenance.revision` must then be a full commit
    # id (40 or 64 hex digits, git's SHA-1 or SHA-256), never a branch or tag that can move under the
    # evidence (`main`, `v1.2`, `HEAD`). Optional: older configurations validate as before.
    require_commit_revision: StrictBool = False
    # "promotion": only a release promoted from the channel before (the service's linked request,
    # confirmed by the source's `promoted` event) is accepted; a direct request is rejected at
    # pre-flight. For stable/lts (seed pitfall "too broad too early").
    accept: Literal["any", "promotion"] = "any"
    # Pre-flight's `alert_route` item (seed: "confirm alerting is in place"): a release that can roll
    # back should reach someone through a [[notifications]] sink on `rolled_back` and `escalated`.
    # Without one, a recorded reason here waives it; otherwise the item is a recorded warning, or a
    # rejection when `require_alert_route` is set. Both optional: older configurations validate as before.
    alert_waiver: StrictStr | None = Field(
        default=None, min_length=1, max_length=500, json_schema_extra={"pattern": NOT_BLANK}
    )
    require_alert_route: StrictBool = False


class ChannelConfig(_Cfg):
    """Beyond this shape a configuration must be coherent (`channel_problems`): unique cohort names, the last cohort a catch-all with no criteria and no other, percent ranges inside 0..10000 (they may overlap: the first cohort whose criteria all match wins), no cohort an earlier one covers whole (its tenants, regions and range inside that one's: it would never match), a plan naming every cohort once, `promote_to` another channel, unique notification sink names, and a threshold named after each Prometheus query (see `queries`)."""  # noqa: E501 (one line: it is the schema's description, word for word)

    cohorts: list[CohortRule] = Field(default_factory=lambda: [CohortRule(name=DEFAULT_COHORT)], min_length=1)
    plan: list[list[StrictStr]] | None = None
    monitoring: ChannelMonitoring = Field(default_factory=lambda: ChannelMonitoring(window_s=60))
    compatibility: ChannelCompatibility = Field(default_factory=ChannelCompatibility)
    policy: ChannelPolicy = Field(default_factory=ChannelPolicy)
    promote_to: StrictStr | None = Field(default=None, pattern=TOKEN_PATTERN)
    notifications: list[NotificationSink] = Field(default_factory=list)  # webhooks (events/notifications.py)

    @model_validator(mode="after")
    def _coherent(self) -> ChannelConfig:
        problems = channel_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def cohort_names(self) -> list[str]:
        return [c.name for c in self.cohorts]

    @property
    def effective_plan(self) -> list[list[str]]:
        return self.plan if self.plan else [[name] for name in self.cohort_names]

    def resolve(self, env: str, channel: str, tenant: str, region: str | None = None) -> str:
        return resolve_cohort(self.cohorts, env, channel, tenant, region)


def covers(earlier: CohortRule, later: CohortRule) -> bool:
    """Whether every runtime `later` matches is matched by `earlier` (which comes first, so wins): each
    criterion of `earlier` is absent or takes in all `later` asks for on it. (A cohort with an empty list
    matches no runtime anyway: a placeholder, accepted as it always was, never "covered".)"""

    def within(wide: list[str] | None, narrow: list[str] | None) -> bool:
        return wide is None or (bool(narrow) and set(narrow or ()) <= set(wide))

    if not (within(earlier.tenants, later.tenants) and within(earlier.regions, later.regions)):
        return False
    if earlier.percent is None:
        return True
    (lo, hi), inner = earlier.percent, later.percent
    return inner is not None and lo <= inner[0] and inner[1] <= hi


def channel_problems(cfg: ChannelConfig, own_channel: str | None = None) -> list[str]:
    """Every problem with a configuration, one sentence each (empty when it is sound)."""
    problems: list[str] = []
    names = [c.name for c in cfg.cohorts]
    if len(set(names)) != len(names):
        problems.append("cohort names must be unique")
    if cfg.cohorts and not cfg.cohorts[-1].is_catch_all:
        problems.append(f"the last cohort ({cfg.cohorts[-1].name}) must be a catch-all with no criteria")
    for rule in cfg.cohorts[:-1]:
        if rule.is_catch_all:
            problems.append(f"cohort {rule.name} has no criteria but is not last: later cohorts would never match")
    for rule in cfg.cohorts:
        if rule.percent is not None:
            lo, hi = rule.percent
            if not (0 <= lo < hi <= BUCKETS):
                problems.append(
                    f"cohort {rule.name}: percent range [{lo}, {hi}) must lie inside 0..{BUCKETS} with lo < hi"
                )
    # First match wins (CONTRACT §7), so overlapping criteria are how "5% of eu, 5% of us" is written
    # (once refused: percent ranges were checked alone). What is refused is a cohort no runtime can reach.
    for i, later in enumerate(cfg.cohorts):
        earlier = next((e for e in cfg.cohorts[:i] if not e.is_catch_all and covers(e, later)), None)
        if earlier is not None:  # (never the catch-all: an earlier cohort has a criterion it does not)
            problems.append(
                f"cohort {later.name} can never match: every runtime it names matches cohort {earlier.name} first"
            )
    if cfg.plan is not None:
        seen: set[str] = set()
        for stage in cfg.plan:
            if not stage:
                problems.append("a plan stage must name at least one cohort")
            for name in stage:
                if name not in names:
                    problems.append(f"plan names unknown cohort {name!r}")
                elif name in seen:
                    problems.append(f"plan names cohort {name!r} twice")
                seen.add(name)
        left_out = [n for n in names if n not in seen]
        if left_out:
            problems.append(f"the plan leaves out cohorts {left_out}: they would never receive a release")
    sinks = [s.name for s in cfg.notifications]
    if len(set(sinks)) != len(sinks):
        problems.append("notification sink names must be unique")
    if cfg.policy.alert_waiver is not None and not cfg.policy.alert_waiver.strip():
        problems.append("policy.alert_waiver must give a reason (it is recorded in each release's checklist)")
    if own_channel is not None and cfg.promote_to == own_channel:
        problems.append("promote_to must name another channel")
    if cfg.monitoring.prometheus is not None:
        problems += prometheus_problems(cfg.monitoring.prometheus, cfg.monitoring.thresholds)
    return problems


def watches_longer(source: ChannelConfig, nxt: ChannelConfig) -> bool:
    """The seed's minimum windows, "canary: short but real; stable: longer (enough to catch delayed
    regressions)", as a rule between a channel and the one it promotes to."""
    return nxt.monitoring.window_s > source.monitoring.window_s


def cohort_set_notes(previous: ChannelConfig | None, cfg: ChannelConfig) -> list[str]:
    """What a new configuration's cohort set changes for runtimes and releases, one sentence per cohort
    added or taken out (none for a first configuration): an operator's warning, not a refusal."""
    if previous is None:
        return []
    before, after = previous.cohort_names, cfg.cohort_names
    notes = [
        f"cohort {name} is new: its runtimes keep the pack they run until a release reaches it, and a release "
        f"over it and cohorts that ran packs is refused until it has run one (bring it in alone: "
        f"kxr release request ... --plan {name} --rollback none)"
        for name in after
        if name not in before
    ]
    notes += [
        f"cohort {name} is taken out: its runtimes follow the cohort they match now, and a release watching "
        f"{name} holds (monitoring_inconclusive) for an operator"
        for name in before
        if name not in after
    ]
    return notes


def promotion_window_problems(channel: str, cfg: ChannelConfig, others: Mapping[str, ChannelConfig]) -> list[str]:
    """Where `cfg` for `channel` would break the seed's "canary short, stable longer" against the other
    configured channels of its environment (`others`: channel -> configuration): the channel it promotes
    to must watch longer than it, and it must watch longer than every channel that promotes to it.
    (The promoter withholds a promotion the same rule forbids, whoever wrote the configurations.)"""
    mine = cfg.monitoring.window_s
    problems = []
    nxt = others.get(cfg.promote_to) if cfg.promote_to else None
    if nxt is not None and not watches_longer(cfg, nxt):
        problems.append(
            f"monitoring.window_s {mine}s: {cfg.promote_to}, which this channel promotes to, watches "
            f"{nxt.monitoring.window_s}s; a promotion must watch longer (raise {cfg.promote_to}'s window first)"
        )
    for name, other in sorted(others.items()):
        if name != channel and other.promote_to == channel and not watches_longer(other, cfg):
            problems.append(
                f"monitoring.window_s {mine}s: {name} promotes to this channel and watches "
                f"{other.monitoring.window_s}s; this channel must watch longer"
            )
    return problems


def query_limits(thresholds: Thresholds, name: str) -> list[tuple[str, object]]:
    """(op, limit) of every threshold named after query `name`: `<name>_max` (<=) and `<name>_min` (>=),
    declared fields and a channel's custom (extra) ones alike; a limit may be anything the file held."""
    extra = thresholds.__pydantic_extra__ or {}
    out = []
    for suffix, op in (("_max", "<="), ("_min", ">=")):
        key = name + suffix
        value = getattr(thresholds, key) if key in type(thresholds).model_fields else extra.get(key)
        if value is not None:
            out.append((op, value))
    return out


def prometheus_problems(source: PrometheusSource, thresholds: Thresholds) -> list[str]:
    """What is wrong with a channel's Prometheus queries, one sentence each."""
    problems: list[str] = []
    if source.url is not None and not re.match(PROMETHEUS_URL, source.url):
        problems.append(f"monitoring.prometheus.url must be an http:// or https:// URL, not {source.url[:80]!r}")
    for name, template in source.queries.items():
        where = f"monitoring.prometheus.queries.{name[:64]}"
        if not re.fullmatch(QUERY_NAME_PATTERN, name):  # (match: Python's `$` also takes a final newline)
            problems.append(f"{where}: a query name is a letter or _ then letters, digits or _ (at most 64)")
            continue
        if not template.strip():
            problems.append(f"{where}: the query is empty")
        if len(template) > MAX_QUERY_CHARS:
            problems.append(f"{where}: the query is longer than {MAX_QUERY_CHARS} characters")
        unknown = sorted({m for m in _PLACEHOLDER.findall(template) if m not in PROMQL_PLACEHOLDERS})
        if unknown:
            problems.append(
                f"{where}: unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)} "
                f"(known: {', '.join('{' + p + '}' for p in PROMQL_PLACEHOLDERS)})"
            )
        limits = query_limits(thresholds, name)
        if not limits:
            problems.append(
                f"{where}: no threshold to judge it against: set monitoring.thresholds.{name}_max or {name}_min"
            )
        for op, value in limits:
            if not is_limit(value):
                key = f"{name}_{'max' if op == '<=' else 'min'}"
                problems.append(
                    f"monitoring.thresholds.{key} must be a finite number a double holds, not {_shown(value)}"
                )
    return problems


def _shown(value: object) -> str:
    """A refused value as the message shows it: an integer of 400 digits is named by its size."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**20:
        return f"an integer of {len(str(abs(value)))} digits"
    return repr(value)


def _custom_thresholds(model: BaseModel) -> set[str]:
    """The extra threshold paths a channel's Prometheus queries give a meaning to."""
    if not isinstance(model, ChannelConfig) or model.monitoring.prometheus is None:
        return set()
    return {
        f"monitoring.thresholds.{name}{suffix}"
        for name in model.monitoring.prometheus.queries
        for suffix in ("_max", "_min")
    }


def unknown_fields(model: BaseModel, path: str = "") -> list[str]:
    """Fields a configuration carries that no version of it defines (usually typos).

    Stored events tolerate extra fields (newer writers may add some); an operator's
    file is checked strictly, so `forbid_downgrad: false` is an error, not a silent no-op.
    """
    found = [f"{path}{key}" for key in (model.__pydantic_extra__ or {})]
    for name in type(model).model_fields:
        value = getattr(model, name)
        items = value if isinstance(value, (list, tuple)) else [value]
        for index, item in enumerate(items):
            if isinstance(item, BaseModel):
                where = f"{path}{name}[{index}]." if isinstance(value, (list, tuple)) else f"{path}{name}."
                found += unknown_fields(item, where)
    known = _custom_thresholds(model)  # `queue_depth_max` is a threshold when a query is named `queue_depth`
    return [f for f in found if f not in known]


def requested_threshold_problems(asked: Thresholds, cfg: ChannelConfig) -> list[str]:
    """Why a release request's thresholds cannot all be honoured on this channel, one sentence each.

    A threshold a producer names is a promise that the release is judged by it. One the service
    cannot judge — a name no version defines (a typo), a custom `<query>_max`/`_min` that no
    Prometheus query of the channel measures, a value that is not a finite number a double holds —
    fails pre-flight: dropping it would judge the release more loosely than asked, and keeping it
    would hold every window inconclusive after the first cohort was already exposed.
    """
    queries = set(cfg.monitoring.prometheus.queries) if cfg.monitoring.prometheus is not None else set()
    problems = []
    for key, value in sorted((asked.__pydantic_extra__ or {}).items()):
        name, shown = key.removesuffix("_max").removesuffix("_min"), repr(key[:64])
        if name == key:
            known = ", ".join(type(asked).model_fields)
            problems.append(f"unknown threshold {shown} (known: {known}, or <query>_max/_min of a channel query)")
        elif name not in queries:
            problems.append(f"threshold {shown} names no Prometheus query of this channel: nothing would judge it")
        elif not is_limit(value):
            problems.append(f"threshold {shown} is not a finite number a 64-bit double holds: {str(value)[:40]!r}")
    return problems


def tenant_bucket(env: str, channel: str, tenant: str) -> int:
    """Sticky bucket 0..9999; ramps are monotone because a tenant's bucket never changes."""
    digest = hashlib.sha256(f"{env}/{channel}/{tenant}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def resolve_cohort(rules: list[CohortRule], env: str, channel: str, tenant: str, region: str | None = None) -> str:
    bucket = tenant_bucket(env, channel, tenant)
    for rule in rules:
        if rule.matches(tenant, region, bucket):
            return rule.name
    # A sound config ends with a catch-all, so this only happens for a config that failed validation.
    raise LookupError(f"no cohort matches tenant {tenant!r}")


DEFAULT_CHANNEL = ChannelConfig()
