"""An operator's pins: `scope.pinned` / `scope.unpinned` events, decided on the world (pure).

`kxr pin`/`kxr unpin` and the dashboard's actions append what these return, with the scope
sequence they must follow; the pinner consumer then re-verifies and switches (or refuses)
a pinned pack (services/consumers/pinner.py).
"""

from __future__ import annotations

from datetime import datetime

from events.codec import make_event
from events.model import Actor, Event, PackRef, Scope, ScopePinned, ScopeUnpinned
from projections.pins import pin_too_long
from projections.world import World
from services.errors import OperatorError


def find_pack(world: World, env: str, channel: str, version: str) -> PackRef:
    """The verified pack with this version released to this channel (newest first)."""
    for release in sorted(world.releases.values(), key=lambda r: -r.last_seq):
        v = release.verified
        if (
            v
            and v.pack.version == version
            and release.prepared
            and (release.prepared.target.env, release.prepared.target.channel) == (env, channel)
        ):
            return v.pack
    raise OperatorError(f"no pack with version {version} was ever verified for {env}/{channel}")


def pin(
    world: World, scope: Scope, version: str, until: datetime, rationale: str, actor: Actor, now: datetime
) -> tuple[Event, int]:
    """The operator's `scope.pinned` and the scope sequence it must follow."""
    if not rationale.strip():
        raise OperatorError("a pin needs a rationale")
    if until <= now:
        raise OperatorError("--until must be in the future")
    too_long = pin_too_long(world, scope, until, now)
    if too_long:
        raise OperatorError(too_long)
    if world.channel_state(scope.env, scope.channel) is None:
        raise OperatorError(f"channel {scope.env}/{scope.channel} is not configured")
    if scope.cohort not in world.channel_config(scope.env, scope.channel).cohort_names:
        raise OperatorError(f"{scope.env}/{scope.channel} has no cohort {scope.cohort}")
    pack = find_pack(world, scope.env, scope.channel, version)
    state = world.scope(scope.env, scope.channel, scope.cohort)
    event = make_event(
        "scope.pinned",
        ScopePinned(pack=pack, until=until, rationale=rationale, by=actor.id),
        actor=actor,
        scope=scope,
        occurred_at=now,
    )
    return event, state.last_seq


def unpin(world: World, scope: Scope, rationale: str, actor: Actor, now: datetime) -> tuple[Event, int]:
    state = world.scope(scope.env, scope.channel, scope.cohort)
    if state.pin is None:
        raise OperatorError(f"{scope.env}/{scope.channel}/{scope.cohort} is not pinned")
    if not rationale.strip():
        raise OperatorError("unpinning needs a rationale")
    data = ScopeUnpinned(
        pack=state.pin.pack, until=state.pin.until, rationale=rationale, by=actor.id, reason="operator"
    )
    return make_event("scope.unpinned", data, actor=actor, scope=scope, occurred_at=now), state.last_seq
