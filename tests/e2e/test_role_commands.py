"""Each role's credentials work for exactly the `kxr` commands that role runs (issue 16).

One `kxr serve` with its embedded nats-server (one least-privilege user per role, as a new
user gets it), then every command as its role's user, the way the README runs them:
`kxr --creds .kx-data/creds/ROLE.json …`. Per role, the commands it must be able to run
succeed; a few it must not fail at once with one line, `permission denied: …`, and a
non-zero exit: never a 10-second hang on a reply that cannot come.

  producer  pack push, release request, release show (its own release)
  operator  status, channel set/show, release pause/resume/annotate/abort, pin/unpin, watch
  auditor   audit replay/release/at/export, status, watch
  runtime   runtime simulate (follows its cohort, switches, reports health)
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .support import assert_one_line_error, base_env, kxr_binary

DENIED_WITHIN_S = 5.0  # a denial is answered at once; the old failure mode was a 10 s timeout
READY_S = 30.0

CHANNEL = """
plan = [["internal"], ["rest"]]
[[cohorts]]
name = "internal"
tenants = ["acme-internal"]
[[cohorts]]
name = "rest"
[monitoring]
window_s = 1
min_samples = 2
[monitoring.thresholds]
error_rate_max = 0.05
latency_p95_ms_max = 250
[compatibility]
schema = "kx-pack/1"
profiles = ["standard"]
runtime_version = "2.4.0"
[policy]
allowed_sources = ["https://git.example/kb"]
allowed_builders = ["kx-pipeline"]
max_pin_days = 30
"""


@dataclass
class Install:
    """A directory with a running embedded `kxr serve`, its trust root and a signed pack."""

    workdir: Path
    env: dict[str, str]
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.workdir / ".kx-data"

    def creds(self, role: str) -> str:
        return str(self.data_dir / "creds" / f"{role}.json")

    def run(
        self, role: str | None, *args: str, timeout: float = 30, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        root = ["--creds", self.creds(role)] if role else []
        return subprocess.run(
            [kxr_binary(), *root, *args],
            cwd=self.workdir,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def ok(self, role: str | None, *args: str, **kw) -> subprocess.CompletedProcess:
        result = self.run(role, *args, **kw)
        assert result.returncode == 0, (
            f"kxr {' '.join(args)} as {role}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
        return result

    def denied(self, role: str, *args: str, needle: str = "permission denied") -> str:
        """The command fails fast with one line naming the denial."""
        started = time.monotonic()
        result = self.run(role, *args, timeout=DENIED_WITHIN_S * 3)
        took = time.monotonic() - started
        line = assert_one_line_error(result, needle)
        assert took < DENIED_WITHIN_S, f"kxr {' '.join(args)} as {role} took {took:.1f}s to fail: {line}"
        return line

    def start(self, name: str, role: str | None, *args: str) -> subprocess.Popen:
        log = (self.workdir / f"{name}.log").open("w")
        root = ["--creds", self.creds(role)] if role else []
        proc = subprocess.Popen(
            [kxr_binary(), *root, *args],
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        return proc

    def wait_log(self, name: str, needle: str, timeout: float = READY_S) -> str:
        path = self.workdir / f"{name}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = path.read_text(errors="replace") if path.exists() else ""
            if needle in text:
                return text
            time.sleep(0.1)
        pytest.fail(f"{name}: no {needle!r} within {timeout}s:\n{path.read_text(errors='replace')}")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def sign(inst: Install, version: str) -> tuple[str, str]:
    pack = f"kb-{version}.pack"
    (inst.workdir / pack).write_text(f"kb-core {version}\n")
    inst.ok(
        None,
        "pack",
        "sign",
        pack,
        "--key",
        "producer.key.json",
        "--name",
        "kb-core",
        "--version",
        version,
        "--schema",
        "kx-pack/1",
        "--profile",
        "standard",
        "--runtime",
        ">=2.3,<3",
        "--build-id",
        f"b-{version}",
        "--builder",
        "kx-pipeline",
        "--run",
        f"run-{version}",
        "--source",
        "https://git.example/kb/core",
        "--revision",
        "3f2a9c1",
    )
    return pack, f"kb-{version}.pack.manifest.json"


def request_args(release_id: str, manifest: str, rollback: str) -> list[str]:
    return [
        "release",
        "request",
        release_id,
        "--target",
        "prod/canary",
        "--manifest",
        manifest,
        "--owner",
        "kb-team",
        "--escalation",
        "pager:kb-oncall",
        "--rollback",
        rollback,
    ]


@pytest.fixture(scope="module")
def inst(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("roles")
    env = base_env() | {"KX_TRUST_ROOT": "trust-root.json", "XDG_CONFIG_HOME": str(workdir / "config")}
    inst = Install(workdir, env)
    try:
        inst.ok(None, "keys", "generate", "producer.key.json", "--name", "ci", "--trust-root", "trust-root.json")
        inst.start("serve", None, "serve", "--log-format", "text")
        inst.wait_log("serve", "running against")
        yield inst
    finally:
        inst.stop()


def test_every_role_runs_its_own_commands_and_no_other(inst: Install):
    # ---- operator: the channel --------------------------------------------------------------
    (inst.workdir / "canary.toml").write_text(CHANNEL)
    inst.ok("operator", "channel", "set", "prod/canary", "--file", "canary.toml")
    shown = inst.ok("operator", "channel", "show", "prod/canary", "--json")
    assert json.loads(shown.stdout)
    # the other roles may not configure a channel
    for role in ("producer", "auditor", "runtime"):
        inst.denied(role, "channel", "set", "prod/canary", "--file", "canary.toml")

    # ---- runtime: two simulated runtimes on the shared runtime user ---------------------------
    for rid, tenant in (("rt-1", "acme-internal"), ("rt-2", "globex")):
        inst.start(
            rid,
            "runtime",
            "runtime",
            "simulate",
            "--env",
            "prod",
            "--channel",
            "canary",
            "--runtime-id",
            rid,
            "--tenant",
            tenant,
            "--interval",
            "0.2",
        )
    for rid in ("rt-1", "rt-2"):
        inst.wait_log(rid, "follows prod/canary/")

    # ---- producer: push, request, show its release --------------------------------------------
    pack, manifest = sign(inst, "1.4.0")
    inst.ok("producer", "pack", "push", pack, manifest)
    inst.ok("producer", *request_args("rel-1", manifest, "none"))
    shown = inst.ok("producer", "release", "show", "rel-1", "--json")
    assert json.loads(shown.stdout)
    # the issue: a request with the operator's user hung 10 s, then failed on STREAM.INFO.OBJ_kx_packs
    line = inst.denied("operator", *request_args("rel-x", manifest, "none"), "--pack", pack)
    assert "producer" in line, line  # it says whose command this is
    inst.denied("auditor", *request_args("rel-x", manifest, "none"))

    # ---- the release runs through both stages on the runtimes' health -------------------------
    watched = inst.run("operator", "watch", "rel-1", "--timeout", "60", timeout=90)
    assert watched.returncode == 0, f"rel-1 did not close success:\n{watched.stdout}\n{watched.stderr}"
    for rid in ("rt-1", "rt-2"):
        inst.wait_log(rid, "switched to kb-core@1.4.0")

    # ---- operator: decisions on a second release ----------------------------------------------
    pack2, manifest2 = sign(inst, "1.4.1")
    inst.ok(
        "producer", *request_args("rel-2", manifest2, "lkg"), "--pack", pack2, "--window", "30", "--min-samples", "2"
    )
    inst.denied("producer", "release", "pause", "rel-2", "-m", "not mine to pause")
    inst.ok("operator", "release", "pause", "rel-2", "-m", "looking at a graph")
    inst.ok("operator", "release", "resume", "rel-2", "-m", "graph explained")
    inst.ok("operator", "release", "annotate", "rel-2", "-m", "noted")
    for role in ("auditor", "producer", "runtime"):
        inst.denied(role, "release", "abort", "rel-2", "-m", "not mine")
    inst.ok("operator", "release", "abort", "rel-2", "-m", "wrong pack for this week")
    inst.ok("operator", "pin", "prod/canary/internal", "--version", "1.4.0", "--until", "1d", "-m", "hold")
    inst.ok("operator", "unpin", "prod/canary/internal", "-m", "done")
    inst.denied("auditor", "pin", "prod/canary/internal", "--version", "1.4.0", "--until", "1d", "-m", "no")
    status = inst.ok("operator", "status", "--json")
    assert json.loads(status.stdout)

    # ---- auditor: read-only ---------------------------------------------------------------------
    keys = str(inst.data_dir / "service-keys.json")
    inst.ok("auditor", "status")
    inst.ok("auditor", "audit", "replay", "--service-keys", keys)
    record = inst.ok("auditor", "audit", "release", "rel-1", "--json")
    assert json.loads(record.stdout)
    inst.ok("auditor", "audit", "at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "--scope", "prod/canary")
    inst.ok(None, "keys", "generate", "auditor.key.json", "--name", "audit-team", "--trust-root", "auditors.json")
    inst.ok("auditor", "audit", "export", "rel-1", "--key", "auditor.key.json", "--out", "rel-1.bundle.json")
    watched = inst.run("auditor", "watch", "rel-1", "--timeout", "20", timeout=40)
    assert watched.returncode == 0, f"auditor watch rel-1:\n{watched.stdout}\n{watched.stderr}"


def test_a_nats_context_and_the_old_url_way_connect_as_the_role(inst: Install):
    """`kxr --context NAME` reads the nats CLI's context file; KX_NATS_URL=$(kxr creds show ROLE) still works."""
    auditor = json.loads(Path(inst.creds("auditor")).read_text())
    server = auditor["url"].split("@")[-1]
    contexts = Path(inst.env["XDG_CONFIG_HOME"]) / "nats" / "context"
    contexts.mkdir(parents=True, exist_ok=True)
    (contexts / "kx-audit.json").write_text(
        json.dumps(
            {
                "description": "kx auditor",
                "url": f"nats://{server}",
                "user": auditor["user"],
                "password": auditor["password"],
                "creds": "",
                "nkey": "",
                "cert": "",
                "key": "",
                "ca": "",
                "nsc": "",
                "jetstream_domain": "",
                "jetstream_api_prefix": "",
                "jetstream_event_prefix": "",
                "inbox_prefix": "",
                "user_jwt": "",
                "color_scheme": "",
                "tls_first": False,
            }
        )
    )
    result = inst.run(None, "--context", "kx-audit", "status", "--json")
    assert result.returncode == 0, result.stderr
    line = assert_one_line_error(  # the context's user is the auditor's
        inst.run(None, "--context", "kx-audit", "channel", "set", "prod/canary", "--file", "canary.toml"),
        "permission denied",
    )
    assert auditor["user"] in line
    # the selected context (nats context select) when nothing else names a server
    (contexts.parent / "context.txt").write_text("kx-audit\n")
    try:
        assert inst.run(None, "status").returncode == 0
    finally:
        (contexts.parent / "context.txt").unlink()
    url = inst.ok(None, "creds", "show", "operator").stdout.strip()
    inst.ok(None, "status", env={"KX_NATS_URL": url})
    assert_one_line_error(inst.run(None, "--context", "nope", "status"), "unknown context 'nope'")


