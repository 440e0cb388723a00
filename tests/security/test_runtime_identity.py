"""Runtime identity: a runtime with its own credentials (`kxr creds runtime add ID`) speaks
for itself only. One runtime login used to report health under any runtime id, so a single
forged sample (requests = 10**12, errors = 0) could turn a failing window into a pass."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from nats.js.errors import NotFoundError

from services.jetstream.layout import ensure_layout
from services.jetstream.log_reads import load_world
from services.permissions import read_credentials, runtime_creds_path
from tests.security.conftest import Conns, kxr, kxr_env, start_authed, stop_authed

pytestmark = pytest.mark.security


def sample(runtime_id: str, requests: int = 10, errors: int = 0) -> bytes:
    return json.dumps(
        {
            "runtime_id": runtime_id,
            "digest": None,
            "at": datetime.now(UTC).isoformat(),
            "kind": "sample",
            "requests": requests,
            "errors": errors,
        }
    ).encode()


async def test_a_runtime_cannot_report_health_as_another(authed, as_role):
    s = authed.subjects
    rt_a = await as_role("runtime-rt-a")
    own = s.health("prod", "canary", "internal", "rt-a")
    ack = await rt_a.js.publish(own, sample("rt-a"))  # its own samples are stored
    assert ack.seq > 0 and ack.stream == s.health_stream
    forged = s.health("prod", "canary", "internal", "rt-b")
    await rt_a.publish_denied(forged, sample("rt-b", requests=10**12))
    await rt_a.publish_denied(s.health("prod", "canary", "rest", "rt-b"), sample("rt-b", requests=10**12))
    await rt_a.publish_denied(s.health("prod", "canary", "internal", "rt-a-evil"), sample("rt-a-evil"))
    service = await as_role("service")
    with pytest.raises(NotFoundError):
        await service.js.get_last_msg(s.health_stream, forged)


async def test_a_runtime_cannot_read_another_runtimes_replies(authed, as_role):
    rt_a = await as_role("runtime-rt-a")
    other = authed.creds["runtime-rt-b"].inbox_prefix
    assert other != authed.creds["runtime-rt-a"].inbox_prefix
    await rt_a.subscribe_denied(f"{other}.>")
    await rt_a.subscribe_denied(f"{authed.creds['runtime'].inbox_prefix}.>")  # nor the shared runtime user's
    await rt_a.subscribe_denied(authed.subjects.health_all())


async def test_a_runtime_with_its_own_credentials_reads_what_a_runtime_needs(authed, as_role):
    """Pointers (its own consumer on the log) and packs: nothing else changes for it."""
    rt_b = await as_role("runtime-rt-b")
    await load_world(rt_b.js, authed.subjects)
    await rt_b.js.stream_info(f"OBJ_{authed.subjects.packs_bucket}")
    assert not rt_b.permission_errors(), rt_b.errors


async def test_kxr_creds_runtime_add_makes_a_user_bound_to_its_id(tmp_path):
    """`kxr creds runtime add ID` under a running embedded server: the server reloads and the
    new runtime connects, bound to its own id."""
    authed, lock = start_authed(tmp_path / "kx-data", runtimes=())
    env = kxr_env(authed.prefix, tmp_path / "kx-data")
    conns = Conns(authed)
    try:
        added = kxr("creds", "runtime", "add", "rt-new", env=env, cwd=tmp_path)
        assert added.returncode == 0, added.stderr
        path = runtime_creds_path(tmp_path / "kx-data", "rt-new")
        assert added.stdout.strip() == str(path) and stat.S_IMODE(path.stat().st_mode) == 0o600
        creds = read_credentials(path)
        assert (
            creds.runtime_id == "rt-new"
            and creds.user == f"{authed.prefix}-runtime-rt-new"
            and creds.url.endswith(authed.url.split("//")[1])
        )
        again = kxr("creds", "runtime", "add", "rt-new", env=env, cwd=tmp_path)
        assert again.returncode != 0 and "already" in again.stderr
        bad = kxr("creds", "runtime", "add", "rt new/..", env=env, cwd=tmp_path)
        assert bad.returncode != 0 and "Traceback" not in bad.stderr
        shown = kxr("creds", "show", "runtime-rt-new", env=env, cwd=tmp_path)
        assert shown.returncode == 0 and shown.stdout.strip() == creds.url, shown.stderr
        authed.creds["runtime-rt-new"] = creds
        # the reloaded server knows the user (a reload may take a moment to apply: retry the login)
        conn = None
        for _ in range(100):
            try:
                conn = await conns("runtime-rt-new")
                break
            except Exception:
                await asyncio.sleep(0.05)
        assert conn is not None, "the new runtime user was never accepted"
        s = authed.subjects
        service = await conns("service")
        await ensure_layout(service.js, s)
        assert (await conn.js.publish(s.health("prod", "canary", "internal", "rt-new"), sample("rt-new"))).seq > 0
        await conn.publish_denied(s.health("prod", "canary", "internal", "rt-other"), sample("rt-other"))
        # kxr creds init does not rewrite credentials under a running embedded server
        before = {p.name: p.read_bytes() for p in (tmp_path / "kx-data" / "creds").iterdir()}
        init = kxr("creds", "init", "--server", "nats://elsewhere:4222", env=env, cwd=tmp_path)
        assert init.returncode != 0 and "kxr serve runs" in init.stderr
        assert {p.name: p.read_bytes() for p in (tmp_path / "kx-data" / "creds").iterdir()} == before
    finally:
        await conns.close()
        stop_authed(authed, lock)


# ---- strict runtime identity (`kxr serve --runtime-identity strict`) ------------------------------------
async def health_stored(js, subjects, runtime_id: str, cohort: str = "internal") -> bool:
    try:
        await js.get_last_msg(subjects.health_stream, subjects.health("prod", "canary", cohort, runtime_id))
    except NotFoundError:
        return False
    return True


async def wait_until(probe, what: str, proc: subprocess.Popen | None = None, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await probe():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process ended ({proc.returncode}): {proc.stderr.read()}")
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def simulate(authed, creds_name: str, runtime_id: str, trust_root_file: Path, cwd: Path) -> subprocess.Popen:
    """`kxr runtime simulate` as a deployment runs it: KX_NATS_CREDS names its credentials file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KX_")}
    env.update(
        {
            "KX_PREFIX": authed.prefix,
            "KX_DATA_DIR": str(authed.data_dir),
            "KX_TRUST_ROOT": str(trust_root_file),
            "KX_NATS_CREDS": str(authed.data_dir / "creds" / f"{creds_name}.json"),
        }
    )
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "kxr"),
            "runtime",
            "simulate",
            "--env",
            "prod",
            "--channel",
            "canary",
            "--tenant",
            "t-int-1",
            "--runtime-id",
            runtime_id,
            "--interval",
            "0.1",
        ],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


