"""Invariants an auditor checks while replaying the log. Pure.

Each check looks at the world *before* an entry is applied and the entry itself, so a
violation is reported at the sequence where it happened. The safety invariants of issue 13
(`SAFETY_CODES`, at the end) do the same; `check_lkg` also compares the world after the entry,
since last-known-good is what the fold made of it. A pointer and its release's record pair up
within their atomic batch, so that pairing is judged when the batch ends (`unpaired`), and each
side still reported at its own sequence.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from itertools import islice
from typing import Any, NamedTuple

from rpds import HashTrieMap

from events.canonical import StrictJSONError, loads_strict
from events.codec import DecodeError, decode_event, encode_event, scope_tuple
from events.model import (
    Activated,
    Closed,
    Comparison,
    Event,
    MonitoringVerdict,
    PackRef,
    Promoted,
    RollbackStarted,
    RolledBack,
    ScopeActivated,
    ScopePinned,
    ScopeUnpinned,
    Verified,
)
from events.service_signing import ServiceKeys, SignatureChecker
from events.subjects import Subjects

from .evolve import evolve
from .pointer_chain import chain_break
from .position import Position
from .releases import ReleaseState, is_override
from .world import World, apply, apply_undecodable, promotion_not_longer

Headers = Mapping[str, str] | None  # a log entry's NATS headers, as the reader got them
POINTER_WRITERS = {"activator", "pinner"}
UNFINISHED_ENDINGS = {"rejected", "verification_failed", "rolled_back", "promoted"}


@dataclass(frozen=True)
class Violation:
    seq: int
    code: str
    message: str

    def line(self) -> str:
        return f"seq {self.seq}: {self.code}: {self.message}"


@dataclass(frozen=True, slots=True)
class Audit:
    world: World = field(default_factory=World)
    violations: tuple[Violation, ...] = ()
    events: int = 0
    undecodable: int = 0
    safety: SafetyMemory = field(default_factory=lambda: SafetyMemory())
    # every event id stored so far -> the sequence it was first stored at (`duplicate_event_id`);
    # this state holds the first `ids_known` of them (`own_ids`)
    event_ids: dict[str, int] = field(default_factory=dict)
    ids_known: int = 0
    batch: OpenBatch | None = None  # the atomic batch being read, until it ends (`unpaired`)


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
                v(
                    "activation_without_verification",
                    f"rollout of {data.pack.version} by {data.release_id} was never verified",
                )
            elif release.verified.pack.digest != data.pack.digest:
                v(
                    "activation_of_other_digest",
                    f"{data.release_id} verified {release.verified.pack.digest}, activated {data.pack.digest}",
                )
        elif data.kind == "rollback":
            if release is None or release.rollback is None:
                v("rollback_without_decision", f"rollback pointer by {data.release_id} without rollback_started")
            else:
                target = release.rollback.targets.get(event.scope.cohort if event.scope else "")
                if target is None or target.digest != data.pack.digest:
                    v(
                        "rollback_to_other_target",
                        f"{position.subject} rolled back to {data.pack.digest}, not the recorded target",
                    )
        elif data.kind == "pin" and event.scope is not None:
            scope = world.scope(event.scope.env, event.scope.channel, event.scope.cohort)
            if scope.pin is None or scope.pin.pack.digest != data.pack.digest:
                v("pin_switch_without_pin", f"{position.subject} switched to {data.pack.version} with no such pin")
            elif scope.pinned_at(event.occurred_at) is None:
                # Judged at the pointer's own `occurred_at`: the writer's decision time, inside the
                # signed bytes, the instant the pinner must compare with (`pinned_at(now)`) and every
                # other time rule here uses. Not the server's stored time: a switch decided while the
                # pin held and stored a moment after its end is a race no writer can close.
                v(
                    "pin_switch_after_expiry",
                    f"{position.subject} switched to {data.pack.version} at {event.occurred_at.isoformat()}, "
                    f"after its pin ran out at {scope.pin.until.isoformat()}",
                )
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


def audit_entry(audit: Audit, position: Position, event: Event | None, subjects: Subjects) -> Audit:
    """Check one log entry (None: it did not decode) against the world so far, then apply it."""
    batch = audit.batch
    found: list[Violation] = []
    if batch is not None and (position.batch_id is None or position.batch_id != batch.batch_id):
        # an atomic batch is stored in consecutive sequences: the first entry outside it ends it
        found = unpaired(batch, audit.world)
        batch = None
    if event is None:
        found.append(Violation(position.seq, "undecodable", f"{position.subject} holds no valid event"))
        return evolve(
            audit,
            {
                "world": apply_undecodable(audit.world, position, subjects),
                "undecodable": audit.undecodable + 1,
                "violations": audit.violations + tuple(found),
                "batch": batch,
            },
        )
    world, memory, event_type = audit.world, audit.safety, event.type
    event_ids, ids_known = audit.event_ids, audit.ids_known
    if len(event_ids) != ids_known:
        event_ids = own_ids(audit)
    first = event_ids.get(event.event_id)
    if first is None:
        event_ids[event.event_id] = position.seq
        ids_known += 1
    else:
        found.append(
            Violation(
                position.seq, "duplicate_event_id", f"{event.type}: event id {event.event_id} was stored at seq {first}"
            )
        )
    # Each check is called only for the event types it looks at (`_CHECKED`, ...: the conditions
    # each one starts with); for any other entry it would return nothing. A replay's cost.
    if event_type in _CHECKED:
        found += _check(world, position, event)
    found += check_safety(world, position, event, memory)
    if event_type == "scope.activated":
        broken = pointer_chain_violation(world, position, event)
        if broken is not None:
            found.append(broken)
        found += pointer_record_problems(world, batch, position, event)
    if event_type in _PAIRED:
        batch = with_claims(batch, world, position, event)
    after = apply(world, position, event)
    if event_type in ("release.closed", "release.rollback_started") or event_type.startswith("scope."):
        found += check_lkg(memory, world, after, position, event)
    if event_type in _REMEMBERED:
        memory = remember(memory, world, after, event)
    return evolve(
        audit,
        {
            "world": after,
            "violations": audit.violations + tuple(found) if found else audit.violations,
            "events": audit.events + 1,
            "safety": memory,
            "event_ids": event_ids,
            "ids_known": ids_known,
            "batch": batch,
        },
    )


def own_ids(audit: Audit) -> dict[str, int]:
    """The event ids `audit` holds, in a dict of its own.

    `event_ids` is a plain dict that `audit_entry` appends to in place (a persistent map cost a
    replay 2 us an entry, a dict 0.1), so only the newest state of a dict may append to it: an
    older state folded again (a branch) first copies the ids it holds, the first `ids_known`
    inserted (a dict keeps insertion order). No state ever sees another's ids."""
    return dict(islice(audit.event_ids.items(), audit.ids_known))


