"""What every `kxr` command shares: connecting, failing with one clear line, output.

The command modules (services/cli/<group>.py, composed in main.py) import this at
start-up, so `kxr --help` pays for whatever it imports: the event model, NATS and the
settings are imported inside the helpers that need them.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console

if TYPE_CHECKING:
    from events.model import Actor
    from services.jetstream.log import EventLog
    from services.settings import Settings

console = Console()
err_console = Console(stderr=True)

NatsUrl = typer.Option(None, "--nats-url", help="NATS server URL (default: $KX_NATS_URL)")
Rationale = typer.Option(..., "--rationale", "-m", help="why: recorded with the decision")
TrustRootOpt = typer.Option(None, "--trust-root", help="the anchor trust root (default: $KX_TRUST_ROOT)")


def operator_actor() -> Actor:
    from events.model import Actor

    return Actor(kind="operator", id=os.environ.get("KX_ACTOR") or os.environ.get("USER") or "operator")


class CliError(Exception):
    """Printed as `kxr: error: <message>` with a non-zero exit, never a traceback."""


def fail(message: str) -> NoReturn:
    raise CliError(message)


# `kxr` (main.run) starts with the cyclic garbage collector off: importing a command's modules makes
# next to no garbage, and each automatic collection meanwhile walked every object loaded so far
# (~15% of `kxr status`). The first `run_async` turns it back on, with the loaded modules frozen.
collector_paused = False


def run_async(coro) -> Any:
    """`asyncio.run(coro)`, with the result handed back outside the main task.

    On Python 3.11, `asyncio.run` ends with `signal.getsignal(SIGINT)`, which formats the
    repr of its SIGINT handler: a partial holding the main task, whose repr holds the
    task's result. For a replay that result is the whole world (10^5 releases): formatting
    it took a third of `kxr audit replay`. The main task returns None instead.
    """
    import asyncio
    import signal

    from services.tasks import cancel_and_wait

    global collector_paused
    if collector_paused:  # start-up is over: what it loaded is not walked again, cyclic garbage is collected
        import gc

        gc.freeze()
        gc.enable()
        collector_paused = False
    box: list[Any] = []
    interrupted = False

    async def main() -> None:
        nonlocal interrupted
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()

        def on_sigint() -> None:  # (a command with a clean stop of its own, SignalStop, replaces this)
            nonlocal interrupted
            if interrupted:
                return
            interrupted = True
            # cancelled again until it has stopped (services/tasks.py: on Python 3.11 a cancellation
            # that meets an inner wait_for completing can be swallowed; a `kxr watch` of a held
            # release ran on after Ctrl-C under load)
            stops.append(loop.create_task(cancel_and_wait([task], timeout=float("inf"))))  # type: ignore[list-item]

        stops: list[asyncio.Task] = []
        loop.add_signal_handler(signal.SIGINT, on_sigint)
        box.append(await coro)

    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        if interrupted:
            raise KeyboardInterrupt from None  # Ctrl-C: exit 130, as asyncio.run's own handler does
        raise
    return box[0]


# The root options (`kxr --creds F --context N --tls-ca … COMMAND`, main.py) of this invocation:
# every command's settings take its connection from them, the environment and a context.
root_connection_options: dict[str, Any] = {}

NO_NATS = (
    "no NATS to talk to: set KX_NATS_URL, pass --nats-url, kxr --creds FILE or kxr --context NAME, "
    "or select a nats context (kxr serve prints its URL)"
)


def settings_from(
    nats_url: str | None = None,
    trust_root: Path | None = None,
    data_dir: Path | None = None,
    *,
    use_selected_context: bool = True,
) -> Settings:
    """The settings of one command: the environment, its flags and the root connection options.
    `use_selected_context`: with no server named anywhere, the nats CLI's selected context names it
    (every command but `kxr serve`, which then starts its embedded server)."""
    from services.settings import ConnectionFlags, Settings

    return Settings.from_env(
        connection_flags=ConnectionFlags(**root_connection_options),
        use_selected_context=use_selected_context,
        nats_url=nats_url,
        trust_root_path=trust_root,
        data_dir=data_dir,
    )


async def connect_settings(settings: Settings, name: str = "kxr-cli", **kwargs) -> Any:
    """A connection for a command (fails fast: no reconnecting forever), or ConfigError in one line."""
    from services.jetstream.client import connect_with
    from services.settings import ConfigError

    connection = settings.nats_connection()
    if not connection.url:
        raise ConfigError(NO_NATS)
    try:
        return await connect_with(connection, name=name, reconnect_forever=False, **kwargs)
    except ConfigError:
        raise  # an unusable credentials, CA or certificate file: its own line
    except Exception as exc:
        raise ConfigError(
            f"cannot reach NATS at {connection.describe()}: {exc.__class__.__name__}: {exc}".rstrip(": ")
        ) from None


def denied_line(exc: Exception, settings: Settings) -> str:
    """`permission denied: …` and which roles may (services/permissions.py), for a PermissionDenied."""
    from events.subjects import Subjects

    line = str(exc)
    who = settings.nats_connection().user
    if who:
        line = line.replace("this NATS user", f"user {who}")
    action, subject = getattr(exc, "action", ""), getattr(exc, "subject", "")
    if action == "publish to":
        roles = roles_allowed_to_publish(Subjects(settings.prefix), subject)
        if roles:
            line += f" (a right of: {', '.join(roles)}; connect as one: kxr --creds <data dir>/creds/ROLE.json)"
    else:
        from services.permissions import inbox_for_user

        own = inbox_for_user(who)
        if own and subject.startswith(f"{own}."):
            # kxr already receives on the role's own inbox: the server's users were written before
            # each role had one (an existing deployment's `kxr creds init` block)
            line += " (the server's users predate this role's own inbox: run kxr creds init again and reload it)"
        else:
            line += " (connect with the inbox prefix of its credentials: kxr --creds FILE)"
    return line


def roles_allowed_to_publish(subjects: Any, subject: str) -> list[str]:
    """The roles whose user may publish `subject` (services/permissions.py); the service's own user
    is no one's to borrow, so it is not named."""
    from services.contracts.catalog import subject_matches
    from services.permissions import ROLES, role_permissions

    out = []
    for role in (r for r in ROLES if r != "service"):
        perms = role_permissions(subjects, role)
        if any(subject_matches(p, subject) for p in perms.publish) and not any(
            subject_matches(p, subject) for p in perms.publish_deny
        ):
            out.append(role)
    return out


