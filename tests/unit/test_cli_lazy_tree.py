"""`kxr NAME …` runs on a root app holding only NAME (main.app_for: start-up time); what a person
sees must not change: the same help page, the same root options, the same errors."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from services.cli import main
from services.cli.main import COMMANDS, GROUPS, app, app_for


@pytest.mark.parametrize("name", [*COMMANDS, *GROUPS])
def test_a_command_alone_has_the_same_help_as_in_the_whole_map(name: str) -> None:
    runner = CliRunner()
    whole = runner.invoke(app, [name, "--help"], prog_name="kxr", env={"COLUMNS": "100"})
    alone = runner.invoke(app_for([name, "--help"]), [name, "--help"], prog_name="kxr", env={"COLUMNS": "100"})
    assert whole.exit_code == alone.exit_code == 0, whole.output + alone.output
    assert alone.output == whole.output


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["status", "--json"], "status"),
        (["--creds", "ops.json", "--tls-ca", "ca.pem", "release", "list"], "release"),
        (["--creds=ops.json", "watch", "r1"], "watch"),
        (["--version"], None),
        (["--help"], None),
        ([], None),
    ],
)
def test_the_invoked_name_skips_the_root_options_and_their_values(argv, expected) -> None:
    assert main._invoked(argv) == expected


def test_the_whole_map_for_no_command_an_unknown_one_or_completion(monkeypatch) -> None:
    assert app_for(["--help"]) is app and app_for(["stauts"]) is app
    assert app_for(["status"]) is not app
    monkeypatch.setenv("_KXR_COMPLETE", "complete_bash")
    assert app_for(["status"]) is app
