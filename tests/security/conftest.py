"""The attack suite's server: nats-server started exactly as embedded `kxr serve` starts it.

`authed` (one per test module) is a nats-server under the generated configuration
(`services.jetstream.embedded.authorized_config`: one least-privilege user per role, in the account
with JetStream limits), holding the store lock like `kxr serve`, plus two runtimes with
their own credentials (`kxr creds runtime add rt-a` / `rt-b`). `as_role` opens connections
as any of them (`await as_role("producer")`, `await as_role("runtime-rt-a")`) on a layout
the service user created; `service_app` runs every consumer of `kxr serve` as the service
user, so its durable consumers exist to be attacked.

Every denial is asserted twice (`Conn.publish_denied`): nothing comes back (JetStream never
saw the request) and the server reports a permissions violation for that very subject.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
from nats.errors import TimeoutError as NatsTimeoutError

from events.service_signing import ServiceKeys
from events.signing import SigningKey
from events.subjects import Subjects
from services.app import App
from services.bootstrap import start_service
from services.jetstream.embedded import EmbeddedServer, StoreLock, authorized_config, free_port
from services.jetstream.layout import ensure_layout
from services.permissions import AccountLimits, new_runtime_credentials, write_credentials
from services.settings import ROLES as CONSUMERS
from services.settings import Settings
from tests.harness import trust_root_for, wait_for

DENIED_WAIT_S = 3.0
RUNTIMES = ("rt-a", "rt-b")  # runtimes with their own credentials


@dataclass
class Authed:
    url: str
    prefix: str
    creds: dict  # by name: the five roles, and `runtime-<id>` for each of RUNTIMES
    data_dir: Path
    server: EmbeddedServer

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.prefix)

    def violations(self) -> list[str]:
        return [
            line
            for line in (self.data_dir / "nats-server.log").read_text(errors="replace").splitlines()
            if "Violation" in line
        ]


def start_authed(
    data_dir: Path,
    prefix: str | None = None,
    runtimes: tuple[str, ...] = RUNTIMES,
    limits: AccountLimits | None = None,
    monitor_port: int | None = None,
) -> tuple[Authed, StoreLock]:
    """A server as embedded `kxr serve` runs it (store lock included); stop with `stop_authed`.
    `monitor_port`: the server's HTTP monitoring there too (a test counting what the server holds)."""
    prefix = prefix or "p" + uuid.uuid4().hex[:10]
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    subjects = Subjects(prefix)
    for runtime_id in runtimes:
        write_credentials(data_dir, new_runtime_credentials(subjects, runtime_id, url))
    store = data_dir / "nats"
    lock = StoreLock(store).acquire()
    config, creds = authorized_config(data_dir, prefix, url, limits)
    if monitor_port is not None:  # the same config, included, with the monitoring port beside it
        watched = data_dir / "monitored.conf"
        watched.write_text(f'include "{config.name}"\nhttp: "127.0.0.1:{monitor_port}"\n')
        config = watched
    server = EmbeddedServer(
        store_dir=store, port=port, config_file=config, log_file=data_dir / "nats-server.log"
    ).start(lock=lock)
    return Authed(url, prefix, creds, data_dir, server), lock


def stop_authed(authed: Authed, lock: StoreLock) -> None:
    authed.server.stop()
    lock.release()


@pytest.fixture(scope="module")
def authed(tmp_path_factory):
    authed, lock = start_authed(tmp_path_factory.mktemp("authed"))
    try:
        yield authed
    finally:
        stop_authed(authed, lock)


@dataclass
class Conn:
    role: str
    nc: nats.NATS
    errors: list[str] = field(default_factory=list)

    @property
    def js(self):
        return self.nc.jetstream(timeout=5)

    def permission_errors(self) -> list[str]:
        return [e for e in self.errors if "permissions violation" in e]

    async def violation(self, kind: str, subject: str) -> None:
        needle = f'permissions violation for {kind} to "{subject.lower()}"'
        deadline = time.monotonic() + DENIED_WAIT_S
        while not any(needle in e for e in self.errors):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.role}: no permissions violation for {kind} to {subject!r}; errors: {self.errors}"
                )
            await asyncio.sleep(0.02)

    async def publish_denied(self, subject: str, payload: bytes = b"{}", headers: dict | None = None) -> None:
        """The server says "not allowed" for this subject, and nothing ever answers the request.

        (A denied message is dropped by the server: JetStream never sees it.)"""
        request = asyncio.ensure_future(self.nc.request(subject, payload, headers=headers, timeout=DENIED_WAIT_S))
        try:
            await self.violation("publish", subject)
            await asyncio.sleep(0.05)
            assert not request.done() or isinstance(request.exception(), (NatsTimeoutError, asyncio.TimeoutError)), (
                f"{self.role}: {subject} was answered: {request.result()!r}"
            )
        finally:
            request.cancel()
            await asyncio.gather(request, return_exceptions=True)

    async def subscribe_denied(self, subject: str) -> None:
        got: list = []

        async def on_msg(msg) -> None:
            got.append(msg)

        sub = await self.nc.subscribe(subject, cb=on_msg)
        await self.violation("subscription", subject)
        try:
            await sub.unsubscribe()
        except Exception:
            pass
        assert not got, f"{self.role} received {len(got)} message(s) on {subject}"


