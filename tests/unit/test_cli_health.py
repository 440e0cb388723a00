"""`kxr health` fails fast and in one line when NATS is away, and never prints the password of its URL.
(The healthy paths run against a real server in tests/security/test_compose_users.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from services.jetstream.embedded import free_port
from services.settings import Settings

KXR = str(Path(sys.executable).parent / "kxr")


def test_the_url_shown_has_no_credentials() -> None:
    """What `kxr health` names when NATS is away (Connection.describe, as every kxr command)."""
    shown = Settings(nats_url="nats://kx-service:s3cret@nats:4222").nats_connection().describe()
    assert shown.startswith("nats://nats:4222 ") and "s3cret" not in shown
    shown = Settings(nats_url="nats://u:p@a:4222,nats://b:4223").nats_connection().describe()
    assert shown.startswith("nats://a:4222,nats://b:4223 ") and ":p@" not in shown


def _health(*args: str, url: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KX_")}
    env["KX_NATS_URL"] = url
    return subprocess.run([KXR, "health", *args], env=env, capture_output=True, text=True, timeout=30)


def test_no_nats_is_one_line_and_exit_1_within_the_timeout() -> None:
    started = time.monotonic()
    done = _health("--timeout", "1", url=f"nats://kx-service:s3cret@127.0.0.1:{free_port()}")
    took = time.monotonic() - started
    assert done.returncode == 1 and done.stdout == "", done
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith(
        "kxr health: unhealthy: NATS at nats://127.0.0.1:"
    )
    assert "s3cret" not in done.stderr and "Traceback" not in done.stderr
    assert took < 5, f"took {took:.1f}s"


def test_bad_input_is_a_usage_error_not_unhealthy() -> None:
    done = _health("--only", "nobody", url="nats://127.0.0.1:1")
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1 and "--only" in done.stderr, done.stderr
