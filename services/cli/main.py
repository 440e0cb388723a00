"""`kxr` entry point: the command map (one module per command group) and how failures end.

`kxr X …` lives in services/cli/X.py: a group's module owns its `app` (a typer.Typer),
a top-level command is a function of the module named after it, except `kxr unpin`, which
is in pin.py beside what it undoes. Shared helpers: common.py
(connecting, output, errors), views.py (terminal tables), live_render.py (`kxr watch`'s frame).

The order below is the order `kxr --help` lists them in. Command modules import only
typer, rich and common.py at the top, so `kxr --help` does not load NATS or the event model.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import typer

from . import (
    audit,
    channel,
    common,
    creds,
    deadletter,
    demo,
    health,
    keys,
    pack,
    pin,
    release,
    runtime,
    schema,
    serve,
    status,
    trust,
    ui,
    watch,
)
from .common import CliError, console


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            console.print(f"kxr {version('konnaxion-releases')}")
        except PackageNotFoundError:  # run from a source tree without an install
            console.print("kxr (not installed)")
        raise typer.Exit(0)


def _typer() -> typer.Typer:
    return typer.Typer(
        no_args_is_help=True,
        help="Konnaxion Releases: move signed Runtime Packs into the runtime safely.",
    )


app = _typer()


@app.callback()
def _main(
    show_version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print kxr's version and exit"
    ),
    creds: Path | None = typer.Option(
        None,
        "--creds",
        metavar="FILE",
        help="who to connect as: a NATS .creds file, or kxr's per-role credentials "
        "(KX_DATA_DIR/creds/ROLE.json); env KX_CREDS",
    ),
    context: str | None = typer.Option(
        None,
        "--context",
        metavar="NAME",
        help="a nats CLI context (~/.config/nats/context/NAME.json): server, credentials, TLS; env KX_CONTEXT",
    ),
    tls_ca: Path | None = typer.Option(
        None, "--tls-ca", metavar="FILE", help="CA certificate(s) that sign the NATS server's; env KX_TLS_CA"
    ),
    tls_cert: Path | None = typer.Option(
        None, "--tls-cert", metavar="FILE", help="TLS client certificate; env KX_TLS_CERT"
    ),
    tls_key: Path | None = typer.Option(
        None, "--tls-key", metavar="FILE", help="the TLS client certificate's key; env KX_TLS_KEY"
    ),
) -> None:
    """Konnaxion Releases: move signed Runtime Packs into the runtime safely.

    How a command connects: flags first (--nats-url, and the options above), then the
    environment (KX_NATS_URL, KX_CREDS, KX_TLS_*), then a nats context (--context,
    KX_CONTEXT, else the one `nats context select` chose).
    """
    # root options, not per command: every command connects the same way, and this way they do
    # without each declaring five more options (click passes a group's options before the command).
    # Kept as given: the settings (and what they import) load only in commands that need them.
    common.root_connection_options = {
        "creds": creds,
        "context": context,
        "tls_ca": tls_ca,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
    }


# The command map, in `kxr --help`'s order: top-level commands, then command groups.
COMMANDS: dict[str, Callable[..., None]] = {
    "pin": pin.pin,
    "unpin": pin.unpin,
    "status": status.status,
    "ui": ui.ui,
    "watch": watch.watch,
    "serve": serve.serve,
    "demo": demo.demo,
    "health": health.health,
}
GROUPS: dict[str, typer.Typer] = {
    "keys": keys.app,
    "pack": pack.app,
    "release": release.app,
    "channel": channel.app,
    "trust": trust.app,
    "audit": audit.app,
    "deadletter": deadletter.app,
    "creds": creds.app,
    "schema": schema.app,
    "runtime": runtime.app,
}


def _register(target: typer.Typer, names: list[str]) -> typer.Typer:
    for name in names:
        if name in COMMANDS:
            target.command(name=name)(COMMANDS[name])
        else:
            target.add_typer(GROUPS[name], name=name)
    return target


_register(app, [*COMMANDS, *GROUPS])

# Root options that take a value: what `_invoked` skips to find the command's name.
_VALUED_ROOT_OPTIONS = {"--creds", "--context", "--tls-ca", "--tls-cert", "--tls-key"}


def _invoked(argv: list[str]) -> str | None:
    """The command (or group) `argv` runs, or None when it runs none (`kxr --help`, `kxr --version`)."""
    args = iter(argv)
    for arg in args:
        if arg in _VALUED_ROOT_OPTIONS:
            next(args, None)
        elif not arg.startswith("-"):
            return arg
    return None


def app_for(argv: list[str]) -> typer.Typer:
    """The root app with only the command `argv` runs (start-up time: typer builds every command's
    click object, signature and options on each invocation, ~15 ms for all of kxr's); the whole
    map for help, completion, an unknown name, or no command at all. What the command does, its
    options and its errors are the same either way: the callback and the command are the same."""
    name = _invoked(argv)
    completing = any(key.endswith("_COMPLETE") for key in os.environ)
    if name is None or completing or (name not in COMMANDS and name not in GROUPS):
        return app
    slim = _typer()
    slim.callback()(_main)
    return _register(slim, [name])


def run() -> None:
    """Console entry: every expected failure is one line on stderr and a non-zero exit."""
    import gc

    from .deferred import defer_import

    gc.disable()  # start-up time: see common.collector_paused (on again in run_async)
    common.collector_paused = True
    defer_import("aiohttp")  # start-up time: see deferred.py
    # kxr uses no pydantic plugins: not looking for them saves scanning every installed package's entry points
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    try:
        code = app_for(sys.argv[1:])(standalone_mode=False, prog_name="kxr")
        # without standalone mode click hands a command's `raise typer.Exit(n)` back as n
        if isinstance(code, int) and code:
            sys.exit(code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        _one_line("kxr: aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        message, code = _failure(exc)
        _one_line(message)
        sys.exit(code)
    finally:
        # a command that ended before `run_async` (a usage error, `--help`) left the collector off: on
        # again, for whoever runs on in this process (a test calling `run()` left it off for the next)
        if common.collector_paused:
            gc.enable()
            common.collector_paused = False


def _failure(exc: Exception) -> tuple[str, int]:
    """The line and exit status for a failed command.

    The error classes are imported here, once something failed: importing them up front
    (NATS, the event model, the settings) was most of `kxr --help`'s start-up time.
    """
    from nats import errors as nats_errors
    from nats.js.errors import NoStreamResponseError, NotFoundError

    from events.tokens import InvalidToken
    from services.jetstream.client import PermissionDenied
    from services.jetstream.embedded import ServerError
    from services.jetstream.layout import LayoutError
    from services.jetstream.log import AppendConflict, AppendFailed
    from services.jetstream.log_reads import ReadBackFailed
    from services.jetstream.reader import ReadRefused
    from services.settings import ConfigError

    if isinstance(
        exc,
        (
            CliError,
            ConfigError,
            InvalidToken,
            LayoutError,
            ServerError,
            AppendConflict,
            AppendFailed,
            ReadRefused,
            ReadBackFailed,  # `kxr audit replay` reading a closed release back
        ),
    ):
        return f"kxr: error: {exc}", 2
    if isinstance(exc, PermissionDenied):
        return f"kxr: error: {exc}", 2
    if isinstance(exc, nats_errors.Error):
        if isinstance(exc, (NoStreamResponseError, NotFoundError, nats_errors.NoRespondersError)):
            return "kxr: error: the release log is not on this NATS server (start `kxr serve` once to create it)", 2
        return f"kxr: error: NATS: {exc.__class__.__name__}: {exc}", 2
    if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # click's (typer's) usage errors: still one line
        return f"kxr: error: {exc.format_message()}", exc.exit_code
    return f"kxr: error: unexpected {exc.__class__.__name__}: {exc}", 1


def _one_line(message: str) -> None:
    """Errors are one line whatever the terminal width: scripts and people both grep them."""
    sys.stderr.write(" ".join(message.split()) + "\n")
