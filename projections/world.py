"""The whole view: releases, scopes and channel configuration, folded from the log.

`World` is frozen; maps are persistent (rpds HashTrieMap) so that applying an
event costs O(log n) instead of copying every release ever seen.

A long-running service does not keep closed releases whole: `archive_closed` swaps
each for a `Tombstone` (its last sequence and outcome), so the service's memory, its
snapshots and its restarts grow with the releases in flight, not with history. The
rare event that changes a closed release beyond its sequence (an operator's rollback
after close, or anything illegal) cannot be folded onto a tombstone: `needs_history`
says so, and the caller restores the release from its own log subjects first
(`restore`). Views fold without archiving and see every release whole; the auditor's replay
archives as well, and reads a closed release back before any entry touches it again
(projections/audit_archive.py).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import reduce
from typing import Any

from rpds import HashTrieMap, HashTrieSet

from events.channel import DEFAULT_CHANNEL, ChannelConfig, watches_longer
from events.model import Event
from events.subjects import Subjects

from .evolve import evolve
from .position import Position
from .releases import ReleaseState, apply_release_event, is_override
from .scopes import ScopeKey, ScopeState, apply_scope_event, mark_known_good, pull


@dataclass(frozen=True, slots=True)
class ChannelState:
    config: ChannelConfig
    seq: int
    configured_at: datetime
    configured_by: str


PROBLEM_REASON_MAX = 500  # a decode error can list many problems: enough to act on, bounded


@dataclass(frozen=True, slots=True)
class ChannelProblem:
    """The newest entry on a channel's subject is not a valid `channel.configured`.

    Absence is not configuration: until a valid configuration follows, the channel is
    known to be misconfigured (requests are rejected naming this), never silently
    treated as unconfigured or as still holding its older configuration.
    """

    seq: int
    reason: str

    def describe(self) -> str:
        return f"channel config at seq {self.seq} could not be decoded: {self.reason}"


@dataclass(frozen=True, slots=True)
class Tombstone:
    """A closed release in an archiving world: enough to know it exists and to append after it."""

    last_seq: int
    outcome: str | None


def tombstone(last_seq: int, outcome: str | None) -> Tombstone:
    # one shared string per outcome, not one per closed release: a service keeps 10^5 of these
    return Tombstone(last_seq, sys.intern(outcome) if outcome is not None else None)


# events that leave a closed release as it was but for its sequence: a repeated request
# (the first one stands) and an annotation; anything else needs the release whole
_TOMBSTONE_SAFE = frozenset({"requested", "annotated"})


class NeedsHistory(LookupError):
    """`apply` was given an event that changes a tombstoned release: restore it first."""

    def __init__(self, release_id: str) -> None:
        super().__init__(f"release {release_id} is archived; restore it from the log before applying this event")
        self.release_id = release_id


@dataclass(frozen=True, slots=True)
class World:
    applied_seq: int = 0
    # (HashTrieMap[...] only as a string: rpds types cannot be subscripted at run time)
    releases: HashTrieMap[str, ReleaseState] = field(default_factory=HashTrieMap)
    scopes: HashTrieMap[ScopeKey, ScopeState] = field(default_factory=HashTrieMap)
    channels: HashTrieMap[tuple[str, str], ChannelState] = field(default_factory=HashTrieMap)  # (env, channel)
    in_flight: HashTrieSet[str] = field(default_factory=HashTrieSet)  # ids of releases not closed yet
    trust_rotations: tuple[tuple[int, dict[str, Any]], ...] = ()  # (seq, signed root) as logged; see events/trust.py
    tombstones: HashTrieMap[str, Tombstone] = field(default_factory=HashTrieMap)  # archiving worlds only
    channel_problems: HashTrieMap[tuple[str, str], ChannelProblem] = field(default_factory=HashTrieMap)

    # -- queries ---------------------------------------------------------------------------
    def release(self, release_id: str) -> ReleaseState | None:
        """The release whole; None if unknown or (in an archiving world) closed and tombstoned."""
        return self.releases.get(release_id)

    def known(self, release_id: str) -> bool:
        """Whether this release id was ever used (requested, rejected, ...), closed ones included."""
        return release_id in self.releases or release_id in self.tombstones

    def scope(self, env: str, channel: str, cohort: str) -> ScopeState:
        key = (env, channel, cohort)
        return self.scopes.get(key) or ScopeState(key=key)

    def channel_state(self, env: str, channel: str) -> ChannelState | None:
        return self.channels.get((env, channel))

    def channel_problem(self, env: str, channel: str) -> ChannelProblem | None:
        """Why the channel's newest configuration entry could not be read, if it could not."""
        return self.channel_problems.get((env, channel))

    def channel_config(self, env: str, channel: str) -> ChannelConfig:
        """The configuration, or the contract's default (one cohort `all`, no compatibility)."""
        state = self.channels.get((env, channel))
        return state.config if state else DEFAULT_CHANNEL

    def unconfigured(
        self, env: str, channel: str, cohorts: Iterable[str]
    ) -> tuple[frozenset[str], ChannelProblem | None]:
        """The `cohorts` the channel's configuration no longer names, and why its newest configuration cannot
        be read if it cannot (then which cohorts it has is unknown: never the older configuration's). One rule
        for the monitor's verdict, the dashboard's live view and the promoter's `stale_pass`."""
        configured = self.channel_config(env, channel).cohort_names
        return frozenset(cohorts) - frozenset(configured), self.channel_problem(env, channel)

    def channel_seq(self, env: str, channel: str) -> int:
        """The stream sequence of the channel's newest configuration entry, readable or not (0: none yet)."""
        state, problem = self.channels.get((env, channel)), self.channel_problems.get((env, channel))
        return max(state.seq if state else 0, problem.seq if problem else 0)

    def releases_in_flight(self) -> list[ReleaseState]:
        return sorted((self.releases[r] for r in self.in_flight), key=lambda r: r.last_seq)


