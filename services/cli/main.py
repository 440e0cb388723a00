"""`kxr` entry point: commands for producers, operators and auditors."""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

import typer
from nats import errors as nats_errors
from nats.js.errors import NoStreamResponseError, NotFoundError

from events.model import Actor
from events.signing import SigningKey, TrustRoot, b64encode
from events.tokens import InvalidToken, check_token
from services.embedded import ServerError
from services.layout import LayoutError
from services.log import AppendConflict, AppendFailed, Entry
from services.settings import ConfigError, parse_roles
from .common import CliError, console, err_console, fail, print_json, read_config_file, read_json_file, run_async, scope_arg, session, settings_from

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Konnaxion Releases: move signed Runtime Packs into the runtime safely.")
keys_app = typer.Typer(no_args_is_help=True, help="Signing keys and the trust root.")
pack_app = typer.Typer(no_args_is_help=True, help="Sign, push and verify Runtime Packs.")
release_app = typer.Typer(no_args_is_help=True, help="Request and inspect releases.")
channel_app = typer.Typer(no_args_is_help=True, help="Channel configuration (cohorts, plan, monitoring, policy).")
audit_app = typer.Typer(no_args_is_help=True, help="Rebuild and check everything from the log alone.")
trust_app = typer.Typer(no_args_is_help=True, help="The trust root in force: the KX_TRUST_ROOT anchor plus rotations in the log.")
app.add_typer(keys_app, name="keys")
app.add_typer(pack_app, name="pack")
app.add_typer(release_app, name="release")
app.add_typer(channel_app, name="channel")
app.add_typer(trust_app, name="trust")
app.add_typer(audit_app, name="audit")

NatsUrl = typer.Option(None, "--nats-url", help="NATS server URL (default: $KX_NATS_URL)")


def _operator() -> Actor:
    return Actor(kind="operator", id=os.environ.get("KX_ACTOR") or os.environ.get("USER") or "operator")


