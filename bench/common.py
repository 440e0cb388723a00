"""What every bench shares: a file-backed nats-server, `kxr serve` processes, signed packs,
percentiles and the report (one JSON object on stdout, a short table on stderr).

Every figure is reported next to a raw nats-py baseline measured in the same run, because
this machine is noisy: a ratio survives a busy neighbour, an absolute figure does not.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats import errors as nats_errors

from events.channel import ChannelConfig
from events.model import Actor
from events.signing import SigningKey, TrustRoot, b64encode
from events.subjects import Subjects
from services.actions.producer import build_signed, manifest_bytes, sha256_digest
from services.jetstream.embedded import EmbeddedServer, free_port

PRODUCER = Actor(kind="producer", id="bench")
OPERATOR = Actor(kind="operator", id="bench")
COMPATIBILITY = {"schema": "kx-pack/1", "profiles": ["standard"], "runtime_version": "2.4.0"}


def channel_config(cohorts: list[str] | None = None, window_s: int = 3600) -> ChannelConfig:
    """One stage over the given cohorts; the window is long because benches stop at activation."""
    cohorts = cohorts or ["all"]
    return ChannelConfig.model_validate(
        {
            # every cohort but the last selects its own tenant; the last catches everyone else
            "cohorts": [{"name": c, "tenants": [f"tenant-{c}"]} for c in cohorts[:-1]] + [{"name": cohorts[-1]}],
            "plan": [cohorts],
            "monitoring": {"window_s": window_s, "min_samples": 1, "thresholds": {"error_rate_max": 0.05}},
            "compatibility": COMPATIBILITY,
            "policy": {"forbid_downgrade": True},
        }
    )


def signed_pack(key: SigningKey, version: str, body: bytes, name: str = "kb") -> tuple[bytes, str]:
    """(manifest bytes, digest) of a pack signed by `key`."""
    signed = build_signed(
        body,
        name=name,
        version=version,
        schema="kx-pack/1",
        profile="standard",
        runtime=">=2,<3",
        build_id=f"b-{version}",
        builder="bench",
        run=f"r-{version}",
        source="https://git.example/kb",
        revision=f"rev-{version}",
    )
    return manifest_bytes(signed, [key]), sha256_digest(body)


def trust_document(key: SigningKey) -> dict:
    return {"threshold": 1, "keys": {key.keyid: {"public": b64encode(key.public_raw), "name": "bench"}}}


def trust_root(key: SigningKey) -> TrustRoot:
    return TrustRoot.from_document(trust_document(key))


def kxr_binary() -> str:
    """The `kxr` console script of the running interpreter's environment."""
    return str(Path(sys.executable).parent / "kxr")


def profile_tables(profile: Path) -> None:
    """Next to each .prof, the top functions by cumulative and by own time, as text."""
    import pstats

    for prof in sorted(profile.glob("*.prof")):
        with open(prof.with_suffix(".txt"), "w") as out:
            for order in ("cumulative", "tottime"):
                pstats.Stats(str(prof), stream=out).strip_dirs().sort_stats(order).print_stats(40)