async def configured(authed, conns) -> Path:
    """The layout and a configured channel (a runtime resolves its cohort from it); the trust root file."""
    from events.channel import ChannelConfig
    from events.signing import SigningKey, b64encode
    from services.actions.producer import configure_channel
    from services.jetstream.log import EventLog
    from tests.harness import CHANNEL, OPERATOR

    s = authed.subjects
    service, operator = await conns("service"), await conns("operator")
    await ensure_layout(service.js, s)
    await configure_channel(
        EventLog(operator.nc, operator.js, s),
        operator.js,
        "prod",
        "canary",
        ChannelConfig.model_validate(CHANNEL),
        OPERATOR,
    )
    key = SigningKey.generate()
    path = authed.data_dir / "trust-root.json"
    path.write_text(
        json.dumps({"threshold": 1, "keys": {key.keyid: {"public": b64encode(key.public_raw), "name": "k0"}}})
    )
    return path


async def stopped(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def test_default_runtime_identity_stays_compatible_the_shared_user_reports(tmp_path):
    """Without --runtime-identity, runtimes deployed with the shared user keep reporting (kxr runtime simulate too)."""
    authed, lock = start_authed(tmp_path / "kx-data", runtimes=())
    conns = Conns(authed)
    proc = None
    try:
        trust = await configured(authed, conns)
        shared = await conns("runtime")
        s = authed.subjects
        assert (await shared.js.publish(s.health("prod", "canary", "internal", "any-id"), sample("any-id"))).seq > 0
        proc = simulate(authed, "runtime", "rt-sim", trust, tmp_path)
        service = await conns("service")
        await wait_until(lambda: health_stored(service.js, s, "rt-sim"), "the simulated runtime's health", proc)
    finally:
        if proc is not None:
            await stopped(proc)
        await conns.close()
        stop_authed(authed, lock)


async def test_strict_runtime_identity_lets_only_runtimes_with_their_own_user_report(tmp_path):
    from services.permissions import read_runtime_identity, write_runtime_identity

    data_dir = tmp_path / "kx-data"
    data_dir.mkdir()
    write_runtime_identity(data_dir, "strict")  # what `kxr serve --runtime-identity strict` keeps under its data dir
    authed, lock = start_authed(data_dir, runtimes=("rt-a",))
    conns = Conns(authed)
    proc = None
    try:
        trust = await configured(authed, conns)
        s = authed.subjects
        shared, own, service = await conns("runtime"), await conns("runtime-rt-a"), await conns("service")
        # the shared user reports under no id at all, its own name for an id included;
        # it still reads what a runtime needs
        for runtime_id in ("rt-a", "rt-b", "any-id"):
            await shared.publish_denied(
                s.health("prod", "canary", "internal", runtime_id), sample(runtime_id, requests=10**12)
            )
            assert not await health_stored(service.js, s, runtime_id)
        await load_world(shared.js, s)
        await shared.js.stream_info(f"OBJ_{s.packs_bucket}")
        assert [e for e in shared.permission_errors() if "publish" not in e] == []
        # a runtime with its own user reports under its own id
        assert (await own.js.publish(s.health("prod", "canary", "internal", "rt-a"), sample("rt-a"))).seq > 0

        # kxr runtime simulate: refused in one line with the shared credentials, runs with its own
        refused = simulate(authed, "runtime", "rt-a", trust, tmp_path)
        _, err = refused.communicate(timeout=60)
        assert refused.returncode != 0 and "strict" in err and "kxr creds runtime add" in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        mismatched = simulate(authed, "runtime-rt-a", "rt-b", trust, tmp_path)
        _, err = mismatched.communicate(timeout=60)
        assert mismatched.returncode != 0 and "rt-a" in err and "Traceback" not in err, err
        proc = simulate(authed, "runtime-rt-a", "rt-a", trust, tmp_path)
        await wait_until(
            lambda: health_stored(service.js, s, "rt-a", "internal"), "rt-a's health from kxr runtime simulate", proc
        )

        # adding a runtime reloads the server in the same mode: the shared user is not loosened by omission
        env = kxr_env(authed.prefix, data_dir)
        assert kxr("creds", "runtime", "add", "rt-c", env=env, cwd=tmp_path).returncode == 0
        assert read_runtime_identity(data_dir) == "strict"
        authed.creds["runtime-rt-c"] = read_credentials(runtime_creds_path(data_dir, "rt-c"))
        reloaded = None
        for _ in range(100):  # the reload has applied once the new user is accepted
            try:
                reloaded = await conns("runtime-rt-c")
                break
            except Exception:
                await asyncio.sleep(0.05)
        assert reloaded is not None, "the server never reloaded"
        later = await conns("runtime")
        await later.publish_denied(s.health("prod", "canary", "internal", "rt-z"), sample("rt-z"))
    finally:
        if proc is not None:
            await stopped(proc)
        await conns.close()
        stop_authed(authed, lock)
