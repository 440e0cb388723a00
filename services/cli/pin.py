"""`kxr pin` and `kxr unpin`: hold a scope on a pack until a time, and lift that hold.

One module for both: unpin is pin's inverse, and they share how a scope argument names
its cohorts. main.py registers them as top-level commands.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import typer

from .common import (
    NatsUrl,
    Rationale,
    console,
    fail,
    operator_action,
    operator_actor,
    parse_time,
    run_async,
    scope_arg,
    service_keys,
    session,
)
from .readmodel import Folding, from_model


def parse_until(text: str, now: datetime) -> datetime:
    """RFC 3339 (`2026-12-01T00:00:00Z`) or a duration from now (`90m`, `12h`, `7d`)."""
    units = {"m": 60, "h": 3600, "d": 86400}
    number = text[:-1]
    if text and text[-1] in units and number.isascii() and number.isdigit():  # isdigit alone takes '²'
        try:
            return now + timedelta(seconds=int(number) * units[text[-1]])
        except (OverflowError, ValueError):  # past year 9999 (datetime's range), or past int()'s digit limit
            fail(f"--until {text!r} is out of range (a duration up to year 9999)")
    return parse_time(text, "--until (RFC 3339, or a duration like 12h or 7d)")


def _scopes_of(world, parts: tuple[str, ...]) -> list[tuple[str, str, str]]:
    env, channel = parts[0], parts[1]
    if len(parts) == 3:
        return [(env, channel, parts[2])]
    return [(env, channel, c) for c in world.channel_config(env, channel).cohort_names]


def pin(
    scope: str = typer.Argument(..., help="ENV/CHANNEL\\[/COHORT] (a channel pins every cohort)"),
    version: str = typer.Option(..., "--version"),
    until: str = typer.Option(
        ..., "--until", help="RFC 3339 or a duration (12h, 7d); at most the channel's max_pin_days"
    ),
    rationale: str = Rationale,
    nats_url: str | None = NatsUrl,
) -> None:
    """Hold a scope on a pack until a time; a pack other than the active one is re-verified and switched atomically."""
    from events.model import Scope
    from services.actions.pins import pin as pin_action

    parts = scope_arg(scope)
    parse_until(until, datetime.now(UTC))  # a bad --until is one line before anything is read
    targets, world_from = _decided_on(parts, nats_url, version)
    for env, channel, cohort in targets:

        def build(world, now, subjects, env=env, channel=channel, cohort=cohort):
            event, expected = pin_action(
                world,
                Scope(env=env, channel=channel, cohort=cohort),
                version,
                parse_until(until, now),
                rationale,
                operator_actor(),
                now,
            )
            return event, expected, subjects.scope_filter(env, channel, cohort)

        seq = operator_action(nats_url, build, world_from)
        console.print(f"{env}/{channel}/{cohort} pinned to {version} (log seq {seq})")


def unpin(
    scope: str = typer.Argument(..., help="ENV/CHANNEL\\[/COHORT]"),
    rationale: str = Rationale,
    nats_url: str | None = NatsUrl,
) -> None:
    """Lift a pin (the scope stays on its pack until the next release)."""
    from events.model import Scope
    from services.actions.pins import unpin as unpin_action

    targets, world_from = _decided_on(scope_arg(scope), nats_url, None)
    for env, channel, cohort in targets:

        def build(world, now, subjects, env=env, channel=channel, cohort=cohort):
            event, expected = unpin_action(
                world, Scope(env=env, channel=channel, cohort=cohort), rationale, operator_actor(), now
            )
            return event, expected, subjects.scope_filter(env, channel, cohort)

        seq = operator_action(nats_url, build, world_from)
        console.print(f"{env}/{channel}/{cohort} unpinned (log seq {seq})")


def _decided_on(parts: tuple[str, ...], nats_url: str | None, version: str | None):
    """The scopes a pin or unpin names, and how to build the world it decides on: from the read models
    when they are current (services/reads/model_world.py), else None (a fold of the whole log)."""
    from services.reads.model_world import pin_facts, pin_world

    keys = service_keys()
    answer = from_model(nats_url, keys, lambda view: pin_facts(view, parts, version))
    if isinstance(answer, Folding):
        return _folded_targets(parts, nats_url, keys), None
    return answer["targets"], lambda js, subjects: pin_world(js, subjects, keys, answer, version)


def _folded_targets(parts: tuple[str, ...], nats_url: str | None, keys) -> list[tuple[str, str, str]]:
    if len(parts) == 3:
        return [parts]
    from services.jetstream.log_reads import load_world

    async def go():
        async with session(nats_url) as (_, js, log):
            return await load_world(js, log.subjects, service_keys=keys)

    return _scopes_of(run_async(go()), parts)