_CHECKED = frozenset({"scope.activated", "scope.pinned", "release.rollback_started"})  # what `_check` judges
# what `remember` learns from
_REMEMBERED = frozenset(
    {
        "release.verified",
        "release.closed",
        "release.monitoring_passed",
        "release.rollback_started",
        "scope.unpinned",
        "scope.pinned",
    }
)
_PAIRED = frozenset({"scope.activated", "release.activated", "release.rolled_back"})  # what `with_claims` indexes


SERVICE_ROLE = {"pinner": "activator"}  # the pinner runs inside the activator role


def needs_signature(event: Event) -> bool:
    """Every pointer switch and every event claiming a service actor must be signed by a key
    trusted for its role; producers and operators sign nothing (yet): their authority is
    NATS permissions."""
    return event.actor.kind == "service" or event.type == "scope.activated"


def signature_problem(
    keys: SignatureChecker, subject: str, event: Event, payload: bytes, headers: Headers
) -> str | None:
    """Why this entry is not a genuine service append (None: it is, or it need not be one: `needs_signature`)."""
    if not needs_signature(event):
        return None
    role = "activator" if event.type == "scope.activated" else SERVICE_ROLE.get(event.actor.id, event.actor.id)
    return keys.check(role, subject, payload, headers)


def signature_violation(
    keys: SignatureChecker, position: Position, event: Event | None, payload: bytes, headers: Headers
) -> Violation | None:
    """An append by a service (and any pointer switch) must carry a valid signature of its role."""
    if event is None:
        return None  # reported as undecodable already
    problem = signature_problem(keys, position.subject, event, payload, headers)
    return (
        Violation(position.seq, "unsigned_or_forged", f"{event.type} on {position.subject}: {problem}")
        if problem
        else None
    )


def ignored_reason(
    world: World, keys: SignatureChecker | None, position: Position, event: Event, payload: bytes, headers: Headers
) -> str | None:
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


def apply_signed(
    world: World,
    keys: ServiceKeys | None,
    position: Position,
    event: Event | None,
    payload: bytes,
    headers: Headers,
    subjects: Subjects,
) -> tuple[World, str | None]:
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


def audit_signed_entry(
    audit: Audit,
    keys: SignatureChecker,
    position: Position,
    event: Event | None,
    payload: bytes,
    headers: Headers,
    subjects: Subjects,
) -> Audit:
    """`audit_entry` for an auditor with the service keys: an entry a service key did not sign
    is reported and folded as junk (its sequence moves, its content counts for nothing), so the
    audited state is the signed state the service itself acts on, and a forged pointer
    neither moves a scope nor makes the next genuine one look like a chain break."""
    violation = signature_violation(keys, position, event, payload, headers)
    if violation is None:
        return audit_entry(audit, position, event, subjects)
    return evolve(
        audit,
        {
            "world": apply_undecodable(audit.world, position, subjects),
            "events": audit.events + 1,
            "violations": audit.violations + (violation,),
        },
    )


def with_violation(audit: Audit, violation: Violation | None) -> Audit:
    return replace(audit, violations=audit.violations + (violation,)) if violation else audit


def finish(audit: Audit) -> Audit:
    """Checks that need the whole log: the last atomic batch's pairings, lifecycle anomalies and
    releases left unfinished."""
    found = unpaired(audit.batch, audit.world) if audit.batch is not None else []
    for release in sorted(audit.world.releases.values(), key=lambda r: r.last_seq):
        for anomaly in release.anomalies:
            found.append(Violation(release.last_seq, "illegal_transition", f"{release.release_id}: {anomaly}"))
        if release.phase in UNFINISHED_ENDINGS:
            found.append(
                Violation(
                    release.last_seq,
                    "not_closed",
                    f"{release.release_id} ended {release.phase} but was never closed with an outcome",
                )
            )
    return replace(audit, violations=audit.violations + tuple(found), batch=None)


