"""The evidence record of one release, in the seed's terms, folded from its events.

Release identity (who/what/when), target scope, pack identity, pre-flight checklist,
gate outcomes, activations, monitoring windows with figures against thresholds,
promotion/pin/rollback decisions with rationale, incident links, and the outcome.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import reduce
from typing import Any

from events.model import Event

from .position import Position


@dataclass(frozen=True)
class EvidenceRecord:
    release_id: str
    identity: dict[str, Any] = field(default_factory=dict)
    target: dict[str, Any] = field(default_factory=dict)
    pack: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)
    checklist: tuple[dict[str, Any], ...] = ()
    gates: tuple[dict[str, Any], ...] = ()
    verification: dict[str, Any] = field(default_factory=dict)
    activations: tuple[dict[str, Any], ...] = ()
    windows: tuple[dict[str, Any], ...] = ()
    decisions: tuple[dict[str, Any], ...] = ()
    incidents: tuple[str, ...] = ()
    outcome: dict[str, Any] = field(default_factory=dict)
    timeline: tuple[dict[str, Any], ...] = ()
    notifications: tuple[dict[str, Any], ...] = ()  # webhook deliveries about this release (events/notifications.py)

    def to_json(self) -> dict[str, Any]:
        return {
            "release_id": self.release_id,
            "identity": self.identity,
            "target": self.target,
            "pack": self.pack,
            "plan": self.plan,
            "checklist": list(self.checklist),
            "gates": list(self.gates),
            "verification": self.verification,
            "activations": list(self.activations),
            "windows": list(self.windows),
            "decisions": list(self.decisions),
            "incidents": list(self.incidents),
            "outcome": self.outcome,
            "timeline": list(self.timeline),
            "notifications": list(self.notifications),
        }


def _ts(event: Event) -> str:
    return event.occurred_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def summary(event: Event) -> str:
    """One human line per event, for timelines."""
    d: Any = event.data  # the suffix says which payload model it is; matching on a string cannot narrow it
    s = event.suffix
    if event.family == "notification":
        how = f"after {d.attempts} attempt(s)" + (f": {d.error}" if d.error else "")
        return f"{d.kind} notification to {d.sink} {s} {how}"
    if event.family != "release":
        return f"{event.type} {event.scope.cohort if event.scope else ''}"
    match s:
        case "requested":
            return f"{d.pack.name}@{d.pack.version} -> {d.target.env}/{d.target.channel} by {d.owner}"
        case "prepared":
            return (
                f"plan {' -> '.join('+'.join(st) for st in d.stages)}; "
                f"window {d.monitoring.window_s}s; rollback {d.rollback_strategy}"
                + (f"; skipped {sorted(d.skipped)}" if d.skipped else "")
            )
        case "rejected":
            return "; ".join(f"{r.code}: {r.message}" for r in d.reasons)
        case "distributed":
            return f"pack {d.pack.size} bytes and manifest present"
        case "verified":
            return f"{len(d.gates)} gates passed; signed by {len(d.signers)} key(s)"
        case "verification_failed":
            return f"gate {d.gate} failed: {d.code}: {d.message}"
        case "activated":
            return f"stage {d.stage + 1}: {', '.join(d.cohorts) or '(none)'} -> {d.pack.version} ({d.kind})"
        case "activation_failed":
            return f"stage {d.stage + 1}: {d.code}: {d.message}"
        case "monitoring_started":
            return f"stage {d.stage + 1}: window {d.monitoring.window_s}s over {', '.join(d.cohorts) or '(none)'}"
        case "monitoring_passed" | "monitoring_failed" | "monitoring_inconclusive":
            return f"stage {d.stage + 1}: {d.reason}" + (" (early)" if d.early else "")
        case "expanded":
            return f"stage {d.from_stage + 1} -> {d.to_stage + 1}: {', '.join(d.cohorts)}"
        case "promoted":
            return f"promoted to {d.to_channel} as {d.promoted_to}"
        case "rollback_started":
            return f"{d.trigger}: {d.reason}; targets " + ", ".join(
                f"{c}->{t.version if t else 'none'}" for c, t in d.targets.items()
            )
        case "rolled_back":
            return "back on targets: " + ", ".join(f"{c}->{t.version if t else 'none'}" for c, t in d.targets.items())
        case "escalated":
            return f"{d.code}: {d.message} (escalate to {d.escalation})"
        case "closed":
            return f"outcome {d.outcome}: {d.summary}"
        case _:
            return getattr(d, "rationale", "") + (f" incident {d.incident}" if getattr(d, "incident", None) else "")


def apply_evidence(record: EvidenceRecord, position: Position, event: Event) -> EvidenceRecord:
    if event.release_id != record.release_id:
        return record
    line = {
        "seq": position.seq,
        "at": _ts(event),
        "type": event.type,
        "actor": f"{event.actor.kind}:{event.actor.id}",
        "event_id": event.event_id,
        "summary": summary(event),
    }
    r = replace(record, timeline=record.timeline + (line,))
    if event.family == "notification":
        row = {"seq": position.seq, "at": line["at"], "result": event.suffix, **event.data.model_dump(mode="json")}
        return replace(r, notifications=r.notifications + (row,))
    if event.family != "release":
        return r
    d: Any = event.data  # the suffix says which payload model it is; matching on a string cannot narrow it
    dump = d.model_dump(mode="json", by_alias=True)
    match event.suffix:
        case "requested":
            return replace(
                r,
                identity={
                    "release_id": r.release_id,
                    "requested_by": line["actor"],
                    "requested_at": line["at"],
                    "owner": d.owner,
                    "escalation": d.escalation,
                    "reason": d.reason,
                    "promoted_from": d.promoted_from,
                },
                target=dump["target"],
                pack=dump["pack"],
            )
        case "prepared":
            return replace(
                r,
                plan={k: dump[k] for k in ("stages", "skipped", "monitoring", "rollback_strategy", "rollback_targets")},
                checklist=tuple(dump["checklist"]),
            )
        case "rejected":
            return replace(
                r,
                checklist=r.checklist
                + tuple({"item": x["code"], "ok": False, "detail": x["message"]} for x in dump["reasons"]),
            )
        case "verified":
            return replace(
                r,
                gates=tuple(dump["gates"]),
                pack={**r.pack, **dump["pack"]},
                verification={
                    "result": "verified",
                    "reference_time": dump["reference_time"],
                    "signers": dump["signers"],
                },
            )
        case "verification_failed":
            return replace(
                r,
                gates=tuple(dump["gates"]),
                verification={
                    "result": "failed",
                    "gate": d.gate,
                    "code": d.code,
                    "message": d.message,
                    "reference_time": dump["reference_time"],
                },
            )
        case "activated" | "activation_failed" | "rolled_back":
            return replace(
                r,
                activations=r.activations
                + ({"seq": position.seq, "at": line["at"], "type": event.suffix, "batch": position.batch_id, **dump},),
            )
        case "monitoring_started":
            return replace(r, windows=r.windows + ({"stage": d.stage, "started": dump, "verdict": None},))
        case "monitoring_passed" | "monitoring_failed" | "monitoring_inconclusive":
            windows = list(r.windows)
            for i in range(len(windows) - 1, -1, -1):
                if windows[i]["stage"] == d.stage and windows[i]["verdict"] is None:
                    windows[i] = {**windows[i], "verdict": {"result": event.suffix.removeprefix("monitoring_"), **dump}}
                    break
            else:
                windows.append(
                    {
                        "stage": d.stage,
                        "started": None,
                        "verdict": {"result": event.suffix.removeprefix("monitoring_"), **dump},
                    }
                )
            return replace(r, windows=tuple(windows))
        case "expanded" | "promoted" | "rollback_started" | "paused" | "resumed" | "aborted" | "escalated":
            r = replace(
                r,
                decisions=r.decisions
                + ({"seq": position.seq, "at": line["at"], "decision": event.suffix, "by": line["actor"], **dump},),
            )
            incident = dump.get("incident")
            return replace(r, incidents=r.incidents + (incident,)) if incident else r
        case "annotated":
            incident = dump.get("incident")
            r = replace(
                r,
                decisions=r.decisions
                + ({"seq": position.seq, "at": line["at"], "decision": "annotated", "by": line["actor"], **dump},),
            )
            return replace(r, incidents=r.incidents + (incident,)) if incident else r
        case "closed":
            return replace(r, outcome={"outcome": d.outcome, "summary": d.summary, "at": line["at"]})
    return r


def evidence_of(release_id: str, entries: Iterable[tuple[Position, Event]]) -> EvidenceRecord:
    return reduce(lambda rec, pe: apply_evidence(rec, pe[0], pe[1]), entries, EvidenceRecord(release_id=release_id))
