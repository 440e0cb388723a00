"""`kxr serve`: run the chosen consumers in one process until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import secrets
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

from nats import errors as nats_errors

from events.signing import SigningKey, TrustRoot
from events.subjects import Subjects
from .app import App, Clock, connect, utc_clock
from .embedded import EmbeddedServer, authorized_config, free_port
from .observability.endpoint import parse_listen_address, serve_metrics
from .permissions import inbox_for, redacted
from .settings import ConfigError, Settings, load_trust_root, service_keys_for, service_signing_key
from .tasks import SignalStop

log = logging.getLogger(__name__)
# every role that checks a signature: the gates, and the rollback-readiness check the preparer
# (pre-flight) and the promoter (before each expansion) make on every rollback target
NEEDS_TRUST_ROOT = {"preparer", "verifier", "activator", "promoter", "guard"}
START_ATTEMPTS = 3


@dataclass(frozen=True)
class NatsTarget:
    """Where `kxr serve` connects, and how (extra `nats.connect` options: user, password, inbox prefix)."""

    url: str
    options: dict = field(default_factory=dict)


@asynccontextmanager
async def nats_for(settings: Settings) -> AsyncIterator[NatsTarget]:
    """KX_NATS_URL as given, or an embedded server under KX_DATA_DIR with one user per role.

    The service always uses its own reply-subject prefix (`_INBOX_<prefix>_service`), so
    the generated service user works whether it comes from the embedded server or from
    `KX_NATS_URL=$(kxr creds show service)` against an existing deployment.
    """
    inbox = inbox_for(Subjects(settings.prefix), "service")
    if settings.nats_url:
        yield NatsTarget(settings.nats_url, {"inbox_prefix": inbox})
        return
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    server = EmbeddedServer(store_dir=settings.data_dir / "nats", log_file=settings.data_dir / "nats-server.log", port=free_port())
    try:
        server.config_file, creds = authorized_config(settings.data_dir, settings.prefix, server.url)
    except OSError as exc:
        raise ConfigError(f"cannot write the embedded NATS configuration under {settings.data_dir}: {exc.strerror}") from None
    server.start()
    try:
        yield NatsTarget(server.url, creds["service"].connect_options())
    finally:
        server.stop()


@asynccontextmanager
async def running_app(settings: Settings, url: str, trust_root: TrustRoot | None, clock: Clock = utc_clock,
                      signer: SigningKey | None = None, connect_options: dict | None = None) -> AsyncIterator[App]:
    try:
        nc = await connect(url, name=f"kxr-serve[{','.join(settings.roles)}]", **(connect_options or {}))
    except Exception as exc:
        raise ConfigError(f"cannot reach NATS at {redacted(url)}: {exc.__class__.__name__}: {exc}") from None
    try:
        app = await started_app(nc, settings, trust_root, clock, signer)
    except BaseException:
        await close_connection(nc)
        raise
    try:
        yield app
    finally:
        await app.stop()
        await close_connection(nc)


async def started_app(nc, settings: Settings, trust_root: TrustRoot | None, clock: Clock, signer: SigningKey | None,
                      attempts: int = START_ATTEMPTS, pause_s: float = 1.0) -> App:
    """An App started; a JetStream request that times out during start-up starts it again.

    On a cluster, creating streams and consumers while the meta leader is busy (another
    process creating the same layout, an election) can take longer than a request's
    timeout once; nothing has been decided yet, so starting again is safe.
    """
    for attempt in range(1, attempts + 1):
        app = App(nc, settings, trust_root, clock, signer)
        try:
            await app.start(settings.roles)
            return app
        except BaseException as exc:
            await app.stop()  # what it had started (the follower, ...) stops with it
            if not isinstance(exc, nats_errors.TimeoutError) or attempt == attempts:
                raise
            log.warning("start-up: a NATS request timed out (%s); starting again (%d of %d)", exc, attempt + 1, attempts)
            await asyncio.sleep(pause_s)
    raise AssertionError("unreachable")


@asynccontextmanager
async def optional_metrics(app: App, address: str | None) -> AsyncIterator[None]:
    if not address:
        yield
        return
    async with serve_metrics(app, address):
        yield


async def close_connection(nc, flush_timeout: float = 2.0) -> None:
    """Flush what was published, then close. Not `drain()`: nats.py's drain waits on every
    pull subscription's queue, which a cancelled fetch leaves unfinished, so it would sit out
    its whole 30 s timeout on every shutdown (everything is stopped and saved by now)."""
    try:
        await nc.flush(timeout=flush_timeout)
    except Exception:  # a connection already gone has nothing left to flush
        pass
    await nc.close()


def trust_root_for(settings: Settings) -> TrustRoot | None:
    if NEEDS_TRUST_ROOT & set(settings.roles):
        return load_trust_root(settings.trust_root_path)
    return load_trust_root(settings.trust_root_path) if settings.trust_root_path else None


# ---- what the connected user can do that the service does not need --------------------------------
async def excess_privileges(target: NatsTarget, timeout: float = 2.0) -> list[str]:
    """Probe, harmlessly, for rights `kxr serve` never needs; empty if the user has none of them.

    - delete a stream: a request on `$JS.API.STREAM.DELETE.KXR_PROBE_<random>` (a stream
      that does not exist): an answer from JetStream means the request was let through;
    - publish outside its own subjects: a request on `kxrprobe<random>.scope.x.y.z.activated`
      (a prefix nobody uses): "no responders" means the publish was let through;
    - subscribe outside its own subjects: a subscription on `kxrprobe<random>.>`.
    A denial is the server's permissions violation for that subject.
    """
    import nats
    from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError

    violations: list[str] = []

    async def on_error(exc: Exception) -> None:
        violations.append(str(exc).lower())

    try:
        servers = [u.strip() for u in target.url.split(",") if u.strip()]  # KX_NATS_URL may list a cluster's servers
        nc = await nats.connect(servers if len(servers) > 1 else target.url, name="kxr-serve-probe", error_cb=on_error, allow_reconnect=True,
                                max_reconnect_attempts=3, reconnect_time_wait=0.5, connect_timeout=3, **target.options)
    except Exception as exc:
        raise ConfigError(f"cannot reach NATS at {redacted(target.url)}: {exc.__class__.__name__}: {exc}") from None

    def denied(kind: str, subject: str) -> bool:
        return any(f'{kind} to "{subject.lower()}"' in v for v in violations)

    async def publish_allowed(subject: str) -> bool:
        request = asyncio.ensure_future(nc.request(subject, b"{}", timeout=timeout))
        while not request.done():
            if denied("publish", subject):
                request.cancel()
                return False
            await asyncio.wait([request], timeout=0.01)
        try:
            request.result()
        except NoRespondersError:
            return True  # routed, nobody listening: the publish was allowed
        except (asyncio.TimeoutError, NatsTimeoutError):
            return False  # no answer and no violation seen: no evidence of excess
        except asyncio.CancelledError:
            return False
        return True

    token = secrets.token_hex(4)
    excess = []
    try:
        if await publish_allowed(f"$JS.API.STREAM.DELETE.KXR_PROBE_{token.upper()}"):
            excess.append("it may delete streams ($JS.API.STREAM.DELETE)")
        may_publish = await publish_allowed(f"kxrprobe{token}.scope.x.y.z.activated")
        if may_publish:
            excess.append("it may publish outside the service's subjects")
        subject = f"kxrprobe{token}.>"
        received = asyncio.Event()

        async def on_msg(_msg) -> None:
            received.set()

        sub = await nc.subscribe(subject, cb=on_msg)
        if may_publish:  # the quick positive answer: our own message comes back
            await nc.publish(f"kxrprobe{token}.ping", b"")
        await nc.flush(timeout=timeout)
        deadline = asyncio.get_running_loop().time() + timeout
        while not received.is_set() and not denied("subscription", subject) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)  # the violation may come after the PONG
        if not denied("subscription", subject):
            excess.append("it may subscribe outside the service's subjects")
        try:
            await sub.unsubscribe()
        except Exception:
            pass
    finally:
        await nc.close()
    return excess


async def check_privileges(target: NatsTarget, strict: bool) -> None:
    excess = await excess_privileges(target)
    if not excess:
        return
    what = "; ".join(excess)
    if strict:
        raise ConfigError(f"--strict: the NATS user at {redacted(target.url)} can do more than kxr serve needs ({what}); "
                          "give it the service permissions of docs/permissions.md")
    log.warning("the NATS user at %s can do more than kxr serve needs (%s); see docs/permissions.md, "
                "or run with --strict to refuse", redacted(target.url), what)


async def serve(settings: Settings, on_ready: Callable[[str], None] | None = None, strict: bool = False,
                ui: tuple[str, int] | None = None, on_ui: Callable[[str], None] | None = None) -> None:
    """Run until SIGINT/SIGTERM (clean return) or a consumer fails (raised); with `ui`, the dashboard too."""
    from .dashboard.server import dashboard_for

    trust_root = trust_root_for(settings)  # bad configuration fails before anything starts
    if settings.metrics_addr:
        parse_listen_address(settings.metrics_addr)
    signer = service_signing_key(settings)
    service_keys_for(settings, signer)  # the keys its fold trusts: refused now, not after start-up, if they exclude its own
    stop = SignalStop()
    try:
        async with nats_for(settings) as target:
            await check_privileges(target, strict)
            async with running_app(settings, target.url, trust_root, signer=signer, connect_options=target.options) as app, \
                    dashboard_for(app, ui, on_ui), optional_metrics(app, settings.metrics_addr):
                if on_ready:
                    on_ready(redacted(target.url))
                await app.wait()
    except asyncio.CancelledError:
        if not stop.requested:
            raise