def test_a_user_on_the_wrong_reply_inbox_is_denied_at_once_and_a_runtime_url_finds_its_own(inst: Install):
    """The runtime user may receive replies on its own inbox only: a command that connects it with
    the default inbox gets `permission denied` at once (not a timeout); `kxr runtime simulate`
    with a runtime's own user in a bare URL picks that runtime's inbox by itself."""
    url = inst.ok(None, "creds", "show", "runtime").stdout.strip()
    started = time.monotonic()
    line = assert_one_line_error(inst.run(None, "status", env={"KX_NATS_URL": url}), "permission denied")
    assert "subscribe" in line and "kx-runtime" in line, line
    assert time.monotonic() - started < DENIED_WITHIN_S
    path = inst.ok(None, "creds", "runtime", "add", "rt-own").stdout.strip()
    own_url = json.loads((inst.workdir / path).read_text())["url"]
    proc = subprocess.Popen(
        [
            kxr_binary(),
            "runtime",
            "simulate",
            "--env",
            "prod",
            "--channel",
            "canary",
            "--runtime-id",
            "rt-own",
            "--tenant",
            "globex",
            "--interval",
            "0.2",
        ],
        cwd=inst.workdir,
        env={**inst.env, "KX_NATS_URL": own_url},
        stdout=(inst.workdir / "rt-own.log").open("w"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    inst.procs.append(proc)
    inst.wait_log("rt-own", "follows prod/canary/rest")


def test_kxr_health_connects_with_the_credentials_given(inst: Install):
    """`kxr health` in a container connects as its role's user (`--creds`), as every kxr command does."""
    healthy = inst.ok("service", "health", "--only", "preparer", "--timeout", "5")
    assert healthy.stdout.startswith("kxr health: ok (NATS, release log, kxr-preparer)")
