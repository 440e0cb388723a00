"""Running the dashboard: beside the consumers of `kxr serve` / `kxr demo` (their follower), or alone (`kxr ui`)."""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from urllib.parse import urlsplit

from aiohttp import web

from events.subjects import Subjects
from services.jetstream.client import connect_with
from services.permissions import redacted
from services.reads.follower import Follower
from services.settings import ConfigError, Connection, Settings, reader_service_keys
from services.tasks import SignalStop, cancel_and_wait, utc_clock
from services.web_hosts import allowed_hosts, host_name, is_loopback

from .hub import LiveHub
from .web import make_app

log = logging.getLogger(__name__)
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8080


FOLD_BELOW = 10_000  # log entries: a fold of fewer takes about a second (~80 µs each)


def parse_origin(text: str, option: str = "--ui-origin") -> str:
    """`--ui-origin`: the dashboard's public origin, `https://HOST[:PORT]` (or http://), as browsers send it in
    `Origin`: lower case, no default port, no path. Raises ConfigError in one line."""
    bad = f"{option} {text!r}: expected the dashboard's public origin, like https://dash.example or https://host:8443"
    try:
        url = urlsplit(text.strip())
        port = url.port
    except ValueError:
        raise ConfigError(bad) from None
    host = url.hostname or ""
    if (
        url.scheme not in ("http", "https")
        or url.path not in ("", "/")
        or url.query
        or url.fragment
        or url.username is not None
        or url.password is not None
        or not re.fullmatch(r"[a-z0-9._:-]{1,253}", host)  # browsers send an IDN as xn--…: write it so
    ):
        raise ConfigError(bad)
    default = {"http": 80, "https": 443}[url.scheme]
    return f"{url.scheme}://{host_name(host)}" + (f":{port}" if port is not None and port != default else "")


def parse_addr(text: str) -> tuple[str, int]:
    """`PORT`, `HOST:PORT` or `[V6]:PORT`; the host defaults to loopback."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = DEFAULT_HOST, text
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"dashboard address {text!r}: expected PORT or HOST:PORT")
    return (host.strip("[]") or DEFAULT_HOST), int(port)


def server_of(nc, connection: Connection | None = None) -> Connection:
    """Where signed-in operators connect: the NATS server `nc` is on, without its credentials, with the
    TLS options (CA, client certificate, TLS first) of `connection`, the one the dashboard itself
    opened from the flags, environment and context (services/settings.connection_from)."""
    url = nc.connected_url
    host = f"[{url.hostname}]" if ":" in (url.hostname or "") else url.hostname
    server = f"{url.scheme}://{host}:{url.port}"
    if connection is None:
        return Connection(url=server, given_url=server)
    return replace(connection, url=server, given_url=server, identity=None)


@asynccontextmanager
async def dashboard(
    follower: Follower,
    js,
    subjects: Subjects,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    clock=utc_clock,
    actions_server: Connection | None = None,
    from_models: bool = False,
    origin: str | None = None,
) -> AsyncIterator[str]:
    """Serve the dashboard on (host, port) from a running follower; yields its URL (port 0: a free one).
    `from_models`: the follower started from the read models (`start_follower`).

    `actions_server`: the NATS URL operators sign in to for actions (services/dashboard/actions.py); None: read-only.
    `origin`: its public origin behind a proxy (`parse_origin`), None: browsers reach it at its own address."""
    if not is_loopback(host):
        log.warning(
            "the dashboard has no login to read: bound to %s, anyone who can reach that address sees every release",
            host,
        )
        if actions_server is not None and not (origin or "").startswith("https://"):
            log.warning(
                "dashboard actions on %s over plain HTTP: passwords cross the network in clear "
                "(put a TLS proxy in front and name it with --ui-origin https://…)",
                host,
            )
    hub = LiveHub(follower, js, subjects, clock, from_models=from_models)
    await hub.prepare()
    runner = web.AppRunner(
        make_app(hub, allowed_hosts(host, origin), actions_server, origin),
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=2.0,
    )
    await runner.setup()
    task = asyncio.create_task(hub.run(), name="dashboard-hub")
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise ConfigError(f"the dashboard cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        bound_port = runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        yield f"http://{shown}:{bound_port}/"
    finally:
        await runner.cleanup()
        await cancel_and_wait([task])


def fold_below() -> int:
    """FOLD_BELOW, or $KX_UI_FOLD_BELOW (benches and tests: 0 starts from the read models at any size)."""
    text = os.environ.get("KX_UI_FOLD_BELOW", "")
    if not text:
        return FOLD_BELOW
    if not text.isdigit():
        raise ConfigError(f"KX_UI_FOLD_BELOW={text!r}: expected a number of log entries")
    return int(text)


async def start_follower(
    js, subjects: Subjects, service_keys, use_models: bool = True, fold_below: int = FOLD_BELOW
) -> tuple[Follower, bool]:
    """The dashboard's follower (no snapshots, no archiving; signed state only) and whether it starts from
    the service's read models (services/reads/model_world.py start_world: the releases in flight and the
    newest closed ones read back, the log's tail folded) — else from seq 1 (~90 s at 1M events). A log
    shorter than `fold_below` entries is folded: faster than waiting for a fresh service's first models."""
    from services.dashboard.model import RECENT
    from services.reads.model_world import start_world

    if not use_models or (await js.stream_info(subjects.releases_stream)).state.last_seq < fold_below:
        return Follower(js, subjects, service_keys=service_keys), False
    try:
        world = await start_world(js, subjects, service_keys, RECENT)
    except Exception as exc:  # NoView (no service writes them, other keys, an older writer), no rights
        log.info("dashboard: folding the log from seq 1 (the read models: %s)", exc)
        return Follower(js, subjects, service_keys=service_keys), False
    log.info(
        "dashboard: started from the read models at log seq %d (%d releases whole, %d closed ones by id)",
        world.applied_seq,
        len(world.releases),
        len(world.tombstones),
    )
    return Follower(js, subjects, world=world, service_keys=service_keys), True


