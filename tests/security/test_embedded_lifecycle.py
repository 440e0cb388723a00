"""Embedded `kxr serve`'s nats-server lives and dies with it, alone on its store.

kill -9 of `kxr serve` used to leave its nats-server running (its own process group); the
restart then started a second nats-server on the same JetStream store and rewrote every
credentials file for the new port. And a store that took more than 10 s to recover made
`kxr serve` give up at its fixed 10 s.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import nats
import pytest

from events.subjects import Subjects
from services.jetstream.embedded import EmbeddedServer, ServerError, StoreLock, nats_server_binary
from services.jetstream.layout import ensure_layout
from services.permissions import creds_path, read_credentials
from tests.integration.test_permissions import Serving, kxr, lines, serve_env

pytestmark = pytest.mark.security

GONE_WITHIN_S = 30.0  # an upper bound for the kernel's signal and nats-server's shutdown, not a measured speed


def alive(pid: int) -> bool:
    """Running, not a zombie (a container's init may not reap an orphan at once)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


async def gone(pid: int) -> bool:
    deadline = asyncio.get_running_loop().time() + GONE_WITHIN_S
    while alive(pid):
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def server_pid(data_dir: Path) -> int:
    return int((data_dir / "nats.lock").read_text().strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
async def test_kill_9_of_kxr_serve_takes_its_nats_server_with_it(tmp_path):
    env = serve_env(tmp_path, "life", None)
    data_dir = Path(env["KX_DATA_DIR"])
    serving = Serving([], env, tmp_path)
    try:
        await serving.ready()
        pid = server_pid(data_dir)
        assert alive(pid)
        os.kill(serving.proc.pid, signal.SIGKILL)
        serving.proc.wait()
        assert await gone(pid), f"nats-server {pid} outlived kxr serve"
    finally:
        serving.stop()
    # the store is free again: a restart runs on it
    again = Serving([], env, tmp_path)
    try:
        await again.ready()
        assert server_pid(data_dir) != pid
    finally:
        again.stop()


async def test_a_second_kxr_serve_on_the_same_store_is_refused_and_rewrites_nothing(tmp_path):
    env = serve_env(tmp_path, "life2", None)
    data_dir = Path(env["KX_DATA_DIR"])
    first = Serving([], env, tmp_path)
    try:
        await first.ready()
        files = {p: p.read_bytes() for p in [data_dir / "nats-server.conf", *sorted((data_dir / "creds").iterdir())]}
        second = subprocess.run(
            [kxr(), "serve"],
            env=env,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode != 0
        err = lines(second.stderr)
        assert len(err) == 1 and "another nats-server" in err[0] and str(server_pid(data_dir)) in err[0], second.stderr
        assert {
            p: p.read_bytes() for p in files
        } == files  # not one credentials file rewritten under the running server
        assert first.proc.poll() is None
    finally:
        first.stop()


def test_the_store_lock_is_held_by_the_server_itself(tmp_path):
    """If whoever started it is gone but the server is not, the store is still taken."""
    store = tmp_path / "js"
    lock = StoreLock(store).acquire()
    server = EmbeddedServer(store_dir=store, log_file=tmp_path / "nats-server.log").start(lock=lock)
    try:
        lock.release()  # as if kxr serve were gone: only the server's copy of the lock remains
        with pytest.raises(ServerError, match=f"pid {server.proc.pid}"):
            StoreLock(store).acquire()
    finally:
        server.stop()
    StoreLock(store).acquire().release()  # the server gone, the store is free


async def test_start_up_waits_for_a_server_that_takes_longer_than_ten_seconds(tmp_path, monkeypatch):
    """A store with many consumers took the server more than 10 s to recover: the wait now
    follows the server (ready or exited), with no fixed deadline."""
    slow = tmp_path / "slow-nats-server"
    slow.write_text(f'#!/bin/sh\nsleep 11\nexec {nats_server_binary()} "$@"\n')
    slow.chmod(slow.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr("services.jetstream.embedded.nats_server_binary", lambda: str(slow))
    # started from this (the main) thread: the parent-death signal follows the thread that starts it
    server = EmbeddedServer(store_dir=tmp_path / "js", log_file=tmp_path / "nats-server.log").start()
    try:
        nc = await nats.connect(server.url)
        await nc.jetstream().account_info()
        await nc.close()
    finally:
        server.stop()


def test_a_server_that_exits_at_start_up_is_reported_at_once(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text("this is { not a config\n")
    with pytest.raises(ServerError, match="exited with status"):
        EmbeddedServer(store_dir=tmp_path / "js", config_file=bad, log_file=tmp_path / "nats-server.log").start()


async def test_a_store_from_before_the_account_keeps_its_log(tmp_path):
    """Embedded stores written while the users lived in nats-server's default account move
    into the users' account on the next start: the log is all there."""
    env = serve_env(tmp_path, "old", None)
    data_dir = Path(env["KX_DATA_DIR"])
    s = Subjects("old")
    before = EmbeddedServer(
        store_dir=data_dir / "nats", log_file=tmp_path / "old-nats.log"
    ).start()  # no users: the default account
    try:
        nc = await nats.connect(before.url)
        js = nc.jetstream()
        await ensure_layout(js, s)
        await js.publish(s.release("r-old", "requested"), b"{}")
        await nc.close()
    finally:
        before.stop()
    serving = Serving([], env, tmp_path)
    try:
        await serving.ready()
        auditor = read_credentials(creds_path(data_dir, "auditor"))
        nc = await nats.connect(
            auditor.url, **{k: v for k, v in auditor.connect_options().items() if k == "inbox_prefix"}
        )
        try:
            info = await nc.jetstream().stream_info(s.releases_stream)
            assert (
                info.state.messages >= 1
                and (await nc.jetstream().get_last_msg(s.releases_stream, s.release("r-old", "requested"))).data
                == b"{}"
            )
        finally:
            await nc.close()
    finally:
        serving.stop()
