"""Every `kxr` help page renders (issue 16: `kxr pin --help` died on rich markup in a help text),
and `kxr --version` answers."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from services.cli.main import app


def command_paths(command, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group below `command` (typer's click objects), as argument paths."""
    out = [path]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        out += command_paths(sub, (*path, name))
    return out


PATHS = command_paths(typer.main.get_command(app))


def test_the_cli_has_its_command_groups() -> None:
    names = {p[0] for p in PATHS if p}
    assert {"release", "pin", "unpin", "audit", "channel", "creds", "serve"} <= names, names


def test_every_help_page_renders() -> None:
    runner = CliRunner()
    broken = {}
    for path in PATHS:
        result = runner.invoke(app, [*path, "--help"], prog_name="kxr")
        if result.exit_code != 0 or result.exception is not None or "Usage" not in result.output:
            broken[" ".join(path) or "kxr"] = repr(result.exception) if result.exception else result.output[-300:]
    assert not broken, broken


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"], prog_name="kxr")
    assert result.exit_code == 0 and result.output.startswith("kxr "), result.output


def test_every_operator_decision_takes_its_rationale_as_m() -> None:
    """One flag for the why of every decision (`kxr release rollback` took only --reason)."""
    release = typer.main.get_command(app).commands["release"]
    missing = [
        verb
        for verb in ("pause", "resume", "abort", "promote", "extend", "rollback", "close")
        if not any("-m" in p.opts and "--rationale" in p.opts for p in release.commands[verb].params)
    ]
    assert not missing, missing


def test_each_command_lives_in_the_module_named_after_it() -> None:
    """Issue 15: `kxr X …` is in services/cli/X.py (main.py only composes); `kxr unpin` sits beside `kxr pin`."""
    from services.cli.main import app as root

    beside = {"unpin": "pin"}
    misplaced = {}
    for info in root.registered_commands:
        name = info.name or info.callback.__name__
        if info.callback.__module__ != f"services.cli.{beside.get(name, name)}":
            misplaced[name] = info.callback.__module__
    for group in root.registered_groups:
        for info in group.typer_instance.registered_commands:
            if info.callback.__module__ != f"services.cli.{group.name}":
                misplaced[f"{group.name} {info.name}"] = info.callback.__module__
    assert not misplaced, misplaced


def test_help_loads_neither_nats_nor_the_event_model() -> None:
    """`kxr --help` builds every help page from typer alone (issue 16: start-up time); a command
    imports NATS, pydantic and the projections when it runs."""
    import subprocess
    import sys

    probe = (
        "import sys; import services.cli.main; "
        "print(sorted({m.split('.')[0] for m in sys.modules} "
        "& {'nats', 'aiohttp', 'pydantic', 'events', 'projections'}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
