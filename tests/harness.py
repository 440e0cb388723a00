"""Test building blocks: signed packs, a running service, simulated runtimes, waiting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from events.channel import ChannelConfig
from events.model import Actor
from events.service_signing import ServiceKeys
from events.signing import SigningKey, TrustRoot, b64encode
from projections.releases import ReleaseState
from services.actions.producer import (
    build_signed,
    configure_channel,
    manifest_bytes,
    push_pack,
    request_release,
    sha256_digest,
)
from services.app import App
from services.bootstrap import start_service
from services.jetstream.client import connect
from services.jetstream.log import EventLog
from services.reads.follower import Follower
from services.runtime.sdk import Identity, RuntimeClient
from services.runtime.simulation import Behaviour, simulated_runtime
from services.settings import ROLES, Settings
from services.tasks import cancel_and_wait
from services.verification.gates import GateFailure, VerifyContext, check_manifest

PRODUCER = Actor(kind="producer", id="test-pipeline")
OPERATOR = Actor(kind="operator", id="test-operator")

CHANNEL: dict[str, Any] = {
    "cohorts": [{"name": "internal", "tenants": ["t-int-1", "t-int-2"]}, {"name": "rest"}],
    "plan": [["internal"], ["rest"]],
    "monitoring": {"window_s": 1, "min_samples": 1, "thresholds": {"error_rate_max": 0.05, "latency_p95_ms_max": 250}},
    "compatibility": {"schema": "kx-pack/1", "profiles": ["standard"], "runtime_version": "2.4.0"},
    "policy": {
        "allowed_sources": ["https://git.example/kb"],
        "allowed_builders": ["kx-pipeline"],
        "forbid_downgrade": True,
    },
}


def trust_root_for(*keys: SigningKey, threshold: int = 1) -> TrustRoot:
    return TrustRoot.from_document(
        {
            "threshold": threshold,
            "keys": {k.keyid: {"public": b64encode(k.public_raw), "name": f"k{i}"} for i, k in enumerate(keys)},
        }
    )


def manifest_gate(manifest: bytes, key: SigningKey) -> GateFailure | None:
    """The manifest gate's verdict on `manifest` alone, `key` trusted: a request for any `kb` 1.0.0
    pack on prod/canary (a later gate's failure is not this gate's: look at `.gate`)."""
    ctx = VerifyContext(
        request_name="kb",
        request_version="1.0.0",
        request_digest="",
        env="prod",
        channel="canary",
        cohorts=("all",),
        channel_config=None,
        active={},
        trust_root=trust_root_for(key),
        now=datetime.now(UTC),
    )
    return check_manifest(manifest, ctx).failure


@dataclass(frozen=True)
class Pack:
    body: bytes
    manifest: bytes
    digest: str
    version: str
    name: str = "kb"


def make_pack(version: str, key: SigningKey | list[SigningKey], body: bytes | None = None, **overrides) -> Pack:
    body = body if body is not None else f"pack {version} ".encode() * 1000
    fields = dict(
        name="kb",
        version=version,
        schema="kx-pack/1",
        profile="standard",
        runtime=">=2.3,<3",
        build_id=f"b-{version}",
        builder="kx-pipeline",
        run=f"r-{version}",
        source="https://git.example/kb/core",
        revision=f"rev-{version}",
    )
    fields.update(overrides)
    signed = build_signed(body, **fields)
    keys = key if isinstance(key, list) else [key]
    return Pack(body, manifest_bytes(signed, keys), signed["digest"], version, fields["name"])


def request_data(pack: Pack, env: str = "prod", channel: str = "canary", **extra) -> dict:
    data = {
        "pack": {"name": pack.name, "version": pack.version, "digest": pack.digest},
        "target": {"env": env, "channel": channel},
        "owner": "kb-team",
        "escalation": "pager:kb",
        "reason": "test",
        "acknowledge_no_health": True,
    }
    data.update(extra)
    return data


@dataclass
class Service:
    app: App
    key: SigningKey
    trust_root: TrustRoot
    service_keys: ServiceKeys | None = None  # what runtimes and auditors trust for this service
    runtimes: list[RuntimeClient] = field(default_factory=list)
    tasks: list[asyncio.Task] = field(default_factory=list)
    # the log folded whole, as an auditor or a dashboard sees it: the service's own follower
    # keeps closed releases as tombstones, tests look at every release's whole story
    observer: Follower | None = None

    @property
    def world(self):
        assert self.observer is not None
        return self.observer.world

    async def wait_for(self, seq: int) -> None:
        """Until both the service and the observer have applied `seq`."""
        await self.app.follower.wait_for(seq)
        await self.observer.wait_for(seq)  # type: ignore[union-attr]

    async def catch_up(self) -> None:
        await self.app.follower.catch_up()
        await self.observer.catch_up()  # type: ignore[union-attr]

    async def configure(self, env: str = "prod", channel: str = "canary", config: dict | None = None) -> None:
        seq = await configure_channel(
            self.app.log, self.app.js, env, channel, ChannelConfig.model_validate(config or CHANNEL), OPERATOR
        )
        # applied before the test goes on: a snapshot or a read taken next must already hold it
        await self.app.follower.wait_for(seq)
        if self.observer is not None:
            await self.observer.wait_for(seq)

    async def publish(self, pack: Pack, push: bool = True) -> None:
        if push:
            await push_pack(self.app.js, self.app.subjects, pack.body, pack.manifest, pack.digest)

    async def request(self, release_id: str, pack: Pack, push: bool = True, **extra) -> None:
        await self.publish(pack, push)
        await request_release(self.app.log, release_id, request_data(pack, **extra), PRODUCER)

    async def runtime(
        self, tenant: str, behaviours: dict[str, Behaviour] | None = None, env: str = "prod", channel: str = "canary"
    ) -> RuntimeClient:
        rt = simulated_runtime(
            self.app.nc,
            Identity(env, channel, tenant, f"rt-{tenant}"),
            self.trust_root,
            behaviours or {},
            prefix=self.app.subjects.prefix,
            interval=0.1,
            seed=len(self.runtimes),
            service_keys=self.service_keys,
        )
        await rt.resolve_cohort()
        self.runtimes.append(rt)
        self.tasks.append(asyncio.create_task(rt.run()))
        return rt

    async def first_release(self, release_id: str = "r1", version: str = "1.0.0") -> ReleaseState:
        """The usual start: the channel configured, a runtime in each of its cohorts, and a first release
        (no last-known-good yet, so no rollback) closed."""
        await self.configure()
        await self.runtime("t-int-1")
        await self.runtime("tenant-42")
        await self.request(release_id, make_pack(version, self.key), rollback={"strategy": "none"})
        return await self.wait_release(release_id)

    async def wait_release(self, release_id: str, phase: str = "closed", timeout: float = 30.0) -> ReleaseState:
        return await wait_for(
            lambda: _phase_is(self.world.release(release_id), phase),
            timeout,
            f"release {release_id} to reach {phase}",
            lambda: self.world.release(release_id),
        )


def _phase_is(release: ReleaseState | None, phase: str) -> ReleaseState | None:
    return release if release is not None and release.phase == phase else None


def refuse_batches(monkeypatch, carrying: Callable[[str], bool], why: str = "injected: batch refused") -> None:
    """The server answers the commit of every atomic batch with a message on a subject `carrying` accepts
    with an error (not a conflict): a fault injected at the wire (EventLog._send), as a refused batch looks."""
    real_send = EventLog._send

    async def refusing(self, batch_id, messages):
        if any(carrying(subject) for subject, _, _ in messages):
            return {"error": {"code": 503, "err_code": 10999, "description": why}}
        return await real_send(self, batch_id, messages)

    monkeypatch.setattr(EventLog, "_send", refusing)


async def wait_for(probe, timeout: float, what: str, describe=None):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = probe()
        if value:
            return value
        if loop.time() > deadline:
            # one last look once the event loop has turned: a process that lost the CPU past the deadline
            # (a loaded CI machine) may hold the awaited message unread, its callback not yet run
            await asyncio.sleep(0.1)
            value = probe()
            if value:
                return value
            state = describe() if describe else None
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last state: {state}")
        await asyncio.sleep(0.02)


# A restarted service keeps its signing key, as `kxr serve` keeps it under its data directory:
# the service trusts only what its keys signed, so a new key would disown its own history.
_SERVICE_KEYS: dict[str, SigningKey] = {}


@asynccontextmanager
async def running_service(
    nats_url: str,
    prefix: str,
    roles: tuple[str, ...] | None = None,
    key: SigningKey | None = None,
    verify_timeout_s: float = 30.0,
    replicas: int = 1,
    trust_root: TrustRoot | None = None,
    fast_path: bool = True,
) -> AsyncIterator[Service]:
    key = key or SigningKey.generate()
    trust_root = trust_root or trust_root_for(key)
    nc = await connect(nats_url, name=f"test-{prefix}")
    # the tests' webhook receivers listen on 127.0.0.1: a deployment's notifier refuses that (KX_WEBHOOK_ALLOW_PRIVATE)
    settings = Settings(
        nats_url=nats_url,
        prefix=prefix,
        verify_timeout_s=verify_timeout_s,
        replicas=replicas,
        webhook_allow_private=True,
        fast_path=fast_path,
    )
    service_key = _SERVICE_KEYS.setdefault(prefix, SigningKey.generate())
    app = App(nc, settings, trust_root, signer=service_key)
    service = Service(app, key, trust_root, service_keys=ServiceKeys.of(service_key, list(ROLES)))
    try:
        await start_service(app, settings.roles if roles is None else roles)
        service.observer = Follower(app.js, app.subjects)
        service.tasks.append(asyncio.create_task(service.observer.run(), name="observer"))
        await service.observer.catch_up()  # a restarted service's test sees the log so far at once
        yield service
    finally:
        await cancel_and_wait(service.tasks)
        await app.stop()
        await nc.close()


__all__ = [
    "Behaviour",
    "CHANNEL",
    "Pack",
    "make_pack",
    "request_data",
    "running_service",
    "sha256_digest",
    "trust_root_for",
    "wait_for",
]