async def run_ui(
    settings: Settings,
    host: str,
    port: int,
    on_ready: Callable[[str, str], None] | None = None,
    actions: bool = False,
    fold: bool = False,
) -> None:
    """`kxr ui`: its own read-only connection and follower; runs until SIGINT/SIGTERM.

    `actions` (`kxr ui --actions`): signed-in operators may act, each on their own NATS connection;
    `settings.ui_origin` (`--origin`): its public origin behind a proxy.
    `on_ready(url, how it started)`. `fold` (`--fold`): fold the whole log, never the read models."""
    if not settings.nats_url:
        raise ConfigError("no NATS to read: set KX_NATS_URL or pass --nats-url (e.g. $(kxr creds show auditor))")
    stop = SignalStop()
    try:
        nc = await connect_with(settings.nats_connection(), name="kxr-ui")
    except Exception as exc:
        raise ConfigError(
            f"cannot reach NATS at {redacted(settings.nats_url)}: {exc.__class__.__name__}: {exc}"
        ) from None
    try:
        js = nc.jetstream(timeout=10)
        subjects = Subjects(settings.prefix)
        await js.stream_info(subjects.releases_stream)  # no log yet: one clear error, not an empty page forever
        # no snapshots: the dashboard writes nothing, not even those; with the service keys it shows signed state only
        keys = reader_service_keys(settings)
        follower, from_models = await start_follower(js, subjects, keys, use_models=not fold, fold_below=fold_below())
        follow = asyncio.create_task(follower.run(), name="dashboard-follower")
        try:
            actions_server = server_of(nc, settings.nats_connection()) if actions else None
            async with dashboard(
                follower,
                js,
                subjects,
                host,
                port,
                actions_server=actions_server,
                from_models=from_models,
                origin=settings.ui_origin,
            ) as url:
                await follower.catch_up_from_start()  # a fold of a long log: as long as it moves, with progress
                if on_ready:
                    on_ready(
                        url,
                        f"from the read models at log seq {follower.started_from}" if from_models else "folded the log",
                    )
                await follow  # runs until cancelled; a failure of the follower stops the dashboard with its reason
        finally:
            await cancel_and_wait([follow])
    except asyncio.CancelledError:
        if not stop.requested:
            raise  # cancelled by something else than SIGINT/SIGTERM: not a clean stop
    finally:
        await nc.close()


@asynccontextmanager
async def dashboard_for(
    app,
    addr: tuple[str, int] | None,
    announce: Callable[[str], None] | None = None,
    actions: bool = False,
    origin: str | None = None,
) -> AsyncIterator[str | None]:
    """The dashboard next to a running App (`kxr serve --ui`, `kxr demo --ui`), or nothing if addr is None.
    `origin`: its public origin behind a proxy (default: the App's settings, `kxr serve --ui-origin`).

    It folds the log itself, on the App's connection: the service's own fold keeps closed
    releases archived (no window figures or gate results), the dashboard shows them whole.
    """
    if addr is None:
        yield None
        return
    follower, from_models = await start_follower(app.js, app.subjects, app.service_keys, fold_below=fold_below())
    follow = asyncio.create_task(follower.run(), name="dashboard-follower")
    try:
        await follower.catch_up_from_start()
        actions_server = server_of(app.nc, app.settings.nats_connection()) if actions else None
        async with dashboard(
            follower,
            app.js,
            app.subjects,
            *addr,
            actions_server=actions_server,
            from_models=from_models,
            origin=origin or app.settings.ui_origin,
        ) as url:
            if announce:
                announce(url)
            yield url
    finally:
        await cancel_and_wait([follow])
