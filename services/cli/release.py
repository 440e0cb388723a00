"""`kxr release …`: request a release (producers), inspect it, and the operator's decisions on it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import typer

from . import checks
from .common import (
    JsonOpt,
    NatsUrl,
    Rationale,
    WideOpt,
    console,
    err_console,
    fail,
    operator_action,
    operator_actor,
    output,
    read_json_file,
    run_async,
    scope_arg,
    service_keys,
    session,
)
from .pack import AttestationOpt, attestation_bytes
from .readmodel import Folding, FoldOpt, from_model

app = typer.Typer(no_args_is_help=True, help="Request and inspect releases.")


# ---- inspect and decide (operators) -------------------------------------------------------------
@app.command("show")
def release_show(
    release_id: str = typer.Argument(...),
    as_json: bool = JsonOpt,
    wide: bool = WideOpt,
    nats_url: str | None = NatsUrl,
) -> None:
    """A release's timeline and evidence record (the same as `kxr audit release`)."""
    from .audit import audit_release

    audit_release(release_id, as_json, None, nats_url, wide)


def _release_action(release_id: str, nats_url: str | None, make, reads: str = "release") -> None:
    """Decide on the release's own events (and its channel or scopes, per `reads`:
    services/reads/model_world.py release_world), never a fold of the whole log, and append."""
    from events.tokens import check_token
    from services.actions import operator as ops
    from services.reads.model_world import release_world

    check_token(release_id, "release id")
    keys = service_keys()

    def build_release(world, now, subjects):
        action = make(ops, world, now)
        return action.event, action.expected_seq, subjects.release_filter(release_id)

    seq = operator_action(
        nats_url, build_release, lambda js, subjects: release_world(js, subjects, keys, release_id, reads)
    )
    console.print(f"recorded (log seq {seq}); follow with: kxr release show {release_id}")


@app.command("pause")
def release_pause(release_id: str, rationale: str = Rationale, nats_url: str | None = NatsUrl) -> None:
    """Stop automatic progression (no new stage, no promotion); rollbacks still happen."""
    _release_action(
        release_id, nats_url, lambda ops, w, now: ops.pause(w, release_id, rationale, operator_actor(), now)
    )


@app.command("resume")
def release_resume(release_id: str, rationale: str = Rationale, nats_url: str | None = NatsUrl) -> None:
    """Let a paused release continue."""
    _release_action(
        release_id, nats_url, lambda ops, w, now: ops.resume(w, release_id, rationale, operator_actor(), now)
    )


@app.command("abort")
def release_abort(release_id: str, rationale: str = Rationale, nats_url: str | None = NatsUrl) -> None:
    """Stop the release; every cohort it activated returns to its rollback target."""
    _release_action(
        release_id, nats_url, lambda ops, w, now: ops.abort(w, release_id, rationale, operator_actor(), now)
    )


@app.command("promote")
def release_promote(release_id: str, rationale: str = Rationale, nats_url: str | None = NatsUrl) -> None:
    """Pass a held (inconclusive) window on your word; recorded as an operator override."""
    _release_action(
        release_id, nats_url, lambda ops, w, now: ops.promote(w, release_id, rationale, operator_actor(), now)
    )


@app.command("extend")
def release_extend(
    release_id: str,
    window: int = typer.Option(..., "--window", min=1, help="seconds"),
    rationale: str = Rationale,
    nats_url: str | None = NatsUrl,
) -> None:
    """Open a new monitoring window for a held stage (no shorter than the channel's window)."""
    _release_action(
        release_id,
        nats_url,
        lambda ops, w, now: ops.extend(w, release_id, window, rationale, operator_actor(), now),
        reads="channel",
    )


@app.command("rollback")
def release_rollback(
    release_id: str,
    reason: str = typer.Option(
        ..., "--rationale", "-m", "--reason", help="why: recorded with the decision (--reason: the older spelling)"
    ),
    trigger: str = typer.Option(
        "operator",
        "--trigger",
        callback=checks.one_of(*checks.ROLLBACK_TRIGGERS),
        help="operator | policy_violation | tenant_impact",
    ),
    nats_url: str | None = NatsUrl,
) -> None:
    """Roll every cohort of the release back to its strategy's target (pin in force, else pinned prior or last-known-good), atomically. Also after it closed: its pack is then known good there no longer."""  # noqa: E501 (help text)
    _release_action(
        release_id,
        nats_url,
        lambda ops, w, now: ops.rollback(w, release_id, trigger, reason, operator_actor(), now),
        reads="scopes",
    )


