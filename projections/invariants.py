"""Invariants an auditor checks while replaying the log. Pure.

Each check looks at the world *before* an entry is applied and the entry itself, so a
violation is reported at the sequence where it happened.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from events.model import Event, RollbackStarted, ScopeActivated, ScopePinned
from .pointer_chain import chain_break
from .position import Position
from .world import World, apply, apply_undecodable

POINTER_WRITERS = {"activator", "pinner"}
UNFINISHED_ENDINGS = {"rejected", "verification_failed", "rolled_back", "promoted"}


@dataclass(frozen=True)
class Violation:
    seq: int
    code: str
    message: str

    def line(self) -> str:
        return f"seq {self.seq}: {self.code}: {self.message}"


@dataclass(frozen=True)
class Audit:
    world: World = field(default_factory=World)
    violations: tuple[Violation, ...] = ()
    events: int = 0
    undecodable: int = 0


def _check(world: World, position: Position, event: Event) -> list[Violation]:
    out: list[Violation] = []
    seq = position.seq

    def v(code: str, message: str) -> None:
        out.append(Violation(seq, code, message))

    data = event.data
    if event.type == "scope.activated":
        assert isinstance(data, ScopeActivated)
        if position.batch_id is None:
            v("pointer_outside_batch", f"{position.subject} moved outside an atomic batch")
        if event.actor.kind != "service" or event.actor.id not in POINTER_WRITERS:
            v("pointer_by_wrong_writer", f"{position.subject} written by {event.actor.kind}:{event.actor.id}")
        release = world.release(data.release_id) if data.release_id else None
        if data.kind == "rollout":
            if release is None or release.verified is None:
                v("activation_without_verification", f"rollout of {data.pack.version} by {data.release_id} was never verified")
            elif release.verified.pack.digest != data.pack.digest:
                v("activation_of_other_digest", f"{data.release_id} verified {release.verified.pack.digest}, activated {data.pack.digest}")
        elif data.kind == "rollback":
            if release is None or release.rollback is None:
                v("rollback_without_decision", f"rollback pointer by {data.release_id} without rollback_started")
            else:
                target = release.rollback.targets.get(event.scope.cohort if event.scope else "")
                if target is None or target.digest != data.pack.digest:
                    v("rollback_to_other_target", f"{position.subject} rolled back to {data.pack.digest}, not the recorded target")
        elif data.kind == "pin" and event.scope is not None:
            scope = world.scope(event.scope.env, event.scope.channel, event.scope.cohort)
            if scope.pin is None or scope.pin.pack.digest != data.pack.digest:
                v("pin_switch_without_pin", f"{position.subject} switched to {data.pack.version} with no such pin")
    elif event.type == "scope.pinned":
        assert isinstance(data, ScopePinned)
        if not data.rationale.strip() or data.until <= event.occurred_at:
            v("pin_without_rationale_or_bound", f"{position.subject}: pins need a rationale and a future `until`")
    elif event.type == "release.rollback_started":
        assert isinstance(data, RollbackStarted)
        release = world.release(event.release_id or "")
        if not data.reason.strip():
            v("rollback_without_reason", f"{event.release_id}: rollback names no reason")
        missing = [c for c in (release.activated if release else ()) if c not in data.targets]
        if missing:
            v("rollback_without_target", f"{event.release_id}: no target recorded for {missing}")
    return out


def audit_entry(audit: Audit, position: Position, event: Event | None, subjects) -> Audit:
    """Check one log entry (None: it did not decode) against the world so far, then apply it."""
    if event is None:
        return replace(audit, world=apply_undecodable(audit.world, position, subjects), undecodable=audit.undecodable + 1,
                       violations=audit.violations + (Violation(position.seq, "undecodable", f"{position.subject} holds no valid event"),))
    found = _check(audit.world, position, event)
    broken = pointer_chain_violation(audit.world, position, event)
    if broken is not None:
        found.append(broken)
    return Audit(apply(audit.world, position, event), audit.violations + tuple(found), audit.events + 1, audit.undecodable)


SERVICE_ROLE = {"pinner": "activator"}  # the pinner runs inside the activator role


def signature_problem(keys, subject: str, event: Event, payload: bytes, headers) -> str | None:
    """Why this entry is not a genuine service append (None: it is, or it need not be one).

    Every pointer switch and every event claiming a service actor must be signed by a key
    trusted for its role; producers and operators sign nothing (yet): their authority is
    NATS permissions."""
    if event.actor.kind != "service" and event.type != "scope.activated":
        return None
    role = "activator" if event.type == "scope.activated" else SERVICE_ROLE.get(event.actor.id, event.actor.id)
    return keys.check(role, subject, payload, headers)


def signature_violation(keys, position: Position, event: Event | None, payload: bytes, headers) -> Violation | None:
    """An append by a service (and any pointer switch) must carry a valid signature of its role."""
    if event is None:
        return None  # reported as undecodable already
    problem = signature_problem(keys, position.subject, event, payload, headers)
    return Violation(position.seq, "unsigned_or_forged", f"{event.type} on {position.subject}: {problem}") if problem else None


def ignored_reason(world: World, keys, position: Position, event: Event, payload: bytes, headers) -> str | None:
    """Why a reader that trusts only signed, fresh state ignores this entry (None: it counts).

    - a pointer or service event no service key trusted for its role signed (with `keys`);
    - a pointer, however genuinely signed, that is not newer than its scope's last one or
      does not chain to it (a replay): the fold never lets it move the scope either."""
    if keys is not None:
        problem = signature_problem(keys, position.subject, event, payload, headers)
        if problem:
            return f"{event.type} not signed by a service key: {problem}"
    broken = pointer_chain_violation(world, position, event)
    return f"{event.type} ignored: {broken.code}: {broken.message}" if broken else None


def apply_signed(world: World, keys, position: Position, event: Event | None, payload: bytes, headers, subjects) -> tuple[World, str | None]:
    """One log entry folded as a reader that trusts only signed state does (keys None: signatures unchecked).

    An ignored entry (`ignored_reason`) moves its subject's sequence (the CAS values must
    match what is stored) and nothing else; the second value says why."""
    if event is None:
        return apply_undecodable(world, position, subjects), None
    why = ignored_reason(world, keys, position, event, payload, headers)
    if why is not None:
        return apply_undecodable(world, position, subjects, why), why
    return apply(world, position, event), None


def pointer_chain_violation(world: World, position: Position, event: Event) -> Violation | None:
    """A pointer that is not newer than its scope's last one, or does not name it as `prev`.

    Judged on the entry alone, batch or not: a genuinely signed old pointer replayed inside
    a one-message atomic batch breaks the chain exactly as a plain replay does."""
    if event.type != "scope.activated" or event.scope is None:
        return None
    assert isinstance(event.data, ScopeActivated)
    scope = world.scope(event.scope.env, event.scope.channel, event.scope.cohort)
    broken = chain_break(scope.chain_mark, event.data)
    if broken is None:
        return None
    code, why = broken
    return Violation(position.seq, code, f"{position.subject}: {event.data.pack.version}: {why}")


def audit_signed_entry(audit: Audit, keys, position: Position, event: Event | None, payload: bytes, headers, subjects) -> Audit:
    """`audit_entry` for an auditor with the service keys: an entry a service key did not sign
    is reported and folded as junk (its sequence moves, its content counts for nothing), so the
    audited state is the signed state the service itself acts on, and a forged pointer
    neither moves a scope nor makes the next genuine one look like a chain break."""
    violation = signature_violation(keys, position, event, payload, headers)
    if violation is None:
        return audit_entry(audit, position, event, subjects)
    return replace(audit, world=apply_undecodable(audit.world, position, subjects), events=audit.events + 1,
                   violations=audit.violations + (violation,))


def with_violation(audit: Audit, violation: Violation | None) -> Audit:
    return replace(audit, violations=audit.violations + (violation,)) if violation else audit


def finish(audit: Audit) -> Audit:
    """Checks that need the whole log: lifecycle anomalies and releases left unfinished."""
    found = []
    for release in sorted(audit.world.releases.values(), key=lambda r: r.last_seq):
        for anomaly in release.anomalies:
            found.append(Violation(release.last_seq, "illegal_transition", f"{release.release_id}: {anomaly}"))
        if release.phase in UNFINISHED_ENDINGS:
            found.append(Violation(release.last_seq, "not_closed", f"{release.release_id} ended {release.phase} but was never closed with an outcome"))
    return replace(audit, violations=audit.violations + tuple(found))