def archive_closed(world: World, event: Event) -> World:
    """After `event` is applied: if it closed a release, keep only its tombstone."""
    if event.family != "release" or event.suffix != "closed" or not event.release_id:
        return world
    state = world.releases.get(event.release_id)
    if state is None or not state.closed:
        return world
    return _bury(world, state)


def archive_all(world: World) -> World:
    """Every closed release tombstoned: what a service's live world is, for a full replay."""
    for state in list(world.releases.values()):
        if state.closed:
            world = _bury(world, state)
    return world


def _bury(world: World, state: ReleaseState) -> World:
    return evolve(
        world,
        {
            "releases": world.releases.remove(state.release_id),
            "tombstones": world.tombstones.insert(state.release_id, tombstone(state.last_seq, state.outcome)),
        },
    )


def needs_history(world: World, event: Event) -> bool:
    """Whether `event` changes a tombstoned release beyond its sequence (see `NeedsHistory`)."""
    return event.family == "release" and event.release_id in world.tombstones and event.suffix not in _TOMBSTONE_SAFE


def restore(world: World, state: ReleaseState) -> World:
    """Put a tombstoned release back whole (folded from its own subjects, up to the world's position)."""
    stone = world.tombstones.get(state.release_id)
    if stone is None:
        raise ValueError(f"release {state.release_id} is not tombstoned")
    if stone.last_seq != state.last_seq:
        raise ValueError(
            f"release {state.release_id}: its log ends at seq {state.last_seq}, the tombstone at {stone.last_seq}"
        )
    return evolve(
        world,
        {
            "releases": world.releases.insert(state.release_id, state),
            "tombstones": world.tombstones.remove(state.release_id),
        },
    )


