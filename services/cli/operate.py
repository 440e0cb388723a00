"""`kxr` for operators: release decisions, pins, status, channels."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

import typer

from events.tokens import check_token
from services.jetstream.log import AppendConflict, Entry
from .common import (
    JsonOpt, NatsUrl, Rationale, parse_time, app, channel_app, console, err_console, fail, operator_actor,
    output, read_config_file, release_app, run_async, scope_arg, session,
)


@release_app.command("show")
def release_show(
    release_id: str = typer.Argument(...),
    as_json: bool = JsonOpt,
    nats_url: Optional[str] = NatsUrl,
) -> None:
    """A release's timeline and evidence record (the same as `kxr audit release`)."""
    from .audit_cmds import audit_release

    audit_release(release_id, as_json, None, nats_url)


def _operator_action(nats_url: Optional[str], build) -> int:
    """Rebuild the world, let `build(world, now, subjects)` decide the event, append it with its CAS."""
    from services.actions.operator import OperatorError

    from services.jetstream.log_reads import load_world

    async def go() -> int:
        async with session(nats_url) as (_, js, log):
            world = await load_world(js, log.subjects, service_keys=_service_keys())
            try:
                action = build(world, datetime.now(timezone.utc), log.subjects)
            except OperatorError as exc:
                fail(str(exc))
            event, expected, expected_filter = action
            try:
                return await log.append(Entry(event, expected, expected_filter))
            except AppendConflict:
                fail("the log moved while this action was decided; look again (kxr status) and retry")
        return 0

    return run_async(go())


def _release_action(release_id: str, nats_url: Optional[str], make) -> None:
    from services.actions import operator as ops

    check_token(release_id, "release id")

    def build_release(world, now, subjects):
        action = make(ops, world, now)
        return action.event, action.expected_seq, subjects.release_filter(release_id)

    seq = _operator_action(nats_url, build_release)
    console.print(f"recorded (log seq {seq}); follow with: kxr release show {release_id}")


@release_app.command("pause")
def release_pause(release_id: str, rationale: str = Rationale, nats_url: Optional[str] = NatsUrl) -> None:
    """Stop automatic progression (no new stage, no promotion); rollbacks still happen."""
    _release_action(release_id, nats_url, lambda ops, w, now: ops.pause(w, release_id, rationale, operator_actor(), now))


@release_app.command("resume")
def release_resume(release_id: str, rationale: str = Rationale, nats_url: Optional[str] = NatsUrl) -> None:
    """Let a paused release continue."""
    _release_action(release_id, nats_url, lambda ops, w, now: ops.resume(w, release_id, rationale, operator_actor(), now))


@release_app.command("abort")
def release_abort(release_id: str, rationale: str = Rationale, nats_url: Optional[str] = NatsUrl) -> None:
    """Stop the release; every cohort it activated returns to its rollback target."""
    _release_action(release_id, nats_url, lambda ops, w, now: ops.abort(w, release_id, rationale, operator_actor(), now))


@release_app.command("promote")
def release_promote(release_id: str, rationale: str = Rationale, nats_url: Optional[str] = NatsUrl) -> None:
    """Pass a held (inconclusive) window on your word; recorded as an operator override."""
    _release_action(release_id, nats_url, lambda ops, w, now: ops.promote(w, release_id, rationale, operator_actor(), now))


@release_app.command("extend")
def release_extend(release_id: str, window: int = typer.Option(..., "--window", help="seconds"), rationale: str = Rationale,
                   nats_url: Optional[str] = NatsUrl) -> None:
    """Open a new monitoring window for a held stage (no shorter than the channel's window)."""
    _release_action(release_id, nats_url, lambda ops, w, now: ops.extend(w, release_id, window, rationale, operator_actor(), now))


