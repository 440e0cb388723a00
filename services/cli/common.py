"""What every `kxr` command shares: connecting, failing with one clear line, output."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable

import typer
from rich.console import Console

from events.canonical import StrictJSONError, loads_strict
from events.model import Actor
from events.subjects import Subjects
from services.app import connect
from services.jetstream.log import EventLog
from services.settings import ConfigError, Settings

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Konnaxion Releases: move signed Runtime Packs into the runtime safely.")
keys_app = typer.Typer(no_args_is_help=True, help="Signing keys and the trust root.")
pack_app = typer.Typer(no_args_is_help=True, help="Sign, push and verify Runtime Packs.")
release_app = typer.Typer(no_args_is_help=True, help="Request and inspect releases.")
channel_app = typer.Typer(no_args_is_help=True, help="Channel configuration (cohorts, plan, monitoring, policy).")
audit_app = typer.Typer(no_args_is_help=True, help="Rebuild and check everything from the log alone.")
trust_app = typer.Typer(no_args_is_help=True, help="The trust root in force: the KX_TRUST_ROOT anchor plus rotations in the log.")
def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            console.print(f"kxr {version('konnaxion-releases')}")
        except PackageNotFoundError:  # run from a source tree without an install
            console.print("kxr (not installed)")
        raise typer.Exit(0)


@app.callback()
def _main(show_version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                            help="print kxr's version and exit")) -> None:
    """Konnaxion Releases: move signed Runtime Packs into the runtime safely."""


app.add_typer(keys_app, name="keys")
app.add_typer(pack_app, name="pack")
app.add_typer(release_app, name="release")
app.add_typer(channel_app, name="channel")
app.add_typer(trust_app, name="trust")
app.add_typer(audit_app, name="audit")

NatsUrl = typer.Option(None, "--nats-url", help="NATS server URL (default: $KX_NATS_URL)")
Rationale = typer.Option(..., "--rationale", "-m", help="why: recorded with the decision")
TrustRootOpt = typer.Option(None, "--trust-root", help="the anchor trust root (default: $KX_TRUST_ROOT)")


def operator_actor() -> Actor:
    return Actor(kind="operator", id=os.environ.get("KX_ACTOR") or os.environ.get("USER") or "operator")


class CliError(Exception):
    """Printed as `kxr: error: <message>` with a non-zero exit, never a traceback."""


def fail(message: str) -> None:
    raise CliError(message)


def run_async(coro) -> Any:
    """`asyncio.run(coro)`, with the result handed back outside the main task.

    On Python 3.11, `asyncio.run` ends with `signal.getsignal(SIGINT)`, which formats the
    repr of its SIGINT handler: a partial holding the main task, whose repr holds the
    task's result. For a replay that result is the whole world (10^5 releases): formatting
    it took a third of `kxr audit replay`. The main task returns None instead.
    """
    box: list[Any] = []

    async def main() -> None:
        box.append(await coro)

    asyncio.run(main())
    return box[0]


def settings_from(nats_url: str | None = None, trust_root: Path | None = None, data_dir: Path | None = None) -> Settings:
    return Settings.from_env(nats_url=nats_url, trust_root_path=trust_root, data_dir=data_dir)


@asynccontextmanager
async def session(nats_url: str | None) -> AsyncIterator[tuple[Any, Any, EventLog]]:
    """A connection for one command. Commands other than serve/demo need a running NATS."""
    settings = settings_from(nats_url)
    if not settings.nats_url:
        raise ConfigError("no NATS to talk to: set KX_NATS_URL or pass --nats-url (kxr serve prints its URL)")
    try:
        nc = await connect(settings.nats_url, name="kxr-cli", reconnect_forever=False)
    except Exception as exc:
        raise ConfigError(f"cannot reach NATS at {settings.nats_url}: {exc.__class__.__name__}: {exc}") from None
    try:
        js = nc.jetstream(timeout=10)
        yield nc, js, EventLog(nc, js, Subjects(settings.prefix))
    finally:
        await nc.close()


def read_json_file(path: Path, what: str, max_bytes: int = 4 * 1024 * 1024) -> Any:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        return loads_strict(raw, allow_floats=True, max_bytes=max_bytes)
    except StrictJSONError as exc:
        raise CliError(f"{what} {path} is not valid JSON: {exc}") from None


def read_config_file(path: Path, what: str) -> Any:
    """TOML (by extension) or JSON."""
    if path.suffix.lower() == ".toml":
        import tomllib

        try:
            return tomllib.loads(path.read_text())
        except OSError as exc:
            raise CliError(f"cannot read {what} {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise CliError(f"{what} {path} is not valid TOML: {exc}") from None
    return read_json_file(path, what)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


JsonOpt = typer.Option(False, "--json", help="JSON on stdout, for scripts (default: readable tables)")


def output(as_json: bool, data: Any, render: Callable[[], Iterable[Any]]) -> None:
    """What every read command prints: `data` as JSON for scripts, else `render()`'s tables and lines.

    `render` is only called for people, so it may be as chatty as it likes.
    """
    if as_json:
        print_json(data)
        return
    for part in render():
        console.print(part)


def scope_arg(text: str, allow_cohort: bool = True) -> tuple[str, ...]:
    from events.tokens import check_token

    parts = text.split("/")
    if len(parts) not in ((2, 3) if allow_cohort else (2,)):
        raise typer.BadParameter(f"expected ENV/CHANNEL{'[/COHORT]' if allow_cohort else ''}, got {text!r}")
    return tuple(check_token(p, name) for p, name in zip(parts, ("env", "channel", "cohort")))


def parse_time(text: str, what: str):
    """An RFC 3339 time with a timezone, or a one-line error naming the option."""
    from datetime import datetime

    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        fail(f"{what} {text!r} is not an RFC 3339 time")
    if at.tzinfo is None:
        fail(f"{what} needs a timezone (e.g. a trailing Z)")
    return at
