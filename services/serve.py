"""`kxr serve`: run the chosen consumers in one process until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from nats import errors as nats_errors

from events.signing import SigningKey, TrustRoot
from events.subjects import Subjects
from services.jetstream.client import connect
from services.jetstream.embedded import (
    EmbeddedServer,
    ServerError,
    StoreLock,
    adopt_default_account,
    authorized_config,
    free_port,
)
from services.jetstream.log_reads import log_entries

from .app import App, Clock
from .bootstrap import start_service
from .observability.endpoint import parse_listen_address, serve_metrics
from .permissions import ACCOUNT, inbox_for, redacted
from .settings import ConfigError, Settings, load_trust_root, service_keys_for, service_signing_key
from .tasks import SignalStop, utc_clock

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
async def nats_for(settings: Settings, runtime_identity: str | None = None) -> AsyncIterator[NatsTarget]:
    """KX_NATS_URL as given, or an embedded server under KX_DATA_DIR with one user per role.

    The service always uses its own reply-subject prefix (`_INBOX_<prefix>_service`), so
    the generated service user works whether it comes from the embedded server or from
    `KX_NATS_URL=$(kxr creds show service)` against an existing deployment.
    `runtime_identity` ("strict": the shared runtime user reports no health) applies to the
    embedded server's users; None keeps the mode the data dir has ("shared" if never set).
    """
    inbox = inbox_for(Subjects(settings.prefix), "service")
    if settings.nats_url:  # the connection services/settings.py resolved: servers, identity, TLS
        connection = settings.nats_connection()
        assert connection.url is not None
        yield NatsTarget(connection.url, {"inbox_prefix": inbox, **connection.connect_options()})
        return
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = settings.data_dir / "nats"
    try:  # before anything under the data dir is written: never under a running server
        lock = StoreLock(store).acquire()
    except ServerError as exc:
        raise ConfigError(str(exc)) from None
    server = EmbeddedServer(store_dir=store, log_file=settings.data_dir / "nats-server.log", port=free_port())
    try:
        try:
            server.config_file, creds = authorized_config(
                settings.data_dir, settings.prefix, server.url, runtime_identity=runtime_identity
            )
        except ValueError as exc:  # a mode kept under the data dir that is none
            raise ConfigError(str(exc)) from None
        except OSError as exc:
            raise ConfigError(
                f"cannot write the embedded NATS configuration under {settings.data_dir}: {exc.strerror}"
            ) from None
        if adopt_default_account(store, ACCOUNT):
            log.info("moved the store's streams into the account %s (the users now live there)", ACCOUNT)
        try:
            server.start(lock=lock)
        except ServerError as exc:
            raise ConfigError(str(exc)) from None
        yield NatsTarget(server.url, creds["service"].connect_options())
    finally:
        server.stop()
        lock.release()


@asynccontextmanager
async def running_app(
    settings: Settings,
    url: str,
    trust_root: TrustRoot | None,
    clock: Clock = utc_clock,
    signer: SigningKey | None = None,
    connect_options: dict | None = None,
) -> AsyncIterator[App]:
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


async def started_app(
    nc,
    settings: Settings,
    trust_root: TrustRoot | None,
    clock: Clock,
    signer: SigningKey | None,
    attempts: int = START_ATTEMPTS,
    pause_s: float = 1.0,
) -> App:
    """An App started; a JetStream request that times out during start-up starts it again.

    On a cluster, creating streams and consumers while the meta leader is busy (another
    process creating the same layout, an election) can take longer than a request's
    timeout once; nothing has been decided yet, so starting again is safe.
    """
    for attempt in range(1, attempts + 1):
        app = App(nc, settings, trust_root, clock, signer)
        try:
            await start_service(app, settings.roles)
            return app
        except BaseException as exc:
            await app.stop()  # what it had started (the follower, ...) stops with it
            if not isinstance(exc, nats_errors.TimeoutError) or attempt == attempts:
                raise
            log.warning(
                "start-up: a NATS request timed out (%s); starting again (%d of %d)", exc, attempt + 1, attempts
            )
            await asyncio.sleep(pause_s)
    raise AssertionError("unreachable")


@asynccontextmanager
async def optional_metrics(app: App, address: str | None, log_series: bool = True) -> AsyncIterator[None]:
    if not address:
        yield
        return
    async with serve_metrics(app, address, lambda: log_entries(app.js, app.subjects), log_series=log_series):
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


# ---- what the connected user can do beyond, or short of, what the service needs -------------------
class Probe:
    """Harmless questions to the server about one user's rights, on a short-lived connection.

    A denial is the server's permissions violation for that subject; an allowed request is
    one the server routed (an answer, or "no responders")."""

    def __init__(self, nc, violations: list[str], timeout: float) -> None:
        self.nc, self._violations, self._timeout = nc, violations, timeout

    def denied(self, kind: str, subject: str) -> bool:
        return any(f'{kind} to "{subject.lower()}"' in v for v in self._violations)

    async def publish_allowed(self, subject: str, headers: dict | None = None) -> bool | None:
        """True: routed; False: denied; None: no answer and no violation (no evidence either way)."""
        from nats.errors import NoRespondersError
        from nats.errors import TimeoutError as NatsTimeoutError

        request = asyncio.ensure_future(self.nc.request(subject, b"{}", timeout=self._timeout, headers=headers))
        while not request.done():
            if self.denied("publish", subject):
                request.cancel()
                await asyncio.gather(request, return_exceptions=True)
                return False
            await asyncio.wait([request], timeout=0.01)
        try:
            request.result()
        except NoRespondersError:
            return True  # routed, nobody listening: the publish was allowed
        except (TimeoutError, NatsTimeoutError, asyncio.CancelledError):
            return None
        return True

    async def subscribe_allowed(self, subject: str, echo: str | None = None) -> bool:
        """Subscribe, then wait for the violation, our own `echo` message, or the timeout."""
        received = asyncio.Event()

        async def on_msg(_msg) -> None:
            received.set()

        sub = await self.nc.subscribe(subject, cb=on_msg)
        if echo:  # the quick positive answer: our own message comes back
            await self.nc.publish(echo, b"")
        await self.nc.flush(timeout=self._timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        # a poll, not an Event: the violation may come after the PONG, into the list the connection's
        # error_cb fills, which wakes nobody; this is a one-shot startup probe bounded by the deadline
        while not received.is_set() and not self.denied("subscription", subject) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        try:
            await sub.unsubscribe()
        except Exception:
            pass
        return not self.denied("subscription", subject)


@asynccontextmanager
async def probing(target: NatsTarget, timeout: float) -> AsyncIterator[Probe]:
    import nats

    violations: list[str] = []

    async def on_error(exc: Exception) -> None:
        violations.append(str(exc).lower())

    try:
        servers = [u.strip() for u in target.url.split(",") if u.strip()]  # KX_NATS_URL may list a cluster's servers
        nc = await nats.connect(
            servers if len(servers) > 1 else target.url,
            name="kxr-serve-probe",
            error_cb=on_error,
            allow_reconnect=True,
            max_reconnect_attempts=3,
            reconnect_time_wait=0.5,
            connect_timeout=3,
            **target.options,
        )
    except Exception as exc:
        raise ConfigError(f"cannot reach NATS at {redacted(target.url)}: {exc.__class__.__name__}: {exc}") from None
    try:
        yield Probe(nc, violations, timeout)
    finally:
        await nc.close()


# JetStream refuses a publish whose expected last sequence on its subject is not the real one,
# and stores nothing: a probe of the right to append that appends nothing.
NEVER = {"Nats-Expected-Last-Subject-Sequence": str(2**62)}


async def excess_privileges(target: NatsTarget, timeout: float = 2.0) -> list[str]:
    """Rights `kxr serve` never needs; empty if the user has none of them.

    - delete a stream: a request on `$JS.API.STREAM.DELETE.KXR_PROBE_<random>` (a stream
      that does not exist): an answer from JetStream means the request was let through;
    - publish outside its own subjects: a request on `kxrprobe<random>.scope.x.y.z.activated`
      (a prefix nobody uses): "no responders" means the publish was let through;
    - subscribe outside its own subjects: a subscription on `kxrprobe<random>.>`.
    """
    token = secrets.token_hex(4)
    excess = []
    async with probing(target, timeout) as probe:
        if await probe.publish_allowed(f"$JS.API.STREAM.DELETE.KXR_PROBE_{token.upper()}"):
            excess.append("it may delete streams ($JS.API.STREAM.DELETE)")
        may_publish = bool(await probe.publish_allowed(f"kxrprobe{token}.scope.x.y.z.activated"))
        if may_publish:
            excess.append("it may publish outside the service's subjects")
        if await probe.subscribe_allowed(f"kxrprobe{token}.>", echo=f"kxrprobe{token}.ping" if may_publish else None):
            excess.append("it may subscribe outside the service's subjects")
    return excess


async def missing_privileges(target: NatsTarget, prefix: str, timeout: float = 2.0) -> list[str]:
    """Rights `kxr serve` needs that the user lacks; empty if it has every one probed.

    Each probe appends nothing: release events and pointers are published with an expected
    last subject sequence no subject has (JetStream refuses them, or nobody answers before
    the streams exist: either way the server let them through); the JetStream API requests
    read (stream info, a consumer that does not exist); live health is subscribed and dropped.
    """
    s = Subjects(prefix)
    token = f"kxrprobe{secrets.token_hex(4)}"
    needs: dict[str, tuple[str, dict | None]] = {
        f"append release events ({s.release(token, 'verified')})": (s.release(token, "verified"), NEVER),
        f"publish pointers ({s.scope(token, token, token, 'activated')})": (
            s.scope(token, token, token, "activated"),
            NEVER,
        ),
        f"read the log ($JS.API.STREAM.INFO.{s.releases_stream})": (f"$JS.API.STREAM.INFO.{s.releases_stream}", None),
        f"run its durable consumers ($JS.API.CONSUMER.INFO.{s.releases_stream}.kxr-promoter)": (
            f"$JS.API.CONSUMER.INFO.{s.releases_stream}.kxr-promoter",
            None,
        ),
        f"read the timers ($JS.API.STREAM.INFO.{s.timers_stream})": (f"$JS.API.STREAM.INFO.{s.timers_stream}", None),
    }
    missing = []
    async with probing(target, timeout) as probe:
        for what, probe_of in needs.items():
            if await probe.publish_allowed(*probe_of) is False:
                missing.append(f"it may not {what}")
        if not await probe.subscribe_allowed(s.health_all()):
            missing.append(f"it may not subscribe to live health ({s.health_all()})")
    return missing


async def check_privileges(target: NatsTarget, strict: bool, prefix: str = "kx") -> None:
    excess = await excess_privileges(target)
    missing = await missing_privileges(target, prefix)
    for problem, what in (
        (excess, "can do more than kxr serve needs"),
        (missing, "cannot do all that kxr serve needs"),
    ):
        if not problem:
            continue
        if strict:
            raise ConfigError(
                f"--strict: the NATS user at {redacted(target.url)} {what} ({'; '.join(problem)}); "
                "give it the service permissions of docs/permissions.md"
            )
        log.warning(
            "the NATS user at %s %s (%s); see docs/permissions.md, or run with --strict to refuse",
            redacted(target.url),
            what,
            "; ".join(problem),
        )


def settle_heap() -> None:
    """Once started: what start-up loaded (modules, schemas, the world from the snapshot and the
    catch-up fold) goes out of the cyclic collector's reach for good. A long-lived service holds
    10^5 closed releases; each full collection walked all of them again (tens of ms of a stalled
    event loop, every time the survivors grew by a quarter). Garbage is still freed by reference
    counting; only cycles among these objects would stay, and the fold makes none."""
    gc.collect()
    gc.freeze()


async def serve(
    settings: Settings,
    on_ready: Callable[[str], None] | None = None,
    strict: bool = False,
    ui: tuple[str, int] | None = None,
    on_ui: Callable[[str], None] | None = None,
    runtime_identity: str | None = None,
    ui_actions: bool = False,
) -> None:
    """Run until SIGINT/SIGTERM (clean return) or a consumer fails (raised); with `ui`, the dashboard too
    (`ui_actions`: with operator actions after login)."""
    from .dashboard.server import dashboard_for

    trust_root = trust_root_for(settings)  # bad configuration fails before anything starts
    if settings.metrics_addr:
        parse_listen_address(settings.metrics_addr)
    signer = service_signing_key(settings)
    service_keys_for(
        settings, signer
    )  # the keys its fold trusts: refused now, not after start-up, if they exclude its own
    stop = SignalStop()
    try:
        if runtime_identity is not None and settings.nats_url:
            raise ConfigError(
                "--runtime-identity applies to the embedded NATS: for an existing deployment, "
                "kxr creds init --runtime-identity MODE renders its users"
            )
        async with nats_for(settings, runtime_identity) as target:
            await check_privileges(target, strict, settings.prefix)
            async with (
                running_app(settings, target.url, trust_root, signer=signer, connect_options=target.options) as app,
                dashboard_for(app, ui, on_ui, actions=ui_actions),
                optional_metrics(app, settings.metrics_addr, settings.metrics_log),
            ):
                settle_heap()
                if on_ready:
                    on_ready(redacted(target.url))
                await app.wait()
    except asyncio.CancelledError:
        if not stop.requested:
            raise