# ---- serve / demo -------------------------------------------------------------------------------
@app.command()
def serve(
    nats_url: Optional[str] = NatsUrl,
    trust_root: Optional[Path] = typer.Option(None, "--trust-root", help="trust root file (default: $KX_TRUST_ROOT)"),
    only: Optional[str] = typer.Option(None, "--only", help="comma-separated consumers to run (default: all)"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="embedded NATS data (default: $KX_DATA_DIR or ./.kx-data)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run the release service (every consumer, or --only some of them)."""
    from services.serve import serve as run_serve

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_from(nats_url, trust_root, data_dir)
    settings = type(settings)(**{**settings.__dict__, "roles": parse_roles(only)})

    def ready(url: str) -> None:
        err_console.print(f"kxr serve: {', '.join(settings.roles)} running against {url} (Ctrl-C to stop)")

    run_async(run_serve(settings, ready))


@app.command()
def demo(
    window: float = typer.Option(3.0, "--window", help="monitoring window per stage, seconds"),
    keep: bool = typer.Option(False, "--keep", help="keep the demo's data directory"),
) -> None:
    """Embedded NATS, the service and simulated runtimes: a healthy release, a tampered pack, a regression."""
    from services.demo import run_demo

    code = run_async(run_demo(window_s=window, keep=keep))
    raise typer.Exit(code)


# ---- keys ---------------------------------------------------------------------------------------
@keys_app.command("generate")
def keys_generate(
    out: Path = typer.Argument(..., help="where to write the private key (JSON, mode 0600)"),
    name: str = typer.Option("producer", "--name"),
    trust_root: Optional[Path] = typer.Option(None, "--trust-root", help="also add the public key to this trust root file (created if absent)"),
    threshold: Optional[int] = typer.Option(None, "--threshold", help="set the trust root's threshold"),
) -> None:
    """Generate an Ed25519 signing key."""
    from services.keyfiles import write_secret

    key = SigningKey.generate()
    try:
        write_secret(out, json.dumps(key.to_file_dict(name), indent=2) + "\n")
    except FileExistsError:
        fail(f"{out} exists; refusing to overwrite a key")
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror}")
    if trust_root is not None:
        doc = read_json_file(trust_root, "trust root") if trust_root.exists() else {"version": 1, "threshold": 1, "keys": {}}
        doc.setdefault("keys", {})[key.keyid] = {"public": b64encode(key.public_raw), "name": name}
        if threshold is not None:
            doc["threshold"] = threshold
        try:
            TrustRoot.from_document(doc)
        except ValueError as exc:
            fail(f"the trust root would be invalid: {exc}")
        trust_root.write_text(json.dumps(doc, indent=2) + "\n")
    console.print(f"key {key.keyid} ({name}) written to {out}" + (f"; added to {trust_root}" if trust_root else ""))


# ---- packs --------------------------------------------------------------------------------------
@pack_app.command("sign")
def pack_sign(
    pack: Path = typer.Argument(..., exists=True, dir_okay=False, help="the pack file"),
    key: list[Path] = typer.Option(..., "--key", help="private key file(s); repeat for several signatures"),
    name: str = typer.Option(..., "--name"),
    version: str = typer.Option(..., "--version"),
    schema: str = typer.Option(..., "--schema"),
    profile: str = typer.Option(..., "--profile"),
    runtime: str = typer.Option(..., "--runtime", help="runtime version specifier, e.g. '>=2.3,<3'"),
    build_id: str = typer.Option(..., "--build-id"),
    builder: str = typer.Option(..., "--builder"),
    run: str = typer.Option(..., "--run", help="pipeline run id"),
    source: str = typer.Option(..., "--source", help="provenance source URI"),
    revision: str = typer.Option(..., "--revision"),
    ref: list[str] = typer.Option([], "--ref", help="provenance reference URI(s)"),
    expires_days: int = typer.Option(90, "--expires-days"),
    out: Optional[Path] = typer.Option(None, "--out", help="manifest path (default: PACK.manifest.json)"),
) -> None:
    """Write a signed manifest for a pack (CONTRACT §6)."""
    from events.tokens import check_token as _tok
    from events.versions import parse_version
    from services.producer import build_signed, manifest_bytes

    _tok(name, "pack name")
    try:
        parse_version(version)
    except ValueError as exc:
        fail(str(exc))
    keys = [SigningKey.from_file_dict(read_json_file(k, "key")) for k in key]
    data = pack.read_bytes()
    signed = build_signed(data, name=name, version=version, schema=schema, profile=profile, runtime=runtime,
                          build_id=build_id, builder=builder, run=run, source=source, revision=revision, refs=ref,
                          expires=datetime.now(timezone.utc) + timedelta(days=expires_days))
    target = out or pack.with_name(pack.name + ".manifest.json")
    target.write_bytes(manifest_bytes(signed, keys))
    console.print(f"manifest for {name}@{version} {signed['digest']} written to {target}")


@pack_app.command("push")
def pack_push(
    pack: Path = typer.Argument(..., exists=True, dir_okay=False),
    manifest: Path = typer.Argument(..., exists=True, dir_okay=False),
    nats_url: Optional[str] = NatsUrl,
) -> None:
    """Put a pack and its manifest into kx_packs, named by digest."""
    from services.producer import push_pack, sha256_digest

    data = pack.read_bytes()

    async def go() -> str:
        async with session(nats_url) as (_, js, log):
            return await push_pack(js, log.subjects, data, manifest.read_bytes(), sha256_digest(data))

    digest = run_async(go())
    console.print(f"pushed {pack.name} as {digest}")


@pack_app.command("verify")
def pack_verify(
    pack: Path = typer.Argument(..., exists=True, dir_okay=False),
    manifest: Path = typer.Argument(..., exists=True, dir_okay=False),
    trust_root: Optional[Path] = typer.Option(None, "--trust-root", help="default: $KX_TRUST_ROOT"),
) -> None:
    """Offline: the gates that need no service state (signature, expiry, integrity, evidence)."""
    from services.offline import verify_offline

    settings = settings_from(trust_root=trust_root)
    from services.settings import load_trust_root

    v = verify_offline(pack.read_bytes(), manifest.read_bytes(), load_trust_root(settings.trust_root_path), datetime.now(timezone.utc))
    for o in v.outcomes:
        console.print(f"{'pass' if o.ok else 'FAIL'}  {o.gate:<10} {o.code}  {o.message}")
    if v.failure is not None:
        fail(f"gate {v.failure.gate} failed: {v.failure.code}: {v.failure.message}")


# ---- releases -----------------------------------------------------------------------------------
@release_app.command("request")
def release_request(
    release_id: str = typer.Argument(..., help="the release id (a token you choose)"),
    target: str = typer.Option(..., "--target", help="ENV/CHANNEL"),
    manifest: Path = typer.Option(..., "--manifest", exists=True, dir_okay=False, help="the signed manifest (names the pack)"),
    pack: Optional[Path] = typer.Option(None, "--pack", exists=True, dir_okay=False, help="also push this pack and the manifest first"),
    owner: str = typer.Option(..., "--owner"),
    escalation: str = typer.Option(..., "--escalation"),
    plan: Optional[str] = typer.Option(None, "--plan", help="stages, e.g. 'internal;eu-early,us-early;rest'"),
    window: Optional[int] = typer.Option(None, "--window", help="monitoring window seconds"),
    min_samples: Optional[int] = typer.Option(None, "--min-samples"),
    rollback: str = typer.Option("lkg", "--rollback", help="lkg | pinned | none"),
    reason: str = typer.Option("", "--reason"),
    ack_no_health: bool = typer.Option(False, "--acknowledge-no-health", help="proceed even if no runtime reports health"),
    nats_url: Optional[str] = NatsUrl,
) -> None:
    """Request a release of the pack a manifest describes (CONTRACT §5)."""
    from services.producer import push_pack, request_release

    check_token(release_id, "release id")
    env, channel = scope_arg(target, allow_cohort=False)
    doc = read_json_file(manifest, "manifest")
    signed = doc.get("signed") if isinstance(doc, dict) else None
    if not isinstance(signed, dict) or not all(isinstance(signed.get(k), str) for k in ("name", "version", "digest")):
        fail(f"{manifest} has no signed name/version/digest")
    data: dict = {
        "pack": {"name": signed["name"], "version": signed["version"], "digest": signed["digest"]},
        "target": {"env": env, "channel": channel}, "owner": owner, "escalation": escalation,
        "rollback": {"strategy": rollback}, "reason": reason, "acknowledge_no_health": ack_no_health,
    }
    if plan:
        data["plan"] = [[c.strip() for c in stage.split(",") if c.strip()] for stage in plan.split(";")]
    if window is not None:
        data["monitoring"] = {"window_s": window, "min_samples": min_samples or 1}

    async def go() -> int:
        async with session(nats_url) as (_, js, log):
            if pack is not None:
                await push_pack(js, log.subjects, pack.read_bytes(), manifest.read_bytes())
            return await request_release(log, release_id, data, Actor(kind="producer", id=owner))

    seq = run_async(go())
    console.print(f"release {release_id} requested (log seq {seq}); follow it with: kxr release show {release_id}")


@release_app.command("show")
def release_show(
    release_id: str = typer.Argument(...),
    as_json: bool = typer.Option(False, "--json"),
    nats_url: Optional[str] = NatsUrl,
) -> None:
    """A release's timeline and evidence record."""
    from .queries import load_evidence
    from .views import gates_table, timeline_table

    check_token(release_id, "release id")

    async def go():
        async with session(nats_url) as (_, js, log):
            return await load_evidence(js, log.subjects, release_id)

    record = run_async(go())
    if not record.timeline:
        fail(f"no release {release_id} in the log")
    if as_json:
        print_json(record.to_json())
        return
    console.print(timeline_table(record))
    console.print(gates_table(record))
    outcome = record.outcome.get("outcome", "in flight")
    console.print(f"outcome: [bold]{outcome}[/bold] {record.outcome.get('summary', '')}")


def _operator_action(nats_url: Optional[str], build) -> int:
    """Rebuild the world, let `build(world, now)` decide the event, append it with its CAS."""
    from services.operator import OperatorError

    from .queries import load_world

    async def go() -> int:
        async with session(nats_url) as (_, js, log):
            world = await load_world(js, log.subjects)
            try:
                action = build(world, datetime.now(timezone.utc))
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
    from services import operator as ops

    check_token(release_id, "release id")

    def build_release(world, now):
        action = make(ops, world, now)
        from events.subjects import Subjects

        return action.event, action.expected_seq, Subjects(settings_from().prefix).release_filter(release_id)

    seq = _operator_action(nats_url, build_release)
    console.print(f"recorded (log seq {seq}); follow with: kxr release show {release_id}")


Rationale = typer.Option(..., "--rationale", "-m", help="why: recorded with the decision")


@release_app.command("pause")
def release_pause(release_id: str, rationale: str = Rationale, nats_url: Optional[str] = NatsUrl) -> None:
    """Stop automatic progression (no new stage, no promotion); rollbacks still happen."""
    _release_action(release_id, nats_url, lambda ops, w, now: ops.pause(w, release_id, rationale, _operator(), now))


@release_app.command("resume")
def release_resume(release_id: str, rationale: str = Rationale, nats_url: Optional[str] = NatsUrl) -> None:
    """Let a paused release continue."""
    _release_action(release_id, nats_url, lambda ops, w, now: ops.resume(w, release_id, rationale, _operator(), now))


@release_app.command("abort")
def release_abort(release_id: str, rationale: str = Rationale, nats_url: Optional[str] = NatsUrl) -> None:
    """Stop the release; every cohort it activated returns to its rollback target."""
    _release_action(release_id, nats_url, lambda ops, w, now: ops.abort(w, release_id, rationale, _operator(), now))


@release_app.command("promote")
def release_promote(release_id: str, rationale: str = Rationale, nats_url: Optional[str] = NatsUrl) -> None:
    """Pass a held (inconclusive) window on your word; recorded as an operator override."""
    _release_action(release_id, nats_url, lambda ops, w, now: ops.promote(w, release_id, rationale, _operator(), now))


@release_app.command("extend")
def release_extend(release_id: str, window: int = typer.Option(..., "--window", help="seconds"), rationale: str = Rationale,
                   nats_url: Optional[str] = NatsUrl) -> None:
    """Open a new monitoring window for a held stage."""
    _release_action(release_id, nats_url, lambda ops, w, now: ops.extend(w, release_id, window, rationale, _operator(), now))


@release_app.command("rollback")
def release_rollback(release_id: str, reason: str = typer.Option(..., "--reason"),
                     trigger: str = typer.Option("operator", "--trigger", help="operator | policy_violation | tenant_impact"),
                     nats_url: Optional[str] = NatsUrl) -> None:
    """Roll every cohort of the release back to its pin or last-known-good, in one atomic switch."""
    _release_action(release_id, nats_url, lambda ops, w, now: ops.rollback(w, release_id, trigger, reason, _operator(), now))


@release_app.command("annotate")
def release_annotate(release_id: str, note: str = typer.Option("", "--note", "-m"), incident: Optional[str] = typer.Option(None, "--incident", help="incident or postmortem URL"),
                     nats_url: Optional[str] = NatsUrl) -> None:
    """Attach a note or an incident/postmortem link to the release's record."""
    _release_action(release_id, nats_url, lambda ops, w, now: ops.annotate(w, release_id, note, incident, _operator(), now))


def parse_until(text: str, now: datetime) -> datetime:
    """RFC 3339 (`2026-12-01T00:00:00Z`) or a duration from now (`90m`, `12h`, `7d`)."""
    units = {"m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units and text[:-1].isdigit():
        return now + timedelta(seconds=int(text[:-1]) * units[text[-1]])
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        fail(f"--until {text!r} is neither RFC 3339 nor a duration like 12h or 7d")
    if at.tzinfo is None:
        fail("--until needs a timezone (e.g. a trailing Z)")
    return at


def _scopes_of(world, parts: tuple[str, ...]) -> list[tuple[str, str, str]]:
    env, channel = parts[0], parts[1]
    if len(parts) == 3:
        return [(env, channel, parts[2])]
    return [(env, channel, c) for c in world.channel_config(env, channel).cohort_names]


@app.command()
def pin(
    scope: str = typer.Argument(..., help="ENV/CHANNEL[/COHORT] (a channel pins every cohort)"),
    version: str = typer.Option(..., "--version"),
    until: str = typer.Option(..., "--until", help="RFC 3339 or a duration (12h, 7d); at most the channel's max_pin_days"),
    rationale: str = Rationale,
    nats_url: Optional[str] = NatsUrl,
) -> None:
    """Hold a scope on a pack until a time; a pack other than the active one is re-verified and switched atomically."""
    from events.model import Scope
    from services.pinner import pin as pin_action

    parts = scope_arg(scope)
    for env, channel, cohort in _pinned_targets(parts, nats_url):
        def build(world, now, env=env, channel=channel, cohort=cohort):
            event, expected = pin_action(world, Scope(env=env, channel=channel, cohort=cohort), version, parse_until(until, now), rationale, _operator(), now)
            return event, expected, event_scope_filter(env, channel, cohort)

        seq = _operator_action(nats_url, build)
        console.print(f"{env}/{channel}/{cohort} pinned to {version} (log seq {seq})")


@app.command()
def unpin(scope: str = typer.Argument(..., help="ENV/CHANNEL[/COHORT]"), rationale: str = Rationale, nats_url: Optional[str] = NatsUrl) -> None:
    """Lift a pin (the scope stays on its pack until the next release)."""
    from events.model import Scope
    from services.pinner import unpin as unpin_action

    for env, channel, cohort in _pinned_targets(scope_arg(scope), nats_url):
        def build(world, now, env=env, channel=channel, cohort=cohort):
            event, expected = unpin_action(world, Scope(env=env, channel=channel, cohort=cohort), rationale, _operator(), now)
            return event, expected, event_scope_filter(env, channel, cohort)

        seq = _operator_action(nats_url, build)
        console.print(f"{env}/{channel}/{cohort} unpinned (log seq {seq})")


def event_scope_filter(env: str, channel: str, cohort: str) -> str:
    from events.subjects import Subjects

    return Subjects(settings_from().prefix).scope_filter(env, channel, cohort)


def _pinned_targets(parts: tuple[str, ...], nats_url: Optional[str]) -> list[tuple[str, str, str]]:
    if len(parts) == 3:
        return [parts]  # type: ignore[list-item]
    from .queries import load_world

    async def go():
        async with session(nats_url) as (_, js, log):
            return await load_world(js, log.subjects)

    return _scopes_of(run_async(go()), parts)


@app.command()
def status(
    as_json: bool = typer.Option(False, "--json"),
    all_releases: bool = typer.Option(False, "--all", help="list closed releases too"),
    nats_url: Optional[str] = NatsUrl,
) -> None:
    """Active pack per scope, and releases in flight with their stage."""
    from .queries import load_world
    from .views import release_rows, scope_rows, status_tables

    async def go():
        async with session(nats_url) as (_, js, log):
            return await load_world(js, log.subjects)

    world = run_async(go())
    if as_json:
        print_json({"scopes": scope_rows(world), "releases": release_rows(world, not all_releases), "log_seq": world.applied_seq})
        return
    for t in status_tables(world, all_releases):
        console.print(t)


# ---- channels -----------------------------------------------------------------------------------
@channel_app.command("set")
def channel_set(
    scope: str = typer.Argument(..., help="ENV/CHANNEL"),
    file: Path = typer.Option(..., "--file", exists=True, dir_okay=False, help="TOML or JSON (CONTRACT §7)"),
    nats_url: Optional[str] = NatsUrl,
) -> None:
    """Configure a channel; every problem with the file is listed."""
    from services.producer import configure_channel, parse_channel_config

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
            return await configure_channel(log, js, env, channel, cfg, _operator())

    seq = run_async(go())
    console.print(f"channel {env}/{channel} configured (log seq {seq}): cohorts {', '.join(cfg.cohort_names)}")


@channel_app.command("show")
def channel_show(scope: str = typer.Argument(..., help="ENV/CHANNEL"), nats_url: Optional[str] = NatsUrl) -> None:
    """The channel's current configuration (JSON)."""
    from .queries import load_world

    env, channel = scope_arg(scope, allow_cohort=False)

    async def go():
        async with session(nats_url) as (_, js, log):
            return await load_world(js, log.subjects)

    state = run_async(go()).channel_state(env, channel)
    if state is None:
        fail(f"channel {env}/{channel} is not configured (it has the default single cohort 'all' and fails compatibility closed)")
    print_json({"configured_at": state.configured_at.isoformat(), "configured_by": state.configured_by, "seq": state.seq,
                "config": state.config.model_dump(mode="json", by_alias=True, exclude_none=True)})


# ---- audit --------------------------------------------------------------------------------------
@audit_app.command("replay")
def audit_replay(
    as_json: bool = typer.Option(False, "--json"),
    service_keys: Optional[Path] = typer.Option(None, "--service-keys", help="public service keys (default: $KX_SERVICE_KEYS)"),
    nats_url: Optional[str] = NatsUrl,
) -> None:
    """Replay KX_RELEASES from sequence 1: rebuild every projection, check every invariant and signature."""
    from services.settings import load_service_keys
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from services.audit import replay, summary

    keys_path = service_keys or settings_from().service_keys_path
    keys = load_service_keys(keys_path)
    started = time.perf_counter()
    with Progress(TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                  TimeElapsedColumn(), console=err_console, transient=True, disable=as_json) as bar:
        task = bar.add_task("replay", total=None, rate="")

        def progress(done: int, left: int) -> None:
            if done % 500 == 0 or left == 0:
                rate = done / max(time.perf_counter() - started, 1e-9)
                bar.update(task, completed=done, total=done + left, rate=f"{rate:,.0f} events/s")

        async def go():
            async with session(nats_url) as (_, js, log):
                return await replay(js, log.subjects, progress, service_keys=keys)

        audit = run_async(go())
    report = summary(audit)
    if as_json:
        print_json(report)
    else:
        elapsed = time.perf_counter() - started
        console.print(f"replayed {report['events']} events (log seq {report['log_seq']}) in {elapsed:.2f}s "
                      f"({report['events'] / max(elapsed, 1e-9):,.0f} events/s); releases: "
                      + ", ".join(f"{k} {v}" for k, v in report["releases"].items()))
        for v in audit.violations:
            console.print(v.line(), style="red", highlight=False, markup=False)
        if keys is None:
            console.print("signatures not checked: pass --service-keys or set KX_SERVICE_KEYS", style="yellow")
        if not audit.violations:
            console.print("no invariant violated", style="green")
    if audit.violations:
        raise typer.Exit(1)


@audit_app.command("release")
def audit_release(
    release_id: str = typer.Argument(...),
    as_json: bool = typer.Option(False, "--json"),
    html_file: Optional[Path] = typer.Option(None, "--html", help="write a self-contained page an auditor can archive"),
    nats_url: Optional[str] = NatsUrl,
) -> None:
    """The evidence record of one release (seed terms)."""
    from services.audit import render_html

    from .queries import load_evidence
    from .views import gates_table, timeline_table

    check_token(release_id, "release id")

    async def go():
        async with session(nats_url) as (_, js, log):
            return await load_evidence(js, log.subjects, release_id)

    record = run_async(go())
    if not record.timeline:
        fail(f"no release {release_id} in the log")
    if html_file is not None:
        html_file.write_text(render_html(record))
        console.print(f"evidence record of {release_id} written to {html_file}")
    elif as_json:
        print_json(record.to_json())
    else:
        console.print(timeline_table(record))
        console.print(gates_table(record))


@audit_app.command("schema")
def audit_schema() -> None:
    """The JSON Schema of `kxr audit release ID --json` (also in docs/schemas/)."""
    from projections.evidence_schema import schema_text

    sys.stdout.write(schema_text())


@audit_app.command("export")
def audit_export(
    release_id: str = typer.Argument(...),
    key: list[Path] = typer.Option(..., "--key", help="signing key(s) of the exporter"),
    out: Path = typer.Option(..., "--out", help="where to write the bundle (JSON)"),
    nats_url: Optional[str] = NatsUrl,
) -> None:
    """Write a signed evidence bundle (in-toto Statement in a DSSE envelope) for offline checks."""
    from events.bundle import make_bundle

    from .queries import load_evidence

    check_token(release_id, "release id")
    keys = [SigningKey.from_file_dict(read_json_file(k, "key")) for k in key]

    async def go():
        async with session(nats_url) as (_, js, log):
            return await load_evidence(js, log.subjects, release_id)

    record = run_async(go())
    if not record.timeline:
        fail(f"no release {release_id} in the log")
    out.write_text(json.dumps(make_bundle(record.to_json(), keys), indent=2) + "\n")
    console.print(f"evidence bundle of {release_id} written to {out}, signed by {len(keys)} key(s)")


@audit_app.command("verify")
def audit_verify(
    bundle: Path = typer.Argument(..., exists=True, dir_okay=False),
    trusted: Path = typer.Option(..., "--trusted", help="keys trusted to sign bundles (trust-root format: threshold + keys)"),
) -> None:
    """Verify an evidence bundle offline: signatures, statement, subject = the pack's digest."""
    from events.bundle import BundleError, verify_bundle
    from services.settings import load_trust_root

    try:
        stmt = verify_bundle(bundle.read_bytes(), load_trust_root(trusted))
    except BundleError as exc:
        fail(f"{bundle}: {exc}")
    record = stmt["predicate"]
    console.print(f"valid: release {record.get('release_id')} of {stmt['subject'][0]['name']} sha256:{stmt['subject'][0]['digest']['sha256'][:16]}…, "
                  f"outcome {record.get('outcome', {}).get('outcome', 'in flight')}, {len(record.get('timeline', []))} events")


@audit_app.command("at")
def audit_at(
    time_: str = typer.Argument(..., metavar="TIME", help="RFC 3339, e.g. 2026-11-27T10:00:00Z"),
    scope: Optional[str] = typer.Option(None, "--scope", help="ENV/CHANNEL[/COHORT]"),
    as_json: bool = typer.Option(False, "--json"),
    nats_url: Optional[str] = NatsUrl,
) -> None:
    """What was active where at that moment, from the log alone."""
    from services.audit import world_at

    from .views import scope_rows, table

    try:
        at = datetime.fromisoformat(time_.replace("Z", "+00:00"))
    except ValueError:
        fail(f"{time_!r} is not an RFC 3339 time")
    if at.tzinfo is None:
        fail("TIME needs a timezone (e.g. a trailing Z)")
    prefix = "/".join(scope_arg(scope)) if scope else ""

    async def go():
        async with session(nats_url) as (_, js, log):
            return await world_at(js, log.subjects, at)

    rows = [r for r in scope_rows(run_async(go())) if r["scope"] == prefix or r["scope"].startswith(prefix + "/") or not prefix]
    if as_json:
        print_json({"at": at.isoformat(), "scopes": rows})
    else:
        console.print(table(f"Active packs at {at.isoformat()}", rows, ["scope", "version", "digest", "kind", "release", "since", "lkg", "pinned"]))


# ---- trust root ---------------------------------------------------------------------------------
TrustRootOpt = typer.Option(None, "--trust-root", help="the anchor trust root (default: $KX_TRUST_ROOT)")


@trust_app.command("show")
def trust_show(trust_root: Optional[Path] = TrustRootOpt, as_json: bool = typer.Option(False, "--json"), nats_url: Optional[str] = NatsUrl) -> None:
    """The root in force, with every rotation accepted or refused."""
    from rich.table import Table

    from services.settings import load_trust_root
    from services.trust_ops import current_chain

    anchor = load_trust_root(settings_from(trust_root=trust_root).trust_root_path)

    async def go():
        async with session(nats_url) as (_, js, log):
            return await current_chain(js, log.subjects, anchor)

    chain = run_async(go())
    root = chain.current
    if as_json:
        print_json({"version": root.version, "threshold": root.threshold, "keys": root.to_document()["keys"],
                    "accepted_rotations": list(chain.accepted),
                    "refused_rotations": [{"seq": s, "code": c, "message": m} for s, c, m in chain.refused]})
        return
    t = Table(title=f"Trust root v{root.version} (threshold {root.threshold})", title_justify="left", header_style="bold")
    for c in ("keyid", "name"):
        t.add_column(c)
    for k in root.keys:
        t.add_row(k.keyid, k.name)
    console.print(t)
    for seq, code, message in chain.refused:
        console.print(f"refused rotation at log seq {seq}: {code}: {message}", style="red")


@trust_app.command("rotate")
def trust_rotate(
    new_root: Path = typer.Argument(..., exists=True, dir_okay=False, help="the new root: {version, threshold, keys}"),
    key: list[Path] = typer.Option(..., "--key", help="signing keys: a threshold of the current root's AND of the new root's"),
    rationale: str = typer.Option(..., "--rationale"),
    trust_root: Optional[Path] = TrustRootOpt,
    nats_url: Optional[str] = NatsUrl,
) -> None:
    """Hand the trust root over to a new version (recorded in the log as trust.rotated)."""
    from events.trust import RotationError
    from services.settings import load_trust_root
    from services.trust_ops import rotate

    anchor = load_trust_root(settings_from(trust_root=trust_root).trust_root_path)
    doc = read_json_file(new_root, "new trust root")
    keys = [SigningKey.from_file_dict(read_json_file(k, "key")) for k in key]

    async def go():
        async with session(nats_url) as (_, js, log):
            return await rotate(log, js, anchor, doc, keys, _operator(), rationale)

    try:
        seq, new = run_async(go())
    except RotationError as exc:
        fail(f"rotation refused: {exc.code}: {exc}")
    console.print(f"trust root v{new.version} in force (log seq {seq}), threshold {new.threshold}, {len(new.keys)} key(s)")


def run() -> None:
    """Console entry: every expected failure is one line on stderr and a non-zero exit."""
    try:
        app(standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (CliError, ConfigError, InvalidToken, LayoutError, ServerError, AppendConflict, AppendFailed) as exc:
        _one_line(f"kxr: error: {exc}")
        sys.exit(2)
    except typer.Abort:
        _one_line("kxr: aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except nats_errors.Error as exc:
        if isinstance(exc, (NoStreamResponseError, NotFoundError, nats_errors.NoRespondersError)):
            _one_line("kxr: error: the release log is not on this NATS server (start `kxr serve` once to create it)")
        else:
            _one_line(f"kxr: error: NATS: {exc.__class__.__name__}: {exc}")
        sys.exit(2)
    except Exception as exc:  # usage errors and anything unforeseen: still one line
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # click's (typer's) usage errors
            _one_line(f"kxr: error: {exc.format_message()}")
            sys.exit(exc.exit_code)
        _one_line(f"kxr: error: unexpected {exc.__class__.__name__}: {exc}")
        sys.exit(1)


def _one_line(message: str) -> None:
    """Errors are one line whatever the terminal width: scripts and people both grep them."""
    sys.stderr.write(" ".join(message.split()) + "\n")