def apply(world: World, position: Position, event: Event) -> World:
    """Fold one log entry into the world. Pure; positions must be applied in order."""
    if position.seq <= world.applied_seq:
        return world  # already applied (a replay that overlaps a snapshot)
    family, _, suffix = event.type.partition(".")  # (event.family and event.suffix, split once)
    release_id = event.release_id
    if family == "release" and release_id:
        stone = world.tombstones.get(release_id)
        if stone is not None:
            if suffix not in _TOMBSTONE_SAFE:
                raise NeedsHistory(release_id)
            return evolve(
                world,
                {
                    "applied_seq": position.seq,
                    "tombstones": world.tombstones.insert(release_id, tombstone(position.seq, stone.outcome)),
                },
            )
        current = world.releases.get(release_id) or ReleaseState(release_id=release_id)
        updated = apply_release_event(current, position.seq, event)
        in_flight = world.in_flight
        # (a set that already says so is kept: the same members, one persistent map fewer per event)
        if updated.in_flight:
            if release_id not in in_flight:
                in_flight = in_flight.insert(release_id)
        elif release_id in in_flight:
            in_flight = in_flight.discard(release_id)
        w = evolve(
            world,
            {
                "applied_seq": position.seq,
                "releases": world.releases.insert(release_id, updated),
                "in_flight": in_flight,
            },
        )
        if suffix == "closed" and updated.outcome == "success" and updated.passed_on_data:
            # defensively both: the outcome, and the evidence it claims (a forged or buggy
            # `success` after an operator's pass must not make its pack a rollback target)
            w = _mark_release_known_good(w, updated)
        elif suffix == "rollback_started":
            w = _pull_release_pack(w, updated)
        elif suffix == "promoted":
            w = _confirm_promotion(w, updated)
        elif suffix == "requested" and updated.promotion_confirmed_by is None:
            w = _arrived_by_promotion(w, updated)
        return w
    # one copy of the world per entry: its position and what the entry changed, together
    if family == "scope" and event.scope:
        key: ScopeKey = (event.scope.env, event.scope.channel, event.scope.cohort)
        current_scope = world.scopes.get(key) or ScopeState(key=key)
        scope_state = apply_scope_event(current_scope, position.seq, event, position.batch_id, position.digest)
        return evolve(world, {"applied_seq": position.seq, "scopes": world.scopes.insert(key, scope_state)})
    if family == "trust":
        rotation = (position.seq, event.data.root)  # type: ignore[attr-defined]
        return evolve(world, {"applied_seq": position.seq, "trust_rotations": world.trust_rotations + (rotation,)})
    if family == "channel" and event.scope:
        key2 = (event.scope.env, event.scope.channel)
        state = ChannelState(
            config=event.data,  # type: ignore[arg-type]  # channel.configured is the only channel event
            seq=position.seq,
            configured_at=event.occurred_at,
            configured_by=event.actor.id,
        )
        # a valid configuration after an unreadable one settles it
        return evolve(
            world,
            {
                "applied_seq": position.seq,
                "channels": world.channels.insert(key2, state),
                "channel_problems": world.channel_problems.discard(key2),
            },
        )
    return evolve(world, {"applied_seq": position.seq})


def _confirm_promotion(world: World, source: ReleaseState) -> World:
    """Record on the linked release that its source's `promoted` event names it.

    The source closes (and is tombstoned) soon after; the linked release keeps the proof
    that it arrived by promotion, for a channel that accepts nothing else.
    """
    linked_id = source.promoted.promoted_to if source.promoted else None
    linked = world.releases.get(linked_id) if linked_id else None
    if linked is None or linked.requested is None or linked.requested.promoted_from != source.release_id:
        return world
    return replace(
        world,
        releases=world.releases.insert(linked.release_id, replace(linked, promotion_confirmed_by=source.release_id)),
    )


def _arrived_by_promotion(world: World, linked: ReleaseState) -> World:
    """Record on a request that names its source that the source's `promoted` (stored before it, in the
    same atomic batch: services/app.py) names it. A log written before that batch has the request first;
    `_confirm_promotion` marks it when the source's `promoted` follows."""
    source_id = linked.requested.promoted_from if linked.requested else None
    source = world.releases.get(source_id) if source_id else None
    if source is None or source.promoted is None or source.promoted.promoted_to != linked.release_id:
        return world
    return replace(
        world, releases=world.releases.insert(linked.release_id, replace(linked, promotion_confirmed_by=source_id))
    )


