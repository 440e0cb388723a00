"""README.md is executable: every shell block runs in CI as written, or says why not.

The blocks of one story (`<!-- readme-test: story=NAME -->`, see readme_blocks.py) run in
README order as ONE bash script (`set -euo pipefail`) in a fresh directory, with the venv
running this test first on PATH (so `kxr` is the code under test) and no KX_* variable of
the caller's. Whatever the script leaves running (`kxr serve &`, simulated runtimes) is
stopped afterwards with its whole session, and the test fails if anything survives.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .readme_blocks import script_for, shell_blocks, stories

pytestmark = pytest.mark.docs

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
BLOCKS = shell_blocks(README.read_text())
STORIES = stories(BLOCKS)
SKIPPED = [b for b in BLOCKS if b.skip_reason]
STORY_TIMEOUT_S = 150  # a story that hangs (a server that never got ready) fails, with its log
STOP_GRACE_S = 15


def test_every_shell_block_is_marked() -> None:
    problems = [
        f"README.md line {b.line}: ```{b.lang} block without a readme-test marker" for b in BLOCKS if b.marker is None
    ]
    problems += [f"README.md line {b.line}: {p}" for b in BLOCKS for p in b.problems]
    print("\nREADME blocks not run:\n" + "\n".join(f"  line {b.line}: {b.skip_reason}" for b in SKIPPED))
    assert not problems, (
        'mark each block with <!-- readme-test: story=NAME --> or <!-- readme-test: skip reason="…" -->:\n'
        + "\n".join(problems)
    )
    assert STORIES, "no README block is run"


def test_a_block_not_run_says_why_and_runs_nothing_a_story_needs() -> None:
    # not a pytest skip: the suite stays free of skips, and this fails if a reason goes missing
    for b in SKIPPED:
        assert len(b.skip_reason.strip()) >= 10, f"README.md line {b.line}: say why the block is not run"
        assert b.story is None, f"README.md line {b.line}: a block is either run in a story or not run"


def _session_pids(sid: int) -> list[int]:
    """Live processes of session `sid` (the story's bash and everything it started in the background)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def _pids_mentioning(text: str) -> list[int]:
    """Processes whose command line names `text` (the embedded nats-server runs in its own session)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if text.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _stop_session(sid: int, workdir: Path) -> list[int]:
    """SIGTERM the story's session (a clean stop: `kxr serve` stops its own nats-server), then
    SIGKILL whatever is left of it or still names the story's directory; returns those."""

    def alive() -> list[int]:
        return sorted(set(_session_pids(sid)) | set(_pids_mentioning(str(workdir))))

    for pid in _session_pids(sid):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + STOP_GRACE_S
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    stubborn = alive()
    for pid in stubborn:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return stubborn


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KX_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.mark.timeout(STORY_TIMEOUT_S + 2 * STOP_GRACE_S + 30)
@pytest.mark.parametrize("name", sorted(STORIES))
def test_story(name: str, tmp_path: Path) -> None:
    blocks = STORIES[name]
    workdir = tmp_path / name
    workdir.mkdir()
    if any("venv" in (b.marker or {}) for b in blocks):
        venv = Path(sys.prefix)
        assert (venv / "bin" / "kxr").exists(), f"{venv} has no bin/kxr: run the tests from the installed venv"
        (workdir / ".venv").symlink_to(venv)
    for path in sorted({c for b in blocks for c in b.copies}):
        assert (REPO / path).is_dir(), f"copy={path}: no such directory in the repository"
        shutil.copytree(REPO / path, workdir / path)
    script = workdir / "readme-story.sh"
    script.write_text(script_for(blocks))
    log = workdir / "readme-story.log"
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", str(script)],
            cwd=workdir,
            env=_environment(),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            rc: int | None = proc.wait(timeout=STORY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            stubborn = _stop_session(proc.pid, workdir)
            proc.wait()
    took = time.monotonic() - started
    lines = [f"README.md line {b.line}" for b in blocks]
    print(f"\nstory {name}: {len(blocks)} block(s) ({', '.join(lines)}), {took:.1f} s, exit {rc}")
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-80:])
    for other in sorted(workdir.glob("*.log")):  # what the story's background processes wrote (serve.log, rt-1.log, …)
        if other != log:
            tail += f"\n---- {other.name} (last lines)\n" + "\n".join(
                other.read_text(errors="replace").splitlines()[-15:]
            )
    if rc != 0:
        ended = f"timed out after {STORY_TIMEOUT_S} s" if rc is None else f"exited {rc}"
        pytest.fail(f"story {name} {ended} (script {script}); last lines:\n{tail}", pytrace=False)
    assert not _session_pids(proc.pid) and not _pids_mentioning(str(workdir)), f"story {name} left processes running"
    assert not stubborn, f"story {name}: processes ignored SIGTERM for {STOP_GRACE_S} s: {stubborn}"