@release_app.command("rollback")
def release_rollback(release_id: str,
                     reason: str = typer.Option(..., "--rationale", "-m", "--reason",
                                                help="why: recorded with the decision (--reason: the older spelling)"),
                     trigger: str = typer.Option("operator", "--trigger", help="operator | policy_violation | tenant_impact"),
                     nats_url: Optional[str] = NatsUrl) -> None:
    """Roll every cohort of the release back to its strategy's target (pin in force, else pinned prior or last-known-good), atomically."""
    _release_action(release_id, nats_url, lambda ops, w, now: ops.rollback(w, release_id, trigger, reason, operator_actor(), now))


@release_app.command("close")
def release_close(release_id: str, outcome: str = typer.Option(..., "--outcome", help="failed | aborted"), rationale: str = Rationale,
                  nats_url: Optional[str] = NatsUrl) -> None:
    """End a held release as failed or aborted (e.g. escalated with no usable rollback target); never a success."""
    _release_action(release_id, nats_url, lambda ops, w, now: ops.close(w, release_id, outcome, rationale, operator_actor(), now))


@release_app.command("annotate")
def release_annotate(release_id: str, note: str = typer.Option("", "--note", "-m"), incident: Optional[str] = typer.Option(None, "--incident", help="incident or postmortem URL"),
                     nats_url: Optional[str] = NatsUrl) -> None:
    """Attach a note or an incident/postmortem link to the release's record."""
    _release_action(release_id, nats_url, lambda ops, w, now: ops.annotate(w, release_id, note, incident, operator_actor(), now))


