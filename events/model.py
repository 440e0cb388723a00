"""The event envelope (CONTRACT §3) and the typed payload of every event type (§4).

Events are frozen pydantic models. Payload models allow extra fields so that a
newer producer adding optional fields (which the contract permits) never breaks
an older consumer; the fields named here are checked strictly.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializeAsAny,
    Strict,
    StrictBool,
    StrictFloat,
    StrictStr,
    field_validator,
)

from .integers import JsonInt, NonNegativeInt, PositiveInt, integral
from .manifest import DIGEST_PATTERN
from .nulls import empty_if_null
from .thresholds import Thresholds  # one model for a channel's and a release's (events/thresholds.py)
from .timestamps import Rfc3339
from .tokens import TOKEN_PATTERN

SCHEMA_VERSION = 1
# which event families need a release_id, and which a scope (the decoder enforces both)
RELEASE_FAMILIES = ("release", "notification")
SCOPE_FAMILIES = ("scope", "channel")
FAMILIES = ("release", "scope", "channel", "trust", "notification")
Token = Annotated[StrictStr, Field(pattern=TOKEN_PATTERN)]  # cohort names and other subject tokens


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)


class Actor(Frozen):
    kind: Literal["producer", "service", "operator", "runtime"]
    id: StrictStr = Field(min_length=1, max_length=256)


class Scope(Frozen):
    env: Token = Field(pattern=TOKEN_PATTERN)
    channel: Token = Field(pattern=TOKEN_PATTERN)
    cohort: Token = Field(pattern=TOKEN_PATTERN)


class Target(Frozen):
    env: Token = Field(pattern=TOKEN_PATTERN)
    channel: Token = Field(pattern=TOKEN_PATTERN)


class PackRef(Frozen):
    name: Token = Field(pattern=TOKEN_PATTERN)
    version: StrictStr = Field(min_length=1, max_length=64)
    digest: StrictStr = Field(pattern=DIGEST_PATTERN)
    size: NonNegativeInt | None = None

    def short(self) -> str:
        return f"{self.name}@{self.version} ({self.digest[7:19]})"


class VersionDigest(Frozen):
    version: StrictStr
    digest: StrictStr


WINDOW_MAX_S = 30 * 24 * 3600


class Monitoring(Frozen):
    window_s: JsonInt = Field(ge=1, le=WINDOW_MAX_S)
    min_samples: JsonInt = Field(default=1, ge=1)
    thresholds: Thresholds = Field(default_factory=Thresholds)


class RequestedMonitoring(Frozen):
    """A request's monitoring (CONTRACT §5): optional, and so is each of its fields. What it leaves
    out is the channel's (§7: "defaults and minimum window"), filled in by the preparer; what it
    states is checked against the channel's minimum."""

    # (A request giving only `window_s` once took `min_samples` 1, and was rejected on a channel asking for 2.)

    window_s: Annotated[int, Strict(), Field(ge=1, le=WINDOW_MAX_S), BeforeValidator(integral)] | None = None
    min_samples: PositiveInt | None = None
    thresholds: Annotated[Thresholds, empty_if_null(Thresholds)] = Field(default_factory=Thresholds)  # Go: nil map


class RollbackPlan(Frozen):
    strategy: Literal["lkg", "pinned", "none"] = "lkg"


class Reason(Frozen):
    """One machine-readable reason: what failed (`code`), where (`field`), in words (`message`)."""

    code: StrictStr
    message: StrictStr
    field: StrictStr | None = None


# ---- release lifecycle payloads -------------------------------------------------------------


class Requested(Frozen):
    pack: PackRef
    target: Target
    owner: StrictStr = Field(min_length=1, max_length=256)
    escalation: StrictStr = Field(min_length=1, max_length=512)
    plan: list[list[Token]] | None = None
    monitoring: RequestedMonitoring | None = None
    rollback: Annotated[RollbackPlan, empty_if_null(RollbackPlan)] = Field(default_factory=RollbackPlan)
    reason: StrictStr = ""
    promoted_from: StrictStr | None = None
    acknowledge_no_health: StrictBool = False


class ChecklistItem(Frozen):
    item: StrictStr
    ok: StrictBool
    detail: StrictStr = ""