async def until(check, what: str, timeout: float = 5.0) -> None:
    """Until `check()` is true, or fail saying `what` after `timeout` seconds (tests/harness.py `wait_for`,
    with its last look past the deadline)."""
    await wait_for(check, timeout, what)


async def connect_as(authed: Authed, role: str, name: str | None = None) -> Conn:
    """`role` is a credentials name: `service`, ..., or `runtime-<id>`."""
    conn = Conn(role, None)  # type: ignore[arg-type]

    async def on_error(exc: Exception) -> None:
        conn.errors.append(str(exc).lower())

    conn.nc = await nats.connect(
        authed.url,
        name=name or f"test-{role}",
        error_cb=on_error,
        connect_timeout=3,
        max_reconnect_attempts=3,
        **authed.creds[role].connect_options(),
    )
    return conn


class Conns:
    def __init__(self, authed: Authed) -> None:
        self.authed = authed
        self.opened: list[Conn] = []

    async def __call__(self, role: str, name: str | None = None) -> Conn:
        conn = await connect_as(self.authed, role, name)
        self.opened.append(conn)
        return conn

    async def close(self) -> None:
        for conn in self.opened:
            try:
                await conn.nc.close()
            except Exception:
                pass


@pytest.fixture
async def as_role(authed):
    conns = Conns(authed)
    service = await conns("service")
    await ensure_layout(service.js, authed.subjects)  # the service user creates the layout, as `kxr serve` does
    try:
        yield conns
    finally:
        await conns.close()


@dataclass
class ServiceApp:
    app: App
    conn: Conn
    producer_key: SigningKey
    service_keys: ServiceKeys


async def service_durables(js, s: Subjects) -> dict[str, tuple[str, object]]:
    """The service's durable consumers that exist, by name: (stream, config). Asked one by one: the
    service user may not list consumers."""
    from nats.js.errors import NotFoundError

    from services.permissions import SERVICE_DURABLES

    out = {}
    for stream in (s.releases_stream, s.timers_stream):
        for name in SERVICE_DURABLES:
            try:
                out[name] = (stream, (await js.consumer_info(stream, name)).config)
            except NotFoundError:
                pass
    return out


async def durables_bound(app: App, quiet_s: float = 1.0, timeout: float = 30.0) -> None:
    """Until the service's durable consumers exist: each runner binds its own in its task, after
    `start_service` returns (a test that lists them at once saw some missing on a loaded machine).
    Done when the set of them has not changed for `quiet_s`."""
    deadline = time.monotonic() + timeout
    seen: set[str] | None = None
    since = time.monotonic()
    while True:
        names = set(await service_durables(app.js, app.subjects))
        if names != seen:
            seen, since = names, time.monotonic()
        elif names and time.monotonic() - since >= quiet_s:
            return
        assert time.monotonic() < deadline, f"the service's durables kept changing: {sorted(names)}"
        await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
async def service_app(authed):
    """Every consumer of `kxr serve`, as the service user, for the module."""
    conns = Conns(authed)
    svc = await conns("service", "kxr-serve")
    producer_key, service_key = SigningKey.generate(), SigningKey.generate()
    # webhook_allow_private: the attacks' webhook receivers listen on 127.0.0.1 (KX_WEBHOOK_ALLOW_PRIVATE)
    settings = Settings(nats_url=authed.url, prefix=authed.prefix, webhook_allow_private=True)
    app = App(svc.nc, settings, trust_root_for(producer_key), signer=service_key)
    await start_service(app, CONSUMERS)
    await durables_bound(app)
    try:
        yield ServiceApp(app, svc, producer_key, ServiceKeys.of(service_key, list(CONSUMERS)))
    finally:
        await app.stop()
        await conns.close()


def rid() -> str:
    return "r" + uuid.uuid4().hex[:8]


async def fill_consumer_limit(conn: Conn, s: Subjects, stream: str, limit: int) -> tuple[int, dict, list[str]]:
    """Durables made by `conn` until the server refuses one: (how many it made, the refusal, their names)."""
    names: list[str] = []
    for i in range(limit + 5):
        name = f"flood{i}"
        body = json.dumps({"stream_name": stream, "config": {"durable_name": name, "name": name, "ack_policy": "none"}})
        reply = json.loads(
            (await conn.nc.request(f"$JS.API.CONSUMER.CREATE.{stream}.{name}", body.encode(), timeout=5)).data
        )
        if "error" in reply:
            return i, reply["error"], names
        names.append(name)
    raise AssertionError(f"the account let {conn.role} create consumers past its limit of {limit}")


def kxr(*args: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    """`kxr ARGS` as a new process, as an operator runs it in a shell (`env`: see `kxr_env`)."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "kxr"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def kxr_env(prefix: str, data_dir: Path) -> dict[str, str]:
    """A shell's environment without any KX_ setting of the test run's, naming `prefix` and `data_dir`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KX_")}
    env.update({"KX_PREFIX": prefix, "KX_DATA_DIR": str(data_dir)})
    return env
