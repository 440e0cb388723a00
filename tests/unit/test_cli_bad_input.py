"""Issue 16: a bad value on any `kxr` command line is ONE line on stderr naming what is wrong, and
exit 2, before anything is read or any connection is tried (no KX_NATS_URL is set here, so a
check that ran only after connecting would answer "no NATS to talk to" and fail the test).

Runs `services.cli.main.run`, the console entry, in-process: the same path as the `kxr` script.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import pytest

from services.cli.main import run

NOW = "2026-11-27T10:00:00Z"
REQUEST = ["release", "request", "r1", "--manifest", "m.json", "--owner", "o", "--escalation", "e"]
TARGET = ["--target", "prod/canary"]
SIGN = [
    "pack",
    "sign",
    "p.pack",
    "--key",
    "k.json",
    "--name",
    "kb",
    "--version",
    "1.0.0",
    "--schema",
    "kx-pack/1",
    "--profile",
    "standard",
    "--runtime",
    ">=2.3,<3",
    "--build-id",
    "b",
    "--builder",
    "ci",
    "--run",
    "r",
    "--source",
    "https://git.example/kb",
    "--revision",
    "abc",
]


def sign_with(option: str, value: str) -> list[str]:
    args = list(SIGN)
    if option in args:
        args[args.index(option) + 1] = value
    else:
        args += [option, value]
    return args


BAD: list[tuple[list[str], str]] = [
    # numbers out of range
    (["release", "extend", "r1", "--window", "-5", "-m", "x"], "--window"),
    (["release", "extend", "r1", "--window", "0", "-m", "x"], "--window"),
    (["release", "extend", "r1", "--window", "soon", "-m", "x"], "--window"),
    ([*REQUEST, *TARGET, "--window", "-1", "--min-samples", "1"], "--window"),
    ([*REQUEST, *TARGET, "--window", "60", "--min-samples", "0"], "--min-samples"),
    ([*REQUEST, *TARGET, "--window", str(31 * 24 * 3600)], "--window"),  # over the 30-day cap
    (sign_with("--expires-days", "-1"), "--expires-days"),
    (["keys", "generate", "new.key.json", "--threshold", "0"], "--threshold"),
    (["deadletter", "show", "0"], "dead_letter_id"),
    (["deadletter", "show", "--", "-1"], "dead_letter_id"),
    (["deadletter", "show", "first"], "dead_letter_id"),
    (["ui", "--port", "70000"], "--port"),
    (["watch", "r1", "--events", "-1"], "--events"),
    # unknown enumeration values
    (["release", "close", "r1", "--outcome", "banana", "-m", "x"], "--outcome"),
    (["release", "rollback", "r1", "--trigger", "banana", "-m", "x"], "--trigger"),
    ([*REQUEST, *TARGET, "--rollback", "banana"], "--rollback"),
    # malformed scopes and tokens
    ([*REQUEST, "--target", "prod"], "ENV/CHANNEL"),
    ([*REQUEST, "--target", "prod/canary/internal"], "ENV/CHANNEL"),
    ([*REQUEST, *TARGET, "--plan", "internal;;rest"], "--plan"),
    ([*REQUEST, *TARGET, "--plan", "internal;eu early"], "eu early"),
    (["release", "request", "r 1", "--manifest", "m.json", "--owner", "o", "--escalation", "e", *TARGET], "r 1"),
    (["release", "show", "a*b"], "a*b"),
    (["release", "pause", "a.b", "-m", "x"], "a.b"),
    (["channel", "show", "prod"], "ENV/CHANNEL"),
    (["channel", "show", "prod/can ary"], "can ary"),
    (["channel", "set", "prod/canary/internal", "--file", "m.json"], "ENV/CHANNEL"),
    (["pin", "prod", "--version", "1.0.0", "--until", "2h", "-m", "x"], "ENV/CHANNEL"),
    (["pin", "prod/canary", "--version", "1.0.0", "--until", "banana", "-m", "x"], "--until"),
    (["pin", "prod/canary", "--version", "1.0.0", "--until", "2026-11-27T10:00:00", "-m", "x"], "timezone"),
    (["pin", "prod/canary", "--version", "1.0.0", "--until", "2999999d", "-m", "x"], "--until '2999999d' is out"),
    (["release", "list", "--since", "2999999d"], "--since '2999999d': out of range"),
    (["release", "list", "--since", "²d"], "--since '²d'"),
    (["ui", "--origin", "ftp://dash.example"], "--origin"),
    (["serve", "--ui-origin", "https://dash.example"], "--ui-origin needs --ui"),
    (["serve", "--ui", "0", "--ui-origin", "https://dash.example/app"], "--ui-origin"),
    (["unpin", "prod/canary/a/b", "-m", "x"], "ENV/CHANNEL"),
    (["audit", "at", "yesterday"], "RFC 3339"),
    (["audit", "at", "2026-11-27T10:00:00"], "timezone"),
    (["audit", "at", NOW, "--scope", "prod"], "ENV/CHANNEL"),
    (["audit", "release", "r/1"], "r/1"),
    (["audit", "export", "r1", "--format", "xml"], "--format takes bundle or cloudevents"),
    (["audit", "export", "r1", "--out", "b.json"], "give --key"),
    (["audit", "export", "r1", "--key", "k.json"], "give --out"),
    (["audit", "export", "r/1", "--format", "cloudevents"], "r/1"),
    # sources, references and builder ids that are not URIs
    (sign_with("--source", "not a uri"), "--source"),
    (sign_with("--source", "git.example/kb"), "--source"),
    (sign_with("--ref", "nowhere"), "--ref"),
    (["release", "annotate", "r1", "--incident", "inc-7"], "--incident"),
    (
        ["pack", "attest", "p.pack", "--key", "k.json", "--builder-id", "ci", "--build-type", "x"],
        "--build-type",
    ),
    # versions and runtime specifiers
    (sign_with("--runtime", "banana"), "--runtime"),
    (sign_with("--runtime", ""), "--runtime"),
    (sign_with("--version", "one"), "--version"),
    (sign_with("--name", "k b"), "k b"),
    # unknown options and missing values
    (["status", "--bogus"], "--bogus"),
    (["status", "--json", "extra"], "extra"),
    (["release", "extend", "r1", "-m", "x"], "--window"),
]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("m.json", "p.pack", "k.json"):
        (tmp_path / name).write_text("{}")
    monkeypatch.chdir(tmp_path)
    for var in ("KX_NATS_URL", "KX_TRUST_ROOT", "KX_DATA_DIR", "KX_SERVICE_KEYS", "KX_PREFIX"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("COLUMNS", "80")
    return tmp_path


@pytest.mark.parametrize(("args", "named"), BAD, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_a_bad_value_is_one_line_and_exit_2(
    args: list[str], named: str, workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(sys, "argv", ["kxr", *args])
    with pytest.raises(SystemExit) as ended:
        run()
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert ended.value.code == 2, f"exit {ended.value.code}\nstdout: {out}\nstderr: {err}"
    assert len(lines) == 1 and lines[0].startswith("kxr: error: "), err
    assert named in lines[0], f"{named!r} not named in {lines[0]!r}"
    assert "NATS" not in lines[0], f"checked only after trying to connect: {lines[0]}"
    assert "Traceback" not in out + err
    # `run` turns the collector off for start-up; a command refused before it ran left it off for
    # whatever ran next in the process (the fold tests after these, in CI)
    assert gc.isenabled()


def test_the_checks_enumerations_are_the_actions() -> None:
    from events.model import RollbackPlan
    from services.actions.operator import CLOSE_OUTCOMES, ROLLBACK_TRIGGERS
    from services.cli import checks

    assert checks.CLOSE_OUTCOMES == CLOSE_OUTCOMES and checks.ROLLBACK_TRIGGERS == ROLLBACK_TRIGGERS
    strategies = RollbackPlan.model_json_schema()["properties"]["strategy"]
    assert set(checks.ROLLBACK_STRATEGIES) == set(strategies.get("enum") or [strategies.get("const")]), strategies


@pytest.mark.parametrize(
    ("args", "good"),
    [
        (sign_with("--runtime", ">=2.3,<3"), True),
        (sign_with("--source", "https://git.example/kb/core"), True),
        (sign_with("--ref", "git+ssh://git.example/kb@v1"), True),
    ],
)
def test_good_values_pass_the_checks(args, good, workdir, monkeypatch, capsys) -> None:
    """The checks pass what they should: the command gets as far as reading the (empty) key file."""
    monkeypatch.setattr(sys, "argv", ["kxr", *args])
    with pytest.raises(SystemExit) as ended:
        run()
    err = capsys.readouterr().err
    assert ended.value.code == 2 and "k.json has no private key" in err, err
