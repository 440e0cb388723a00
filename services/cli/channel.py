"""`kxr channel set|show`: a channel's configuration (cohorts, plan, monitoring, compatibility, policy)."""

from __future__ import annotations

from pathlib import Path

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

app = typer.Typer(no_args_is_help=True, help="Channel configuration (cohorts, plan, monitoring, policy).")


@app.command("set")
def channel_set(
    scope: str = typer.Argument(..., help="ENV/CHANNEL"),
    file: Path = typer.Option(..., "--file", exists=True, dir_okay=False, help="TOML or JSON (CONTRACT §7)"),
    nats_url: str | None = NatsUrl,
) -> None:
    """Configure a channel; every problem with the file is listed."""
    from services.actions.producer import configure_channel, parse_channel_config

    env, channel = scope_arg(scope, allow_cohort=False)
    try:
        cfg = parse_channel_config(read_config_file(file, "channel config"), channel)
    except ValueError as exc:
        problems = str(exc).splitlines()
        for p in problems[1:]:
            err_console.print(f"  - {p}")
        fail(f"{file}: {problems[0]}" + (f" (and {len(problems) - 1} more above)" if len(problems) > 1 else ""))

    async def go() -> int:
        async with session(nats_url) as (_, js, log):
            return await configure_channel(log, js, env, channel, cfg, operator_actor())

    seq = run_async(go())
    console.print(f"channel {env}/{channel} configured (log seq {seq}): cohorts {', '.join(cfg.cohort_names)}")


@app.command("show")
def channel_show(
    scope: str = typer.Argument(..., help="ENV/CHANNEL"),
    as_json: bool = JsonOpt,
    wide: bool = WideOpt,
    nats_url: str | None = NatsUrl,
) -> None:
    """The channel's current configuration: cohorts, plan, monitoring, compatibility, policy."""
    from services.jetstream.log_reads import load_world

    from .views import channel_tables

    env, channel = scope_arg(scope, allow_cohort=False)

    async def go():
        async with session(nats_url) as (_, js, log):
            return await load_world(js, log.subjects, service_keys=service_keys())

    world = run_async(go())
    state, problem = world.channel_state(env, channel), world.channel_problem(env, channel)
    if state is None and problem is None:
        fail(
            f"channel {env}/{channel} is not configured "
            "(it has the default single cohort 'all' and fails compatibility closed)"
        )
    shown = channel_shown(state, problem, env, channel)
    output(as_json, shown, lambda: channel_tables(f"{env}/{channel}", shown, wide), wide)
    if problem is not None:  # shown in full above; and a script sees it in the exit status
        fail(
            f"{env}/{channel}: {problem.describe()}; "
            "requests to it are rejected until `kxr channel set` writes a valid one"
        )


def channel_shown(state, problem, env: str, channel: str) -> dict:
    """What `kxr channel show` prints (services/reads/shapes.py `ChannelShow`): the last readable
    configuration and, if the newest entry could not be read, that problem (`config` is null when
    no entry ever could be)."""
    from services.reads.shapes import ChannelShow, Problem, dump, rfc3339

    return dump(
        ChannelShow(
            scope=f"{env}/{channel}",
            env=env,
            channel=channel,
            configured_at=rfc3339(state.configured_at) if state else None,
            configured_by=state.configured_by if state else None,
            seq=state.seq if state else None,
            config=state.config.model_dump(mode="json", by_alias=True, exclude_none=True) if state else None,
            problem=Problem(seq=problem.seq, reason=problem.reason, message=problem.describe()) if problem else None,
        )
    )
