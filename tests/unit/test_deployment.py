"""compose.yaml and the Dockerfile fit the code: there is no Docker engine here, so the
structure is checked instead, and every command a container runs must parse as a `kxr`
command with its options (the same parser `kxr` runs, from typer's click tree)."""

from __future__ import annotations

import inspect
import json
import re
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
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
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
    mounts = {v.split(":")[1]: v.split(":")[0] for v in nats[0].get("volumes", [])}
    assert mounts.get(store) in set(COMPOSE.get("volumes") or {}), (
        f"the JetStream store {store} is not on a named volume"
    )


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