@dataclass
class Rig:
    """A nats-server on a private store and the environment a `kxr serve` needs to use it."""

    work: Path
    server: EmbeddedServer
    key: SigningKey
    prefix: str = "bench"
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def trust_file(self) -> Path:
        return self.work / "trust.json"

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "KX_NATS_URL": self.url,
            "KX_PREFIX": self.prefix,
            "KX_TRUST_ROOT": str(self.trust_file),
            "KX_DATA_DIR": str(self.work / "data"),
            **extra,
        }

    def serve(self, *args: str, name: str = "serve", profile: Path | None = None, **extra_env: str) -> subprocess.Popen:
        """`kxr serve` in its own process (the service uses the second core, as in production); with
        `profile` (a directory), under cProfile into `<profile>/<name>.prof` (its SIGTERM is a clean
        return, so the stats are written)."""
        log = open(self.work / f"{name}.log", "ab")
        argv = [kxr_binary(), "serve", *args]
        if profile is not None:
            code = (
                f"import cProfile, sys; sys.argv = {['kxr', 'serve', *args]!r}; from services.cli.main import run; "
                f"cProfile.run('run()', {str(profile / f'{name}.prof')!r})"
            )
            argv = [sys.executable, "-c", code]
        proc = subprocess.Popen(
            argv,
            env=self.env(**extra_env),
            cwd=self.work,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc


@contextmanager
def rig(prefix: str = "bench") -> Iterator[Rig]:
    with tempfile.TemporaryDirectory(prefix="kx-bench-") as tmp:
        work = Path(tmp)
        server = EmbeddedServer(store_dir=work / "js", port=free_port(), log_file=work / "nats.log").start()
        key = SigningKey.generate()
        r = Rig(work, server, key, prefix)
        r.trust_file.write_text(json.dumps(trust_document(key)))
        try:
            yield r
        finally:
            for proc in r.procs:
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
            server.stop()


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def latency_summary(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p90_ms": round(percentile(ms, 90), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(max(ms), 3),
    }


def peak_rss_mib() -> float:
    """This process's peak resident set so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "nats_server": _nats_server_version(),
    }


def _nats_server_version() -> str:
    from services.jetstream.embedded import nats_server_binary

    try:
        return subprocess.run(
            [nats_server_binary(), "--version"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except Exception as exc:  # the report still prints; the version is informational
        return f"unknown ({exc})"


class Progress:
    """One line on stderr, rewritten: long benches show they are alive.

    With the rate and the time left, so a slow step shows itself as slow (not hung). When
    stderr is not a terminal (a log file), a plain line every `every_s` seconds instead.
    """

    def __init__(self, what: str, total: int, every_s: float | None = None) -> None:
        self.what, self.total, self._last = what, total, 0.0
        self._tty = sys.stderr.isatty()
        self._every = every_s if every_s is not None else (0.5 if self._tty else 10.0)
        self._t0 = time.monotonic()
        self._ended = False

    def update(self, done: int) -> None:
        now = time.monotonic()
        end = done >= self.total
        if self._ended or not (end or now - self._last >= self._every):
            return
        self._last = now
        elapsed = now - self._t0
        rate = done / elapsed if elapsed > 0 else 0.0
        left = f", {(self.total - done) / rate:.0f} s left" if rate > 0 and not end else ""
        text = f"{self.what}: {done}/{self.total} ({elapsed:.0f} s, {rate:.0f}/s{left})"
        if self._tty:
            sys.stderr.write("\r" + text + "\x1b[K" + ("\n" if end else ""))
        else:
            sys.stderr.write(text + "\n")
        self._ended = end
        sys.stderr.flush()


def report(bench: str, result: dict[str, Any], rows: list[tuple[str, str, str, str]]) -> None:
    """Print the JSON object (stdout) and a table of (figure, ours, baseline/ratio, target) rows (stderr)."""
    doc = {"bench": bench, "machine": machine(), **result}
    print(json.dumps(doc, sort_keys=True))
    width = [max(len(r[i]) for r in rows + [("figure", "value", "baseline / ratio", "target")]) for i in range(4)]
    line = "  ".join(f"{{:<{w}}}" for w in width)
    sys.stderr.write(line.format("figure", "value", "baseline / ratio", "target") + "\n")
    for row in rows:
        sys.stderr.write(line.format(*row) + "\n")


async def raw_connect(url: str, name: str):
    """A bare nats-py connection (`nats.connect`, nats-py's own header parser): what every
    baseline runs on. The service connects through `services.jetstream.client.KxClient`, whose faster
    header parsing is part of what is measured, not part of the floor."""
    return await nats.connect(url, name=name)


async def model_written(
    js, subjects: Subjects, timeout: float, proc=None, poll_s: float = 0.5, progress: bool = True
) -> None:
    """Until the read models' `position` is the log's last sequence (the projector has written them:
    the last of the service's readers to catch up, at most every 150 ms)."""
    deadline = time.monotonic() + timeout
    last = (await js.stream_info(subjects.releases_stream)).state.last_seq
    bar = Progress("the read models are written", last) if progress else None
    while True:
        try:
            kv = await js.key_value(subjects.read_bucket)
            at = json.loads((await kv.get("position")).value)["seq"]
        except (nats_errors.Error, KeyError, ValueError, TypeError):  # not there yet
            at = 0
        if bar is not None:
            bar.update(min(at, last))
        if at >= last:
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the service exited ({proc.returncode}) before writing its read models")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the read models were not written within {timeout:.0f}s (at {at} of {last})")
        await asyncio.sleep(poll_s)
