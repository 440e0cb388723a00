"""Per scope: the active pack (the pointer), since when, last-known-good and the pin.

Last-known-good is the pack a scope ran when a release that covered it closed
with outcome `success` (monitoring passed for it), or the pinned pack a rollback
restored: it is what a deterministic rollback goes back to. A release rolled back in a
scope *pulls* its pack there (`pull`: an operator's `kxr release rollback` of a release
that closed `success`, say for tenant impact, or any failed release): from then on that
pack is no longer known good there — not the LKG (which goes back to the one before it,
if that was earned, else to none), not the LKG before it, and no rollback's target —
until a release earns it again or an operator pins it there.
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
    """A last-known-good as the scope recorded it: the pack, its manifest digest, the release that earned it
    (or whose rollback restored it), and whether it was earned on data (False: a pin a rollback restored)."""

    pack: PackRef
    manifest: str | None = None
    release_id: str | None = None
    earned: bool = True


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
    lkg_earned: bool = True  # `lkg` passed its windows on data here (False: a pin a rollback restored)
    # the last-known-good before `lkg` (a newer one superseded it): what `lkg` goes back to when its pack is pulled
    lkg_prior: KnownGood | None = None
    # digests of packs rolled back in this scope since a release last earned them here or an operator pinned them
    pulled: frozenset[str] = frozenset()
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
            if (
                data.kind == "rollback"
                and state.last_pin is not None
                and state.last_pin.pack.digest == data.pack.digest
                and data.pack.digest not in state.pulled
            ):
                # the pinned prior (or the pin in force) a rollback restored becomes known good, as the operator
                # chose it. Any other target is the LKG already, or a pack chosen while pinned whose pin has
                # since been replaced or lifted: the LKG stays (before, every rollback's pack became LKG, so a
                # target recorded as the pin in force, landed after an operator moved the pin on, made a pack
                # that never passed a window last-known-good: the lifecycle model, session 23)
                changes.update(_becomes(state, KnownGood(data.pack, data.manifest, data.release_id, earned=False)))
            return evolve(state, changes)
        case "pinned":
            assert isinstance(data, ScopePinned)
            changes = {"pin": data, "last_pin": data, "pin_before": state.last_pin, "pin_seq": seq}
            if data.pack.digest in state.pulled:  # the operator's word on the pack since it was pulled
                changes["pulled"] = state.pulled - {data.pack.digest}
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
    if state.lkg is None:
        return None
    return KnownGood(state.lkg, state.lkg_manifest, state.lkg_release, state.lkg_earned)


def _known_good(known: KnownGood | None, prior: KnownGood | None) -> dict[str, Any]:
    """The fields that make `known` the scope's last-known-good, with `prior` the one before it."""
    if known is None:
        return {"lkg": None, "lkg_manifest": None, "lkg_release": None, "lkg_earned": True, "lkg_prior": None}
    return {
        "lkg": known.pack,
        "lkg_manifest": known.manifest,
        "lkg_release": known.release_id,
        "lkg_earned": known.earned,
        "lkg_prior": prior,
    }


def _becomes(state: ScopeState, known: KnownGood) -> dict[str, Any]:
    """`known` as the LKG; the current one its prior, unless it is the same pack (then the prior stays)."""
    current = _current(state)
    prior = state.lkg_prior if current is None or current.pack.digest == known.pack.digest else current
    return _known_good(known, None if prior is not None and prior.pack.digest == known.pack.digest else prior)


def mark_known_good(state: ScopeState, pack: PackRef, manifest: str | None, release_id: str) -> ScopeState:
    """A release earned `pack` here: the LKG, and no longer pulled."""
    changes = _becomes(state, KnownGood(pack, manifest, release_id))
    if pack.digest in state.pulled:
        changes["pulled"] = state.pulled - {pack.digest}
    return evolve(state, changes)


def vouched(state: ScopeState) -> set[str]:
    """The packs the scope itself still names as a place to go back to: its LKG, the one before it, and its
    pins (in force, the pinned prior, the one before that). Where a pull of one happens, `pulled` keeps it."""
    pins = (state.pin, state.last_pin, state.pin_before)
    named = {k.digest for k in (state.lkg, *(p.pack for p in pins if p is not None)) if k is not None}
    if state.lkg_prior is not None:
        named.add(state.lkg_prior.pack.digest)
    return named


def pull(state: ScopeState, digest: str, recorded: frozenset[str] = frozenset()) -> ScopeState:
    """A release of the pack `digest` is rolled back here: that pack is no longer known good in this scope.

    As the LKG it hands the name back to the one before it, if that one passed its windows on data (a pin a
    rollback once restored is the operator's word of that time, not evidence), else to none: a strategy `lkg`
    then has no target, and pre-flight asks for a pin or another strategy. As the one before it, it is
    forgotten. Either way it is no rollback's target here any more (`projections/rollback.py`): `pulled`
    remembers it where something could still name it as one — the LKG, the one before it, a pin (in force, the
    pinned prior or the one before that) or a target a release in flight recorded (`recorded`). Any later target
    comes from those, or from a pin or success after the pull, which vouch for it again; so a failed release's
    new pack, which nothing names, is not kept, and `pulled` (in snapshots and read models) does not grow with
    every failure in the scope's history."""
    named = vouched(state)
    changes: dict[str, Any] = {"pulled": state.pulled | {digest}} if digest in named or digest in recorded else {}
    prior = state.lkg_prior
    if prior is not None and prior.pack.digest == digest:
        prior = None
    if state.lkg is not None and state.lkg.digest == digest:
        changes.update(_known_good(prior if prior is not None and prior.earned else None, None))
    elif prior is not state.lkg_prior:
        changes["lkg_prior"] = prior
    return evolve(state, changes)
