"""The whole view: releases, scopes and channel configuration, folded from the log.

`World` is frozen; maps are persistent (rpds HashTrieMap) so that applying an
event costs O(log n) instead of copying every release ever seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import reduce
from typing import Iterable, Iterator

from rpds import HashTrieMap, HashTrieSet

from events.channel import DEFAULT_CHANNEL, ChannelConfig
from events.model import Event
from .evolve import evolve
from .position import Position
from .releases import ReleaseState, apply_release_event, archived
from .scopes import ScopeKey, ScopeState, apply_scope_event, mark_known_good


@dataclass(frozen=True, slots=True)
class ChannelState:
    config: ChannelConfig
    seq: int
    configured_at: datetime
    configured_by: str


@dataclass(frozen=True, slots=True)
class World:
    applied_seq: int = 0
    releases: HashTrieMap = field(default_factory=HashTrieMap)  # release_id -> ReleaseState
    scopes: HashTrieMap = field(default_factory=HashTrieMap)  # (env, channel, cohort) -> ScopeState
    channels: HashTrieMap = field(default_factory=HashTrieMap)  # (env, channel) -> ChannelState
    in_flight: HashTrieSet = field(default_factory=HashTrieSet)  # ids of releases not closed yet
    trust_rotations: tuple[tuple[int, dict], ...] = ()  # (seq, signed root) as logged; see events/trust.py

    # -- queries ---------------------------------------------------------------------------
    def release(self, release_id: str) -> ReleaseState | None:
        return self.releases.get(release_id)

    def scope(self, env: str, channel: str, cohort: str) -> ScopeState:
        key = (env, channel, cohort)
        return self.scopes.get(key) or ScopeState(key=key)

    def channel_state(self, env: str, channel: str) -> ChannelState | None:
        return self.channels.get((env, channel))

    def channel_config(self, env: str, channel: str) -> ChannelConfig:
        """The configuration, or the contract's default (one cohort `all`, no compatibility)."""
        state = self.channels.get((env, channel))
        return state.config if state else DEFAULT_CHANNEL

    def releases_in_flight(self) -> list[ReleaseState]:
        return sorted((self.releases[r] for r in self.in_flight), key=lambda r: r.last_seq)


def archive_closed(world: World, event: Event) -> World:
    """After `event` is applied: if it closed a release, keep only its archived state."""
    if event.family != "release" or event.suffix != "closed" or not event.release_id:
        return world
    state = world.releases.get(event.release_id)
    if state is None or not state.closed:
        return world
    return evolve(world, {"releases": world.releases.insert(event.release_id, archived(state))})


def archive_all(world: World) -> World:
    """Every closed release archived: what a service's live world is, for a full replay."""
    releases = world.releases
    for release_id, state in world.releases.items():
        if state.closed:
            releases = releases.insert(release_id, archived(state))
    return evolve(world, {"releases": releases})


def apply(world: World, position: Position, event: Event) -> World:
    """Fold one log entry into the world. Pure; positions must be applied in order."""
    if position.seq <= world.applied_seq:
        return world  # already applied (a replay that overlaps a snapshot)
    family = event.family
    if family == "release" and event.release_id:
        current = world.releases.get(event.release_id) or ReleaseState(release_id=event.release_id)
        updated = apply_release_event(current, position.seq, event)
        in_flight = world.in_flight.insert(event.release_id) if updated.in_flight else world.in_flight.discard(event.release_id)
        w = evolve(world, {"applied_seq": position.seq, "releases": world.releases.insert(event.release_id, updated),
                           "in_flight": in_flight})
        if event.suffix == "closed" and updated.outcome == "success":
            w = _mark_release_known_good(w, updated)
        return w
    w = evolve(world, {"applied_seq": position.seq})
    if family == "scope" and event.scope:
        key: ScopeKey = (event.scope.env, event.scope.channel, event.scope.cohort)
        current_scope = w.scopes.get(key) or ScopeState(key=key)
        return replace(w, scopes=w.scopes.insert(key, apply_scope_event(current_scope, position.seq, event, position.batch_id)))
    if family == "trust":
        return replace(w, trust_rotations=w.trust_rotations + ((position.seq, event.data.root),))  # type: ignore[attr-defined]
    if family == "channel" and event.scope:
        key2 = (event.scope.env, event.scope.channel)
        state = ChannelState(config=event.data, seq=position.seq, configured_at=event.occurred_at, configured_by=event.actor.id)  # type: ignore[arg-type]
        return replace(w, channels=w.channels.insert(key2, state))
    return w


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
            scopes = scopes.insert(key, mark_known_good(current, release.verified.pack, release.verified.manifest, release.release_id))
    return replace(world, scopes=scopes)


def fold(entries: Iterable[tuple[Position, Event]], initial: World | None = None) -> World:
    return reduce(lambda w, pe: apply(w, pe[0], pe[1]), entries, initial or World())


def scopes_of(world: World, env: str, channel: str) -> Iterator[ScopeState]:
    for key, state in world.scopes.items():
        if key[0] == env and key[1] == channel:
            yield state


def apply_undecodable(world: World, position: Position, subjects) -> World:
    """A log entry that is not a valid event still moves its subject's sequence.

    The CAS values the consumers use must match what is stored, so a garbage
    message on a release or scope subject bumps that subject's last sequence even
    though it changes nothing else.
    """
    if position.seq <= world.applied_seq:
        return world
    w = replace(world, applied_seq=position.seq)
    family, tokens = subjects.parse(position.subject)
    if family == "release" and len(tokens) == 2:
        current = w.releases.get(tokens[0])
        if current is not None:
            return replace(w, releases=w.releases.insert(tokens[0], replace(current, last_seq=position.seq)))
    if family == "scope" and len(tokens) == 4 and tokens[3] == "activated":
        key = (tokens[0], tokens[1], tokens[2])
        current_scope = w.scopes.get(key) or ScopeState(key=key)
        return replace(w, scopes=w.scopes.insert(key, replace(current_scope, active_seq=position.seq)))
    return w
