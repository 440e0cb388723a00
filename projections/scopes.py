"""Per scope: the active pack (the pointer), since when, last-known-good and the pin.

Last-known-good is the pack a scope ran when a release that covered it closed
with outcome `success` (monitoring passed for it), or the pinned pack a rollback
restored: it is what a deterministic rollback goes back to. A rollback that moves a
scope off its own release's pack while that is the last-known-good (an operator's
`kxr release rollback` of a release that closed `success`, say for tenant impact) takes
that name from the pack: it becomes the one before it if the rollback landed there, the
pin if it landed on the pin, else none (a pack pulled from a scope is no place for the
next failed release to go back to).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from events.model import Event, PackRef, ScopeActivated, ScopeFlagged, ScopePinned, ScopeUnpinned

from .evolve import evolve
from .pointer_chain import ChainMark, advance, chain_break

ScopeKey = tuple[str, str, str]  # env, channel, cohort


@dataclass(frozen=True, slots=True)
class KnownGood:
    """A last-known-good as the scope recorded it: the pack, its manifest digest, the release that earned it."""

    pack: PackRef
    manifest: str | None = None
    release_id: str | None = None


@dataclass(frozen=True, slots=True)
class ScopeState:
    key: ScopeKey
    active: ScopeActivated | None = None
    active_seq: int = 0  # last sequence on kx.scope.<key>.activated: the CAS value for the activator
    active_since: datetime | None = None
    active_batch: str | None = None
    lkg: PackRef | None = None
    lkg_manifest: str | None = None
    lkg_release: str | None = None
    # the last-known-good before `lkg` (a newer one superseded it, not a rollback): what `lkg` goes back to if
    # a rollback moves the scope off `lkg` onto it
    lkg_prior: KnownGood | None = None
    pin: ScopePinned | None = None  # the pin in force (until `until`), None once unpinned
    last_pin: ScopePinned | None = None  # the most recent pin, even if expired or lifted: "pinned prior"
    # the pin before `last_pin`: what "pinned prior" names again if `last_pin` is refused (its pack failed
    # verification: never a rollback target, never last-known-good)
    pin_before: ScopePinned | None = None
    pin_seq: int = 0  # sequence of the last pinned/unpinned event
    pin_event_id: str | None = None
    ever_active: bool = False
    # The guard's flag on the active pack (a gate it no longer passes); cleared when the pointer moves.
    flag: ScopeFlagged | None = None
    flag_seq: int = 0  # sequence of the last flagged event (part of the scope's CAS value)
    # the pointer chain (projections/pointer_chain.py): the last pointer's generation (None
    # while the scope has only pre-chain pointers) and the digest of its exact stored bytes
    # (None when the fold was not given the bytes)
    generation: int | None = None
    pointer_digest: str | None = None

    @property
    def last_seq(self) -> int:
        """Last sequence on any of the scope's subjects: the CAS value for pin, unpin and flag."""
        return max(self.active_seq, self.pin_seq, self.flag_seq)

    @property
    def active_pack(self) -> PackRef | None:
        return self.active.pack if self.active else None

    @property
    def chain_mark(self) -> ChainMark | None:
        """The last pointer as the chain knows it; None if the scope never had one."""
        return ChainMark(self.generation, self.pointer_digest) if self.active is not None else None

    def pinned_at(self, now: datetime) -> ScopePinned | None:
        return self.pin if self.pin is not None and self.pin.until > now else None


def apply_scope_event(
    state: ScopeState, seq: int, event: Event, batch_id: str | None, digest: str | None = None
) -> ScopeState:
    """`digest`: of the entry's exact stored bytes (Position.digest), the link a next pointer names."""
    data = event.data
    # (evolve: dataclasses.replace without its __init__, one copy per event: see projections/evolve.py)
    match event.suffix:
        case "activated":
            assert isinstance(data, ScopeActivated)
            mark = state.chain_mark
            if chain_break(mark, data) is not None:
                # a stale (replayed) or forked pointer is not the scope's state: only the subject's
                # sequence moves (the CAS value must match what is stored); the audit flags it
                return evolve(state, {"active_seq": seq})
            advanced = advance(mark, data, digest)
            changes = {
                "active": data,
                "active_seq": seq,
                "active_since": event.occurred_at,
                "active_batch": batch_id,
                "ever_active": True,
                "flag": None,  # a flag is about the pack the pointer named
                "generation": advanced.generation,
                "pointer_digest": advanced.digest,
            }
            if data.kind == "rollback":
                changes.update(_known_good_after_rollback(state, data))
            return evolve(state, changes)
        case "pinned":
            assert isinstance(data, ScopePinned)
            changes = {"pin": data, "last_pin": data, "pin_before": state.last_pin, "pin_seq": seq}
            return evolve(state, {**changes, "pin_event_id": event.event_id})
        case "unpinned":
            assert isinstance(data, ScopeUnpinned)
            if data.reason == "refused" and refuses(data, state.last_pin):
                # the pinner found the pinned pack failing a gate: it never ran, and "pinned prior" must not name it
                # (once it stayed, so a later `pinned` rollback switched to it and made it last-known-good)
                return evolve(state, {"pin": None, "last_pin": state.pin_before, "pin_before": None, "pin_seq": seq})
            return evolve(state, {"pin": None, "pin_seq": seq})
        case "flagged":
            assert isinstance(data, ScopeFlagged)
            return evolve(state, {"flag": data, "flag_seq": seq})
    return state


