"""`kxr runtime simulate`: one simulated runtime as a process (deployments, demos, smoke tests).

A real `RuntimeClient` (cohort resolution, again on each reconfiguration of the channel, pointer
following, re-verification before each switch, health reports) with synthetic traffic from
`simulation.sampler`; it runs until SIGINT/SIGTERM and then returns cleanly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from events.model import PackRef
from events.subjects import Subjects
from events.tokens import InvalidToken
from services.jetstream.client import connect_with
from services.permissions import inbox_for, user_name
from services.runtime.sdk import ChannelConfigUnavailable, Identity
from services.runtime.simulation import Behaviour, simulated_runtime
from services.settings import ConfigError, Settings, load_service_keys, load_trust_root
from services.tasks import SignalStop


def runtime_inbox(subjects: Subjects, user: str | None) -> str:
    """The inbox prefix a runtime user may receive on, for a connection whose credentials name none
    (a bare URL): a runtime's own user (`<prefix>-runtime-<id>`) has its own, the shared one the
    runtime's. Credentials that name one (--creds, a context) win over this."""
    shared = user_name(subjects, "runtime")
    if user and user.startswith(f"{shared}-"):
        try:
            return inbox_for(subjects, "runtime", user.removeprefix(f"{shared}-"))
        except InvalidToken:
            pass
    return inbox_for(subjects, "runtime")


async def run_simulated_runtime(
    settings: Settings,
    identity: Identity,
    behaviour: Behaviour,
    interval: float,
    on_ready: Callable[[str], None],
    on_switch: Callable[[PackRef], None],
) -> None:
    trust_root = load_trust_root(settings.trust_root_path)  # bad configuration fails before connecting
    service_keys = load_service_keys(settings.service_keys_path)
    if not settings.nats_url:
        raise ConfigError("a runtime needs NATS: set KX_NATS_URL or pass --nats-url")
    stop = SignalStop()
    try:
        connection = settings.nats_connection()  # a bad file or option: a ConfigError of its own
        try:
            # the runtime user may only receive replies under its own inbox prefix (services/permissions.py):
            # without it every read is denied. Harmless where NATS has no users.
            nc = await connect_with(
                connection,
                name=f"kxr-runtime-{identity.runtime_id}",
                default_inbox=runtime_inbox(Subjects(settings.prefix), connection.user),
            )
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(
                f"cannot reach NATS at {connection.describe()}: {exc.__class__.__name__}: {exc}"
            ) from None
        try:
            runtime = simulated_runtime(
                nc,
                identity,
                trust_root,
                {},
                prefix=settings.prefix,
                interval=interval,
                service_keys=service_keys,
                default=behaviour,
            )

            async def switched(pack: PackRef) -> None:
                on_switch(pack)

            runtime.on_switch = switched
            try:
                cohort = await runtime.resolve_cohort()
            except ChannelConfigUnavailable as exc:  # no cohort is picked on a guess
                raise ConfigError(f"runtime {identity.runtime_id} follows no cohort: {exc}") from None
            on_ready(cohort)
            # the channel may be (re)configured while it runs (compose starts it before `kxr channel set`):
            # the runtime then follows its new cohort (RuntimeClient.follow), and says so as at start
            runtime.on_cohort = on_ready
            await runtime.run()
        finally:
            await nc.close()
    except asyncio.CancelledError:
        if not stop.requested:
            raise