class Prepared(Frozen):
    pack: PackRef
    target: Target
    stages: list[list[Token]]
    skipped: dict[str, StrictStr] = Field(default_factory=dict)  # cohort -> why (e.g. pinned)
    monitoring: Monitoring
    rollback_strategy: Literal["lkg", "pinned", "none"]
    rollback_targets: dict[str, PackRef | None]  # cohort -> target (None: never activated)
    checklist: list[ChecklistItem]
    owner: StrictStr
    escalation: StrictStr

    def pinned_summary(self) -> str:
        """The close summary of a release with nothing to roll out: every target cohort is pinned
        (the preparer closes it `pinned`; the promoter too, if that close was lost)."""
        skipped = "; ".join(f"{c}: {why}" for c, why in self.skipped.items()) or "no cohort left"
        return f"nothing exposed: every target cohort is pinned ({skipped})"


class Rejected(Frozen):
    reasons: list[Reason]


class StoredObject(Frozen):
    """How `kx_packs` held one object when it was distributed: enough for the service to
    re-publish its metadata (a producer can mark it deleted or re-point it; its chunks stay)."""

    nuid: StrictStr = Field(min_length=1, max_length=64)
    size: JsonInt = Field(ge=0)
    chunks: JsonInt = Field(ge=0)
    digest: StrictStr  # the object store's `SHA-256=<base64url>` of the bytes
    chunk_size: PositiveInt | None = None


class Distributed(Frozen):
    pack: PackRef
    manifest: StrictStr
    objects: dict[str, JsonInt] = Field(default_factory=dict)  # object name -> size seen
    # object name -> its metadata as distributed (optional: events from before it lack it)
    stored: dict[str, StoredObject] = Field(default_factory=dict)


class GateOutcome(Frozen):
    gate: StrictStr
    ok: StrictBool
    code: StrictStr
    message: StrictStr = ""


class Verified(Frozen):
    pack: PackRef
    manifest: StrictStr
    reference_time: Rfc3339
    gates: list[GateOutcome]
    signers: list[StrictStr] = Field(default_factory=list)


class VerificationFailed(Frozen):
    gate: StrictStr
    code: StrictStr
    message: StrictStr
    reference_time: Rfc3339
    gates: list[GateOutcome] = Field(default_factory=list)


class Activated(Frozen):
    stage: JsonInt = Field(ge=0)
    cohorts: list[Token]
    pack: PackRef
    kind: Literal["rollout", "rollback", "pin"] = "rollout"
    batch_id: StrictStr
    previous: dict[str, VersionDigest | None] = Field(default_factory=dict)


class ActivationFailed(Frozen):
    stage: JsonInt = Field(ge=0)
    code: StrictStr
    message: StrictStr


class MonitoringStarted(Frozen):
    stage: JsonInt = Field(ge=0)
    cohorts: list[Token]
    digest: StrictStr
    starts_at: Rfc3339
    ends_at: Rfc3339
    monitoring: Monitoring


class Comparison(Frozen):
    metric: StrictStr
    # a JSON number, never "1" or true (finite on the wire: the strict parse refuses the rest; one built
    # here non-finite is refused by the encoder, and the monitor holds the window saying so)
    value: StrictFloat | None
    op: Literal["<=", ">=", "none_new"]
    threshold: StrictFloat | None
    ok: StrictBool


class QueryAnswer(Frozen):
    """One query a window was judged on and what its source answered (evidence, bounded).

    `value` is the figure judged (the worst series: the highest against a `_max` threshold, the lowest
    against a `_min` one alone); None is no data,
    and `no_data` says why (an error, a timeout, an empty or non-finite answer): never a pass.
    `result` holds the answer's series as answered, values as Prometheus' text ("NaN" stays "NaN").
    """

    source: Literal["prometheus"] = "prometheus"
    name: StrictStr
    query: StrictStr  # as sent, placeholders filled in
    at: Rfc3339  # the evaluation time: the window's end
    status: StrictStr  # "success", or what went wrong: "error", "timeout", "unreachable", "invalid", "not_configured"
    result: list[dict[str, Any]] = Field(default_factory=list)  # [{"metric": {...}, "value": "0.01"}], at most 20
    series: JsonInt = 0  # how many series the answer held (result lists at most 20)
    value: StrictFloat | None = None
    lowest: StrictFloat | None = None  # with both a `_max` and a `_min` threshold: the lowest series, for the `_min`
    no_data: StrictStr | None = None


