"""`kxr audit …`: replay, evidence records, time travel, signed bundles: everything from the log alone."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from .common import (
    JsonOpt,
    NatsUrl,
    WideOpt,
    console,
    err_console,
    fail,
    output,
    parse_time,
    print_json,
    read_key_file,
    run_async,
    scope_arg,
    session,
    settings_from,
)

app = typer.Typer(no_args_is_help=True, help="Rebuild and check everything from the log alone.")


@app.command("replay")
def audit_replay(
    as_json: bool = JsonOpt,
    service_keys: Path | None = typer.Option(
        None, "--service-keys", help="public service keys (default: $KX_SERVICE_KEYS)"
    ),
    nats_url: str | None = NatsUrl,
) -> None:
    """Replay KX_RELEASES from sequence 1: rebuild every projection, check every invariant and signature."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from services.reads.audit import replay, summary
    from services.settings import load_service_keys

    keys_path = service_keys or settings_from().service_keys_path
    keys = load_service_keys(keys_path)
    started = time.perf_counter()
    with Progress(
        TextColumn("replaying"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=as_json,
    ) as bar:
        task = bar.add_task("replay", total=None, rate="")

        def progress(done: int, left: int) -> None:  # once per batch read (a few hundred entries)
            rate = done / max(time.perf_counter() - started, 1e-9)
            bar.update(task, completed=done, total=done + left, rate=f"{rate:,.0f} events/s")

        async def go():
            async with session(nats_url) as (_, js, log):
                return await replay(js, log.subjects, progress, service_keys=keys)

        audit = run_async(go())
    report = replay_report(audit, summary(audit))
    if as_json:
        print_json(report)
    else:
        elapsed = time.perf_counter() - started
        console.print(
            f"replayed {report['events']} events (log seq {report['log_seq']}) in {elapsed:.2f}s "
            f"({report['events'] / max(elapsed, 1e-9):,.0f} events/s); releases: "
            + ", ".join(f"{k} {v}" for k, v in report["releases"].items())
        )
        for v in audit.violations:
            console.print(v.line(), style="red", highlight=False, markup=False)
        broken = {code: n for code, n in report["safety"].items() if n}
        console.print(
            f"safety invariants: {len(report['safety']) - len(broken)} of {len(report['safety'])} held"
            + ("; broken: " + ", ".join(f"{code} ({n})" for code, n in broken.items()) if broken else ""),
            style="red" if broken else "green",
            highlight=False,
            markup=False,
        )
        if keys is None:
            console.print("signatures not checked: pass --service-keys or set KX_SERVICE_KEYS", style="yellow")
        if not audit.violations:
            console.print("no invariant violated", style="green")
    if audit.violations:
        raise typer.Exit(1)


def replay_report(audit, report: dict) -> dict:
    """`summary`'s report in the CLI's shapes: each scope's lkg and pin as a pack `{name, version, digest}`."""
    from services.reads.shapes import AuditReplay, ReplayScope, dump, pack

    scopes = {
        "/".join(key): ReplayScope(
            **{k: v for k, v in report["scopes"]["/".join(key)].items() if k not in ("lkg", "pinned")},
            lkg=pack(s.lkg),
            pinned=pack(s.pin.pack) if s.pin else None,
        )
        for key, s in sorted(audit.world.scopes.items())
    }
    return dump(AuditReplay(**{**report, "scopes": scopes}))


def evidence_or_fail(release_id: str, nats_url: str | None):
    """The release's evidence record from the log, or a one-line error if it has none."""
    from events.tokens import check_token
    from services.jetstream.log_reads import load_evidence

    check_token(release_id, "release id")

    async def go():
        async with session(nats_url) as (_, js, log):
            return await load_evidence(js, log.subjects, release_id)

    record = run_async(go())
    if not record.timeline:
        fail(f"no release {release_id} in the log")
    return record


@app.command("release")
def audit_release(
    release_id: str = typer.Argument(...),
    as_json: bool = JsonOpt,
    html_file: Path | None = typer.Option(None, "--html", help="write a self-contained page an auditor can archive"),
    nats_url: str | None = NatsUrl,
    wide: bool = WideOpt,
) -> None:
    """The evidence record of one release (seed terms)."""
    from rich.markup import escape

    from services.reads.audit import render_html

    from .views import gates_table, timeline_table, windows_table

    record = evidence_or_fail(release_id, nats_url)
    if html_file is not None:
        html_file.write_text(render_html(record))
        console.print(f"evidence record of {release_id} written to {html_file}")
    else:
        outcome = record.outcome.get("outcome", "in flight")
        output(
            as_json,
            record.to_json(),
            lambda: [
                timeline_table(record, wide),
                gates_table(record, wide),
                windows_table(record, wide),
                f"outcome: [bold]{outcome}[/bold] {escape(record.outcome.get('summary', ''))}",
            ],
            wide,
        )


@app.command("schema")
def audit_schema() -> None:
    """The JSON Schema of `kxr audit release ID --json` (also in docs/schemas/)."""
    from projections.evidence_schema import schema_text

    sys.stdout.write(schema_text())


EXPORT_FORMATS = ("bundle", "cloudevents")


@app.command("export")
def audit_export(
    release_id: str = typer.Argument(...),
    key: list[Path] | None = typer.Option(None, "--key", help="signing key(s) of the exporter (bundle)"),
    out: Path | None = typer.Option(None, "--out", help="where to write it (bundle: required; cloudevents: stdout)"),
    fmt: str = typer.Option(
        "bundle",
        "--format",
        help="bundle: a signed evidence bundle (in-toto Statement in a DSSE envelope); "
        "cloudevents: the release's events as CloudEvents 1.0, one JSON object per line",
    ),
    nats_url: str | None = NatsUrl,
) -> None:
    """Write a signed evidence bundle for offline checks, or the release's events as CloudEvents (NDJSON)."""
    if fmt not in EXPORT_FORMATS:
        fail(f"--format takes {' or '.join(EXPORT_FORMATS)}, not {fmt!r}")
    if fmt == "cloudevents":
        lines = cloudevents_or_fail(release_id, nats_url)
        text = "".join(line + "\n" for line in lines)
        if out is None:
            sys.stdout.write(text)
            return
        out.write_text(text)
        err_console.print(f"{len(lines)} events of {release_id} written to {out} as CloudEvents")
        return
    if not key:
        fail("a bundle is signed: give --key (the exporter's signing key file)")
    if out is None:
        fail("a bundle is written to a file: give --out")
    from events.bundle import make_bundle

    keys = [read_key_file(k) for k in key]
    record = evidence_or_fail(release_id, nats_url)
    out.write_text(json.dumps(make_bundle(record.to_json(), keys), indent=2) + "\n")
    console.print(f"evidence bundle of {release_id} written to {out}, signed by {len(keys)} key(s)")


def cloudevents_or_fail(release_id: str, nats_url: str | None) -> list[str]:
    """The release's events (its own subjects and its notification records), in log order, each as a
    CloudEvent (events/cloudevents.py) on one compact JSON line; a one-line error if it has none.
    `data` is each envelope as logged (the log's bytes, parsed): an entry that is not a valid
    event is left out, as every reader of the log leaves it out."""
    from events.canonical import compact_bytes
    from events.cloudevents import source_of, to_cloudevent
    from events.tokens import check_token
    from services.jetstream.log_reads import log_entries

    check_token(release_id, "release id")

    async def go() -> list[str]:
        async with session(nats_url) as (_, js, log):
            s = log.subjects
            filters = [s.release_filter(release_id), s.notification_filter(release_id)]
            return [
                compact_bytes(to_cloudevent(event, source_of(s.prefix), envelope=json.loads(entry.data))).decode()
                async for entry, _, event in log_entries(js, s, filters)
                if event is not None
            ]

    lines = run_async(go())
    if not lines:
        fail(f"no release {release_id} in the log")
    return lines


@app.command("verify")
def audit_verify(
    bundle: Path = typer.Argument(..., exists=True, dir_okay=False),
    trusted: Path = typer.Option(
        ..., "--trusted", help="keys trusted to sign bundles (trust-root format: threshold + keys)"
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Verify an evidence bundle offline: signatures, statement, subject = the pack's digest."""
    from events.bundle import BundleError, verify_bundle
    from services.settings import load_trust_root

    try:
        stmt = verify_bundle(bundle.read_bytes(), load_trust_root(trusted))
    except BundleError as exc:
        fail(f"{bundle}: {exc}")
    from services.reads.shapes import AuditVerify, Pack, dump

    from .views import cell

    record = stmt["predicate"]
    digest = "sha256:" + stmt["subject"][0]["digest"]["sha256"]
    named = record.get("pack") or {}
    shown = dump(
        AuditVerify(
            valid=True,
            release_id=record.get("release_id"),
            pack=Pack(name=named.get("name"), version=named.get("version"), digest=digest),
            outcome=record.get("outcome", {}).get("outcome", "in flight"),
            events=len(record.get("timeline", [])),
        )
    )
    output(
        as_json,
        shown,
        lambda: [
            f"valid: release {shown['release_id']} of {shown['pack']['name']}@{shown['pack']['version']} "
            f"{cell(digest)}, outcome {shown['outcome']}, {shown['events']} events"
        ],
    )


@app.command("at")
def audit_at(
    time_: str = typer.Argument(..., metavar="TIME", help="RFC 3339, e.g. 2026-11-27T10:00:00Z"),
    scope: str | None = typer.Option(None, "--scope", help="ENV/CHANNEL\\[/COHORT]"),
    as_json: bool = JsonOpt,
    wide: bool = WideOpt,
    nats_url: str | None = NatsUrl,
) -> None:
    """What was active where at that moment, from the log alone."""
    from services.reads.audit import world_at
    from services.reads.shapes import AuditAt, dump, rfc3339, scopes

    from .views import scope_tables

    at = parse_time(time_, "TIME")
    prefix = "/".join(scope_arg(scope)) if scope else ""

    async def go():
        async with session(nats_url) as (_, js, log):
            return await world_at(js, log.subjects, at)

    rows = [r for r in scopes(run_async(go())) if r.scope == prefix or r.scope.startswith(prefix + "/") or not prefix]
    shown = dump(AuditAt(at=rfc3339(at), scope=prefix or None, scopes=rows))
    output(
        as_json,
        shown,
        lambda: scope_tables(f"Active packs at {shown['at']}", shown["scopes"], wide, flag=False),
        wide,
    )
