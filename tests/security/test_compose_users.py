"""compose.yaml runs NATS with the same per-role users as embedded `kxr serve`: no
unauthenticated NATS (anyone could replay a signed pointer there). No Docker engine here:
the compose file's own commands are run as it would run them, against a real nats-server
started with the compose NATS service's arguments."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import nats
import pytest
import yaml

from events.subjects import Subjects
from services.jetstream.client import connect
from services.jetstream.embedded import EmbeddedServer, free_port
from services.settings import Settings
from tests.integration.test_permissions import Serving, serve_env

pytestmark = pytest.mark.security

ROOT = Path(__file__).parent.parent.parent
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES: dict = COMPOSE["services"]


def test_every_kx_process_connects_with_its_own_credentials():
    for name, svc in SERVICES.items():
        if not svc.get("build"):
            continue
        env = svc.get("environment") or {}
        assert "KX_NATS_URL" not in env, f"{name}: a bare NATS URL (no user)"
        assert str(env.get("KX_NATS_CREDS", "")).startswith("/data/kx/creds/"), f"{name}: no credentials of its own"
    assert SERVICES["runtime"]["environment"]["KX_NATS_CREDS"].endswith("/runtime-rt-sim-1.json")
    assert SERVICES["dashboard"]["environment"]["KX_NATS_CREDS"].endswith("/auditor.json")


async def test_the_compose_nats_refuses_anonymous_clients_and_binds_the_runtime_to_its_id(tmp_path):
    port = free_port()
    data = tmp_path / "kx"  # the kx-data volume
    env = {k: v for k, v in os.environ.items() if not k.startswith("KX_")}
    env.update({"KX_DATA_DIR": str(data), "KX_PREFIX": "kx"})

    def volume(arg: str) -> str:  # the containers' paths (kx-data at /data/kx, or /kx for NATS), on this machine
        for mount in ("/data/kx/", "/kx/"):
            if arg.startswith(mount):
                return f"{data}/{arg.removeprefix(mount)}"
        return arg.replace("nats://nats:4222", f"nats://127.0.0.1:{port}")

    for step in ("runtime-creds", "creds"):
        command = [volume(a) for a in SERVICES[step]["command"]]
        done = subprocess.run(
            [str(Path(sys.executable).parent / "kxr"), *command], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, (step, done.stderr)
    args = [volume(a) for a in SERVICES["nats"]["command"]]
    config = Path(args[args.index("--config") + 1])
    assert config.exists()
    server = EmbeddedServer(
        store_dir=tmp_path / "js", port=port, config_file=config, log_file=tmp_path / "nats-server.log"
    ).start()
    try:
        with pytest.raises(Exception):  # no user, no entry
            await nats.connect(
                f"nats://127.0.0.1:{port}", connect_timeout=2, max_reconnect_attempts=0, allow_reconnect=False
            )
        runtime_env = {**env, "KX_NATS_CREDS": volume(SERVICES["runtime"]["environment"]["KX_NATS_CREDS"])}
        os.environ["KX_NATS_CREDS"] = runtime_env["KX_NATS_CREDS"]
        try:
            settings = Settings.from_env()
            nc = await connect(settings.nats_url, name="compose-runtime", reconnect_forever=False)
        finally:
            del os.environ["KX_NATS_CREDS"]
        errors: list[str] = []
        try:
            assert nc._inbox_prefix.decode().startswith("_INBOX_kx_runtime_rt-sim-1")  # the one inbox it may receive on
            s = Subjects("kx")
            with pytest.raises(nats.errors.NoRespondersError):  # no stream yet: routed to nobody, so allowed
                await nc.request(s.health("prod", "canary", "internal", "rt-sim-1"), b"{}", timeout=2)
            watcher = await nats.connect(
                settings.nats_url, inbox_prefix=nc._inbox_prefix.decode(), error_cb=_collect(errors)
            )
            try:
                with pytest.raises(nats.errors.TimeoutError):
                    await watcher.request(s.health("prod", "canary", "internal", "rt-other"), b"{}", timeout=1)
                await asyncio.sleep(0.1)
            finally:
                await watcher.close()
        finally:
            await nc.close()
        assert any(
            'permissions violation for publish to "kx.health.prod.canary.internal.rt-other"' in e for e in errors
        ), errors
        # a consumer as compose runs it: `serve --strict` with the service's credentials file
        preparer = SERVICES["preparer"]
        serving = Serving(
            preparer["command"][1:],
            {**serve_env(tmp_path, "kx", None), "KX_NATS_CREDS": volume(preparer["environment"]["KX_NATS_CREDS"])},
            tmp_path,
        )
        try:
            err = await serving.ready()
        finally:
            serving.stop()
        assert "can do more" not in err and "cannot do all" not in err and "Traceback" not in err, err
    finally:
        server.stop()


def _collect(errors: list[str]):
    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    return on_error
