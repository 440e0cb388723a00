"""compose.yaml runs NATS with the same per-role users as embedded `kxr serve`: no
unauthenticated NATS (anyone could replay a signed pointer there). No Docker engine here:
the compose file's own commands are run as it would run them, against a real nats-server
started with the compose NATS service's arguments."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
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
        if svc["command"][0] == "creds":  # the setup steps write credentials and connect to nothing
            assert "KX_NATS_CREDS" not in env and "KX_NATS_URL" not in env, name  # (the file does not exist yet)
            continue
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


def _host_path(service: str, path: str, volumes: dict[str, Path], trust_root: Path) -> Path:
    """Where `path` inside the container of `service` is on this machine, following its compose mounts
    (named volumes as folders of `volumes`, a subpath inside its volume); fails if nothing mounts it."""
    found = []
    for volume in SERVICES[service].get("volumes") or []:
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
            subpath = ""
        else:
            source, target, subpath = (
                volume["source"],
                volume["target"],
                (volume.get("volume") or {}).get("subpath", ""),
            )
        if path == target or path.startswith(target.rstrip("/") + "/"):
            found.append((len(target), source, target, subpath))
    assert found, f"{service}: nothing mounts {path}"
    _, source, target, subpath = max(found)
    if source == "./config/trust-root.json":
        return trust_root
    base = volumes[source] / subpath if subpath else volumes[source]
    rest = path[len(target) :].lstrip("/")
    return base / rest if rest else base


def _mounted(service: str, path: str) -> bool:
    targets = [v.split(":")[1] if isinstance(v, str) else v["target"] for v in SERVICES[service].get("volumes") or []]
    return any(path == t or path.startswith(t.rstrip("/") + "/") for t in targets)


def _health(service: str, env: dict[str, str], port_map: dict[str, str], timeout: float = 30) -> tuple[int, str, str]:
    """The healthcheck command compose runs in `service`, run here (its endpoints moved to this machine's ports)."""
    test = SERVICES[service]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "kxr"], test
    args = test[2:]
    for old, new in port_map.items():
        args = [a.replace(old, new) for a in args]
    done = subprocess.run(
        [str(Path(sys.executable).parent / "kxr"), *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    return done.returncode, done.stdout, done.stderr


async def test_the_compose_healthchecks_run_against_a_real_server(tmp_path):
    """The containers' mounts hold what their processes read, and `kxr health` as compose runs it
    says healthy when the role is up, and unhealthy (exit 1, one line) when it is not."""
    port, metrics_port = free_port(), free_port()
    volumes = {"kx-data": tmp_path / "kx", "kx-service": tmp_path / "kx-service", "nats-data": tmp_path / "js"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("KX_")}
    env.update({"KX_PREFIX": "kx", "PYTHONUNBUFFERED": "1"})
    kxr = str(Path(sys.executable).parent / "kxr")
    base = serve_env(tmp_path, "kx", None)  # a trust root file
    trust_root = Path(base["KX_TRUST_ROOT"])

    def container_env(service: str) -> dict[str, str]:
        mine = dict(env)
        for key, value in (SERVICES[service].get("environment") or {}).items():
            if key == "KX_DATA_DIR" and not _mounted(service, value):  # the image's own empty folder
                mine[key] = str(tmp_path / f"image-{service}")
            elif key in ("KX_NATS_CREDS", "KX_TRUST_ROOT", "KX_SERVICE_KEYS", "KX_DATA_DIR"):
                mine[key] = str(_host_path(service, value, volumes, trust_root))
            elif key == "KX_METRICS_ADDR":
                mine[key] = f"127.0.0.1:{metrics_port}"
            else:
                mine[key] = str(value)
        return mine

    def argv(service: str) -> list[str]:
        return [
            str(_host_path(service, a, volumes, trust_root)) if a.startswith("/data/") else a
            for a in (a.replace("nats://nats:4222", f"nats://127.0.0.1:{port}") for a in SERVICES[service]["command"])
        ]

    for step in ("runtime-creds", "creds"):
        done = subprocess.run([kxr, *argv(step)], env=container_env(step), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (step, done.stderr)
    nats_args = SERVICES["nats"]["command"]
    config = _host_path("nats", nats_args[nats_args.index("--config") + 1], volumes, trust_root)
    assert config.is_file(), "the users block is not where the nats service mounts it from"
    server = EmbeddedServer(
        store_dir=volumes["nats-data"], port=port, config_file=config, log_file=tmp_path / "nats-server.log"
    ).start()
    ports = {"127.0.0.1:9464": f"127.0.0.1:{metrics_port}"}
    try:
        # no release log yet: nobody is healthy, each says why in one line
        code, out, err = _health("runtime", container_env("runtime"), ports)
        assert code == 1 and out == "" and len(err.splitlines()) == 1 and "KX_RELEASES does not exist" in err, err

        activator = container_env("activator")
        serving = Serving(SERVICES["activator"]["command"][1:], activator, tmp_path)
        try:
            await serving.ready()
            for _ in range(40):  # compose retries too: the worker creates its durable just after start
                code, out, err = _health("activator", activator, ports)
                if code == 0:
                    break
                await asyncio.sleep(0.5)
            assert code == 0 and "kxr health: ok" in out and "kxr-activator" in out and "/metrics" in out, (out, err)
            # what the dashboard and the runtime mount exists now that a consumer is healthy (their depends_on)
            for service in ("runtime", "dashboard"):
                for key in ("KX_NATS_CREDS", "KX_SERVICE_KEYS"):
                    assert Path(container_env(service)[key]).is_file(), (service, key)
            private = volumes["kx-service"] / "service.key.json"
            assert private.is_file() and Path(activator["KX_DATA_DIR"]) == volumes["kx-service"]
            for service in ("runtime", "dashboard"):  # never mounted where a runtime or the dashboard can read it
                for m in SERVICES[service]["volumes"]:
                    if isinstance(m, dict) and m.get("source") == "kx-service":
                        assert (volumes["kx-service"] / m["volume"]["subpath"]) != private
            code, out, err = _health("runtime", container_env("runtime"), ports)
            assert code == 0 and "kxr health: ok" in out, err
            # a role whose process is not running: its durable is missing
            done = subprocess.run(
                [kxr, "health", "--only", "activator,verifier"],
                env=activator,
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert done.returncode == 1 and done.stdout == "" and len(done.stderr.splitlines()) == 1, done.stderr
            assert "consumer kxr-verifier does not exist" in done.stderr and "kxr-activator" not in done.stderr
        finally:
            serving.stop()
        code, out, err = _health("activator", activator, ports)  # the process is gone: its /metrics too
        assert code == 1 and len(err.splitlines()) == 1 and "/metrics unreachable" in err, err
    finally:
        server.stop()
    started = time.monotonic()
    code, out, err = _health("runtime", container_env("runtime"), ports)
    assert code == 1 and "unreachable" in err and len(err.splitlines()) == 1, err
    assert time.monotonic() - started < 10, "a dead NATS is reported within the check's own timeout"


def _collect(errors: list[str]):
    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    return on_error