def refuses(unpinned: ScopeUnpinned, pin: ScopePinned | None) -> bool:
    """Whether a refusal is of `pin` (its pack; a refusal naming no pack is of the pin it lifts)."""
    return pin is not None and (unpinned.pack is None or unpinned.pack.digest == pin.pack.digest)


def _current(state: ScopeState) -> KnownGood | None:
    return KnownGood(state.lkg, state.lkg_manifest, state.lkg_release) if state.lkg is not None else None


def _known_good(known: KnownGood | None, prior: KnownGood | None) -> dict[str, Any]:
    """The fields that make `known` the scope's last-known-good, with `prior` the one before it."""
    if known is None:
        return {"lkg": None, "lkg_manifest": None, "lkg_release": None, "lkg_prior": None}
    return {"lkg": known.pack, "lkg_manifest": known.manifest, "lkg_release": known.release_id, "lkg_prior": prior}


def _succeeds(state: ScopeState, known: KnownGood) -> KnownGood | None:
    """The prior to keep when `known` becomes last-known-good: the current one, unless it is the same pack."""
    current = _current(state)
    return state.lkg_prior if current is None or current.pack.digest == known.pack.digest else current


def pulled_pack(state: ScopeState, data: ScopeActivated) -> str | None:
    """The digest a rollback pointer `data` pulls from the scope: that of the pointer it replaces, when that is
    its own release's rollout and another pack (None: it pulls nothing — the cohort already ran the target, or
    ran a pack some pin or other release put there, which the rollback judged nothing about)."""
    active = state.active
    if data.kind != "rollback" or active is None or active.kind != "rollout" or not data.release_id:
        return None
    if active.release_id != data.release_id or active.pack.digest == data.pack.digest:
        return None
    return active.pack.digest


def _known_good_after_rollback(state: ScopeState, data: ScopeActivated) -> dict[str, Any]:
    """Last-known-good once a rollback pointer to `data.pack` lands (the changes; {}: as it was).

    The pinned prior (or the pin in force) a rollback restored becomes known good, as the operator chose it.
    Any other target is the LKG already, or a pack chosen while pinned whose pin has since been replaced or
    lifted: the LKG stays (before, every rollback's pack became LKG, so a target recorded as the pin in force,
    landed after an operator moved the pin on, made a pack that never passed a window last-known-good: the
    lifecycle model, session 23). But the pack a rollback pulls (`pulled_pack`: its own release's, which it
    moves the scope off) is known good there no longer (an operator pulled a release that closed `success`,
    say for tenant impact), neither as the LKG nor as the one before it: the next failed release must not go
    back to it. Pulled as the LKG, the one before it takes
    its place if the rollback landed there, else there is none (a strategy `lkg` then holds, and pre-flight
    asks for a pin or another strategy)."""
    left = pulled_pack(state, data)

    def still_good(known: KnownGood | None) -> KnownGood | None:
        return None if known is not None and known.pack.digest == left else known

    current, prior = still_good(_current(state)), still_good(state.lkg_prior)
    if state.last_pin is not None and state.last_pin.pack.digest == data.pack.digest:
        landed = KnownGood(data.pack, data.manifest, data.release_id)
        before = current if current is not None and current.pack.digest != landed.pack.digest else prior
        return _known_good(landed, None if before is not None and before.pack.digest == landed.pack.digest else before)
    if state.lkg is not None and current is None:  # the LKG was pulled
        landed_on_prior = prior is not None and prior.pack.digest == data.pack.digest
        return _known_good(prior if landed_on_prior else None, None)
    return {"lkg_prior": prior} if prior is not state.lkg_prior else {}


def mark_known_good(state: ScopeState, pack: PackRef, manifest: str | None, release_id: str) -> ScopeState:
    known = KnownGood(pack, manifest, release_id)
    return evolve(state, _known_good(known, _succeeds(state, known)))
