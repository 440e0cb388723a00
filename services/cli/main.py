"""`kxr` entry point: commands for producers, operators and auditors (one module per audience)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from nats import errors as nats_errors
from nats.js.errors import NoStreamResponseError, NotFoundError

from events.tokens import InvalidToken
from services.jetstream.embedded import ServerError
from services.jetstream.layout import LayoutError
from services.jetstream.log import AppendConflict, AppendFailed
from services.settings import ConfigError, parse_roles
from . import audit_cmds, deadletter_cmds, operate, produce  # noqa: F401  (they register their commands on `app`)
from . import creds_cmds  # noqa: F401  (`kxr creds`)
from . import schema_cmds  # noqa: F401  (`kxr schema`)
from . import runtime_cmds  # noqa: F401  (`kxr runtime`)
from . import ui_cmds  # noqa: F401  (`kxr ui`)
from . import watch_cmd  # noqa: F401  (`kxr watch`)
from .common import CliError, NatsUrl, app, run_async, settings_from


# ---- serve / demo -------------------------------------------------------------------------------
@app.command()
def serve(
    nats_url: Optional[str] = NatsUrl,
    trust_root: Optional[Path] = typer.Option(None, "--trust-root", help="trust root file (default: $KX_TRUST_ROOT)"),
    only: Optional[str] = typer.Option(None, "--only", help="comma-separated consumers to run (default: all)"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="embedded NATS data (default: $KX_DATA_DIR or ./.kx-data)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    strict: bool = typer.Option(False, "--strict", help="refuse to start if the NATS user can do more than the service needs (default: warn)"),
    ui: Optional[str] = typer.Option(None, "--ui", metavar="ADDR", help="also serve the read-only dashboard on ADDR: PORT or HOST:PORT (loopback by default)"),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="serve Prometheus /metrics on HOST:PORT (default: $KX_METRICS_ADDR; off)"),
    log_format: Optional[str] = typer.Option(None, "--log-format", help="json or text (default: $KX_LOG_FORMAT; json unless stderr is a terminal)"),
    runtime_identity: Optional[str] = typer.Option(None, "--runtime-identity", metavar="shared|strict",
                                                   help="embedded NATS: strict = only runtimes with their own user (kxr creds runtime add ID) "
                                                        "may report health; shared = the shared runtime user may too (default: as last set, else shared)"),
) -> None:
    """Run the release service (every consumer, or --only some of them).

    Without KX_NATS_URL it starts an embedded nats-server with one least-privilege user per
    role (credentials: `kxr creds show ROLE`) and connects as the service user.
    """
    import os

    from services.observability.logs import configure_logging, log_format as chosen_log_format
    from services.serve import serve as run_serve

    configure_logging(chosen_log_format(log_format or os.environ.get("KX_LOG_FORMAT")), logging.INFO if verbose else logging.WARNING)
    ready_log = logging.getLogger("kxr.serve")
    ready_log.setLevel(logging.INFO)  # the ready line shows at any verbosity, in the chosen log format
    settings = settings_from(nats_url, trust_root, data_dir)
    settings = type(settings)(**{**settings.__dict__, "roles": parse_roles(only), "metrics_addr": metrics or settings.metrics_addr})

    def ready(url: str) -> None:
        metrics_at = f"; metrics on http://{settings.metrics_addr}/metrics" if settings.metrics_addr else ""
        ready_log.info("kxr serve: %s running against %s%s (Ctrl-C to stop)", ", ".join(settings.roles), url, metrics_at)

    def ui_ready(url: str) -> None:
        ready_log.info("kxr serve: dashboard at %s (read-only)", url)

    from services.dashboard.server import parse_addr

    if runtime_identity is not None and runtime_identity not in ("shared", "strict"):
        raise CliError(f"--runtime-identity {runtime_identity!r}: shared or strict")
    run_async(run_serve(settings, ready, strict=strict, ui=parse_addr(ui) if ui else None, on_ui=ui_ready, runtime_identity=runtime_identity))


@app.command()
def demo(
    window: float = typer.Option(3.0, "--window", help="monitoring window per stage, seconds"),
    keep: bool = typer.Option(False, "--keep", help="keep the demo's data directory"),
    ui: Optional[str] = typer.Option(None, "--ui", metavar="ADDR", help="watch it in the dashboard on ADDR (PORT or HOST:PORT); stays up until Ctrl-C"),
) -> None:
    """Embedded NATS, the service and simulated runtimes: a healthy release, a tampered pack, a regression."""
    from services.dashboard.server import parse_addr
    from services.demo import run_demo

    code = run_async(run_demo(window_s=window, keep=keep, ui=parse_addr(ui) if ui else None))
    raise typer.Exit(code)


def run() -> None:
    """Console entry: every expected failure is one line on stderr and a non-zero exit."""
    try:
        code = app(standalone_mode=False)
        # without standalone mode click hands a command's `raise typer.Exit(n)` back as n
        if isinstance(code, int) and code:
            sys.exit(code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (CliError, ConfigError, InvalidToken, LayoutError, ServerError, AppendConflict, AppendFailed) as exc:
        _one_line(f"kxr: error: {exc}")
        sys.exit(2)
    except typer.Abort:
        _one_line("kxr: aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except nats_errors.Error as exc:
        if isinstance(exc, (NoStreamResponseError, NotFoundError, nats_errors.NoRespondersError)):
            _one_line("kxr: error: the release log is not on this NATS server (start `kxr serve` once to create it)")
        else:
            _one_line(f"kxr: error: NATS: {exc.__class__.__name__}: {exc}")
        sys.exit(2)
    except Exception as exc:  # usage errors and anything unforeseen: still one line
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # click's (typer's) usage errors
            _one_line(f"kxr: error: {exc.format_message()}")
            sys.exit(exc.exit_code)
        _one_line(f"kxr: error: unexpected {exc.__class__.__name__}: {exc}")
        sys.exit(1)


def _one_line(message: str) -> None:
    """Errors are one line whatever the terminal width: scripts and people both grep them."""
    sys.stderr.write(" ".join(message.split()) + "\n")