# ==== a pointer and its release's record ===========================================================
# CONTRACT §4: the activator moves a scope's pointer only inside an atomic batch that also holds its
# release's `release.activated` (rollout) or `release.rolled_back` (rollback). The pointer is what
# runtimes run; the release event is what the evidence, the monitor and the promoter believe was
# exposed or restored. Neither may stand without the other, so each must find its partner in the
# same batch. The activator's group commit stores several releases' batches as ONE server batch
# (README, "Several activations in one atomic batch"): partners are found by (kind, release, scope),
# never by their place in the batch, and either may come first.

PairKey = tuple[str, str, str, str, str]  # (pointer kind, release id, env, channel, cohort)


class Claim(NamedTuple):
    """One side of a pairing: a pointer moved `key`'s scope to `pack`, or a release event says one did.
    (A tuple, worded only when a violation needs it: a replay builds one per pointer and per record.)"""

    seq: int
    event_type: str  # scope.activated, release.activated or release.rolled_back
    key: PairKey
    pack: PackRef | None  # None: a `rolled_back` naming a cohort without a target
    at: datetime  # the event's occurred_at (a pin in force then may hold a rolled-back cohort)


class OpenBatch(NamedTuple):
    """The pointers and release records of the atomic batch being read, judged when it ends
    (`unpaired`): at the first entry outside it, or at the end of the log (`finish`)."""

    batch_id: str | None  # None: an entry outside any batch, judged on its own
    pointers: tuple[Claim, ...] = ()
    records: tuple[Claim, ...] = ()


def _target_of(world: World, release_id: str) -> tuple[str, str]:
    release = world.release(release_id)
    if release is None or release.prepared is None:
        return "", ""  # no scope can pair with it: reported as unpaired
    return release.prepared.target.env, release.prepared.target.channel


def with_claims(batch: OpenBatch | None, world: World, position: Position, event: Event) -> OpenBatch | None:
    """`batch` with what this entry claims moved (a rollout or rollback pointer) or was moved (the
    cohorts a `release.activated` or `release.rolled_back` names); a pin's pointer pairs with nothing."""
    data, seq, at, event_type = event.data, position.seq, event.occurred_at, event.type
    pointers: tuple[Claim, ...] = ()
    records: tuple[Claim, ...] = ()
    if isinstance(data, ScopeActivated):
        if data.kind == "pin" or event.scope is None:
            return batch
        scope = event.scope
        key = (data.kind, data.release_id or "", scope.env, scope.channel, scope.cohort)
        pointers = (Claim(seq, event_type, key, data.pack, at),)
    elif isinstance(data, Activated) and event.release_id:
        rid = event.release_id
        env, channel = _target_of(world, rid)
        records = tuple(Claim(seq, event_type, (data.kind, rid, env, channel, c), data.pack, at) for c in data.cohorts)
    elif isinstance(data, RolledBack) and event.release_id:
        rid, targets = event.release_id, data.targets
        env, channel = _target_of(world, rid)
        records = tuple(
            Claim(seq, event_type, ("rollback", rid, env, channel, c), targets.get(c), at) for c in data.cohorts
        )
    if not pointers and not records:
        return batch
    if batch is None:
        return OpenBatch(position.batch_id, pointers, records)
    return OpenBatch(batch.batch_id, batch.pointers + pointers, batch.records + records)


def _already_there(world: World, record: Claim) -> bool:
    """A rolled-back cohort the activator did not move: already on its target, or on the pin in force
    (what the pinner switched it to; a rollback never fights a pin)."""
    scope = world.scope(*record.key[2:])
    active = scope.active_pack
    if active is None or record.pack is None:
        return False
    pin = scope.pinned_at(record.at)
    return active.digest == record.pack.digest or (pin is not None and pin.pack.digest == active.digest)


def unpaired(batch: OpenBatch, world: World) -> list[Violation]:
    """A finished batch's pointers and release records that have no partner in it.

    `world`: after the batch. A `rolled_back` cohort with no pointer in the batch is fine when its
    scope already runs the target (the activator moves nothing then: `decide_rollback`)."""
    moved: dict[PairKey, list[Claim]] = {}
    for pointer in batch.pointers:
        moved.setdefault(pointer.key, []).append(pointer)
    paired: set[int] = set()
    out = []
    for record in batch.records:
        pointers = moved.get(record.key, [])
        digest = record.pack.digest if record.pack is not None else None
        partner = next((p for p in pointers if p.pack is not None and p.pack.digest == digest), None)
        if partner is not None:
            paired.add(partner.seq)
            continue
        if not pointers and record.key[0] == "rollback" and _already_there(world, record):
            continue
        _, rid, env, channel, cohort = record.key
        running = world.scope(env, channel, cohort).active_pack
        says = "runs" if record.event_type == "release.activated" else "is back on"
        claimed = record.pack.short() if record.pack else "(no target)"
        out.append(
            Violation(
                record.seq,
                "release_record_without_pointer",
                f"{rid}: {record.event_type} says {cohort} {says} {claimed}, but no pointer of {rid} in its "
                f"atomic batch moved {env or '?'}/{channel or '?'}/{cohort} there "
                f"(it runs {running.short() if running else 'nothing'})",
            )
        )
    for pointer in batch.pointers:
        if pointer.seq not in paired:
            kind, rid, env, channel, cohort = pointer.key
            partner_type = "release.activated" if kind == "rollout" else "release.rolled_back"
            pack = pointer.pack.short() if pointer.pack else "?"
            out.append(
                Violation(
                    pointer.seq,
                    "pointer_without_release_record",
                    f"{env}/{channel}/{cohort}: {kind} to {pack} by {rid}: its atomic batch holds no "
                    f"{partner_type} of {rid} naming {cohort} with that pack",
                )
            )
    return sorted(out, key=lambda v: v.seq)


