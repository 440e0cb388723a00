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
from datetime import datetime, timezone
from pathlib import Path

import pytest
from nats.js.errors import NotFoundError

from services.layout import ensure_layout
from services.log_reads import load_world
from services.permissions import read_credentials, runtime_creds_path
from tests.security.conftest import Conns, start_authed, stop_authed

pytestmark = pytest.mark.security


def sample(runtime_id: str, requests: int = 10, errors: int = 0) -> bytes:
    return json.dumps({"runtime_id": runtime_id, "digest": None, "at": datetime.now(timezone.utc).isoformat(), "kind": "sample",
                       "requests": requests, "errors": errors}).encode()


async def test_a_runtime_cannot_report_health_as_another(authed, as_role):
    s = authed.subjects
    rt_a = await as_role("runtime-rt-a")
    own = s.health("prod", "canary", "internal", "rt-a")
    ack = await rt_a.js.publish(own, sample("rt-a"))  # its own samples are stored
    assert ack.seq > 0 and ack.stream == s.health_stream
    forged = s.health("prod", "canary", "internal", "rt-b")
    await rt_a.publish_denied(forged, sample("rt-b", requests=10 ** 12))
    await rt_a.publish_denied(s.health("prod", "canary", "rest", "rt-b"), sample("rt-b", requests=10 ** 12))
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


def kxr(*args: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "kxr"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


async def test_kxr_creds_runtime_add_makes_a_user_bound_to_its_id(tmp_path):
    """`kxr creds runtime add ID` under a running embedded server: the server reloads and the
    new runtime connects, bound to its own id."""
    authed, lock = start_authed(tmp_path / "kx-data", runtimes=())
    env = {k: v for k, v in os.environ.items() if not k.startswith("KX_")}
    env.update({"KX_PREFIX": authed.prefix, "KX_DATA_DIR": str(tmp_path / "kx-data")})
    conns = Conns(authed)
    try:
        added = kxr("creds", "runtime", "add", "rt-new", env=env, cwd=tmp_path)
        assert added.returncode == 0, added.stderr
        path = runtime_creds_path(tmp_path / "kx-data", "rt-new")
        assert added.stdout.strip() == str(path) and stat.S_IMODE(path.stat().st_mode) == 0o600
        creds = read_credentials(path)
        assert creds.runtime_id == "rt-new" and creds.user == f"{authed.prefix}-runtime-rt-new" and creds.url.endswith(authed.url.split("//")[1])
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
