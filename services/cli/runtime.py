"""`kxr runtime simulate`: a simulated runtime, e.g. as a compose service beside the consumers."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import CliError, NatsUrl, TrustRootOpt, err_console, run_async, settings_from

app = typer.Typer(no_args_is_help=True, help="Runtimes: follow a scope's active pack and report health.")


def identity_problem(mode: str, user: str | None, runtime_id: str, prefix: str) -> str | None:
    """Why a runtime connecting as NATS `user` could not report health as `runtime_id` (None: it can).

    `user` comes from wherever the connection's identity does (--creds, KX_NATS_CREDS, the URL, a
    context); `mode` is the deployment's runtime identity (services/permissions.py): under
    "strict" the shared runtime user reports nothing. A runtime's own user is `<shared>-<id>`.
    """
    from events.subjects import Subjects
    from services.permissions import user_name

    own = (
        "use this runtime's own credentials: kxr creds runtime add ID, "
        "then kxr --creds <data dir>/creds/runtime-ID.json runtime simulate …"
    )
    shared_user = user_name(Subjects(prefix), "runtime")
    if user and user.startswith(f"{shared_user}-"):
        theirs = user.removeprefix(f"{shared_user}-")
        if theirs != runtime_id:
            return f"the credentials are runtime {theirs}'s: they report as --runtime-id {theirs} only"
        return None
    if mode == "strict" and user == shared_user:
        return f"runtime identity is strict here: the shared runtime user may not report health; {own}"
    return None


@app.command("simulate")
def runtime_simulate(
    env: str = typer.Option(..., "--env", help="environment the runtime serves"),
    channel: str = typer.Option(..., "--channel", help="channel it follows"),
    tenant: str = typer.Option(
        ..., "--tenant", help="its tenant: the cohort is resolved from the channel config (CONTRACT §7)"
    ),
    runtime_id: str = typer.Option(..., "--runtime-id", help="its id in health subjects"),
    region: str | None = typer.Option(None, "--region", help="its region, for cohorts that select regions"),
    interval: float = typer.Option(5.0, "--interval", min=0.05, help="seconds between health samples"),
    error_rate: float = typer.Option(
        0.0, "--error-rate", min=0.0, max=1.0, help="share of requests it reports as errors"
    ),
    p95_ms: float = typer.Option(80.0, "--p95-ms", min=0.0, help="p95 latency it reports (p99 is 1.5 times that)"),
    nats_url: str | None = NatsUrl,
    trust_root: Path | None = TrustRootOpt,
    service_keys: Path | None = typer.Option(
        None, "--service-keys", help="only follow pointers signed by these activator keys (default: $KX_SERVICE_KEYS)"
    ),
) -> None:
    """Run one simulated runtime until Ctrl-C/SIGTERM: it re-verifies every pack before switching and reports health."""
    from events.tokens import check_token
    from services.runtime.process import run_simulated_runtime
    from services.runtime.sdk import Identity
    from services.runtime.simulation import Behaviour

    identity = Identity(
        check_token(env, "env"), check_token(channel, "channel"), tenant, check_token(runtime_id, "runtime_id"), region
    )
    settings = settings_from(nats_url, trust_root)
    if service_keys is not None:
        settings = type(settings)(**{**settings.__dict__, "service_keys_path": service_keys})
    behaviour = Behaviour(error_rate=error_rate, p95_ms=p95_ms, p99_ms=p95_ms * 1.5)
    from services.permissions import read_runtime_identity

    try:  # refused before connecting: a runtime whose health is denied would report nothing, silently
        problem = identity_problem(
            read_runtime_identity(settings.data_dir),
            settings.nats_connection().user,
            identity.runtime_id,
            settings.prefix,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if problem:
        raise CliError(f"kxr runtime simulate: {problem}")

    def ready(cohort: str) -> None:
        err_console.print(
            f"kxr runtime: {runtime_id} (tenant {tenant}) follows {env}/{channel}/{cohort} (Ctrl-C to stop)",
            highlight=False,
        )

    def switched(pack) -> None:
        print(f"switched to {pack.name}@{pack.version} {pack.digest}", flush=True)

    run_async(run_simulated_runtime(settings, identity, behaviour, interval, ready, switched))