def pointer_record_problems(world: World, batch: OpenBatch | None, position: Position, event: Event) -> list[Violation]:
    """A rollout or rollback pointer must be one its release may write now: on a scope of its target
    and plan (a rollout: a cohort of the stage it activates; a rollback: a cohort it activated), while
    it activates a stage (`verified`, `expanding`) or rolls back (`rolling_back`). A pointer naming a
    release already rolled back or closed puts back a pack nothing vouches for any more.

    Either order within the atomic batch is the contract's: if the release's record came first in
    `batch`, the fold has already moved the release to `activated` / `rolled_back`."""
    data = event.data
    if not isinstance(data, ScopeActivated) or data.kind == "pin" or event.scope is None or not data.release_id:
        return []
    release = world.release(data.release_id)
    if release is None or release.prepared is None:
        return []  # reported already: never verified, or no rollback decision
    scope, target, phase, kind = event.scope, release.prepared.target, release.phase, data.kind

    def v(code: str, why: str) -> list[Violation]:  # (worded only when needed: a replay's cost)
        where = f"{position.subject}: {kind} to {data.pack.version} by {release.release_id}"
        return [Violation(position.seq, code, f"{where}, {why}")]

    def recorded() -> bool:  # the release's record came first in this batch
        return batch is not None and any(r.key[0] == kind and r.key[1] == release.release_id for r in batch.records)

    if scope.env != target.env or scope.channel != target.channel:
        return v("pointer_outside_release_plan", f"a release for {target.env}/{target.channel}")
    if kind == "rollback":
        if phase != "rolling_back" and not (phase == "rolled_back" and recorded()):
            return v("pointer_out_of_phase", f"while it is {phase}: a rollback moves only while rolling back")
        if scope.cohort not in release.activated:
            return v("pointer_outside_release_plan", f"which never activated {scope.cohort}")
        return []
    if phase == "verified":
        stage = 0
    elif phase == "expanding":
        stage = release.stage + 1
    elif phase == "activated" and recorded():
        stage = release.stage
    else:
        return v(
            "pointer_out_of_phase",
            f"while it is {phase}: a rollout moves only while its release activates a stage (verified or expanding)",
        )
    stages = release.prepared.stages
    if stage >= len(stages) or scope.cohort not in stages[stage]:
        return v("pointer_outside_release_plan", f"but {scope.cohort} is not in stage {stage + 1} of its plan")
    return []


# ==== safety invariants (issue 13) ===============================================================
# The product's promise, checked on the log alone: a pack reaches a scope only after it earned it,
# last-known-good is only a pack that passed its windows on data, and a rollback lands on the
# chosen strategy's target or holds. The model-based test (tests/unit/test_lifecycle_model.py)
# runs these same functions after every step of random lifecycles.

SAFETY_CODES = (
    "pointer_gate_not_passed",  # a rollout pointer for a release whose `verified` lists a failed gate
    "pointer_untrusted",  # a pointer to a pack none of whose (threshold of) signers the logged trust root still holds
    "lkg_not_earned",  # last-known-good set to a pack that never passed its windows on data
    "lkg_pulled",  # last-known-good, or a rollback pointer, naming a pack whose release was rolled back there
    "pass_without_data",  # monitoring_passed (not an override) with no samples, a threshold without a figure,
    # for a cohort the channel no longer has, or while the channel's newest configuration does not decode
    # (judged against the configuration the verdict names; a verdict naming none: where the release moves on)
    "pass_despite_refusal",  # monitoring_passed while a runtime reported a failed activation in the window
    "pass_despite_breach",  # monitoring_passed with a comparison that breaches its threshold
    "success_without_data",  # closed `success` while a stage passed only on an operator's word, or never
    "aborted_release_advanced",  # an aborted release moved forward (window, stage, promotion, success)
    "rollback_off_strategy",  # a rollback target that is not the chosen strategy's (pin in force, LKG / pinned prior)
    "held_moved_without_operator",  # a held release (inconclusive, escalated) moved on by anything but an operator
    "paused_release_advanced",  # a new stage or a promotion while paused
    "promotion_not_watched_longer",  # promoted to a channel whose window is no longer than its source's
    "first_run_past_first_stage",  # a pack's first rollout pointer in a stage after one that exposed nothing
    "promotion_unrecorded",  # a rollout pointer of a release claiming a promotion its source's log does not record
    "stale_pass_carried_on",  # a release moved on (expanded, promoted, closed) by the service from a pass whose
    # channel configuration changed between the monitor's judgement and the pass's append
)
_ADVANCING = {"expanded", "promoted", "activated", "monitoring_started", "monitoring_passed"}
# What a service may still write on a held release: a note, or a move towards safety (a failure
# seen late, a rollback, an escalation). Anything else moves it on, and only an operator may.
_FAIL_CLOSED_FROM_HELD = {"annotated", "monitoring_failed", "rollback_started", "escalated"}


