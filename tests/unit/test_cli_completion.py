"""Shell completion (issue 16): `kxr --show-completion` prints a script bash can load, the function
it defines completes kxr's commands and subcommands, and `--install-completion` installs it.

Each check runs in a real bash (`bash -c`), as a person's shell would: bash sources the script,
sets COMP_WORDS/COMP_CWORD as it does on <Tab>, and calls the function, which runs `kxr`
with `_KXR_COMPLETE=complete_bash`. Shell detection (shellingham) finds that bash as kxr's parent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
KXR = BIN / "kxr"
BASH = shutil.which("bash")


def bash(script: str, home: Path, *args: str) -> subprocess.CompletedProcess:
    if BASH is None:
        pytest.fail("bash is not installed: shell completion cannot be checked")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KX_") and not k.endswith("_COMPLETE")},
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(home),
        "COLUMNS": "80",
    }
    return subprocess.run(
        [BASH, "--noprofile", "--norc", "-c", script, "bash", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def complete(home: Path, *words: str) -> list[str]:
    """What <Tab> offers after `words` (the last one is the word being completed; "" for a new one)."""
    script = (
        'eval "$(kxr --show-completion)" || exit 9\n'
        'COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 ))\n'
        "_kxr_completion kxr\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = bash(script, home, "kxr", *words)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return [line for line in done.stdout.splitlines() if line]


def test_show_completion_prints_a_bash_function_for_kxr(tmp_path) -> None:
    done = bash("kxr --show-completion", tmp_path)
    assert done.returncode == 0, done.stderr
    assert "_kxr_completion()" in done.stdout and "_KXR_COMPLETE=complete_bash" in done.stdout
    assert "complete -o default -F _kxr_completion kxr" in done.stdout


def test_the_bash_function_completes_commands_subcommands_and_options(tmp_path) -> None:
    assert complete(tmp_path, "rel") == ["release"]
    assert set(complete(tmp_path, "")) >= {"status", "watch", "release", "pin", "audit", "channel"}
    assert set(complete(tmp_path, "release", "")) >= {"list", "show", "pause", "close", "extend", "rollback"}
    assert complete(tmp_path, "release", "cl") == ["close"]
    assert "--outcome" in complete(tmp_path, "release", "close", "r1", "--out")
    assert complete(tmp_path, "status", "--al") == ["--all"]
    complete(tmp_path, "nonsense", "")  # an unknown word: no error on the terminal (complete checks it)


def test_install_completion_writes_the_script_and_sources_it_from_bashrc(tmp_path) -> None:
    done = bash("kxr --install-completion", tmp_path)
    assert done.returncode == 0, done.stderr
    assert "bash completion installed" in done.stdout
    script = tmp_path / ".bash_completions" / "kxr.sh"
    assert "_kxr_completion()" in script.read_text()
    assert str(script.relative_to(tmp_path)) in (tmp_path / ".bashrc").read_text()
    # a new interactive shell (with that .bashrc) completes kxr
    done = bash(
        "source ~/.bashrc; COMP_WORDS=(kxr watc); COMP_CWORD=1; _kxr_completion kxr; echo ${COMPREPLY[@]}", tmp_path
    )
    assert done.returncode == 0 and done.stdout.split() == ["watch"], done.stdout + done.stderr