def _pull_release_pack(world: World, release: ReleaseState) -> World:
    """A rollback of `release` started: its pack is known good no longer in every cohort it switched
    (projections/scopes.py `pull`), whatever the trigger and wherever, or whether, the rollback lands. An
    operator pulling a release that closed `success` is the case that mattered: its pack stayed LKG, and the
    next failed release rolled back onto the pack just pulled (session 27)."""
    pack = release.pack
    if pack is None or release.prepared is None or not release.activated:
        return world
    env, channel = release.prepared.target.env, release.prepared.target.channel
    others = [world.releases.get(rid) for rid in world.in_flight if rid != release.release_id]
    targets = [  # what the channel's other releases in flight recorded to roll back to
        r.prepared.rollback_targets
        for r in others
        if r is not None
        and r.prepared is not None
        and (r.prepared.target.env, r.prepared.target.channel) == (env, channel)
    ]
    scopes = world.scopes
    for cohort in release.activated:
        key = (env, channel, cohort)
        recorded = frozenset(t.digest for ts in targets if (t := ts.get(cohort)) is not None)
        scopes = scopes.insert(key, pull(scopes.get(key) or ScopeState(key=key), pack.digest, recorded))
    return evolve(world, {"scopes": scopes})


def _mark_release_known_good(world: World, release: ReleaseState) -> World:
    if release.verified is None or release.prepared is None:
        return world
    env, channel = release.prepared.target.env, release.prepared.target.channel
    scopes = world.scopes
    for cohort in release.activated:
        key = (env, channel, cohort)
        current = scopes.get(key) or ScopeState(key=key)
        # Only if the scope still runs this release's pack: a later rollback or pin wins.
        if current.active and current.active.pack.digest == release.verified.pack.digest:
            scopes = scopes.insert(
                key, mark_known_good(current, release.verified.pack, release.verified.manifest, release.release_id)
            )
    return replace(world, scopes=scopes)


def fold(entries: Iterable[tuple[Position, Event]], initial: World | None = None) -> World:
    return reduce(lambda w, pe: apply(w, pe[0], pe[1]), entries, initial or World())


def scopes_of(world: World, env: str, channel: str) -> Iterator[ScopeState]:
    for key, state in world.scopes.items():
        if key[0] == env and key[1] == channel:
            yield state


def stale_pass(world: World, release: ReleaseState) -> str | None:
    """Why a release in phase `passed` must not move on its monitor's pass, if it must not.

    The monitor judges a window against the channel's configuration as it stands (a cohort taken out, or a
    configuration that does not decode, holds the window: services/monitoring/judge.py) and records which entry
    that was (`channel_seq`); but it appends with the release's subjects as its only expectation (one filter per
    message on nats-server 2.15.1), so a channel change can land between its judgement and its append. The
    promoter, the one consumer that moves a release on from a pass, always decides after the pass is stored, so
    it sees any such change: it moves on only while the entry the window was judged against is still the
    channel's newest, and otherwise holds (`escalated` STALE_PASS, which voids the pass in the release's own
    fold). A change after its decision cannot make the pass stale: the pass was judged against what stood when
    it was stored (`kxr audit replay` checks exactly that). A pass without `channel_seq` (written before session
    25) is checked against the channel as it stands. An operator's override is their word: never held here."""
    if release.prepared is None or not release.verdicts:
        return None
    kind, verdict = release.verdicts[-1]
    stage = verdict.stage
    if kind != "monitoring_passed" or is_override(verdict) or not 0 <= stage < len(release.stages):
        return None
    target = release.prepared.target
    exposed = [c for c in release.stages[stage] if c in release.activated]
    if not exposed:  # nothing ran the pack in this stage: no runtime's data was judged
        return None
    where = f"{target.env}/{target.channel}"
    newest = world.channel_seq(target.env, target.channel)
    gone, problem = world.unconfigured(target.env, target.channel, exposed)
    if verdict.channel_seq is not None and verdict.channel_seq != newest:
        why = f"{where}'s configuration changed after the window was judged (against seq {verdict.channel_seq}; "
        why += f"newest seq {newest})"
    elif problem is not None:
        why = f"{where}'s {problem.describe()}: its cohorts cannot be checked"
    elif gone:
        why = f"cohort(s) {', '.join(sorted(gone))} no longer in {where}'s configuration"
    else:
        return None
    return f"stage {stage + 1}'s pass counts for nothing: {why}; held for an operator"