@app.command("close")
def release_close(
    release_id: str,
    outcome: str = typer.Option(
        ..., "--outcome", callback=checks.one_of(*checks.CLOSE_OUTCOMES), help="failed | aborted"
    ),
    rationale: str = Rationale,
    nats_url: str | None = NatsUrl,
) -> None:
    """End a held release as failed or aborted (e.g. escalated with no usable rollback target); never a success."""
    _release_action(
        release_id, nats_url, lambda ops, w, now: ops.close(w, release_id, outcome, rationale, operator_actor(), now)
    )


@app.command("annotate")
def release_annotate(
    release_id: str,
    note: str = typer.Option("", "--note", "-m"),
    incident: str | None = typer.Option(None, "--incident", callback=checks.uri, help="incident or postmortem URL"),
    nats_url: str | None = NatsUrl,
) -> None:
    """Attach a note or an incident/postmortem link to the release's record."""
    _release_action(
        release_id, nats_url, lambda ops, w, now: ops.annotate(w, release_id, note, incident, operator_actor(), now)
    )


@app.command("list")
def release_list(
    channel: str | None = typer.Option(
        None, "--channel", help="only releases targeting ENV/CHANNEL (or CHANNEL, in any env)"
    ),
    outcome: str | None = typer.Option(
        None,
        "--outcome",
        help="success | promoted_by_override | rolled_back | pinned | aborted | rejected | failed | in-flight",
    ),
    since: str | None = typer.Option(
        None, "--since", help="requested or still open since: RFC 3339 time or a duration (7d, 12h, 30m)"
    ),
    limit: int = typer.Option(50, "--limit", min=1, help="at most this many, newest first"),
    as_json: bool = JsonOpt,
    fold: bool = FoldOpt,
    nats_url: str | None = NatsUrl,
) -> None:
    """Release history, newest first: closed releases too (`kxr status` shows those in flight)."""
    from datetime import UTC, datetime

    from services.reads.history import parse_filter, table_row

    from .views import table

    try:
        flt = parse_filter(channel, outcome, since, now=datetime.now(UTC))
    except ValueError as exc:
        fail(str(exc))
    keys = service_keys()

    async def model_list(view):
        from services.reads.model_reads import ignored_of
        from services.reads.model_reads import release_list as from_view

        shown, total = await from_view(view, flt.channel, flt.outcome, flt.since, limit)
        return shown, total, ignored_of(view.position)

    answer = None if fold else from_model(nats_url, keys, model_list)
    ignored: Mapping[int, str] = {}
    if answer is None or isinstance(answer, Folding):
        shown, total, ignored = folded_list(nats_url, keys, flt, limit)
    else:  # the service's fold noted what counts for nothing (e.g. what does not decode): listed as the fold does
        shown, total, ignored = answer

    def tables():
        for seq, why in sorted(ignored.items()):
            err_console.print(f"[red]ignored log seq {seq}: {why}[/red]")
        if getattr(ignored, "total", 0) > len(ignored):
            more = getattr(ignored, "total", 0) - len(ignored)
            err_console.print(f"[red]… and {more} older ignored entries (kxr audit replay lists every one)[/red]")
        columns = ["release", "pack", "target", "outcome", "stages", "requested", "took"]
        title = f"Releases, newest first ({len(shown)} shown, {total} in the log)"
        return [table(title, [table_row(s) for s in shown], columns)]

    output(as_json, shown, tables)


def folded_list(nats_url: str | None, keys, flt, limit: int) -> tuple[list[dict], int, Mapping[int, str]]:
    """`kxr release list --json` from the log (the index of each release's request and close, then
    the chosen releases whole), with the number of releases and the entries ignored."""
    from services.reads.history import load_history, summary
    from services.reads.shapes import ReleaseSummary, dump

    async def go():
        async with session(nats_url) as (_, js, log):
            return await load_history(
                js, log.subjects, keys, channel=flt.channel, outcome=flt.outcome, since=flt.since, limit=limit
            )

    history = run_async(go())
    shown = dump([ReleaseSummary.model_validate(summary(i)) for i in history.items])  # its documented shape
    return shown, history.total, history.ignored


