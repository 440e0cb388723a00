"""Least-privilege NATS users (services/permissions.py) against a nats-server running the generated config.

One server for the module, started exactly as `kxr serve` starts its embedded one
(`authorized_config`, the store lock; tests/security/conftest.py), one prefix. Every denial is
asserted twice: nothing comes back (JetStream never saw the request) and the server reports a
permissions violation for
that very subject. The suite's plain nats-server (no users) is the all-powerful case for
`kxr serve --strict`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import time
from datetime import UTC
from pathlib import Path

import nats
import pytest
from nats.errors import TimeoutError as NatsTimeoutError

from events.channel import ChannelConfig
from events.service_signing import ServiceKeys
from events.signing import SigningKey, b64encode
from events.subjects import Subjects
from services.actions.producer import configure_channel, push_pack, request_release
from services.app import App
from services.bootstrap import start_service
from services.jetstream.embedded import EmbeddedServer, authorized_config, free_port
from services.jetstream.log import EventLog
from services.jetstream.log_reads import load_world
from services.permissions import ROLES, creds_path, read_credentials, role_permissions, runtime_permissions
from services.runtime.sdk import Identity
from services.runtime.simulation import simulated_runtime
from services.settings import ROLES as CONSUMERS
from services.settings import Settings
from services.tasks import cancel_and_wait
from tests.harness import CHANNEL, OPERATOR, PRODUCER, Behaviour, make_pack, request_data, trust_root_for, wait_for
from tests.security.conftest import as_role, rid, start_authed, stop_authed  # noqa: F401 (as_role: a fixture)


# ---- the server and its users (as the attack suite's: tests/security/conftest.py) --------------------
@pytest.fixture(scope="module")
def authed(tmp_path_factory):
    authed, lock = start_authed(tmp_path_factory.mktemp("authed"), runtimes=())
    try:
        yield authed
    finally:
        stop_authed(authed, lock)


def test_credentials_and_config_are_private_and_complete(authed):
    for role in ROLES:
        path = creds_path(authed.data_dir, role)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        creds = read_credentials(path)
        assert creds.role == role and creds.prefix == authed.prefix and creds.url.endswith(authed.url.split("//")[1])
        assert creds.password and creds.password in (authed.data_dir / "nats-server.conf").read_text()
    assert stat.S_IMODE((authed.data_dir / "nats-server.conf").stat().st_mode) == 0o600
    assert stat.S_IMODE((authed.data_dir / "creds").stat().st_mode) == 0o700
    # kept across restarts: the same passwords come back
    again = authorized_config(authed.data_dir, authed.prefix, authed.url)[1]
    assert {r: c.password for r, c in again.items()} == {r: c.password for r, c in authed.creds.items()}


def test_permission_sets_follow_the_prefix():
    s = Subjects("acme")
    everything = json.dumps({r: role_permissions(s, r).as_config() for r in ROLES})
    assert "kx." not in everything and "KX_" not in everything and "kx_" not in everything
    assert "ACME_RELEASES" in everything and "OBJ_acme_packs" in everything
    for role in ROLES:  # nobody may delete a stream, nor purge the log or the telemetry
        perms = role_permissions(s, role)
        assert not any(".STREAM.DELETE." in p or p.startswith("$JS.API.STREAM.PURGE.ACME_") for p in perms.publish), (
            role
        )
        assert not any(p in (">", "$JS.API.>", "$JS.>") for p in perms.publish + perms.subscribe), role
    narrowed = runtime_permissions(s, env="prod", channel="canary", runtime_id="rt-1")
    assert "acme.health.prod.canary.*.rt-1" in narrowed.publish and "acme.health.*.*.*.*" not in narrowed.publish


# ---- runtime ---------------------------------------------------------------------------------------
async def test_runtime_cannot_publish_scope_activated(authed, as_role):
    s = authed.subjects
    rt = await as_role("runtime")
    service = await as_role("service")
    pointer = s.scope("prod", "canary", "internal", "activated")
    await rt.publish_denied(pointer, headers={"Nats-Msg-Id": "forged-1"})
    # nor inside an atomic batch, nor a pin, nor a release event
    await rt.publish_denied(
        pointer, headers={"Nats-Batch-Id": "forged", "Nats-Batch-Sequence": "1", "Nats-Batch-Commit": "1"}
    )
    await rt.publish_denied(s.scope("prod", "canary", "internal", "pinned"))
    await rt.publish_denied(s.release("r-forged", "verified"))
    with pytest.raises(nats.js.errors.NotFoundError):
        await service.js.get_last_msg(s.releases_stream, pointer)


@pytest.mark.parametrize("role", ROLES)
async def test_nobody_can_delete_or_purge_the_log_or_the_telemetry(authed, as_role, role):
    s = authed.subjects
    conn = await as_role(role)
    for stream in (s.releases_stream, s.health_stream):
        await conn.publish_denied(f"$JS.API.STREAM.DELETE.{stream}")
        await conn.publish_denied(f"$JS.API.STREAM.PURGE.{stream}", b'{"filter": ">"}')
        await conn.publish_denied(f"$JS.API.STREAM.MSG.DELETE.{stream}", b'{"seq": 1}')
    service = await as_role("service", "check")
    for stream in (s.releases_stream, s.health_stream, s.timers_stream, s.deadletter_stream):
        assert (await service.js.stream_info(stream)).config.name == stream


async def test_runtime_cannot_delete_or_purge_anything(authed, as_role):
    s = authed.subjects
    rt = await as_role("runtime")
    for stream in (s.timers_stream, s.deadletter_stream, f"OBJ_{s.packs_bucket}", f"OBJ_{s.snapshots_bucket}"):
        await rt.publish_denied(f"$JS.API.STREAM.DELETE.{stream}")
        await rt.publish_denied(f"$JS.API.STREAM.PURGE.{stream}")
        await rt.publish_denied(f"$JS.API.STREAM.UPDATE.{stream}")
    await rt.publish_denied(f"$O.{s.packs_bucket}.M.forged")  # nor overwrite a pack


async def test_runtime_cannot_read_another_tenants_health(authed, as_role):
    s = authed.subjects
    mine, other = await as_role("runtime", "rt-a"), await as_role("runtime", "rt-b")
    theirs = s.health("prod", "canary", "internal", "rt-a")
    ack = await mine.js.publish(theirs, b'{"runtime_id": "rt-a", "kind": "sample"}')  # reporting is allowed
    assert ack.stream == s.health_stream
    # live: no subscription on anyone's health, nor on the replies of those who read it
    await other.subscribe_denied(s.health_all())
    await other.subscribe_denied(theirs)
    await other.subscribe_denied(">")
    await other.subscribe_denied(f"_INBOX_{s.prefix}_service.>")  # the service reads health into its private inbox
    await other.subscribe_denied("_INBOX.>")
    # stored: no consumer, no message get, no direct get on the health stream
    create = json.dumps(
        {
            "stream_name": s.health_stream,
            "config": {"name": "peek", "ack_policy": "none", "filter_subjects": [s.health_all()]},
        }
    )
    await other.publish_denied(f"$JS.API.CONSUMER.CREATE.{s.health_stream}.peek", create.encode())
    await other.publish_denied(f"$JS.API.CONSUMER.CREATE.{s.health_stream}", create.encode())
    await other.publish_denied(
        f"$JS.API.STREAM.MSG.GET.{s.health_stream}", json.dumps({"last_by_subj": theirs}).encode()
    )
    await other.publish_denied(f"$JS.API.DIRECT.GET.{s.health_stream}.{theirs}")
    await other.publish_denied(f"$JS.API.STREAM.INFO.{s.health_stream}")
    with pytest.raises(Exception):
        await other.nc.jetstream(timeout=1).get_last_msg(s.health_stream, theirs)


# ---- producer, auditor, operator -----------------------------------------------------------------------
async def test_producer_requests_releases_and_writes_packs_only(authed, as_role):
    s = authed.subjects
    producer = await as_role("producer")
    key = SigningKey.generate()
    pack = make_pack("1.0.0", key)
    await push_pack(producer.js, s, pack.body, pack.manifest, pack.digest)
    await push_pack(
        producer.js, s, pack.body, pack.manifest, pack.digest
    )  # again: replacing an object purges its old chunks
    release_id = rid()
    seq = await request_release(EventLog(producer.nc, producer.js, s), release_id, request_data(pack), PRODUCER)
    assert seq > 0
    assert not producer.permission_errors(), producer.errors
    await producer.publish_denied(s.release(release_id, "verified"))
    await producer.publish_denied(s.release(release_id, "paused"))
    await producer.publish_denied(s.scope("prod", "canary", "internal", "activated"))
    await producer.publish_denied(s.channel("prod", "canary"))
    await producer.publish_denied(s.health("prod", "canary", "internal", "rt-x"))
    await producer.publish_denied(f"$O.{s.snapshots_bucket}.M.forged")
    await producer.subscribe_denied(s.health_all())


async def test_auditor_reads_the_log_but_publishes_nothing(authed, as_role):
    s = authed.subjects
    producer, auditor = await as_role("producer"), await as_role("auditor")
    release_id = rid()
    pack = make_pack("1.0.0", SigningKey.generate())
    await request_release(EventLog(producer.nc, producer.js, s), release_id, request_data(pack), PRODUCER)
    world = await load_world(auditor.js, s)
    assert world.release(release_id) is not None
    assert not auditor.permission_errors(), auditor.errors
    await auditor.publish_denied(s.release(rid(), "requested"))
    await auditor.publish_denied(s.release(release_id, "annotated"))
    await auditor.publish_denied(s.trust_rotated())
    await auditor.publish_denied(f"$O.{s.packs_bucket}.C.forged")
    await auditor.publish_denied(s.health("prod", "canary", "internal", "rt-x"))
    await auditor.subscribe_denied(s.health_all())


async def test_operator_writes_operator_events_only(authed, as_role):
    s = authed.subjects
    operator = await as_role("operator")
    log = EventLog(operator.nc, operator.js, s)
    await configure_channel(log, operator.js, "ops", "canary", ChannelConfig.model_validate(CHANNEL), OPERATOR)
    world = await load_world(operator.js, s)
    assert world.channel_config("ops", "canary").plan
    assert not operator.permission_errors(), operator.errors
    await operator.publish_denied(s.release(rid(), "requested"))
    await operator.publish_denied(s.release(rid(), "verified"))
    await operator.publish_denied(s.scope("ops", "canary", "internal", "activated"))
    await operator.publish_denied(f"$O.{s.packs_bucket}.M.forged")


async def test_operator_may_read_stored_health_for_kxr_watch_and_the_auditor_may_not(authed, as_role):
    from datetime import datetime, timedelta

    from services.reads.health_reads import samples_between
    from services.reads.watch import may_read_health

    s = authed.subjects
    runtime, operator, auditor = await as_role("runtime"), await as_role("operator"), await as_role("auditor")
    at = datetime.now(UTC)
    sample = {"runtime_id": "rt-w", "digest": None, "at": at.isoformat(), "kind": "sample", "requests": 0, "errors": 0}
    await runtime.nc.publish(s.health("prod", "watch", "internal", "rt-w"), json.dumps(sample).encode())
    await runtime.nc.flush()
    stored = await wait_for_async(
        lambda: samples_between(
            operator.js, s, "prod", "watch", ["internal"], at - timedelta(minutes=1), at + timedelta(minutes=1)
        ),
        5,
        "the operator to read the sample",
    )
    assert [x.runtime_id for _, x in stored] == ["rt-w"]
    assert await may_read_health(operator.nc, s) and not operator.permission_errors(), operator.errors
    assert not await may_read_health(auditor.nc, s)
    await auditor.violation("publish", f"$JS.API.STREAM.INFO.{s.health_stream}")
    await operator.subscribe_denied(s.health_all())  # stored samples only: no live feed


async def wait_for_async(read, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := await read()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
    return value


async def test_service_cannot_take_the_operators_decisions(authed, as_role):
    s = authed.subjects
    service = await as_role("service")
    for suffix in ("paused", "resumed", "aborted", "annotated"):
        await service.publish_denied(s.release(rid(), suffix))
    await service.publish_denied(s.scope("prod", "canary", "internal", "pinned"))
    await service.publish_denied(s.channel("prod", "canary"))
    await service.publish_denied(s.trust_rotated())
    # packs are the producers': the service writes no pack bytes (it may re-publish a distributed
    # pack's metadata from the log's record, services/jetstream/pack_keeper.py), nor purges them
    await service.publish_denied(f"$O.{s.packs_bucket}.C.forged")
    await service.publish_denied(f"$JS.API.STREAM.PURGE.OBJ_{s.packs_bucket}")


# ---- the service user runs a whole release -------------------------------------------------------------
async def test_service_user_runs_a_whole_release_with_runtimes_on_runtime_creds(authed, as_role):
    s = authed.subjects
    service_key, producer_key = SigningKey.generate(), SigningKey.generate()
    trust_root = trust_root_for(producer_key)
    service_keys = ServiceKeys.of(service_key, list(CONSUMERS))
    svc, rt, producer, operator = (
        await as_role("service", "kxr-serve"),
        await as_role("runtime", "runtimes"),
        await as_role("producer"),
        await as_role("operator"),
    )
    settings = Settings(nats_url=authed.url, prefix=s.prefix)
    env, channel = "prod", "canary"
    app = App(svc.nc, settings, trust_root, signer=service_key)
    tasks: list[asyncio.Task] = []
    try:
        await start_service(app, settings.roles)
        await configure_channel(
            EventLog(operator.nc, operator.js, s),
            operator.js,
            env,
            channel,
            ChannelConfig.model_validate(CHANNEL),
            OPERATOR,
        )
        bad = make_pack("1.1.0", producer_key)
        behaviours = {bad.digest: Behaviour(error_rate=0.5)}
        runtimes = [
            simulated_runtime(
                rt.nc,
                Identity(env, channel, tenant, f"rt-{tenant}"),
                trust_root,
                behaviours,
                prefix=s.prefix,
                interval=0.1,
                seed=i,
                service_keys=service_keys,
            )
            for i, tenant in enumerate(("t-int-1", "tenant-42"))
        ]
        for r in runtimes:
            await r.resolve_cohort()
            tasks.append(asyncio.create_task(r.run()))
        assert [r.cohort for r in runtimes] == ["internal", "rest"]
        pack = make_pack("1.0.0", producer_key)
        await push_pack(producer.js, s, pack.body, pack.manifest, pack.digest)
        release_id = rid()
        await request_release(
            EventLog(producer.nc, producer.js, s),
            release_id,
            request_data(pack, rollback={"strategy": "none"}),
            PRODUCER,
        )
        # the service keeps a closed release as a tombstone; `release_whole` folds it from the log (as this user)
        await wait_for(
            lambda: release_id in app.follower.world.tombstones,
            60,
            f"release {release_id} to close",
            lambda: app.follower.world.release(release_id),
        )
        release = await app.release_whole(release_id)
        assert release.outcome == "success", release.failure
        assert release.activated == ("internal", "rest")
        await wait_for(
            lambda: all(r.active and r.active.digest == pack.digest for r in runtimes), 10, "runtimes to switch"
        )
        # a regression: its window fails and the service rolls back (an atomic batch of rollback pointers)
        await push_pack(producer.js, s, bad.body, bad.manifest, bad.digest)
        regression = rid()
        await request_release(EventLog(producer.nc, producer.js, s), regression, request_data(bad), PRODUCER)
        await wait_for(
            lambda: regression in app.follower.world.tombstones,
            60,
            f"release {regression} to close",
            lambda: app.follower.world.release(regression),
        )
        rolled = await app.release_whole(regression)
        assert rolled.outcome == "rolled_back", rolled.failure
        assert app.follower.world.scope(env, channel, "internal").active_pack.digest == pack.digest
        await wait_for(
            lambda: runtimes[0].active and runtimes[0].active.digest == pack.digest, 10, "runtime back on LKG"
        )
    finally:
        await cancel_and_wait(tasks)
        await app.stop()
    # a restart: snapshot + tail, and the snapshot is replaced on the way out (its bucket's purge)
    again = App(svc.nc, settings, trust_root, signer=service_key)
    try:
        await start_service(again, settings.roles)
        assert again.follower.world.tombstones[release_id].outcome == "success"
    finally:
        await again.stop()
    assert not svc.permission_errors(), svc.permission_errors()
    assert not rt.permission_errors(), rt.permission_errors()
    assert not any('python3:kxr-serve"' in v or 'python3:runtimes"' in v for v in authed.violations()), (
        authed.violations()
    )


# ---- kxr serve and kxr creds -------------------------------------------------------------------------------
def kxr() -> str:
    path = Path(sys.executable).parent / "kxr"
    if not path.exists():
        pytest.fail("the kxr console script is not installed beside this Python (pip install -e .)", pytrace=False)
    return str(path)


def serve_env(workdir: Path, prefix: str, nats_url: str | None) -> dict[str, str]:
    key = SigningKey.generate()
    root = workdir / "trust-root.json"
    root.write_text(
        json.dumps({"threshold": 1, "keys": {key.keyid: {"public": b64encode(key.public_raw), "name": "k"}}})
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KX_") and k not in ("COLUMNS", "LINES")}
    env.update(
        {
            "KX_PREFIX": prefix,
            "KX_TRUST_ROOT": str(root),
            "KX_DATA_DIR": str(workdir / "kx-data"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    if nats_url:
        env["KX_NATS_URL"] = nats_url
    return env


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


class Serving:
    """`kxr serve` in the background; killed by pid when done."""

    def __init__(self, args: list[str], env: dict[str, str], workdir: Path) -> None:
        self.err_path = workdir / "serve.stderr"
        self._err = open(self.err_path, "wb")
        self.proc = subprocess.Popen(
            [kxr(), "serve", *args],
            env=env,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._err,
            start_new_session=True,
        )

    def stderr(self) -> str:
        self._err.flush()
        return self.err_path.read_text(errors="replace")

    async def ready(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while "running against" not in " ".join(self.stderr().split()):
            if self.proc.poll() is not None:
                raise AssertionError(f"kxr serve exited with {self.proc.returncode}:\n{self.stderr()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"kxr serve not ready within {timeout}s:\n{self.stderr()}")
            await asyncio.sleep(0.05)
        return self.stderr()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._err.close()


def test_strict_serve_refuses_an_all_powerful_user(nats_url, prefix, tmp_path):
    result = subprocess.run(
        [kxr(), "serve", "--strict"],
        env=serve_env(tmp_path, prefix, nats_url),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0, result.stderr
    err = lines(result.stderr)
    assert len(err) == 1, result.stderr
    assert err[0].startswith("kxr: error: --strict") and "can do more than kxr serve needs" in err[0], err[0]
    assert "Traceback" not in result.stdout + result.stderr


async def test_serve_without_strict_warns_once_and_runs(nats_url, prefix, tmp_path):
    serving = Serving([], serve_env(tmp_path, prefix, nats_url), tmp_path)
    try:
        err = await serving.ready()
    finally:
        serving.stop()
    warnings = [line for line in lines(err) if "can do more than kxr serve needs" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0], err
    assert "Traceback" not in err


async def test_strict_serve_runs_as_the_generated_service_user(authed, tmp_path):
    """Against an existing deployment: KX_NATS_URL=$(kxr creds show service)."""
    env = serve_env(tmp_path, authed.prefix, authed.creds["service"].url)
    serving = Serving(["--strict"], env, tmp_path)
    try:
        err = await serving.ready()
    finally:
        serving.stop()
    assert "can do more" not in err and "Traceback" not in err, err
    assert authed.creds["service"].password not in err  # the URL is shown without its password


async def test_embedded_serve_generates_users_and_creds_show_prints_them(tmp_path):
    env = serve_env(tmp_path, "emb", None)
    serving = Serving(["--strict"], env, tmp_path)
    try:
        err = await serving.ready()
        assert "can do more" not in err, err
        data_dir = Path(env["KX_DATA_DIR"])
        for role in ROLES:
            assert stat.S_IMODE(creds_path(data_dir, role).stat().st_mode) == 0o600
        shown = subprocess.run(
            [kxr(), "creds", "show", "auditor"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
        )
        assert shown.returncode == 0, shown.stderr
        url = shown.stdout.strip()
        assert url.startswith("nats://emb-auditor:")
        doc = json.loads(
            subprocess.run(
                [kxr(), "creds", "show", "runtime", "--json"],
                env=env,
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
        )
        assert doc["user"] == "emb-runtime" and doc["inbox_prefix"] == "_INBOX_emb_runtime"
        # the auditor's URL works as KX_NATS_URL for kxr (reads) ...
        status = subprocess.run(
            [kxr(), "status"], env={**env, "KX_NATS_URL": url}, cwd=tmp_path, capture_output=True, text=True, timeout=30
        )
        assert status.returncode == 0, status.stderr
        # ... and cannot append
        errors: list[str] = []

        async def on_error(exc):
            errors.append(str(exc).lower())

        nc = await nats.connect(url, error_cb=on_error)
        try:
            with pytest.raises((NatsTimeoutError, asyncio.TimeoutError)):
                await nc.request("emb.release.r1.requested", b"{}", timeout=1.0)
        finally:
            await nc.close()
        assert any("permissions violation" in e for e in errors), errors
    finally:
        serving.stop()
    bad = subprocess.run(
        [kxr(), "creds", "show", "nobody"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert bad.returncode != 0 and len(lines(bad.stderr)) == 1 and "nobody" in bad.stderr


@pytest.mark.parametrize("accounts", [False, True], ids=["users", "accounts"])
async def test_creds_init_for_an_existing_deployment(tmp_path, accounts):
    """`kxr creds init` writes the users block (`--accounts`: the accounts block, each role in its own, as
    embedded `kxr serve` runs); a server that includes it enforces it. With accounts, a role cannot have
    JetStream store an answer on the log (docs/permissions.md "JetStream's answers"); with one account it can."""
    port = free_port()
    env = serve_env(tmp_path, "ext", None)
    users = tmp_path / "kx-users.conf"
    result = subprocess.run(
        [kxr(), "creds", "init", "--server", f"nats://127.0.0.1:{port}", "--out", str(users)]
        + (["--accounts"] if accounts else []),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    (tmp_path / "nats-server.conf").write_text("jetstream: {}\ninclude ./kx-users.conf\n")
    server = EmbeddedServer(
        store_dir=tmp_path / "js",
        port=port,
        config_file=tmp_path / "nats-server.conf",
        log_file=tmp_path / "nats-server.log",
    ).start()
    try:
        shown = subprocess.run(
            [kxr(), "creds", "show", "service"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
        )
        assert shown.returncode == 0, shown.stderr
        serving = Serving(["--strict"], {**env, "KX_NATS_URL": shown.stdout.strip()}, tmp_path)
        try:
            err = await serving.ready()
        finally:
            serving.stop()
        assert "can do more" not in err, err
        with pytest.raises(Exception):  # no user, no entry
            await nats.connect(
                f"nats://127.0.0.1:{port}", connect_timeout=2, max_reconnect_attempts=0, allow_reconnect=False
            )
        assert await relayed_onto_the_log(env, tmp_path) == (0 if accounts else 1)
    finally:
        server.stop()


async def relayed_onto_the_log(env: dict, cwd) -> int:
    """How many messages a producer's STREAM.INFO, answered onto a release subject, added to the log."""
    from services.jetstream.client import connect
    from services.permissions import inbox_for

    def url_of(role: str) -> str:
        shown = subprocess.run(
            [kxr(), "creds", "show", role], env=env, cwd=cwd, capture_output=True, text=True, timeout=30
        )
        assert shown.returncode == 0, shown.stderr
        return shown.stdout.strip()

    s = Subjects(env["KX_PREFIX"])
    producer = await connect(url_of("producer"), inbox_prefix=inbox_for(s, "producer"))
    service = await connect(url_of("service"), inbox_prefix=inbox_for(s, "service"))
    try:
        before = (await service.jetstream().stream_info(s.releases_stream)).state.messages
        await producer.publish(f"$JS.API.STREAM.INFO.{s.releases_stream}", b"", reply=s.release("r-relay", "verified"))
        await producer.flush()
        await asyncio.sleep(0.5)
        return (await service.jetstream().stream_info(s.releases_stream)).state.messages - before
    finally:
        await producer.close()
        await service.close()