@asynccontextmanager
async def session(nats_url: str | None) -> AsyncIterator[tuple[Any, Any, EventLog]]:
    """A connection for one command. Commands other than serve/demo need a running NATS.
    A request this user may not make ends the command with `permission denied: …` at once."""
    from events.subjects import Subjects
    from services.jetstream.client import PermissionDenied
    from services.jetstream.log import EventLog

    settings = settings_from(nats_url)
    nc = await connect_settings(settings)
    try:
        js = nc.jetstream(timeout=10)
        yield nc, js, EventLog(nc, js, Subjects(settings.prefix))
    except PermissionDenied as exc:
        raise CliError(denied_line(exc, settings)) from None
    finally:
        await nc.close()


def read_json_file(path: Path, what: str, max_bytes: int = 4 * 1024 * 1024) -> Any:
    from events.canonical import StrictJSONError, loads_strict

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        return loads_strict(raw, allow_floats=True, max_bytes=max_bytes)
    except StrictJSONError as exc:
        raise CliError(f"{what} {path} is not valid JSON: {exc}") from None


def read_key_file(path: Path):
    """A private signing key file (`kxr keys generate`), or one line saying why it is not one."""
    from events.signing import SigningKey

    doc = read_json_file(path, "key")
    if not isinstance(doc, dict) or not isinstance(doc.get("private"), str):
        raise CliError(f"key {path} has no private key (write one with: kxr keys generate {path.name})")
    try:
        return SigningKey.from_file_dict(doc)
    except ValueError as exc:
        raise CliError(f"key {path} is not an Ed25519 private key: {exc}") from None


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
WideOpt = typer.Option(False, "--wide", help="tables in full: whole digests and times, every column, long lines")


def output(as_json: bool, data: Any, render: Callable[[], Iterable[Any]], wide: bool = False) -> None:
    """What every read command prints: `data` as JSON for scripts, else `render()`'s tables and lines.

    `render` is only called for people, so it may be as chatty as it likes. `wide`: lines as long
    as they need (`kxr … --wide`), else the terminal's width (80 without a terminal).
    """
    if as_json:
        print_json(data)
        return
    out = Console(width=100_000) if wide else console  # print(width=) is capped at the terminal's width
    for part in render():
        out.print(part)


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


def service_keys():
    """The service keys (settings.reader_service_keys): with them every view and decision of kxr
    uses signed state only, as the service does."""
    from services.settings import reader_service_keys

    return reader_service_keys(settings_from())


def operator_action(nats_url: str | None, build, world_from=None) -> int:
    """Rebuild the world, let `build(world, now, subjects)` decide the event, append it with its CAS.

    Every operator decision goes through here: `kxr release pause|…|annotate`, `kxr pin`, `kxr unpin`.
    `world_from(js, subjects)`: the part of the world the decision reads, when the caller has it
    cheaper than a fold of the whole log (`kxr pin` from the read models); the append's expected
    sequence refuses a decision taken on a stale one, as on a fold.
    """
    from datetime import datetime

    from services.errors import OperatorError
    from services.jetstream.log import AppendConflict, Entry
    from services.jetstream.log_reads import load_world

    async def go() -> int:
        async with session(nats_url) as (_, js, log):
            if world_from is not None:
                world = await world_from(js, log.subjects)
            else:
                world = await load_world(js, log.subjects, service_keys=service_keys())
            try:
                action = build(world, datetime.now(UTC), log.subjects)
            except OperatorError as exc:
                fail(str(exc))
            event, expected, expected_filter = action
            try:
                return await log.append(Entry(event, expected, expected_filter))
            except AppendConflict:
                fail("the log moved while this action was decided; look again (kxr status) and retry")
        return 0

    return run_async(go())
