"""`kxr creds`: the least-privilege NATS users, one per role (services/permissions.py).

`kxr serve` in embedded mode creates them under KX_DATA_DIR/creds; `kxr creds init`
does the same for an existing NATS deployment and prints the users block to add to its
configuration (docs/permissions.md).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from .common import err_console, fail, settings_from

app = typer.Typer(
    no_args_is_help=True,
    help="NATS credentials: one least-privilege user per role (service, producer, runtime, operator, auditor).",
)
runtime_creds_app = typer.Typer(
    no_args_is_help=True, help="A runtime's own credentials: it reports health under its own id only."
)
app.add_typer(runtime_creds_app, name="runtime")

DataDir = typer.Option(None, "--data-dir", help="where the credentials live (default: $KX_DATA_DIR or ./.kx-data)")


def _check_role(role: str) -> str:
    """A role, or `runtime-<id>` (a runtime's own credentials)."""
    from events.tokens import InvalidToken, check_token
    from services.permissions import ROLES

    if role.startswith("runtime-"):
        try:
            check_token(role.removeprefix("runtime-"), "runtime_id")
        except InvalidToken as exc:
            fail(str(exc))
        return role
    if role not in ROLES:
        fail(f"unknown role {role!r}: one of {', '.join(ROLES)}, or runtime-<id>")
    return role


def _embedded_lock(data_dir: Path):
    """The store lock of embedded `kxr serve` on this data dir, if it runs; else None."""
    from services.jetstream.embedded import ServerError, StoreLock

    lock = StoreLock(data_dir / "nats")
    if not lock.path.exists():
        return None
    try:
        lock.acquire()
    except ServerError:
        return lock
    lock.release()
    return None


@app.command("show")
def creds_show(
    role: str = typer.Argument(..., help="service | producer | runtime | operator | auditor | runtime-<id>"),
    as_json: bool = typer.Option(
        False, "--json", help="the whole credentials document (user, password, url, inbox_prefix)"
    ),
    data_dir: Path | None = DataDir,
) -> None:
    """Print a role's NATS URL with its user and password (for KX_NATS_URL), or --json."""
    from services.permissions import creds_path, read_credentials

    settings = settings_from(data_dir=data_dir)
    path = creds_path(settings.data_dir, _check_role(role))
    if not path.exists():
        fail(
            f"no credentials for {role} at {path} "
            "(kxr serve creates them in embedded mode; kxr creds init for an existing NATS)"
        )
    try:
        creds = read_credentials(path)
    except ValueError as exc:
        fail(str(exc))
    if as_json:
        sys.stdout.write(json.dumps(creds.to_document(), indent=2) + "\n")
        return
    if not creds.url:
        fail(f"credentials {path} name no server yet (kxr creds init --server URL)")
    sys.stdout.write(creds.url + "\n")
    if creds.inbox_prefix != "_INBOX":  # every role's now: its user may receive replies there only
        err_console.print(
            f"connect with inbox prefix {creds.inbox_prefix} (nats.connect(..., inbox_prefix=...)); "
            "kxr uses it by itself",
            highlight=False,
        )


@app.command("init")
def creds_init(
    server: str = typer.Option(..., "--server", help="the NATS URL clients use, e.g. nats://nats.internal:4222"),
    out: Path | None = typer.Option(
        None, "--out", help="write the nats-server authorization block here (0600) instead of stdout"
    ),
    runtime_identity: str = typer.Option(
        "shared",
        "--runtime-identity",
        metavar="shared|strict",
        help="strict: the shared runtime user reports no health, only runtimes with their own user do",
    ),
    accounts: bool = typer.Option(
        False,
        "--accounts",
        help="an `accounts` block instead: each role in its own account, as embedded kxr serve runs "
        "(JetStream's answers cannot be relayed onto the log; the streams must live in account KX)",
    ),
    data_dir: Path | None = DataDir,
) -> None:
    """Create (or keep) every role's credentials for an existing NATS and print its `authorization` block
    (or, with --accounts, its `accounts` block)."""
    from events.subjects import Subjects
    from services.nats_accounts import render_accounts
    from services.permissions import (
        RUNTIME_IDENTITY_MODES,
        AccountLimits,
        ensure_credentials,
        render_authorization,
        write_server_config,
    )

    if runtime_identity not in RUNTIME_IDENTITY_MODES:
        fail(f"--runtime-identity {runtime_identity!r}: one of {', '.join(RUNTIME_IDENTITY_MODES)}")

    settings = settings_from(data_dir=data_dir)
    subjects = Subjects(settings.prefix)
    if _embedded_lock(settings.data_dir) is not None:
        fail(
            f"kxr serve runs an embedded NATS on {settings.data_dir}: its credentials are not rewritten under it "
            "(use another --data-dir for an existing deployment)"
        )
    try:
        creds = ensure_credentials(settings.data_dir, subjects, server)
    except OSError as exc:
        fail(f"cannot write credentials under {settings.data_dir}: {exc.strerror}")
    if accounts:
        try:
            limits = AccountLimits.from_env(os.environ)  # KX_NATS_MAX_*, as for embedded kxr serve
        except ValueError as exc:
            fail(str(exc))
        text = render_accounts(creds, subjects, limits, runtime_identity)
    else:
        text = render_authorization(creds, subjects, runtime_identity)
    if out is None:
        sys.stdout.write(text)
    else:
        try:
            write_server_config(out, text)
        except OSError as exc:
            fail(f"cannot write {out}: {exc.strerror}")
        err_console.print(
            f"wrote {out}; credentials in {settings.data_dir / 'creds'} (kxr creds show ROLE)", highlight=False
        )


@runtime_creds_app.command("add")
def creds_runtime_add(
    runtime_id: str = typer.Argument(
        ..., help="the runtime's id, as it reports health (kx.health.<env>.<channel>.<cohort>.<id>)"
    ),
    server: str | None = typer.Option(
        None, "--server", help="the NATS URL it connects to (default: the service's, from its credentials)"
    ),
    exist_ok: bool = typer.Option(
        False, "--exist-ok", help="credentials that exist already are kept (a deployment's start-up step)"
    ),
    data_dir: Path | None = DataDir,
) -> None:
    """Create a runtime's own user: it may publish health under its own id only, and gets its own inbox.

    Embedded `kxr serve` picks it up on its next start, or at once when it runs (its
    configuration is rewritten and the server reloads it). For an existing deployment, run
    `kxr creds init` again and reload the server. Prints the path of the credentials file.
    """
    from events.subjects import Subjects
    from events.tokens import InvalidToken, check_token
    from services.permissions import (
        creds_path,
        new_runtime_credentials,
        read_credentials,
        runtime_creds_path,
        write_credentials,
    )

    settings = settings_from(data_dir=data_dir)
    subjects = Subjects(settings.prefix)
    try:
        runtime_id = check_token(runtime_id, "runtime_id")
    except InvalidToken as exc:
        fail(str(exc))
    path = runtime_creds_path(settings.data_dir, runtime_id)
    if path.exists():
        if exist_ok:
            sys.stdout.write(f"{path}\n")
            return
        fail(f"runtime {runtime_id} has credentials already: {path}")
    if server is None:
        try:
            server = read_credentials(creds_path(settings.data_dir, "service")).url
        except ValueError:
            server = None
        if not server:
            fail("no server known for these credentials: pass --server URL (or start kxr serve once)")
    try:
        written = write_credentials(settings.data_dir, new_runtime_credentials(subjects, runtime_id, server))
    except OSError as exc:
        fail(f"cannot write credentials under {settings.data_dir}: {exc.strerror}")
    _reload_embedded(settings.data_dir, settings.prefix)
    sys.stdout.write(f"{written}\n")


def _reload_embedded(data_dir: Path, prefix: str) -> None:
    """If embedded `kxr serve` runs on this data dir: its configuration with every user, reloaded."""
    import os
    import signal

    from events.subjects import Subjects
    from services.nats_accounts import render_server_config
    from services.permissions import (
        ensure_credentials,
        read_account_limits,
        read_runtime_identity,
        write_server_config,
    )

    lock = _embedded_lock(data_dir)
    pid = lock.holder() if lock is not None else None
    config = data_dir / "nats-server.conf"
    if pid is None or not config.exists():
        return
    subjects = Subjects(prefix)
    try:  # the limits the running server was started with (KX_NATS_MAX_*), not this shell's environment
        limits = read_account_limits(data_dir)
    except ValueError as exc:
        fail(f"cannot reload nats-server with the new user: {exc}")
    creds = ensure_credentials(data_dir, subjects)  # no server URL: nothing is rewritten but the new file's entry
    # the mode the running server was started with (`kxr serve --runtime-identity`): never loosened here
    write_server_config(config, render_server_config(creds, subjects, limits, read_runtime_identity(data_dir)))
    try:
        os.kill(pid, signal.SIGHUP)  # nats-server reloads its configuration (users and permissions)
    except OSError as exc:
        fail(f"cannot ask nats-server (pid {pid}) to reload: {exc.strerror}")
    err_console.print(f"nats-server (pid {pid}) reloads its configuration with the new user", highlight=False)
