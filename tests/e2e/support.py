"""End-to-end helpers: `kxr` as a subprocess against the suite's nats-server.

Every test gets its own subject prefix (fixture `prefix`), so its own streams and
packs bucket. `kxr serve` processes started through the `kx` fixture are killed
(by their own pid) when the test ends, whatever happened.

The CLI runs with stdin at /dev/null and without COLUMNS, as it would under a
pipeline or a supervisor (no terminal).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nats.js.errors import NotFoundError

from events.signing import SigningKey, b64encode

READY_TIMEOUT_S = 20.0


def kxr_binary() -> str:
    beside = Path(sys.executable).parent / ("kxr.exe" if os.name == "nt" else "kxr")
    if beside.exists():
        return str(beside)
    found = shutil.which("kxr")
    if found:
        return found
    pytest.fail(
        "the kxr console script is not installed beside this Python nor on PATH (pip install -e .)", pytrace=False
    )


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KX_") and k not in ("COLUMNS", "LINES")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def write_trust_root(path: Path, *keys: SigningKey, threshold: int = 1) -> Path:
    doc = {
        "version": 1,
        "threshold": threshold,
        "keys": {k.keyid: {"public": b64encode(k.public_raw), "name": f"key{i}"} for i, k in enumerate(keys)},
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def stderr_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def assert_one_line_error(result: subprocess.CompletedProcess, *must_contain: str) -> str:
    """Non-zero, exactly one non-empty line on stderr, no traceback anywhere."""
    out = (result.stdout or "") + (result.stderr or "")
    assert result.returncode != 0, f"expected a non-zero exit; got 0\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in out, f"traceback in output:\n{out}"
    lines = stderr_lines(result.stderr or "")
    assert len(lines) == 1, f"expected ONE line on stderr, got {len(lines)}:\n{result.stderr}"
    for needle in must_contain:
        assert needle in lines[0], f"{needle!r} not in the error line {lines[0]!r}"
    return lines[0]


class ServeProcess:
    """One `kxr serve` subprocess; stdout/stderr go to files (no pipe can fill up)."""

    def __init__(self, argv: list[str], env: dict[str, str], workdir: Path, name: str) -> None:
        self.argv = argv
        self.name = name
        self.err_path = workdir / f"{name}.stderr"
        self.out_path = workdir / f"{name}.stdout"
        self._err = open(self.err_path, "wb")
        self._out = open(self.out_path, "wb")
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        self._err.flush()
        return self.err_path.read_text(errors="replace")

    def is_ready(self) -> bool:
        text = " ".join(self.stderr().split())  # the console may wrap the line
        return "kxr serve:" in text and "running against" in text

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(
                f"kxr serve ({self.name}) exited with {self.proc.returncode} before being ready:\n{self.stderr()}"
            )

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> ServeProcess:
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            self._check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"kxr serve ({self.name}) not ready within {timeout}s:\n{self.stderr()}")
            time.sleep(0.05)
        return self

    async def ready(self, timeout: float = READY_TIMEOUT_S) -> ServeProcess:
        """Like wait_ready, without blocking the event loop (in-process runtimes keep running)."""
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            self._check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"kxr serve ({self.name}) not ready within {timeout}s:\n{self.stderr()}")
            await asyncio.sleep(0.05)
        return self

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL this process (by pid) and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
            pass
        self._close_files()

    def _close_files(self) -> None:
        for f in (self._err, self._out):
            try:
                f.close()
            except Exception:
                pass


@dataclass
class Kx:
    """A test's installation: NATS URL, prefix, signing key, trust root, and its processes."""

    nats_url: str
    prefix: str
    workdir: Path
    key: SigningKey
    trust_root_path: Path
    binary: str
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: list[ServeProcess] = field(default_factory=list)

    @property
    def stream(self) -> str:
        return f"{self.prefix.upper()}_RELEASES"

    def env(self, **overrides: str | None) -> dict[str, str]:
        env = base_env()
        env.update(
            {
                "KX_NATS_URL": self.nats_url,
                "KX_PREFIX": self.prefix,
                "KX_TRUST_ROOT": str(self.trust_root_path),
                "KX_DATA_DIR": str(self.workdir / "kx-data"),
                "KX_ACTOR": "e2e-operator",
                **self.extra_env,
            }
        )
        for k, v in overrides.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        return env

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.binary, *args],
            env=env or self.env(),
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    async def arun(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 30.0
    ) -> subprocess.CompletedProcess:
        """`run` in a thread, so in-process runtimes keep reporting meanwhile."""
        return await asyncio.to_thread(self.run, *args, env=env, timeout=timeout)

    def serve(self, *args: str, env: dict[str, str] | None = None) -> ServeProcess:
        p = ServeProcess(
            [self.binary, "serve", *args], env or self.env(), self.workdir, f"serve{len(self.processes) + 1}"
        )
        self.processes.append(p)
        return p

    def cleanup(self) -> None:
        for p in self.processes:
            p.kill()