def never_ran(world: World, env: str, channel: str, cohorts: Iterable[str]) -> tuple[list[str], bool]:
    """The `cohorts` whose scope never had an active pack, and whether the others did (a cohort added to a
    channel that ran packs): then no one rollback strategy fits a plan over all of them — `lkg` has no target
    for the new ones and `none` is refused for the others (pre-flight's `rollback_target`)."""
    cohorts = list(cohorts)
    never = [c for c in cohorts if not world.scope(env, channel, c).ever_active]
    return never, bool(never) and len(never) < len(cohorts)


def bring_in_first(never: list[str]) -> str:
    """The remedy for `never_ran`'s mixed plan, as pre-flight and the promoter say it."""
    alone = "[" + ", ".join(f"[{c!r}]" for c in never) + "]"
    return f"first roll a pack out to {', '.join(never)} alone (plan {alone}, rollback strategy 'none')"


def promotion_not_longer(world: World, env: str, channel: str, promote_to: str) -> str:
    """Why a promotion from `channel` to `promote_to` would not watch longer ("" when it would).

    The seed's minimum windows: canary short, stable longer (enough to catch delayed regressions). A
    promotion that the next channel watches no longer than this one exposes a wider audience without
    the longer look that catches what only time shows. Judged on the channels' configured minimum
    windows as they stand; a next channel with no configuration is left to its pre-flight (`target_exists`).
    The promoter withholds such a promotion; the safety check flags one in the log.
    """
    if world.channel_state(env, promote_to) is None:
        return ""
    source, nxt = world.channel_config(env, channel), world.channel_config(env, promote_to)
    if watches_longer(source, nxt):
        return ""
    return (
        f"{env}/{promote_to} watches {nxt.monitoring.window_s}s, no longer than {env}/{channel}'s "
        f"{source.monitoring.window_s}s (a wider channel must watch longer: "
        f"raise {env}/{promote_to}'s monitoring.window_s)"
    )


def apply_undecodable(world: World, position: Position, subjects: Subjects, reason: str = "not a valid event") -> World:
    """A log entry that is not a valid event still moves its subject's sequence.

    The CAS values the consumers use must match what is stored, so a garbage
    message on a release or scope subject bumps that subject's last sequence even
    though it changes nothing else. On a channel's subject it is recorded as that
    channel's problem (`reason` says why it did not decode): never as "no configuration".
    """
    if position.seq <= world.applied_seq:
        return world
    w = replace(world, applied_seq=position.seq)
    family, tokens = subjects.parse(position.subject)
    if family == "release" and len(tokens) == 2:
        stone = w.tombstones.get(tokens[0])
        if stone is not None:
            return replace(w, tombstones=w.tombstones.insert(tokens[0], tombstone(position.seq, stone.outcome)))
        current = w.releases.get(tokens[0])
        if current is not None:
            return replace(w, releases=w.releases.insert(tokens[0], replace(current, last_seq=position.seq)))
    if family == "scope" and len(tokens) == 4 and tokens[3] in ("activated", "pinned", "unpinned"):
        key = (tokens[0], tokens[1], tokens[2])
        current_scope = w.scopes.get(key) or ScopeState(key=key)
        # activated: the activator's CAS; pinned/unpinned: the pin verbs' (on the scope's last sequence)
        if tokens[3] == "activated":
            moved = replace(current_scope, active_seq=position.seq)
        else:
            moved = replace(current_scope, pin_seq=position.seq)
        return replace(w, scopes=w.scopes.insert(key, moved))
    if family == "channel" and len(tokens) == 3 and tokens[2] == "configured":
        problem = ChannelProblem(position.seq, reason[:PROBLEM_REASON_MAX])
        return replace(w, channel_problems=w.channel_problems.insert((tokens[0], tokens[1]), problem))
    return w
