"""`kxr ui`: the read-only web dashboard, following the log of a running service (main.py registers it top-level)."""

from __future__ import annotations

import typer

from .common import NatsUrl, err_console, run_async, settings_from
from .readmodel import FoldOpt


def ui(
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        help="address to listen on (anything but loopback exposes every release: there is no login)",
    ),
    port: int = typer.Option(8080, "--port", min=0, max=65535, help="port to listen on (0: any free port)"),
    nats_url: str | None = NatsUrl,
    actions: bool = typer.Option(
        False,
        "--actions",
        help="let an operator who logs in with their NATS user and password pause, resume, abort, promote, "
        "roll back, pin, unpin and annotate from the browser (default: read-only)",
    ),
    origin: str | None = typer.Option(
        None,
        "--origin",
        metavar="URL",
        help="behind a TLS proxy: the dashboard's public origin, e.g. https://dash.example "
        "(the only origin its forms are accepted from; https makes its cookie Secure)",
    ),
    fold: bool = FoldOpt,
) -> None:
    """Serve the dashboard: scopes, releases in flight, evidence pages, updated live from the log.

    Read-only by default: it reads the release log (the auditor's NATS user is enough:
    `--nats-url "$(kxr creds show auditor)"`) and never writes to it. With --actions, an
    operator logs in with the operator's NATS user (`kxr creds show operator`) and acts
    with that user's permissions, each action recorded as `USER@dashboard`.

    It starts from the service's read models when they are current (the releases in flight
    and the newest closed ones read back, the log's tail followed), else it folds the whole
    log first; --fold always folds (the auditor's way: nothing taken from the service).
    Behind a TLS proxy, --origin names the address browsers use (https://dash.example).
    """
    from dataclasses import replace

    from services.dashboard.server import parse_origin, run_ui

    def ready(url: str, start: str) -> None:
        mode = "operator actions after login at /login" if actions else "read-only"
        err_console.print(f"kxr ui: dashboard at {url} ({mode}; {start}; Ctrl-C to stop)", highlight=False)

    settings = settings_from(nats_url)
    if origin:
        settings = replace(settings, ui_origin=parse_origin(origin, "--origin"))
    run_async(run_ui(settings, host, port, ready, actions=actions, fold=fold))
