"""`kxr channel set|show`: a channel's configuration (cohorts, plan, monitoring, compatibility, policy)."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer

from .common import (
    JsonOpt,
    NatsUrl,
    WideOpt,
    console,
    err_console,
    fail,
    operator_actor,
    output,
    read_config_file,
    run_async,
    scope_arg,
    service_keys,
    session,
)
from .readmodel import Folding, FoldOpt, from_model

app = typer.Typer(no_args_is_help=True, help="Channel configuration (cohorts, plan, monitoring, policy).")


@app.command("set")
def channel_set(
    scope: str = typer.Argument(..., help="ENV/CHANNEL"),
    file: Path = typer.Option(..., "--file", exists=True, dir_okay=False, help="TOML or JSON (CONTRACT §7)"),
    nats_url: str | None = NatsUrl,
) -> None:
    """Configure a channel; every problem with the file is listed."""
    from services.actions.producer import configure_channel, parse_channel_config, promotion_window_conflicts

    env, channel = scope_arg(scope, allow_cohort=False)
    try:
        cfg = parse_channel_config(read_config_file(file, "channel config"), channel)
    except ValueError as exc:
        _fail_with_problems(f"{file}", exc)

    async def go() -> tuple[int | None, list[str], list[str], list[str]]:
        async with session(nats_url) as (_, js, log):
            conflicts, unchecked, notes = await promotion_window_conflicts(js, log.subjects, env, channel, cfg)
            if conflicts:  # against the channels it promotes to or is promoted from: nothing written
                return None, conflicts, unchecked, notes
            return await configure_channel(log, js, env, channel, cfg, operator_actor()), [], unchecked, notes

    seq, conflicts, unchecked, notes = run_async(go())
    for why in unchecked:
        err_console.print(f"warning: promotion windows not checked against {why}")
    if seq is None:
        _fail_with_problems(f"{env}/{channel} not configured", ValueError("\n".join(conflicts)))
    console.print(f"channel {env}/{channel} configured (log seq {seq}): cohorts {', '.join(cfg.cohort_names)}")
    for note in notes:
        err_console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)


def _fail_with_problems(what: str, exc: ValueError) -> NoReturn:
    """The first problem as the one error line, the others listed above it."""
    problems = str(exc).splitlines()
    for p in problems[1:]:
        err_console.print(f"  - {p}")
    fail(f"{what}: {problems[0]}" + (f" (and {len(problems) - 1} more above)" if len(problems) > 1 else ""))


@app.command("show")
def channel_show(
    scope: str = typer.Argument(..., help="ENV/CHANNEL"),
    as_json: bool = JsonOpt,
    wide: bool = WideOpt,
    fold: bool = FoldOpt,
    nats_url: str | None = NatsUrl,
) -> None:
    """The channel's current configuration: cohorts, plan, monitoring, compatibility, policy."""
    from .views import channel_tables

    env, channel = scope_arg(scope, allow_cohort=False)
    keys = service_keys()
    answer = None if fold else from_model(nats_url, keys, lambda view: model_channel(view, env, channel))
    if answer is None or isinstance(answer, Folding):
        shown = folded_channel(nats_url, keys, env, channel)
    else:
        shown = answer["value"]["show"] if answer["value"] else None
    if shown is None:
        fail(
            f"channel {env}/{channel} is not configured "
            "(it has the default single cohort 'all' and fails compatibility closed)"
        )
    output(as_json, shown, lambda: channel_tables(f"{env}/{channel}", shown, wide), wide)
    problem = shown["problem"]
    if problem is not None:  # shown in full above; and a script sees it in the exit status
        fail(
            f"{env}/{channel}: {problem['message']}; "
            "requests to it are rejected until `kxr channel set` writes a valid one"
        )


async def model_channel(view, env: str, channel: str) -> dict:
    from services.reads.model_reads import channel as from_view

    return {"value": await from_view(view, env, channel)}


def folded_channel(nats_url: str | None, keys, env: str, channel: str) -> dict | None:
    """`kxr channel show --json` from a fold of the whole log (None: never configured)."""
    from services.jetstream.log_reads import load_world
    from services.reads.read_models import channel_show as shown

    async def go():
        async with session(nats_url) as (_, js, log):
            return await load_world(js, log.subjects, service_keys=keys)

    world = run_async(go())
    state, problem = world.channel_state(env, channel), world.channel_problem(env, channel)
    if state is None and problem is None:
        return None
    return shown(state, problem, env, channel)


def channel_shown(state, problem, env: str, channel: str) -> dict:
    """What `kxr channel show` prints (services/reads/shapes.py `ChannelShow`; the read models store the same)."""
    from services.reads.read_models import channel_show

    return channel_show(state, problem, env, channel)
