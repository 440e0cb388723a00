"""`kxr serve`: run the chosen consumers in one process until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable

from events.signing import SigningKey, TrustRoot
from .app import App, Clock, connect, utc_clock
from .embedded import EmbeddedServer
from .settings import ConfigError, Settings, load_trust_root, service_signing_key

log = logging.getLogger(__name__)
NEEDS_TRUST_ROOT = {"verifier", "activator"}


@asynccontextmanager
async def nats_for(settings: Settings) -> AsyncIterator[str]:
    """The NATS URL to use: KX_NATS_URL, or an embedded server under KX_DATA_DIR."""
    if settings.nats_url:
        yield settings.nats_url
        return
    server = EmbeddedServer(store_dir=settings.data_dir / "nats", log_file=settings.data_dir / "nats-server.log")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@asynccontextmanager
async def running_app(settings: Settings, url: str, trust_root: TrustRoot | None, clock: Clock = utc_clock,
                      signer: SigningKey | None = None) -> AsyncIterator[App]:
    try:
        nc = await connect(url, name=f"kxr-serve[{','.join(settings.roles)}]")
    except Exception as exc:
        raise ConfigError(f"cannot reach NATS at {url}: {exc.__class__.__name__}: {exc}") from None
    app = App(nc, settings, trust_root, clock, signer)
    try:
        await app.start(settings.roles)
        yield app
    finally:
        await app.stop()
        await nc.drain()


def trust_root_for(settings: Settings) -> TrustRoot | None:
    if NEEDS_TRUST_ROOT & set(settings.roles):
        return load_trust_root(settings.trust_root_path)
    return load_trust_root(settings.trust_root_path) if settings.trust_root_path else None


async def serve(settings: Settings, on_ready: Callable[[str], None] | None = None) -> None:
    """Run until SIGINT/SIGTERM (clean return) or a consumer fails (raised)."""
    trust_root = trust_root_for(settings)  # bad configuration fails before anything starts
    signer = service_signing_key(settings)
    main = asyncio.current_task()
    assert main is not None
    stopping = False

    def stop() -> None:
        nonlocal stopping
        stopping = True
        main.cancel()  # also interrupts start-up (e.g. waiting for NATS)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    try:
        async with nats_for(settings) as url:
            async with running_app(settings, url, trust_root, signer=signer) as app:
                if on_ready:
                    on_ready(url)
                await app.wait()
    except asyncio.CancelledError:
        if not stopping:
            raise