# ---- request (producers) -----------------------------------------------------------------------
def _request_options(rollback: str, window: int | None, min_samples: int | None) -> tuple[dict, dict | None]:
    """The request's rollback plan and monitoring, checked by the contract's own models before
    anything is read or sent: a bad value is one line and exit 2, never a rejection later. Either
    monitoring option may come alone: what the request leaves out is the channel's (CONTRACT §7)."""
    from pydantic import ValidationError

    from events.model import RequestedMonitoring, RollbackPlan

    asked = {k: v for k, v in (("window_s", window), ("min_samples", min_samples)) if v is not None}
    try:
        plan = RollbackPlan.model_validate({"strategy": rollback}).model_dump()
        monitoring = (
            RequestedMonitoring.model_validate(asked).model_dump(exclude={"thresholds"}, exclude_none=True)
            if asked
            else None
        )
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = {"strategy": "--rollback", "window_s": "--window", "min_samples": "--min-samples"}.get(
            str(problem["loc"][0]), ""
        )
        fail(f"{where} {problem['input']!r}: {problem['msg'].lower()}".strip())
    return plan, monitoring


@app.command("request")
def release_request(
    release_id: str = typer.Argument(..., help="the release id (a token you choose)"),
    target: str = typer.Option(..., "--target", help="ENV/CHANNEL"),
    manifest: Path = typer.Option(
        ..., "--manifest", exists=True, dir_okay=False, help="the signed manifest (names the pack)"
    ),
    pack: Path | None = typer.Option(
        None, "--pack", exists=True, dir_okay=False, help="also push this pack and the manifest first"
    ),
    owner: str = typer.Option(..., "--owner"),
    escalation: str = typer.Option(..., "--escalation"),
    plan: str | None = typer.Option(
        None, "--plan", callback=checks.plan, help="stages, e.g. 'internal;eu-early,us-early;rest'"
    ),
    window: int | None = typer.Option(
        None, "--window", min=1, help="monitoring window seconds (default: the channel's)"
    ),
    min_samples: int | None = typer.Option(None, "--min-samples", min=1, help="default: the channel's"),
    rollback: str = typer.Option(
        "lkg", "--rollback", callback=checks.one_of(*checks.ROLLBACK_STRATEGIES), help="lkg | pinned | none"
    ),
    reason: str = typer.Option("", "--reason"),
    ack_no_health: bool = typer.Option(
        False, "--acknowledge-no-health", help="proceed even if no runtime reports health"
    ),
    attestation: Path | None = AttestationOpt,
    nats_url: str | None = NatsUrl,
) -> None:
    """Request a release of the pack a manifest describes (CONTRACT §5)."""
    from events.model import Actor
    from events.tokens import check_token
    from services.actions.producer import push_attestation, push_pack, request_release

    check_token(release_id, "release id")
    env, channel = scope_arg(target, allow_cohort=False)
    rollback_plan, monitoring = _request_options(rollback, window, min_samples)
    doc = read_json_file(manifest, "manifest")
    signed = doc.get("signed") if isinstance(doc, dict) else None
    if not isinstance(signed, dict) or not all(isinstance(signed.get(k), str) for k in ("name", "version", "digest")):
        fail(f"{manifest} has no signed name/version/digest")
    data: dict = {
        "pack": {"name": signed["name"], "version": signed["version"], "digest": signed["digest"]},
        "target": {"env": env, "channel": channel},
        "owner": owner,
        "escalation": escalation,
        "rollback": rollback_plan,
        "reason": reason,
        "acknowledge_no_health": ack_no_health,
    }
    if plan:
        data["plan"] = [[c.strip() for c in stage.split(",") if c.strip()] for stage in plan.split(";")]
    if monitoring is not None:
        data["monitoring"] = monitoring
    attested = attestation_bytes(attestation, signed["digest"])
    # read here, not on the event loop
    pushed = (pack.read_bytes(), manifest.read_bytes()) if pack is not None else None

    async def go() -> int:
        async with session(nats_url) as (_, js, log):
            if pushed is not None:
                await push_pack(js, log.subjects, *pushed)
            if attested is not None:  # before the request: the distributor looks for it at once
                await push_attestation(js, log.subjects, signed["digest"], attested)
            return await request_release(log, release_id, data, Actor(kind="producer", id=owner))

    seq = run_async(go())
    console.print(f"release {release_id} requested (log seq {seq}); watch it with: kxr watch {release_id}")
