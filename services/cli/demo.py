"""`kxr demo`: the whole service on an embedded NATS with simulated runtimes (main.py registers it top-level)."""

from __future__ import annotations

import typer

from .common import run_async


def demo(
    window: float = typer.Option(3.0, "--window", help="monitoring window per stage, seconds"),
    keep: bool = typer.Option(False, "--keep", help="keep the demo's data directory"),
    ui: str | None = typer.Option(
        None,
        "--ui",
        metavar="ADDR",
        help="watch it in the dashboard on ADDR (PORT or HOST:PORT); stays up until Ctrl-C",
    ),
) -> None:
    """Embedded NATS, the service and simulated runtimes: a healthy release, a tampered pack, a regression."""
    from services.cli.views import status_tables
    from services.dashboard.server import parse_addr
    from services.demo import run_demo

    code = run_async(
        run_demo(
            window_s=window,
            keep=keep,
            ui=parse_addr(ui) if ui else None,
            status=lambda world: status_tables(world, all_releases=True),
        )
    )
    raise typer.Exit(code)