class MonitoringVerdict(Frozen):
    stage: JsonInt = Field(ge=0)
    samples: JsonInt = 0
    runtimes: JsonInt = 0
    figures: dict[str, Any] = Field(default_factory=dict)
    comparisons: list[Comparison] = Field(default_factory=list)
    early: StrictBool = False
    reason: StrictStr = ""
    # Set on a failed verdict when the failure names its own rollback trigger (seed "Rollback
    # triggers"): a runtime refusing the pack is `activation_failure`, a tenant-impact breach
    # `tenant_impact`; None means `monitoring_failure`.
    trigger: Literal["activation_failure", "monitoring_failure", "tenant_impact", "policy_violation"] | None = None
    # True on a `monitoring_passed` written by an operator (`kxr release promote`): it moves the
    # release on, but a stage passed this way never makes its pack last-known-good.
    override: StrictBool = False
    # Every query to a metrics system (the channel's `monitoring.prometheus`) and its answer.
    # (left out when empty: a window judged without a metrics system is written byte for byte as before)
    queries: list[QueryAnswer] = Field(default_factory=list, exclude_if=lambda queries: not queries)
    # The stream sequence of the channel's newest configuration entry when the monitor judged the window (None:
    # an operator's pass, or a verdict written before session 25; left out then). The monitor appends with the
    # release's subjects as its only expectation, so a channel change can land between its judgement and its
    # append: a pass is moved on from only while this is still the channel's newest entry.
    channel_seq: JsonInt | None = Field(default=None, exclude_if=lambda seq: seq is None)


class Expanded(Frozen):
    from_stage: JsonInt = Field(ge=0)
    to_stage: JsonInt = Field(ge=0)
    cohorts: list[Token]


class Promoted(Frozen):
    to_channel: Token = Field(pattern=TOKEN_PATTERN)
    promoted_to: Token = Field(pattern=TOKEN_PATTERN)  # the linked release on the next channel
    rationale: StrictStr = ""


class RollbackStarted(Frozen):
    trigger: Literal[
        "verification_failure",
        "activation_failure",
        "monitoring_failure",
        "policy_violation",
        "tenant_impact",
        "operator",
        "abort",
    ]
    reason: StrictStr
    targets: dict[str, PackRef | None]


class RolledBack(Frozen):
    cohorts: list[Token]
    targets: dict[str, PackRef | None]
    batch_id: StrictStr | None = None


class OperatorNote(Frozen):
    rationale: StrictStr = ""
    incident: StrictStr | None = None


class Escalated(Frozen):
    code: StrictStr
    message: StrictStr
    escalation: StrictStr


class Closed(Frozen):
    # success: every stage passed monitoring on data. promoted_by_override: it moved on because an
    # operator passed at least one window by hand (never last-known-good). pinned: every stage was
    # skipped for pins, nothing was exposed.
    outcome: Literal["success", "promoted_by_override", "rolled_back", "pinned", "aborted", "rejected", "failed"]
    summary: StrictStr = ""


# ---- scope and channel payloads -------------------------------------------------------------


class ScopeActivated(Frozen):
    pack: PackRef
    manifest: StrictStr
    release_id: StrictStr | None
    kind: Literal["rollout", "rollback", "pin"]
    previous: VersionDigest | None = None
    # Freshness (TUF's defence against rollback and freeze attacks), covered by the service
    # signature: a per-scope version, strictly increasing (1 for a scope's first chained
    # pointer), and the digest of the exact stored bytes of the scope's previous pointer
    # (null for the first). A replayed old pointer is then not newer, and a forked one does
    # not chain. Optional: pointers written before them still fold (projections/pointer_chain.py).
    generation: PositiveInt | None = None
    prev: StrictStr | None = Field(default=None, pattern=DIGEST_PATTERN)
    # The trust-root keys (key ids) whose signatures on the manifest verified under the root in
    # force when the pointer was written: the evidence an auditor checks "a pointer names only a
    # pack trusted when it moved" against (projections/invariants.py). Optional (older pointers).
    signers: list[StrictStr] | None = None


