"""Where a rollback sends each cohort: the release's chosen strategy, read over the world.

One rule for every writer of `release.rollback_started`: the promoter (a failed window,
activation or abort), the guard (a policy violation found after activation) and an
operator's `kxr release rollback`. Pure: the world, the release and the time decide.
"""

from __future__ import annotations

from datetime import datetime

from events.model import PackRef
from projections.releases import ReleaseState
from projections.scopes import vouched
from projections.world import World


def rollback_target(world: World, release: ReleaseState, cohort: str, now: datetime) -> PackRef | None:
    """Where the release's chosen strategy sends `cohort` back to (None: nowhere; the activator escalates).

    A pin in force comes first whatever the strategy: it is the operator's current word for
    the scope (a rollback elsewhere would fight the pin). Then `pinned`: the pinned prior
    pre-flight recorded; `none`: nothing (the scope had no pack before; an LKG earned later by
    another release is not this release's target); `lkg`: the scope's last-known-good now, unless that is this very
    pack, else the one pre-flight recorded (for a closed release: while the scope still names it, `scopes.vouched`,
    or knows it pulled, so the activator says why it holds). A strategy never falls back to another's target:
    an unusable choice holds and escalates. Whatever the choice, the release's own pack is no
    target: a rollback never "lands" on the pack it rolls back from (no pointer would move, and
    `rolled_back` would record a remediation that did not happen).
    """
    assert release.prepared is not None
    env, channel = release.prepared.target.env, release.prepared.target.channel
    scope = world.scope(env, channel, cohort)
    pin = scope.pinned_at(now)
    recorded = release.prepared.rollback_targets.get(cohort)
    if pin is not None:
        target: PackRef | None = pin.pack
    elif release.prepared.rollback_strategy != "lkg":  # pinned: the recorded prior; none: nothing (hold)
        target = recorded
    elif scope.lkg is not None and not is_own_pack(release, scope.lkg):
        target = scope.lkg
    elif recorded is None or not release.closed or recorded.digest in vouched(scope) | scope.pulled:
        target = recorded
    else:
        # a closed release an operator pulls (its own pack the LKG now) falls back to a target recorded before it
        # closed, which the scope names no longer: a pull of that pack since may have been forgotten (`scopes.pull`
        # keeps a pull where the scope or a release in flight names the pack, and this one was closed), so the
        # record is no evidence; the rollback holds rather than land on it (session 28, the model's 100k-step
        # run: r1 pulled, then r3, then r2 landed on r1's pack)
        target = None
    return None if target is not None and is_own_pack(release, target) else target


def pulled_there(world: World, release: ReleaseState, cohort: str, target: PackRef | None) -> str | None:
    """Why `target` must not be where `release` rolls `cohort` back to: a release of that pack was rolled
    back in the cohort since it was recorded or pinned (projections/scopes.py `pull`); None: it was not.
    A strategy never falls back to another's target: the rollback holds and escalates instead."""
    if target is None or release.prepared is None:
        return None
    where = release.prepared.target
    if target.digest not in world.scope(where.env, where.channel, cohort).pulled:
        return None
    return f"{cohort}: target {target.version} was rolled back there since (a release of it): known good no longer"


def is_own_pack(release: ReleaseState, pack: PackRef) -> bool:
    """Whether `pack` is the pack `release` rolls out (so never a place to roll it back to)."""
    own = release.pack
    return own is not None and own.digest == pack.digest


def rollback_targets(world: World, release: ReleaseState, now: datetime) -> dict[str, PackRef | None]:
    """Per exposed cohort: `rollback_target`."""
    return {cohort: rollback_target(world, release, cohort, now) for cohort in release.activated}
