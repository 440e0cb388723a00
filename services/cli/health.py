"""`kxr health`: is this process's side of the deployment working? For container healthchecks.

What "healthy" means, per role (each check is one or two NATS requests, a few milliseconds when
all is well; the whole command is bounded by --timeout):

- every process: NATS answers with this process's own credentials (KX_NATS_CREDS) and the
  release log exists and may be read by that user (a stream info request: every role that reads
  the log may make it);
- a consumer process (`--only ROLES`, as its `kxr serve --only` runs): the durable consumer
  of each role exists (`kxr-<role>`): a serve process creates it when its worker starts, so
  a service whose consumers are missing has not (or no longer) come up;
- a process with an HTTP side (`--http URL`: the dashboard's page, a consumer's /metrics):
  it answers 200. That endpoint lives in the process itself, so this proves the process is
  alive, not only NATS.

A runtime (`kxr runtime simulate`) serves no HTTP: its check is the first one, with its own
user (the reads its follow makes). Exit 0 and one line on stdout when healthy; else one line
on stderr saying what is wrong, exit 1.
"""

from __future__ import annotations

import sys

import typer

from .common import NatsUrl, run_async, settings_from


def health(
    only: str | None = typer.Option(
        None, "--only", help="consumer roles this process runs (as `kxr serve --only`): their durables must exist"
    ),
    http: list[str] = typer.Option(
        [], "--http", help="an endpoint of this process that must answer 200 (repeatable), e.g. its /metrics"
    ),
    timeout: float = typer.Option(1.0, "--timeout", min=0.1, max=30.0, help="seconds for the whole check"),
    nats_url: str | None = NatsUrl,
) -> None:
    """Exit 0 if this process's NATS, release log, consumers (--only) and endpoints (--http) answer; else 1."""
    import asyncio

    from services.settings import ConfigError, parse_roles

    roles = parse_roles(only) if only else ()
    settings = settings_from(nats_url)
    if not settings.nats_url:
        raise ConfigError("no NATS to check: set KX_NATS_CREDS or KX_NATS_URL, or pass --nats-url")

    async def bounded() -> list[str]:
        try:
            return await asyncio.wait_for(_check(settings, roles, http, timeout), timeout)
        except TimeoutError:
            return [f"no answer within {timeout:g}s"]

    problems = run_async(bounded())
    if problems:
        sys.stderr.write("kxr health: unhealthy: " + "; ".join(" ".join(p.split()) for p in problems) + "\n")
        raise typer.Exit(1)
    checked = ["NATS", "release log", *(f"kxr-{r}" for r in roles), *http]
    sys.stdout.write(f"kxr health: ok ({', '.join(checked)})\n")


async def _check(settings, roles: tuple[str, ...], urls: list[str], timeout: float) -> list[str]:
    import asyncio

    from nats.js.errors import NotFoundError

    from events.subjects import Subjects
    from services.jetstream.client import connect_with
    from services.settings import ConfigError

    subjects = Subjects(settings.prefix)
    connection = settings.nats_connection()  # --creds, --context, --tls-*: as every kxr command connects
    try:
        nc = await connect_with(
            connection,
            "kxr-health",
            reconnect_forever=False,
            connect_timeout=timeout,
            max_reconnect_attempts=1,  # 0 would mean "forever" to nats-py
            reconnect_time_wait=0.05,  # seconds between the two attempts
        )
    except ConfigError:
        raise
    except Exception as exc:  # connect() names the last error the server or the network gave
        return [f"NATS at {connection.describe()} unreachable: {exc.__class__.__name__}: {exc}"]
    problems: list[str] = []
    try:
        js = nc.jetstream(timeout=timeout)
        stream = subjects.releases_stream
        try:
            await js.stream_info(stream)
        except NotFoundError:
            return [f"the release log {stream} does not exist (kxr serve creates it)"]
        except Exception as exc:
            return [f"the release log {stream} cannot be read: {exc.__class__.__name__}: {exc}"]
        for role in roles:
            try:
                await js.consumer_info(stream, f"kxr-{role}")
            except NotFoundError:
                problems.append(f"consumer kxr-{role} does not exist (its worker has not started)")
            except Exception as exc:
                problems.append(f"consumer kxr-{role}: {exc.__class__.__name__}: {exc}")
    finally:
        await nc.close()
    if urls:
        answers = await asyncio.gather(*(asyncio.to_thread(_get, url, timeout) for url in urls))
        problems += [a for a in answers if a]
    return problems


def _get(url: str, timeout: float) -> str | None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return None if response.status == 200 else f"{url} answered {response.status}"
    except urllib.error.HTTPError as exc:
        return f"{url} answered {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"{url} unreachable: {getattr(exc, 'reason', exc)}"