@dataclass(frozen=True, slots=True)
class SafetyMemory:
    """What the safety checks remember beyond the world: packs each channel may call known-good,
    and who signed each verified pack (an index, so a pointer check never scans every release)."""

    earned: frozenset[tuple[str, str, str]] = frozenset()  # (env, channel, digest) that passed every window on data
    # digest -> the keyids its verifications recorded
    signers: HashTrieMap[str, frozenset[str]] = field(default_factory=HashTrieMap)
    # release id -> why its newest pass was stale when stored (`stale_when_stored`), until its next verdict
    stale_passes: HashTrieMap[str, str] = field(default_factory=HashTrieMap)
    # (env, channel, cohort, digest) of pins the pinner refused (the pack failed a gate), until a release
    # verifies that digest again: no rollback may land there (the fold no longer calls it the pinned prior)
    refused: frozenset[tuple[str, str, str, str]] = frozenset()
    # (env, channel, digest) -> the cohorts where a release of that pack was rolled back, until a release earns it
    # again in the channel (the whole entry goes) or an operator pins it in a cohort: neither last-known-good there
    # nor a rollback's landing. Keyed so that neither costs a pass over every rollback of the log's history (a
    # flat set filtered at each `success` took 12 ms a close at 50,000 entries: quadratic over a replay)
    pulled: HashTrieMap[tuple[str, str, str], frozenset[str]] = field(default_factory=HashTrieMap)


def _breaches(c: Comparison) -> bool:
    if not c.ok or c.value is None or c.threshold is None:
        return not c.ok
    if not (math.isfinite(c.value) and math.isfinite(c.threshold)):
        return True
    if c.op == "<=":
        return c.value > c.threshold
    if c.op == ">=":
        return c.value < c.threshold
    return c.value > c.threshold  # none_new: the count of new classes against 0


def verdict_problems(release: ReleaseState | None, verdict: MonitoringVerdict) -> list[tuple[str, str]]:
    """Why a (non-override) `monitoring_passed` is not a pass: missing data, a refusal, a breach."""
    if is_override(verdict):
        return []
    out = []
    exposed = release is None or release.exposed(verdict.stage)
    if exposed and verdict.samples <= 0:
        out.append(("pass_without_data", f"stage {verdict.stage + 1} passed on {verdict.samples} sample(s)"))
    missing = sorted({c.metric for c in verdict.comparisons if c.value is None and c.threshold is not None})
    if missing:
        out.append(("pass_without_data", f"stage {verdict.stage + 1} passed with no figure for {', '.join(missing)}"))
    rate = verdict.figures.get("activation_success_rate")
    refused = verdict.figures.get("activation_errors") or []
    if (isinstance(rate, (int, float)) and rate < 1.0) or refused:
        out.append(
            (
                "pass_despite_refusal",
                f"stage {verdict.stage + 1} passed although a runtime refused the pack"
                + (f" ({', '.join(map(str, refused))})" if refused else ""),
            )
        )
    breached = sorted({c.metric for c in verdict.comparisons if c.value is not None and _breaches(c)})
    if breached:
        out.append(
            (
                "pass_despite_breach",
                f"stage {verdict.stage + 1} passed although {', '.join(breached)} breach(es) its threshold",
            )
        )
    return out


def stale_when_stored(world: World, release: ReleaseState, verdict: MonitoringVerdict) -> str | None:
    """Why a pass, stored on `world`, was judged against a configuration of its channel that is not the newest
    (a channel change between the monitor's judgement and its append); None when it was not, or names none."""
    if verdict.channel_seq is None or release.prepared is None or is_override(verdict):
        return None
    target = release.prepared.target
    newest = world.channel_seq(target.env, target.channel)
    if newest == verdict.channel_seq:
        return None
    return (
        f"stage {verdict.stage + 1} passed against {target.env}/{target.channel}'s configuration at seq "
        f"{verdict.channel_seq}, stored after its change at seq {newest}"
    )


def cohorts_gone(world: World, release: ReleaseState, verdict: MonitoringVerdict) -> list[tuple[str, str]]:
    """A (non-override) pass of a stage whose switched cohorts the channel's configuration, as logged before
    `world`'s position, no longer names: no runtime is in them, so no data speaks for them; or while that
    configuration's newest entry does not decode, so which cohorts it has is unknown (session 24). Checked at the
    pass when it names the entry it was judged against and that is still the newest (the monitor's own
    judgement); a pass naming none, where the release moves on from it (session 25)."""
    if is_override(verdict) or release.prepared is None or not 0 <= verdict.stage < len(release.stages):
        return []
    target = release.prepared.target
    where = f"{target.env}/{target.channel}"
    unreadable = world.channel_problem(target.env, target.channel)
    if unreadable is not None:  # which cohorts the channel has is unknown: never the older configuration's
        return [("pass_without_data", f"stage {verdict.stage + 1} passed while {where}'s {unreadable.describe()}")]
    configured = set(world.channel_config(target.env, target.channel).cohort_names)
    gone = [c for c in release.stages[verdict.stage] if c in release.activated and c not in configured]
    if not gone:
        return []
    return [
        ("pass_without_data", f"stage {verdict.stage + 1} passed for {', '.join(gone)}, which {where} no longer has")
    ]


