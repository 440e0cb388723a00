"""`kxr creds`: the least-privilege NATS users, one per role (services/permissions.py).

`kxr serve` in embedded mode creates them under KX_DATA_DIR/creds; `kxr creds init`
does the same for an existing NATS deployment and prints the users block to add to its
configuration (docs/permissions.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from .common import app, err_console, fail, settings_from

creds_app = typer.Typer(no_args_is_help=True, help="NATS credentials: one least-privilege user per role (service, producer, runtime, operator, auditor).")
app.add_typer(creds_app, name="creds")

DataDir = typer.Option(None, "--data-dir", help="where the credentials live (default: $KX_DATA_DIR or ./.kx-data)")


def _check_role(role: str) -> str:
    from services.permissions import ROLES

    if role not in ROLES:
        fail(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    return role


@creds_app.command("show")
def creds_show(
    role: str = typer.Argument(..., help="service | producer | runtime | operator | auditor"),
    as_json: bool = typer.Option(False, "--json", help="the whole credentials document (user, password, url, inbox_prefix)"),
    data_dir: Optional[Path] = DataDir,
) -> None:
    """Print a role's NATS URL with its user and password (for KX_NATS_URL), or --json."""
    from services.permissions import creds_path, read_credentials

    settings = settings_from(data_dir=data_dir)
    path = creds_path(settings.data_dir, _check_role(role))
    if not path.exists():
        fail(f"no credentials for {role} at {path} (kxr serve creates them in embedded mode; kxr creds init for an existing NATS)")
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
    if creds.inbox_prefix != "_INBOX":
        err_console.print(f"connect with inbox prefix {creds.inbox_prefix} (nats.connect(..., inbox_prefix=...)); "
                          "kxr serve uses it by itself", highlight=False)


@creds_app.command("init")
def creds_init(
    server: str = typer.Option(..., "--server", help="the NATS URL clients use, e.g. nats://nats.internal:4222"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the nats-server authorization block here (0600) instead of stdout"),
    data_dir: Optional[Path] = DataDir,
) -> None:
    """Create (or keep) every role's credentials for an existing NATS and print its `authorization` block."""
    from events.subjects import Subjects
    from services.permissions import ensure_credentials, render_authorization, write_server_config

    settings = settings_from(data_dir=data_dir)
    subjects = Subjects(settings.prefix)
    try:
        creds = ensure_credentials(settings.data_dir, subjects, server)
    except OSError as exc:
        fail(f"cannot write credentials under {settings.data_dir}: {exc.strerror}")
    text = render_authorization(creds, subjects)
    if out is None:
        sys.stdout.write(text)
    else:
        try:
            write_server_config(out, text)
        except OSError as exc:
            fail(f"cannot write {out}: {exc.strerror}")
        err_console.print(f"wrote {out}; credentials in {settings.data_dir / 'creds'} (kxr creds show ROLE)", highlight=False)