# ---- reading the log --------------------------------------------------------------------------


async def wait_until(probe, timeout: float, what: str, describe=None, interval: float = 0.05):
    """Await `probe()` (sync or async) until truthy; fail with `describe()` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            state = describe() if describe else None
            if asyncio.iscoroutine(state):
                state = await state
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last state: {state}")
        await asyncio.sleep(interval)


async def last_msg(js, stream: str, subject: str):
    try:
        return await js.get_last_msg(stream, subject)
    except NotFoundError:
        return None


async def last_event(js, stream: str, subject: str) -> dict[str, Any] | None:
    msg = await last_msg(js, stream, subject)
    return json.loads(msg.data) if msg is not None else None


async def read_log(
    js, stream: str, filters: list[str] | None = None
) -> list[tuple[int, str, dict[str, Any], dict[str, str]]]:
    """Every message of the stream (or of `filters`) from sequence 1: (seq, subject, body, headers)."""
    from services.jetstream.reader import OrderedReader

    prefix = stream.rsplit("_", 1)[0].lower()
    reader = OrderedReader(js, stream, filters or [f"{prefix}.>"], batch=1024)
    out = []
    try:
        async for entry in reader.read(follow=False, idle_timeout=0.5):
            out.append((entry.seq, entry.subject, json.loads(entry.data), entry.headers))
    finally:
        await reader.close()
    return out


async def release_events(js, kx: Kx, release_id: str) -> list[dict[str, Any]]:
    return [body for _, _, body, _ in await read_log(js, kx.stream, [f"{kx.prefix}.release.{release_id}.*"])]


async def describe_release(js, kx: Kx, release_id: str) -> str:
    try:
        events = await release_events(js, kx, release_id)
    except Exception as exc:  # describing must never hide the real failure
        return f"(cannot read the log: {exc!r})"
    return " -> ".join(e["type"].split(".", 1)[1] for e in events) or "(no events)"


async def wait_closed(js, kx: Kx, release_id: str, timeout: float = 30.0) -> dict[str, Any]:
    subject = f"{kx.prefix}.release.{release_id}.closed"
    return await wait_until(
        lambda: last_event(js, kx.stream, subject),
        timeout,
        f"release {release_id} to close",
        lambda: describe_release(js, kx, release_id),
    )


async def wait_event(
    js, kx: Kx, release_id: str, suffix: str, timeout: float = 30.0, interval: float = 0.02
) -> dict[str, Any]:
    subject = f"{kx.prefix}.release.{release_id}.{suffix}"
    return await wait_until(
        lambda: last_event(js, kx.stream, subject),
        timeout,
        f"release {release_id} {suffix}",
        lambda: describe_release(js, kx, release_id),
        interval=interval,
    )


def duplicate_event_ids(entries) -> dict[str, int]:
    counts = Counter(body.get("event_id") for _, _, body, _ in entries)
    return {k: n for k, n in counts.items() if n > 1}


def activations_per_cohort(entries, release_id: str) -> Counter:
    return Counter(
        body["scope"]["cohort"]
        for _, _, body, _ in entries
        if body.get("type") == "scope.activated" and body["data"].get("release_id") == release_id
    )


def count_types(entries, release_id: str) -> Counter:
    return Counter(body["type"] for _, _, body, _ in entries if body.get("release_id") == release_id)


__all__ = [
    "Kx",
    "ServeProcess",
    "activations_per_cohort",
    "assert_one_line_error",
    "base_env",
    "count_types",
    "duplicate_event_ids",
    "kxr_binary",
    "last_event",
    "last_msg",
    "read_log",
    "release_events",
    "stderr_lines",
    "wait_closed",
    "wait_event",
    "wait_until",
    "write_trust_root",
]