def strategy_targets(world: World, release: ReleaseState, cohort: str, at: datetime) -> set[str | None]:
    """Digests a rollback of `cohort` may land on: the pin in force, else the chosen strategy's target."""
    assert release.prepared is not None
    env, channel = release.prepared.target.env, release.prepared.target.channel
    scope = world.scope(env, channel, cohort)
    recorded = release.prepared.rollback_targets.get(cohort)
    allowed: set[str | None] = {recorded.digest if recorded else None}
    pin = scope.pinned_at(at)
    if pin is not None:
        allowed.add(pin.pack.digest)
    strategy = release.prepared.rollback_strategy
    if strategy == "pinned" and scope.last_pin is not None:
        allowed.add(scope.last_pin.pack.digest)
    elif (
        strategy == "lkg"
        and scope.lkg is not None
        and (release.pack is None or scope.lkg.digest != release.pack.digest)
    ):
        allowed.add(scope.lkg.digest)
    return allowed


def untrusted(world: World, memory: SafetyMemory, digest: str, evidence: list[str] | None = None) -> str | None:
    """Why the last trust root in the log no longer vouches for `digest` (None: it does, or nothing to say).

    `evidence`: the signers a pointer itself records (verified under the root in force when it
    was written); without it, the signers its verifications recorded."""
    if not world.trust_rotations:
        return None
    signers = frozenset(evidence) if evidence is not None else memory.signers.get(digest, frozenset())
    root = world.trust_rotations[-1][1]
    signed = root.get("signed") if isinstance(root, dict) else None
    if not signers or not isinstance(signed, dict) or not isinstance(signed.get("keys"), dict):
        return None
    raw_threshold = signed.get("threshold")
    threshold = raw_threshold if isinstance(raw_threshold, int) else 1
    still = signers & set(signed["keys"])
    if len(still) >= threshold:
        return None
    return (
        f"root v{signed.get('version')} holds {len(still)} of its threshold {threshold} "
        f"among the signers {sorted(signers)}"
    )


def check_safety(world: World, position: Position, event: Event, memory: SafetyMemory | None = None) -> list[Violation]:
    """The safety invariants an entry is judged by against the world before it (see SAFETY_CODES)."""
    out: list[Violation] = []

    def v(code: str, message: str) -> None:
        out.append(Violation(position.seq, code, message))

    data = event.data
    if event.type == "scope.activated":
        assert isinstance(data, ScopeActivated)
        release = world.release(data.release_id) if data.release_id else None
        if data.kind == "rollout" and release is not None:
            if release.verified is not None and not all(g.ok for g in release.verified.gates):
                v(
                    "pointer_gate_not_passed",
                    f"{position.subject}: {data.release_id}'s verification lists a failed gate",
                )
            if release.aborted:
                v(
                    "aborted_release_advanced",
                    f"{position.subject}: {data.release_id} was aborted, yet switched a scope to its pack",
                )
            if release.paused:
                v(
                    "paused_release_advanced",
                    f"{position.subject}: {data.release_id} is paused, yet switched a scope to its pack",
                )
            # (a release in flight: one read back from its own subjects after it closed carries no mark, and a
            # rollout pointer of a closed release is out of phase anyway)
            claimed = release.requested.promoted_from if release.requested else None
            if claimed is not None and not release.closed and release.promotion_confirmed_by != claimed:
                v(
                    "promotion_unrecorded",
                    f"{position.subject}: {data.release_id} says it was promoted from {claimed}, "
                    f"but no `promoted` event of {claimed} names it",
                )
            if not release.activated and release.stage >= 0:
                v(
                    "first_run_past_first_stage",
                    f"{position.subject}: {data.release_id}'s first switch comes after {release.stage + 1} "
                    "stage(s) that exposed nothing (every cohort pinned): no smaller scope ran the pack",
                )
        why = untrusted(world, memory or SafetyMemory(), data.pack.digest, data.signers)
        if why:
            v("pointer_untrusted", f"{position.subject} switched to {data.pack.version}: {why}")
        return out
    if event.family != "release" or not event.release_id:
        return out
    release = world.release(event.release_id)
    if release is None:
        return out
    suffix = event.suffix
    if release.phase == "held" and event.actor.kind != "operator" and suffix not in _FAIL_CLOSED_FROM_HELD:
        v(
            "held_moved_without_operator",
            f"{event.release_id} was held ({release.failure or 'waiting'}), "
            f"then {event.actor.kind}:{event.actor.id} wrote {suffix}",
        )
    if release.aborted and (
        suffix in _ADVANCING
        or (suffix == "closed" and isinstance(data, Closed) and data.outcome in ("success", "promoted_by_override"))
    ):
        v(
            "aborted_release_advanced",
            f"{event.release_id} was aborted, then {suffix}" + (f" {data.outcome}" if isinstance(data, Closed) else ""),
        )
    if release.paused and suffix in ("expanded", "promoted"):
        v("paused_release_advanced", f"{event.release_id} is paused, then {suffix}")
    if release.phase == "passed" and release.verdicts and event.actor.kind != "operator":
        # moved on (expanded, promoted, closed) from a pass that was stale when stored: the monitor's append is
        # not fenced against a channel change, so such a pass may be logged (a race); what must not follow is
        # the release carried on by it (the promoter's `stale_pass` holds it)
        kind, verdict = release.verdicts[-1]
        if kind == "monitoring_passed" and suffix in ("expanded", "promoted", "closed"):
            if verdict.channel_seq is None:  # a verdict naming no configuration: the channel where it moves on
                for code, message in cohorts_gone(world, release, verdict):
                    v(code, f"{event.release_id} {suffix} after {message}")
            else:
                stale = (memory or SafetyMemory()).stale_passes.get(event.release_id)
                if stale is not None:
                    v("stale_pass_carried_on", f"{event.release_id} {suffix} after {stale}")
    if suffix == "promoted" and isinstance(data, Promoted) and release.prepared is not None:
        where = release.prepared.target
        shorter = promotion_not_longer(world, where.env, where.channel, data.to_channel)
        if shorter:
            v("promotion_not_watched_longer", f"{event.release_id} promoted to {data.to_channel}: {shorter}")
    if suffix == "monitoring_passed" and isinstance(data, MonitoringVerdict):
        # a pass is judged against the configuration it names; one stored after the channel changed is a race
        # no message fences (not the monitor's judgement): checked where the release moves on from it
        found = verdict_problems(release, data)
        if data.channel_seq is not None and stale_when_stored(world, release, data) is None:
            found += cohorts_gone(world, release, data)  # the monitor's own judgement: checked here
        for code, message in found:
            v(code, f"{event.release_id}: {message}")
    elif suffix == "closed" and isinstance(data, Closed) and data.outcome == "success":
        unearned = [i + 1 for i in range(len(release.stages)) if i not in release.stages_passed_on_data]
        if unearned or not release.stages:
            v(
                "success_without_data",
                f"{event.release_id} closed success, but stage(s) {unearned} did not pass a window on data",
            )
    elif suffix == "rollback_started" and isinstance(data, RollbackStarted) and release.prepared is not None:
        where = release.prepared.target
        for cohort, target in sorted(data.targets.items()):
            allowed = strategy_targets(world, release, cohort, event.occurred_at)
            if target is not None and target.digest not in allowed:
                v(
                    "rollback_off_strategy",
                    f"{event.release_id}: {cohort} would roll back to {target.version}, not its "
                    f"{release.prepared.rollback_strategy} target or the pin in force",
                )
            elif (
                target is not None
                and memory is not None
                and release.prepared.rollback_strategy == "pinned"  # the pinned prior it named (an LKG earned it)
                and (where.env, where.channel, cohort, target.digest) in memory.refused
            ):
                v(
                    "rollback_off_strategy",
                    f"{event.release_id}: {cohort} would roll back to {target.version}, whose pin there was refused "
                    "(the pack failed a gate) and which no release has verified since",
                )
    return out


