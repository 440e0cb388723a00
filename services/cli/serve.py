"""`kxr serve`: run the release service (main.py registers it top-level)."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import CliError, NatsUrl, run_async, settings_from


def serve(
    nats_url: str | None = NatsUrl,
    trust_root: Path | None = typer.Option(None, "--trust-root", help="trust root file (default: $KX_TRUST_ROOT)"),
    only: str | None = typer.Option(None, "--only", help="comma-separated consumers to run (default: all)"),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="embedded NATS data (default: $KX_DATA_DIR or ./.kx-data)"
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    strict: bool = typer.Option(
        False, "--strict", help="refuse to start if the NATS user can do more than the service needs (default: warn)"
    ),
    ui: str | None = typer.Option(
        None,
        "--ui",
        metavar="ADDR",
        help="also serve the read-only dashboard on ADDR: PORT or HOST:PORT (loopback by default)",
    ),
    ui_actions: bool = typer.Option(
        False,
        "--ui-actions",
        help="with --ui: operators who log in with their NATS user may act from the dashboard (default: read-only)",
    ),
    ui_origin: str | None = typer.Option(
        None,
        "--ui-origin",
        metavar="URL",
        help="with --ui behind a TLS proxy: the dashboard's public origin, e.g. https://dash.example "
        "(the only origin its forms are accepted from; https makes its cookie Secure)",
    ),
    metrics: str | None = typer.Option(
        None, "--metrics", help="serve Prometheus /metrics on HOST:PORT (default: $KX_METRICS_ADDR; off)"
    ),
    log_format: str | None = typer.Option(
        None, "--log-format", help="json or text (default: $KX_LOG_FORMAT; json unless stderr is a terminal)"
    ),
    runtime_identity: str | None = typer.Option(
        None,
        "--runtime-identity",
        metavar="shared|strict",
        help="embedded NATS: strict = only runtimes with their own user (kxr creds runtime add ID) "
        "may report health; shared = the shared runtime user may too (default: as last set, else shared)",
    ),
) -> None:
    """Run the release service (every consumer, or --only some of them).

    Without KX_NATS_URL it starts an embedded nats-server with one least-privilege user per
    role (credentials: `kxr creds show ROLE`) and connects as the service user.
    """
    import logging
    import os

    from services.dashboard.server import parse_origin
    from services.observability.logs import configure_logging
    from services.observability.logs import log_format as chosen_log_format
    from services.serve import serve as run_serve
    from services.settings import parse_roles

    if ui_origin and not ui:
        raise CliError("--ui-origin needs --ui ADDR (the dashboard it names)")
    origin = parse_origin(ui_origin) if ui_origin else None  # a bad one is one line before logging is set up
    configure_logging(
        chosen_log_format(log_format or os.environ.get("KX_LOG_FORMAT")), logging.INFO if verbose else logging.WARNING
    )
    ready_log = logging.getLogger("kxr.serve")
    ready_log.setLevel(logging.INFO)  # the ready line shows at any verbosity, in the chosen log format
    settings = settings_from(nats_url, trust_root, data_dir, use_selected_context=False)  # else: embedded
    settings = type(settings)(
        **{
            **settings.__dict__,
            "roles": parse_roles(only),
            "metrics_addr": metrics or settings.metrics_addr,
            "ui_origin": origin,
        }
    )

    def ready(url: str) -> None:
        metrics_at = f"; metrics on http://{settings.metrics_addr}/metrics" if settings.metrics_addr else ""
        ready_log.info(
            "kxr serve: %s running against %s%s (Ctrl-C to stop)", ", ".join(settings.roles), url, metrics_at
        )

    def ui_ready(url: str) -> None:
        mode = "operator actions after login at /login" if ui_actions else "read-only"
        ready_log.info("kxr serve: dashboard at %s (%s)", url, mode)

    from services.dashboard.server import parse_addr

    if ui_actions and not ui:
        raise CliError("--ui-actions needs --ui ADDR (the dashboard to act from)")
    if runtime_identity is not None and runtime_identity not in ("shared", "strict"):
        raise CliError(f"--runtime-identity {runtime_identity!r}: shared or strict")
    run_async(
        run_serve(
            settings,
            ready,
            strict=strict,
            ui=parse_addr(ui) if ui else None,
            on_ui=ui_ready,
            ui_actions=ui_actions,
            runtime_identity=runtime_identity,
        )
    )
