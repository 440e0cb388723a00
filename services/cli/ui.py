"""`kxr ui`: the read-only web dashboard, following the log of a running service (main.py registers it top-level)."""

from __future__ import annotations

import typer

from .common import NatsUrl, err_console, run_async, settings_from


def ui(
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        help="address to listen on (anything but loopback exposes every release: there is no login)",
    ),
    port: int = typer.Option(8080, "--port", min=0, max=65535, help="port to listen on (0: any free port)"),
    nats_url: str | None = NatsUrl,
) -> None:
    """Serve the dashboard: scopes, releases in flight, evidence pages, updated live from the log.

    Read-only: it reads the release log (the auditor's NATS user is enough:
    `--nats-url "$(kxr creds show auditor)"`) and never writes to it.
    """
    from services.dashboard.server import run_ui

    def ready(url: str) -> None:
        err_console.print(f"kxr ui: dashboard at {url} (read-only; Ctrl-C to stop)", highlight=False)

    run_async(run_ui(settings_from(nats_url), host, port, ready))