def _lkg_changes(before: World, after: World, event: Event) -> list[tuple[tuple[str, str, str], PackRef]]:
    """Scopes whose last-known-good the entry changed (only the scopes it can touch are looked at)."""
    if event.scope is not None and event.family == "scope":
        keys = [(event.scope.env, event.scope.channel, event.scope.cohort)]
    elif event.type == "release.closed" and event.release_id:
        release = after.release(event.release_id)
        if release is None or release.prepared is None:
            return []
        keys = [(release.prepared.target.env, release.prepared.target.channel, c) for c in release.activated]
    else:
        return []
    out = []
    for key in keys:
        old, new = before.scope(*key).lkg, after.scope(*key).lkg
        if new is not None and (old is None or old.digest != new.digest):
            out.append((key, new))
    return out


def check_lkg(memory: SafetyMemory, before: World, after: World, position: Position, event: Event) -> list[Violation]:
    """Last-known-good only ever a pack that passed every window on its own data,
    or a pin/earned pack a rollback restored; and never the pack a rollback moved the scope off."""
    out = [Violation(position.seq, "lkg_pulled", why) for why in _pulled(memory, before, after, event)]
    for key, pack in _lkg_changes(before, after, event):
        env, channel, cohort = key
        if event.type == "release.closed":
            release = after.release(event.release_id or "")
            ok = release is not None and release.passed_on_data
        else:
            last_pin = before.scope(*key).last_pin
            ok = (env, channel, pack.digest) in memory.earned or (
                last_pin is not None and last_pin.pack.digest == pack.digest
            )
        if not ok:
            out.append(
                Violation(
                    position.seq,
                    "lkg_not_earned",
                    f"{env}/{channel}/{cohort}: {pack.version} became last-known-good "
                    "without passing its windows on data",
                )
            )
    return out


def _pulled(memory: SafetyMemory, before: World, after: World, event: Event) -> list[str]:
    """Where the entry leaves a pulled pack known good or lands a rollback on it.

    A release rolled back in a cohort is no longer known to run well there (an operator pulled it after it
    closed `success`, say for tenant impact, or it failed): its pack must not stay or become that cohort's
    last-known-good, nor be where a later rollback lands, until a release earns it again in the channel or an
    operator pins it there. (Stated apart from the fold's `pull` on purpose: a check must not share the code it
    checks.)"""
    out = []
    if event.type == "release.rollback_started":
        rolled = _rolled_back(after, event)
        if rolled is None:
            return []
        (env, channel, pack), cohorts = rolled
        for cohort in cohorts:
            lkg = after.scope(env, channel, cohort).lkg
            if lkg is not None and lkg.digest == pack.digest:
                out.append(
                    f"{env}/{channel}/{cohort}: {event.release_id} is rolled back there, "
                    f"yet its {pack.version} is still the last-known-good"
                )
        return out
    if event.type != "release.closed":  # (closing `success` earns a pack again: `lkg_not_earned` checks the data)
        for key, pack in _lkg_changes(before, after, event):
            if _is_pulled(memory, key, pack.digest):
                out.append(
                    f"{'/'.join(key)}: {pack.version} became last-known-good after a release of it was rolled back"
                )
    data = event.data
    if event.type == "scope.activated" and isinstance(data, ScopeActivated) and data.kind == "rollback":
        assert event.scope is not None
        key = (event.scope.env, event.scope.channel, event.scope.cohort)
        if _is_pulled(memory, key, data.pack.digest) and after.scope(*key).active is data:
            out.append(
                f"{'/'.join(key)}: a rollback of {data.release_id} landed on {data.pack.version}, "
                "a release of which was rolled back there since"
            )
    return out