def parse_until(text: str, now: datetime) -> datetime:
    """RFC 3339 (`2026-12-01T00:00:00Z`) or a duration from now (`90m`, `12h`, `7d`)."""
    units = {"m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units and text[:-1].isdigit():
        return now + timedelta(seconds=int(text[:-1]) * units[text[-1]])
    return parse_time(text, "--until (RFC 3339, or a duration like 12h or 7d)")


def _scopes_of(world, parts: tuple[str, ...]) -> list[tuple[str, str, str]]:
    env, channel = parts[0], parts[1]
    if len(parts) == 3:
        return [(env, channel, parts[2])]
    return [(env, channel, c) for c in world.channel_config(env, channel).cohort_names]


@app.command()
def pin(
    scope: str = typer.Argument(..., help="ENV/CHANNEL\\[/COHORT] (a channel pins every cohort)"),
    version: str = typer.Option(..., "--version"),
    until: str = typer.Option(..., "--until", help="RFC 3339 or a duration (12h, 7d); at most the channel's max_pin_days"),
    rationale: str = Rationale,
    nats_url: Optional[str] = NatsUrl,
) -> None:
    """Hold a scope on a pack until a time; a pack other than the active one is re-verified and switched atomically."""
    from events.model import Scope
    from services.consumers.pinner import pin as pin_action

    parts = scope_arg(scope)
    for env, channel, cohort in _pinned_targets(parts, nats_url):
        def build(world, now, subjects, env=env, channel=channel, cohort=cohort):
            event, expected = pin_action(world, Scope(env=env, channel=channel, cohort=cohort), version, parse_until(until, now), rationale, operator_actor(), now)
            return event, expected, subjects.scope_filter(env, channel, cohort)

        seq = _operator_action(nats_url, build)
        console.print(f"{env}/{channel}/{cohort} pinned to {version} (log seq {seq})")


@app.command()
def unpin(scope: str = typer.Argument(..., help="ENV/CHANNEL\\[/COHORT]"), rationale: str = Rationale, nats_url: Optional[str] = NatsUrl) -> None:
    """Lift a pin (the scope stays on its pack until the next release)."""
    from events.model import Scope
    from services.consumers.pinner import unpin as unpin_action

    for env, channel, cohort in _pinned_targets(scope_arg(scope), nats_url):
        def build(world, now, subjects, env=env, channel=channel, cohort=cohort):
            event, expected = unpin_action(world, Scope(env=env, channel=channel, cohort=cohort), rationale, operator_actor(), now)
            return event, expected, subjects.scope_filter(env, channel, cohort)

        seq = _operator_action(nats_url, build)
        console.print(f"{env}/{channel}/{cohort} unpinned (log seq {seq})")


def _pinned_targets(parts: tuple[str, ...], nats_url: Optional[str]) -> list[tuple[str, str, str]]:
    if len(parts) == 3:
        return [parts]  # type: ignore[list-item]
    from services.jetstream.log_reads import load_world

    async def go():
        async with session(nats_url) as (_, js, log):
            return await load_world(js, log.subjects, service_keys=_service_keys())

    return _scopes_of(run_async(go()), parts)


@app.command()
def status(
    as_json: bool = JsonOpt,
    all_releases: bool = typer.Option(False, "--all", help="list closed releases too"),
    nats_url: Optional[str] = NatsUrl,
) -> None:
    """Active pack per scope, and releases in flight with their stage (signed state only, with KX_SERVICE_KEYS)."""
    from services.jetstream.log_reads import load_signed_world
    from .views import release_rows, scope_rows, status_tables

    keys = _service_keys()

    async def go():
        async with session(nats_url) as (_, js, log):
            return await load_signed_world(js, log.subjects, keys)

    world, ignored = run_async(go())
    shown = {"scopes": scope_rows(world), "releases": release_rows(world, not all_releases), "log_seq": world.applied_seq,
             "signatures": "checked" if keys is not None else "not checked (set KX_SERVICE_KEYS or KX_DATA_DIR)",
             "ignored": [{"seq": seq, "why": why} for seq, why in sorted(ignored.items())]}

    def tables():
        for seq, why in sorted(ignored.items()):
            err_console.print(f"[red]ignored log seq {seq}: {why}[/red]")
        return status_tables(world, all_releases)

    output(as_json, shown, tables)


def _service_keys():
    """The service keys (settings.reader_service_keys): with them every view and decision of kxr
    uses signed state only, as the service does."""
    from services.settings import reader_service_keys

    from .common import settings_from

    return reader_service_keys(settings_from())


# ---- channels -----------------------------------------------------------------------------------
@channel_app.command("set")
def channel_set(
    scope: str = typer.Argument(..., help="ENV/CHANNEL"),
    file: Path = typer.Option(..., "--file", exists=True, dir_okay=False, help="TOML or JSON (CONTRACT §7)"),
    nats_url: Optional[str] = NatsUrl,
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


@channel_app.command("show")
def channel_show(scope: str = typer.Argument(..., help="ENV/CHANNEL"), as_json: bool = JsonOpt, nats_url: Optional[str] = NatsUrl) -> None:
    """The channel's current configuration: cohorts, plan, monitoring, compatibility, policy."""
    from services.jetstream.log_reads import load_world

    from .views import channel_tables

    env, channel = scope_arg(scope, allow_cohort=False)

    async def go():
        async with session(nats_url) as (_, js, log):
            return await load_world(js, log.subjects, service_keys=_service_keys())

    world = run_async(go())
    state, problem = world.channel_state(env, channel), world.channel_problem(env, channel)
    if state is None and problem is None:
        fail(f"channel {env}/{channel} is not configured (it has the default single cohort 'all' and fails compatibility closed)")
    shown = channel_shown(state, problem)
    output(as_json, shown, lambda: channel_tables(f"{env}/{channel}", shown))
    if problem is not None:  # shown in full above; and a script sees it in the exit status
        fail(f"{env}/{channel}: {problem.describe()}; requests to it are rejected until `kxr channel set` writes a valid one")


def channel_shown(state, problem) -> dict:
    """What `kxr channel show` prints: the last readable configuration and, if the newest entry
    could not be read, that problem (`config` is null when no entry ever could be)."""
    shown: dict = {"configured_at": None, "configured_by": None, "seq": None, "config": None,
                   "problem": {"seq": problem.seq, "reason": problem.reason, "message": problem.describe()} if problem else None}
    if state is not None:
        shown.update({"configured_at": state.configured_at.isoformat(), "configured_by": state.configured_by, "seq": state.seq,
                      "config": state.config.model_dump(mode="json", by_alias=True, exclude_none=True)})
    return shown