class ScopePinned(Frozen):
    pack: PackRef
    until: Rfc3339
    rationale: StrictStr = Field(min_length=1)
    by: StrictStr = Field(min_length=1)


class ScopeUnpinned(Frozen):
    pack: PackRef | None = None
    until: Rfc3339 | None = None
    rationale: StrictStr = ""
    by: StrictStr = ""
    reason: Literal["operator", "expired", "refused"] = "operator"  # refused: the pinned pack failed verification


class ScopeFlagged(Frozen):
    """The pack active in a scope no longer passes a gate it passed when it was activated.

    Written by the guard (services/consumers/guard.py) for a scope with no release in flight on it:
    a trust rotation dropped the keys that signed its manifest, the manifest expired, or the
    channel's policy changed. Nothing moves; the flag is recorded and notified so an
    operator decides (pin, roll forward, or roll back).
    """

    pack: PackRef
    code: StrictStr = Field(min_length=1, max_length=128)  # "<gate>/<gate code>", e.g. "signature/threshold_not_met"
    message: StrictStr
    detected_at: Rfc3339


class TrustRotated(Frozen):
    """A new trust root, signed by thresholds of the old and of its own keys (events/trust.py)."""

    root: dict[str, Any]
    version: JsonInt = Field(ge=2)
    rationale: StrictStr = ""


# The channel configuration body lives in events/channel.py (it has its own validation).
from .channel import ChannelConfig  # noqa: E402
from .notifications import NOTIFICATION_TYPES  # noqa: E402

RELEASE_TYPES: dict[str, type[Frozen]] = {
    "requested": Requested,
    "prepared": Prepared,
    "rejected": Rejected,
    "distributed": Distributed,
    "verified": Verified,
    "verification_failed": VerificationFailed,
    "activated": Activated,
    "activation_failed": ActivationFailed,
    "monitoring_started": MonitoringStarted,
    "monitoring_passed": MonitoringVerdict,
    "monitoring_failed": MonitoringVerdict,
    "monitoring_inconclusive": MonitoringVerdict,
    "expanded": Expanded,
    "promoted": Promoted,
    "rollback_started": RollbackStarted,
    "rolled_back": RolledBack,
    "paused": OperatorNote,
    "resumed": OperatorNote,
    "aborted": OperatorNote,
    "annotated": OperatorNote,
    "escalated": Escalated,
    "closed": Closed,
}
SCOPE_TYPES: dict[str, type[Frozen]] = {
    "activated": ScopeActivated,
    "pinned": ScopePinned,
    "unpinned": ScopeUnpinned,
    "flagged": ScopeFlagged,
}
CHANNEL_TYPES: dict[str, type[BaseModel]] = {"configured": ChannelConfig}

PAYLOADS: dict[str, type[BaseModel]] = {
    **{f"release.{k}": v for k, v in RELEASE_TYPES.items()},
    **{f"scope.{k}": v for k, v in SCOPE_TYPES.items()},
    **{f"channel.{k}": v for k, v in CHANNEL_TYPES.items()},
    "trust.rotated": TrustRotated,
    **NOTIFICATION_TYPES,
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """One immutable entry of KX_RELEASES."""

    model_config = ConfigDict(frozen=True, extra="allow")

    event_id: StrictStr = Field(min_length=1, max_length=128)
    type: StrictStr
    schema_version: JsonInt = SCHEMA_VERSION
    occurred_at: Rfc3339  # any offset, read in UTC (below)
    actor: Actor
    causation_id: StrictStr | None = None
    correlation_id: StrictStr | None = None
    release_id: StrictStr | None = Field(default=None, pattern=TOKEN_PATTERN)
    scope: Scope | None = None
    data: SerializeAsAny[BaseModel]

    @field_validator("occurred_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("occurred_at must carry a timezone (RFC 3339 UTC)")
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise ValueError("occurred_at is out of range") from None

    @property
    def suffix(self) -> str:
        return self.type.split(".", 1)[1]

    @property
    def family(self) -> str:
        return self.type.split(".", 1)[0]
