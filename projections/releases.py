"""Per release: where it stands in the lifecycle, and what the next step needs to know.

`phase` is the release's state-machine position; `TRANSITIONS` is the legal
machine (the auditor checks every release against it). The fold itself never
refuses an event: the log is the truth, and an illegal step is reported by the
auditor, not hidden by the fold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from events.model import (
    Activated,
    Actor,
    Closed,
    Distributed,
    Event,
    MonitoringStarted,
    MonitoringVerdict,
    PackRef,
    Prepared,
    Promoted,
    Requested,
    RollbackStarted,
    RolledBack,
    Verified,
)

from .evolve import evolve

TERMINAL = "closed"

# phase after each event type (None: the phase does not change)
PHASE_AFTER: dict[str, str | None] = {
    "requested": "requested",
    "prepared": "prepared",
    "rejected": "rejected",
    "distributed": "distributed",
    "verified": "verified",
    "verification_failed": "verification_failed",
    "activated": "activated",
    "activation_failed": "activation_failed",
    "monitoring_started": "monitoring",
    "monitoring_passed": "passed",
    "monitoring_failed": "failed",
    "monitoring_inconclusive": "held",
    "expanded": "expanding",
    "promoted": "promoted",
    "rollback_started": "rolling_back",
    "rolled_back": "rolled_back",
    "escalated": "held",
    "aborted": "aborting",
    "paused": None,
    "resumed": None,
    "annotated": None,
    "closed": "closed",
}

# the legal lifecycle: phase -> event types that may follow it
_OPERATOR = {"paused", "resumed", "annotated", "aborted", "escalated"}
TRANSITIONS: dict[str | None, set[str]] = {
    None: {"requested", "rejected"},  # rejected: a request that did not decode
    "requested": {"prepared", "rejected"} | _OPERATOR,
    "prepared": {"distributed", "verification_failed", "closed"} | _OPERATOR,  # closed: `pinned`, nothing to roll out
    "distributed": {"verified", "verification_failed"} | _OPERATOR,
    "verified": {"activated", "activation_failed"} | _OPERATOR,
    "activated": {"monitoring_started", "rollback_started"} | _OPERATOR,
    "monitoring": {"monitoring_passed", "monitoring_failed", "monitoring_inconclusive", "rollback_started"} | _OPERATOR,
    "passed": {"expanded", "promoted", "closed", "rollback_started"} | _OPERATOR,
    "expanding": {"activated", "activation_failed", "rollback_started"} | _OPERATOR,
    "promoted": {"closed", "rollback_started"} | _OPERATOR,
    "held": {"rollback_started", "expanded", "promoted", "closed", "monitoring_started", "monitoring_passed"}
    | _OPERATOR,
    "failed": {"rollback_started", "closed"} | _OPERATOR,
    "activation_failed": {"rollback_started", "closed"} | _OPERATOR,
    "rolling_back": {"rolled_back", "escalated", "activation_failed"} | (_OPERATOR - {"aborted"}),
    "rolled_back": {"closed", "annotated"},
    "aborting": {"rollback_started", "closed", "annotated", "escalated"},
    "rejected": {"closed", "annotated"},
    "verification_failed": {"closed", "annotated"},
    "closed": {"annotated", "rollback_started"},  # an operator may still roll a finished release back
}

# Abort is final: after `aborted` a release may only be rolled back, escalate and hold, or be
# closed as a failure. These steps move it on instead, whatever phase it is in; the fold
# reports them (the phase table alone cannot: an aborted release that escalated is `held`,
# the same phase an inconclusive window leaves, where passing a window is legal).
ILLEGAL_AFTER_ABORT = frozenset({"activated", "monitoring_started", "monitoring_passed", "expanded", "promoted"})
CLOSE_AFTER_ABORT = frozenset({"aborted", "failed", "rolled_back"})
# the phases from which a release may close with each outcome that claims exposure went well
_CLOSE_SUCCESS_FROM = frozenset({"passed", "promoted"})


@dataclass(frozen=True, slots=True)
class ReleaseState:
    release_id: str
    phase: str | None = None
    last_seq: int = 0  # last sequence on kx.release.<id>.*: the CAS value for appends
    last_event_id: str | None = None
    requested: Requested | None = None
    requested_at: datetime | None = None
    prepared: Prepared | None = None
    distributed: Distributed | None = None
    verified: Verified | None = None
    stage: int = -1  # the stage most recently activated (-1: none yet)
    activated: tuple[str, ...] = ()  # cohorts this release switched to its pack
    activated_at: dict[int, datetime] = field(default_factory=dict)
    monitoring: MonitoringStarted | None = None
    verdicts: tuple[tuple[str, MonitoringVerdict], ...] = ()
    paused: bool = False
    rollback: RollbackStarted | None = None
    rolled_back: RolledBack | None = None
    promoted: Promoted | None = None
    overrides: tuple[tuple[int, str], ...] = ()  # (stage, operator) of each window passed by an operator's word
    requested_by: Actor | None = None  # who appended the request (a promotion: the service)
    promotion_confirmed_by: str | None = None  # the release whose `promoted` event names this one
    aborted: bool = False
    outcome: str | None = None
    failure: str | None = None  # the reason a release stopped, for status views
    anomalies: tuple[str, ...] = ()  # illegal transitions seen (the auditor reports them)

    @property
    def pack(self) -> PackRef | None:
        if self.verified is not None:
            return self.verified.pack
        if self.prepared is not None:
            return self.prepared.pack
        return self.requested.pack if self.requested else None

    @property
    def stages(self) -> list[list[str]]:
        return self.prepared.stages if self.prepared else []

    @property
    def closed(self) -> bool:
        return self.phase == TERMINAL

    @property
    def in_flight(self) -> bool:
        return self.phase is not None and self.phase != TERMINAL

    @property
    def stages_passed_on_data(self) -> frozenset[int]:
        """Stages whose window the monitor passed on samples (an operator's pass does not count); a
        stage that exposed nothing (every cohort pinned) counts once the monitor passed it, since no
        data is expected there. The one definition the fold, the promoter and the auditor share."""
        return frozenset(
            v.stage
            for kind, v in self.verdicts
            if kind == "monitoring_passed" and not is_override(v) and (v.samples > 0 or not self.exposed(v.stage))
        )

    def exposed(self, stage: int) -> bool:
        """Whether this release switched any cohort of `stage`."""
        stages = self.stages
        return 0 <= stage < len(stages) and any(c in self.activated for c in stages[stage])

    @property
    def stages_passed_by_override(self) -> list[int]:
        """Stages that moved on only because an operator passed their window (0-based, in order)."""
        on_data = self.stages_passed_on_data
        return sorted({v.stage for kind, v in self.verdicts if kind == "monitoring_passed" and v.stage not in on_data})

    @property
    def passed_on_data(self) -> bool:
        """Every stage of the plan passed a window on its own data: the only way to known-good."""
        return bool(self.stages) and self.stages_passed_on_data >= set(range(len(self.stages)))


# A pass the promoter found stale (projections/world.py `stale_pass`) is held with this code, and from then on
# kept in the release's verdicts as VOID_PASS: in the record, but no rule that asks for a `monitoring_passed` (on
# data, by override) finds it. Its own events say so, so a read back of the release alone agrees (session 25).
STALE_PASS = "stale_pass"
VOID_PASS = "monitoring_passed_void"


def is_override(verdict: MonitoringVerdict) -> bool:
    # logs written before the flag existed say so only in the reason (services/actions/operator.py wrote it)
    return verdict.override or verdict.reason.startswith("operator override")


def triggers_for(phases: frozenset[str]) -> tuple[str, ...]:
    """The event types after which a release can be in one of `phases` and decided on.

    A consumer that only acts in some phases subscribes to these alone: the events that
    lead into those phases, and `resumed` (un-pausing leaves the phase as it was).
    """
    unknown = phases - {p for p in PHASE_AFTER.values() if p}
    if unknown:
        raise ValueError(f"not phases: {sorted(unknown)}")
    return tuple(sorted({t for t, after in PHASE_AFTER.items() if after in phases} | {"resumed"}))


def apply_release_event(state: ReleaseState, seq: int, event: Event) -> ReleaseState:
    suffix = event.suffix
    anomalies = state.anomalies
    if suffix not in TRANSITIONS.get(state.phase, ()):
        anomalies = anomalies + (f"{suffix} after {state.phase or 'nothing'}",)
    elif state.aborted and (
        suffix in ILLEGAL_AFTER_ABORT
        or (suffix == "closed" and getattr(event.data, "outcome", None) not in CLOSE_AFTER_ABORT)
    ):
        anomalies = anomalies + (f"{suffix}{_outcome_of(event)} after aborted: abort is final",)
    elif (
        suffix == "closed"
        and getattr(event.data, "outcome", None) == "success"
        and not (state.phase in _CLOSE_SUCCESS_FROM and state.passed_on_data)
    ):
        anomalies = anomalies + ("closed success without every stage passed by monitoring on data",)
    new_phase = PHASE_AFTER.get(suffix)
    # one copy per event (replay cost): the common changes, then the event's own
    changes: dict[str, Any] = {
        "phase": new_phase if new_phase is not None else state.phase,
        "last_seq": seq,
        "last_event_id": event.event_id,
        "anomalies": anomalies,
    }
    data = event.data
    match suffix:
        case "requested":
            assert isinstance(data, Requested)
            if state.requested is not None:  # a release id is requested once; the first request stands
                changes["phase"] = state.phase
            else:
                changes.update(requested=data, requested_at=event.occurred_at, requested_by=event.actor)
        case "prepared":
            assert isinstance(data, Prepared)
            changes["prepared"] = data
        case "distributed":
            assert isinstance(data, Distributed)
            changes["distributed"] = data
        case "verified":
            assert isinstance(data, Verified)
            changes["verified"] = data
        case "activated":
            assert isinstance(data, Activated)
            cohorts = state.activated + tuple(c for c in data.cohorts if c not in state.activated)
            changes.update(
                stage=data.stage, activated=cohorts, activated_at={**state.activated_at, data.stage: event.occurred_at}
            )
        case "monitoring_started":
            assert isinstance(data, MonitoringStarted)
            changes["monitoring"] = data
        case "monitoring_passed" | "monitoring_failed" | "monitoring_inconclusive":
            assert isinstance(data, MonitoringVerdict)
            reason = None if suffix == "monitoring_passed" else f"{suffix}: {data.reason}"
            changes.update(verdicts=state.verdicts + ((suffix, data),), failure=reason or state.failure)
            if suffix == "monitoring_passed" and is_override(data):
                changes["overrides"] = state.overrides + ((data.stage, event.actor.id),)
        case "rollback_started":
            assert isinstance(data, RollbackStarted)
            changes.update(rollback=data, failure=state.failure or f"rollback: {data.reason}")
        case "rolled_back":
            assert isinstance(data, RolledBack)
            changes["rolled_back"] = data
        case "promoted":
            assert isinstance(data, Promoted)
            changes["promoted"] = data
        case "paused":
            changes["paused"] = True
        case "resumed":
            changes["paused"] = False
        case "aborted":
            changes.update(aborted=True, failure=f"aborted: {getattr(data, 'rationale', '')}")
        case "rejected" | "verification_failed" | "activation_failed" | "escalated":
            changes["failure"] = f"{suffix}: {failure_text(data)}"
            if suffix == "escalated" and getattr(data, "code", None) == STALE_PASS and state.verdicts:
                (kind, verdict), earlier = state.verdicts[-1], state.verdicts[:-1]
                if kind == "monitoring_passed":
                    changes["verdicts"] = earlier + ((VOID_PASS, verdict),)
        case "closed":
            assert isinstance(data, Closed)
            changes["outcome"] = data.outcome
    return evolve(state, changes)


def _outcome_of(event: Event) -> str:
    outcome = getattr(event.data, "outcome", None)
    return f"({outcome})" if outcome else ""


def failure_text(data: Any) -> str:  # the payload of any failure event (or a test's stand-in)
    """`gate/code: message` (or the list of reasons) for a failure event's payload."""
    reasons = getattr(data, "reasons", None)
    if reasons is not None:
        return "; ".join(f"{r.code}: {r.message}" for r in reasons)
    where = "/".join(x for x in (getattr(data, "gate", None), getattr(data, "code", None)) if x)
    return f"{where}: {data.message}" if where else data.message