def _rolled_back(after: World, event: Event) -> tuple[tuple[str, str, PackRef], tuple[str, ...]] | None:
    """For a `rollback_started`: ((env, channel, the release's pack), the cohorts it switched); None if unknown."""
    release = after.release(event.release_id) if event.release_id else None
    pack = release.pack if release is not None else None
    if release is None or pack is None or release.prepared is None:
        return None
    return (release.prepared.target.env, release.prepared.target.channel, pack), tuple(release.activated)


def _is_pulled(memory: SafetyMemory, scope: tuple[str, str, str], digest: str) -> bool:
    env, channel, cohort = scope
    return cohort in memory.pulled.get((env, channel, digest), ())


def remember(memory: SafetyMemory, before: World, after: World, event: Event) -> SafetyMemory:
    """A release that closed having passed every window on data earns its pack in its channel;
    a verification records who signed its pack; a pass, whether it was stale when stored (`stale_passes`).

    Only a release that exposed its pack somewhere: one whose every stage passed with nothing
    activated (every cohort pinned) never ran it, so no sample judged it; a later rollback to it
    is then not a return to a known-good pack (`lkg_not_earned`)."""
    if event.type == "release.monitoring_passed" and isinstance(event.data, MonitoringVerdict) and event.release_id:
        release = before.release(event.release_id)
        stale = stale_when_stored(before, release, event.data) if release is not None else None
        if stale is None:
            return evolve(memory, {"stale_passes": memory.stale_passes.discard(event.release_id)})
        return evolve(memory, {"stale_passes": memory.stale_passes.insert(event.release_id, stale)})
    if event.type == "release.rollback_started":
        rolled = _rolled_back(after, event)
        if rolled is None:
            return memory
        (env, channel, pack), switched = rolled
        key = (env, channel, pack.digest)
        cohorts = memory.pulled.get(key, frozenset()) | frozenset(switched)
        return evolve(memory, {"pulled": memory.pulled.insert(key, cohorts)})
    if event.type == "scope.pinned" and isinstance(event.data, ScopePinned) and event.scope is not None:
        key = (event.scope.env, event.scope.channel, event.data.pack.digest)
        cohorts = memory.pulled.get(key, frozenset())
        if event.scope.cohort not in cohorts:
            return memory
        left = cohorts - {event.scope.cohort}
        return evolve(memory, {"pulled": memory.pulled.insert(key, left) if left else memory.pulled.discard(key)})
    if event.type == "scope.unpinned" and isinstance(event.data, ScopeUnpinned) and event.scope is not None:
        if event.data.reason != "refused" or event.data.pack is None:
            return memory
        where = (event.scope.env, event.scope.channel, event.scope.cohort, event.data.pack.digest)
        return evolve(memory, {"refused": memory.refused | {where}})
    if event.type == "release.verified" and isinstance(event.data, Verified):
        digest = event.data.pack.digest
        known = memory.signers.get(digest, frozenset())
        changes: dict[str, Any] = {"signers": memory.signers.insert(digest, known | frozenset(event.data.signers))}
        if any(r[3] == digest for r in memory.refused):  # its bytes passed every gate again
            changes["refused"] = frozenset(r for r in memory.refused if r[3] != digest)
        return evolve(memory, changes)
    if event.type != "release.closed" or not event.release_id:
        return memory
    release = after.release(event.release_id)
    if (
        release is None
        or release.prepared is None
        or release.verified is None
        or not release.passed_on_data
        or not release.activated
        or release.aborted
    ):
        return memory
    key = (release.prepared.target.env, release.prepared.target.channel, release.verified.pack.digest)
    # earned again on data: known good in the channel once more
    pulled = memory.pulled.discard(key) if key in memory.pulled else memory.pulled
    return replace(memory, earned=memory.earned | {key}, pulled=pulled)


def contract_problem(event: Event, subjects: Subjects | None = None) -> str | None:
    """Why `event`, as the service would write it, is not valid contract JSON (None: it is).

    It must encode, parse as strict JSON (no NaN/Infinity), decode on its own subject, and
    decode to the same event.
    """
    subjects = subjects or Subjects()
    try:
        raw = encode_event(event)
    except (ValueError, TypeError, OverflowError) as exc:
        return f"does not encode: {exc}"
    try:
        loads_strict(raw, allow_floats=True)
        back = decode_event(raw, subjects.expected_subject(event.type, event.release_id, scope_tuple(event)), subjects)
    except (StrictJSONError, DecodeError, ValueError) as exc:
        return f"not valid contract JSON: {exc}"
    if back.model_dump(mode="json") != event.model_dump(mode="json"):
        return "does not decode to the event written"
    return None
