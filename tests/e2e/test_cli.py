"""`kxr` commands as a producer, operator or auditor runs them: subprocesses, exit codes, output.

One `kxr serve` (own prefix) serves the whole module; every test uses its own channel
or release ids on it. Tests of offline commands need no NATS at all.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
import subprocess
import time
import uuid

import nats
import pytest

from events.signing import SigningKey
from services.jetstream.embedded import free_port

from .support import Kx, assert_one_line_error, base_env, kxr_binary, write_trust_root

pytestmark = pytest.mark.e2e

SIGN_ARGS = [
    "--name",
    "kb",
    "--schema",
    "kx-pack/1",
    "--profile",
    "standard",
    "--runtime",
    ">=2.3,<3",
    "--build-id",
    "b-1",
    "--builder",
    "kx-pipeline",
    "--run",
    "run-1",
    "--source",
    "https://git.example/kb/core",
    "--revision",
    "3f2a9c1",
]

CHANNEL_TOML = """\
plan = [["internal"], ["eu-early"], ["rest"]]

[[cohorts]]
name = "internal"
tenants = ["t-int-1", "t-int-2"]

[[cohorts]]
name = "eu-early"
regions = ["eu"]
percent = [0, 500]

[[cohorts]]
name = "rest"

[monitoring]
window_s = 1
min_samples = 1

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
forbid_downgrade = true
"""

CHANNEL_JSON = {
    "cohorts": [{"name": "internal", "tenants": ["t-int-1"]}, {"name": "rest"}],
    "plan": [["internal"], ["rest"]],
    "monitoring": {"window_s": 1, "min_samples": 1, "thresholds": {"error_rate_max": 0.05}},
    "compatibility": {"schema": "kx-pack/1", "profiles": ["standard"], "runtime_version": "2.4.0"},
    "policy": {
        "allowed_sources": ["https://git.example/kb"],
        "allowed_builders": ["kx-pipeline"],
        "forbid_downgrade": True,
    },
    "promote_to": None,
}


@pytest.fixture(scope="module")
def inst(nats_url, tmp_path_factory):
    """One installation for the module: a key, its trust root, and a running `kxr serve`."""
    workdir = tmp_path_factory.mktemp("cli")
    key = SigningKey.generate()
    key_file = workdir / "producer.key.json"
    key_file.write_text(json.dumps(key.to_file_dict("producer")))
    key_file.chmod(0o600)
    kx = Kx(
        nats_url=nats_url,
        prefix="c" + uuid.uuid4().hex[:12],
        workdir=workdir,
        key=key,
        trust_root_path=write_trust_root(workdir / "trust-root.json", key),
        binary=kxr_binary(),
    )
    try:
        kx.serve().wait_ready()
        yield kx
    finally:
        kx.cleanup()


def offline_env(**extra: str) -> dict[str, str]:
    env = base_env()
    env.update(extra)
    return env


def ok(result) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in result.stdout + result.stderr
    return result.stdout


def sign(kx: Kx, pack_name: str, version: str, body: bytes | None = None) -> tuple[str, str]:
    pack = kx.workdir / pack_name
    pack.write_bytes(body if body is not None else f"{pack_name} {version} ".encode() * 500)
    manifest = kx.workdir / f"{pack_name}.manifest.json"
    ok(
        kx.run(
            "pack",
            "sign",
            pack.name,
            "--key",
            "producer.key.json",
            "--version",
            version,
            *SIGN_ARGS,
            "--out",
            manifest.name,
        )
    )
    return pack.name, manifest.name


# ---- keys ------------------------------------------------------------------------------------------


def test_keys_generate_mode_0600_refuses_overwrite_and_adds_to_trust_root(kx):
    env = offline_env()
    ok(kx.run("keys", "generate", "a.key.json", "--name", "ci", "--trust-root", "tr.json", env=env))
    key_path = kx.workdir / "a.key.json"
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    key_doc = json.loads(key_path.read_text())
    root = json.loads((kx.workdir / "tr.json").read_text())
    assert root["threshold"] == 1 and list(root["keys"]) == [key_doc["keyid"]]
    assert root["keys"][key_doc["keyid"]]["public"] == key_doc["public"]
    assert "private" not in json.dumps(root)

    ok(kx.run("keys", "generate", "b.key.json", "--name", "ci2", "--trust-root", "tr.json", env=env))
    root2 = json.loads((kx.workdir / "tr.json").read_text())
    assert len(root2["keys"]) == 2 and key_doc["keyid"] in root2["keys"]

    before = key_path.read_bytes()
    refused = kx.run("keys", "generate", "a.key.json", "--name", "again", "--trust-root", "tr.json", env=env)
    assert_one_line_error(refused, "a.key.json")
    assert key_path.read_bytes() == before, "the existing key was overwritten"
    assert json.loads((kx.workdir / "tr.json").read_text()) == root2, "the trust root changed on a refused generate"


# ---- packs -----------------------------------------------------------------------------------------


@pytest.fixture
def signed_pack(kx):
    env = offline_env()
    ok(kx.run("keys", "generate", "p.key.json", "--name", "ci", "--trust-root", "tr.json", env=env))
    pack = kx.workdir / "kb.pack"
    pack.write_bytes(os.urandom(5000))
    ok(kx.run("pack", "sign", "kb.pack", "--key", "p.key.json", "--version", "1.4.0", *SIGN_ARGS, env=env))
    return pack, kx.workdir / "kb.pack.manifest.json", env


def test_pack_sign_then_verify_passes(kx, signed_pack):
    pack, manifest, env = signed_pack
    doc = json.loads(manifest.read_text())
    signed = doc["signed"]
    assert signed["digest"] == "sha256:" + hashlib.sha256(pack.read_bytes()).hexdigest()
    assert (signed["name"], signed["version"], signed["size"]) == ("kb", "1.4.0", 5000)
    assert len(doc["signatures"]) == 1
    out = ok(kx.run("pack", "verify", "kb.pack", "kb.pack.manifest.json", "--trust-root", "tr.json", env=env))
    assert "FAIL" not in out
    for gate in ("signature", "expiry", "identity", "integrity"):
        assert any(line.startswith("pass") and gate in line for line in out.splitlines()), (gate, out)
    doc = json.loads(
        ok(kx.run("pack", "verify", "kb.pack", "kb.pack.manifest.json", "--trust-root", "tr.json", "--json", env=env))
    )
    assert doc["ok"] and {"signature", "expiry", "identity", "integrity"} <= {
        g["gate"] for g in doc["gates"] if g["ok"]
    }


@pytest.mark.parametrize(
    "tamper, gate", [("pack_bytes", "integrity"), ("manifest_field", "signature"), ("untrusted_key", "signature")]
)
def test_pack_verify_of_tampered_pack_fails_naming_the_gate(kx, signed_pack, tamper, gate):
    pack, manifest, env = signed_pack
    root = "tr.json"
    if tamper == "pack_bytes":
        data = bytearray(pack.read_bytes())
        data[100] ^= 0xFF
        pack.write_bytes(bytes(data))
    elif tamper == "manifest_field":
        doc = json.loads(manifest.read_text())
        doc["signed"]["version"] = "9.9.9"
        manifest.write_text(json.dumps(doc))
    else:
        root = str(write_trust_root(kx.workdir / "other-root.json", SigningKey.generate()))
    result = kx.run("pack", "verify", "kb.pack", "kb.pack.manifest.json", "--trust-root", root, env=env)
    line = assert_one_line_error(result, gate)
    assert "failed" in line


# ---- channels --------------------------------------------------------------------------------------


def test_channel_set_toml_and_json_then_show(inst):
    (inst.workdir / "canary.toml").write_text(CHANNEL_TOML)
    (inst.workdir / "beta.json").write_text(json.dumps(CHANNEL_JSON))
    ok(inst.run("channel", "set", "prod/ch-toml", "--file", "canary.toml"))
    ok(inst.run("channel", "set", "prod/ch-json", "--file", "beta.json"))

    shown = json.loads(ok(inst.run("channel", "show", "prod/ch-toml", "--json")))
    cfg = shown["config"]
    assert [c["name"] for c in cfg["cohorts"]] == ["internal", "eu-early", "rest"]
    assert cfg["cohorts"][1]["percent"] == [0, 500]
    assert cfg["plan"] == [["internal"], ["eu-early"], ["rest"]]
    assert cfg["monitoring"]["window_s"] == 1 and cfg["monitoring"]["thresholds"]["error_rate_max"] == 0.05
    assert cfg["compatibility"] == {"schema": "kx-pack/1", "profiles": ["standard"], "runtime_version": "2.4.0"}
    assert shown["configured_by"] == "e2e-operator" and shown["seq"] >= 1

    shown_json = json.loads(ok(inst.run("channel", "show", "prod/ch-json", "--json")))
    assert [c["name"] for c in shown_json["config"]["cohorts"]] == ["internal", "rest"]
    assert shown_json["seq"] > shown["seq"]

    # a second `set` replaces the configuration (the newest channel.configured wins)
    changed = dict(CHANNEL_JSON, monitoring={"window_s": 5, "min_samples": 2})
    (inst.workdir / "beta2.json").write_text(json.dumps(changed))
    ok(inst.run("channel", "set", "prod/ch-json", "--file", "beta2.json"))
    again = json.loads(ok(inst.run("channel", "show", "prod/ch-json", "--json")))
    assert (again["config"]["monitoring"]["window_s"], again["config"]["monitoring"]["min_samples"]) == (5, 2)

    table = ok(inst.run("channel", "show", "prod/ch-toml"))  # for people: tables
    for needle in (
        "channel prod/ch-toml: configured",
        "by e2e-operator",
        "Cohorts (first match wins)",
        "eu-early",
        "[0, 500)",
        "internal -> eu-early -> rest",
        "threshold error_rate_max",
        "0.05",
        "compatibility runtime_version",
    ):
        assert needle in table, f"{needle!r} not in:\n{table}"


def test_channel_set_invalid_file_lists_every_problem(inst):
    bad = {
        "cohorts": [{"name": "bad name"}, {"name": "rest"}],
        "monitoring": {"window_s": 0, "min_samples": 1},
        "policy": {"max_pin_days": -1},
    }
    (inst.workdir / "bad.json").write_text(json.dumps(bad))
    result = inst.run("channel", "set", "prod/ch-bad", "--file", "bad.json")
    assert result.returncode != 0
    err = result.stdout + result.stderr
    assert "Traceback" not in err
    for where in ("cohorts.0.name", "monitoring.window_s", "policy.max_pin_days"):
        assert where in err, f"{where} not reported:\n{err}"

    semantic = {
        "cohorts": [{"name": "rest"}, {"name": "internal", "tenants": ["t1"]}],
        "plan": [["internal"], ["nope"]],
    }
    (inst.workdir / "semantic.json").write_text(json.dumps(semantic))
    result = inst.run("channel", "set", "prod/ch-bad", "--file", "semantic.json")
    assert result.returncode != 0
    err = result.stdout + result.stderr
    assert "Traceback" not in err
    for fragment in ("catch-all", "not last", "nope", "leaves out"):
        assert fragment in err, f"{fragment!r} not reported:\n{err}"

    (inst.workdir / "broken.toml").write_text("cohorts = [\n")
    assert_one_line_error(inst.run("channel", "set", "prod/ch-bad", "--file", "broken.toml"), "TOML")

    assert_one_line_error(inst.run("channel", "show", "prod/ch-bad"), "not configured")


def test_channel_set_refuses_a_promotion_that_would_not_watch_longer(inst):
    """The seed's minimum windows: canary short, stable longer. `kxr channel set` checks a configuration
    against the channels of its environment it promotes to and is promoted from, in either order."""

    def config(name: str, window_s: int, promote_to: str | None = None) -> str:
        doc = {**CHANNEL_JSON, "monitoring": {"window_s": window_s, "min_samples": 1}, "promote_to": promote_to}
        (inst.workdir / name).write_text(json.dumps(doc))
        return name

    ok(inst.run("channel", "set", "pw/stable", "--file", config("pw-stable.json", 300)))
    line = assert_one_line_error(
        inst.run("channel", "set", "pw/canary", "--file", config("pw-canary.json", 300, "stable")),
        "pw/canary not configured",
        "stable, which this channel promotes to, watches 300s",
    )
    assert "raise stable's window first" in line
    ok(inst.run("channel", "set", "pw/canary", "--file", config("pw-canary-ok.json", 60, "stable")))
    # now stable may not come down to the canary's window (nor below it)
    assert_one_line_error(
        inst.run("channel", "set", "pw/stable", "--file", config("pw-stable-short.json", 60)),
        "canary promotes to this channel and watches 60s; this channel must watch longer",
    )
    ok(inst.run("channel", "set", "pw/stable", "--file", config("pw-stable-longer.json", 61)))
    shown = json.loads(ok(inst.run("channel", "show", "pw/stable", "--json")))
    assert shown["config"]["monitoring"]["window_s"] == 61  # the refused ones were never written

    # a channel of the environment whose configuration does not decode: named, and the write goes on
    async def junk() -> None:
        nc = await nats.connect(inst.nats_url)
        await nc.jetstream().publish(f"{inst.prefix}.channel.pw.junk.configured", b"{not json")
        await nc.close()

    asyncio.run(junk())
    result = inst.run("channel", "set", "pw/stable", "--file", config("pw-stable-again.json", 62))
    ok(result)
    assert "warning: promotion windows not checked against pw/junk: its configuration (seq" in result.stderr


def test_channel_set_says_what_a_new_cohort_set_changes(inst):
    """A cohort added to a channel or taken out of it is written (an operator's call), and `kxr channel set`
    says what it changes for runtimes and releases, with the remedy for a new cohort (session 24: a cohort
    added to a channel that ran packs left every release over the channel refused, with a hint that could
    not work)."""

    def config(name: str, cohorts: list[dict]) -> str:
        doc = {**CHANNEL_JSON, "cohorts": cohorts, "plan": [[c["name"]] for c in cohorts]}
        (inst.workdir / name).write_text(json.dumps(doc))
        return name

    internal, rest = {"name": "internal", "tenants": ["t-int-1"]}, {"name": "rest"}
    first = inst.run("channel", "set", "cs/canary", "--file", config("cs-1.json", [internal, rest]))
    ok(first)
    assert "note:" not in first.stderr  # a first configuration changes no cohort set
    added = inst.run(
        "channel",
        "set",
        "cs/canary",
        "--file",
        config("cs-2.json", [internal, {"name": "eu", "regions": ["eu"]}, rest]),
    )
    ok(added)
    assert "note: cohort eu is new: its runtimes keep the pack they run until a release reaches it" in added.stderr
    assert "kxr release request ... --plan eu --rollback none" in added.stderr
    # the command the note names, as an operator fills in the rest: pre-flight prepares a plan of eu alone
    pack, manifest = sign(inst, "cs.pack", "1.0.0")
    command = added.stderr.split("kxr release request ... ", 1)[1].split(")", 1)[0].split()
    ok(
        inst.run(
            "release", "request", "cs-1", "--target", "cs/canary", "--manifest", manifest, "--pack", pack,
            "--owner", "kb-team", "--escalation", "pager:kb", "--window", "1", "--min-samples", "1",
            "--acknowledge-no-health", *command,
        )
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while "release.prepared" not in (types := [t["type"] for t in release_json(inst, "cs-1")["timeline"]]):
        assert "release.rejected" not in types and time.monotonic() < deadline, types
        time.sleep(0.2)
    assert release_json(inst, "cs-1")["plan"]["stages"] == [["eu"]]
    removed = inst.run("channel", "set", "cs/canary", "--file", config("cs-3.json", [rest]))
    ok(removed)
    notes = [line for line in removed.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 2, removed.stderr
    assert all("is taken out" in n and "holds (monitoring_inconclusive)" in n for n in notes)
    assert {"internal", "eu"} == {n.split()[2] for n in notes}
    shown = json.loads(ok(inst.run("channel", "show", "cs/canary", "--json")))
    assert [c["name"] for c in shown["config"]["cohorts"]] == ["rest"]  # each was written


# ---- releases and status ---------------------------------------------------------------------------


def release_json(kx: Kx, release_id: str) -> dict:
    return json.loads(ok(kx.run("release", "show", release_id, "--json")))


def test_release_request_show_timeline_and_status(inst):
    (inst.workdir / "rel.json").write_text(json.dumps(CHANNEL_JSON))
    ok(inst.run("channel", "set", "prod/ch-rel", "--file", "rel.json"))
    pack, manifest = sign(inst, "rel.pack", "2.0.0")
    out = ok(
        inst.run(
            "release",
            "request",
            "rel-1",
            "--target",
            "prod/ch-rel",
            "--manifest",
            manifest,
            "--pack",
            pack,
            "--owner",
            "kb-team",
            "--escalation",
            "pager:kb",
            "--window",
            "1",
            "--min-samples",
            "1",
            "--rollback",
            "none",
            "--acknowledge-no-health",
            "--reason",
            "e2e",
        )
    )
    assert "rel-1" in out

    # No runtime reports health: the first window ends inconclusive and the release holds.
    deadline = time.monotonic() + 20
    while True:
        record = release_json(inst, "rel-1")
        types = [t["type"] for t in record["timeline"]]
        if "release.monitoring_inconclusive" in types or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert types[:6] == [
        "release.requested",
        "release.prepared",
        "release.distributed",
        "release.verified",
        "release.activated",
        "release.monitoring_started",
    ], types
    assert "release.monitoring_inconclusive" in types, types
    assert "release.expanded" not in types and "release.closed" not in types, (
        "an inconclusive window must never promote"
    )
    seqs = [t["seq"] for t in record["timeline"]]
    assert seqs == sorted(seqs) and all(t["event_id"] and t["at"] for t in record["timeline"])
    assert record["pack"]["version"] == "2.0.0" and record["identity"]["owner"] == "kb-team"
    assert len(record["gates"]) >= 9 and all(g["ok"] for g in record["gates"]), record["gates"]
    assert not record["outcome"].get("outcome")

    human = ok(inst.run("release", "show", "rel-1"))
    assert "rel-1" in human or "requested" in human

    status = json.loads(ok(inst.run("status", "--json")))
    assert set(status) >= {"scopes", "releases", "log_seq"}
    rows = {r["scope"]: r for r in status["scopes"]}
    assert rows["prod/ch-rel/internal"]["version"] == "2.0.0" and rows["prod/ch-rel/internal"]["release"] == "rel-1"
    assert "prod/ch-rel/rest" not in rows or rows["prod/ch-rel/rest"]["version"] is None
    in_flight = {r["release_id"]: r for r in status["releases"]}
    assert in_flight["rel-1"]["outcome"] is None and in_flight["rel-1"]["stage"] == "1/2"

    again = inst.run(
        "release",
        "request",
        "rel-1",
        "--target",
        "prod/ch-rel",
        "--manifest",
        manifest,
        "--owner",
        "kb-team",
        "--escalation",
        "pager:kb",
        "--rollback",
        "none",
    )
    assert_one_line_error(again, "rel-1")


def test_status_json_parses_and_lists_scopes(inst):
    (inst.workdir / "st.json").write_text(json.dumps(dict(CHANNEL_JSON, plan=[["internal", "rest"]])))
    ok(inst.run("channel", "set", "prod/ch-status", "--file", "st.json"))
    pack, manifest = sign(inst, "st.pack", "3.0.0")
    ok(
        inst.run(
            "release",
            "request",
            "st-1",
            "--target",
            "prod/ch-status",
            "--manifest",
            manifest,
            "--pack",
            pack,
            "--owner",
            "kb-team",
            "--escalation",
            "pager:kb",
            "--rollback",
            "none",
            "--acknowledge-no-health",
        )
    )
    deadline = time.monotonic() + 15
    while True:
        status = json.loads(ok(inst.run("status", "--json", "--all")))
        rows = {r["scope"]: r for r in status["scopes"]}
        if {"prod/ch-status/internal", "prod/ch-status/rest"} <= set(rows) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    for cohort in ("internal", "rest"):
        row = rows[f"prod/ch-status/{cohort}"]
        assert (row["version"], row["release"], row["kind"]) == ("3.0.0", "st-1", "rollout"), row
        assert row["digest"].startswith("sha256:") and row["since"]
    assert isinstance(status["log_seq"], int) and status["log_seq"] > 0
    assert any(r["release_id"] == "st-1" for r in status["releases"])
    assert ok(inst.run("status")).strip()  # the human view renders too


# ---- hostile input and missing configuration ----------------------------------------------------------


HOSTILE = [
    (["release", "show", "a.b"], "a.b"),
    (["release", "show", "a*"], "a*"),
    (["channel", "show", "prod/can ary"], "can ary"),
    (["channel", "show", "prod/canary/extra"], "ENV/CHANNEL"),
    (["channel", "set", "pr.od/canary", "--file", "cfg.json"], "pr.od"),
    (
        [
            "release",
            "request",
            "r 1",
            "--target",
            "prod/canary",
            "--manifest",
            "m.json",
            "--owner",
            "o",
            "--escalation",
            "e",
        ],
        "r 1",
    ),
]


@pytest.mark.parametrize("args, named", HOSTILE, ids=[" ".join(a[:3]) for a, _ in HOSTILE])
def test_hostile_tokens_are_refused_before_nats_with_one_line(kx, args, named):
    (kx.workdir / "cfg.json").write_text(json.dumps(CHANNEL_JSON))
    (kx.workdir / "m.json").write_text(
        json.dumps({"signed": {"name": "kb", "version": "1.0.0", "digest": "sha256:" + "0" * 64}})
    )
    # Nothing listens there: an error about the token proves it never tried to reach NATS.
    env = kx.env(KX_NATS_URL=f"nats://127.0.0.1:{free_port()}")
    line = assert_one_line_error(kx.run(*args, env=env, timeout=20), named)
    assert "cannot reach" not in line


def test_hostile_prefix_is_refused(kx):
    assert_one_line_error(kx.run("status", env=kx.env(KX_PREFIX="kx.>")), "kx.>")


@pytest.mark.parametrize(
    "args", [["status"], ["release", "show", "r1"], ["channel", "show", "prod/canary"]], ids=lambda a: a[0]
)
def test_no_nats_url_is_a_one_line_error(kx, args):
    assert_one_line_error(kx.run(*args, env=kx.env(KX_NATS_URL=None)), "KX_NATS_URL")


def test_unreachable_nats_is_a_one_line_error(kx):
    result = kx.run("status", env=kx.env(KX_NATS_URL=f"nats://127.0.0.1:{free_port()}"), timeout=20)
    assert_one_line_error(result, "cannot reach NATS")


@pytest.mark.parametrize(
    "args", [["status", "--json"], ["channel", "set", "prod/canary", "--file", "cfg.json"]], ids=lambda a: a[0]
)
def test_commands_before_any_serve_end_with_one_line(kx, args):
    """A fresh prefix: `kxr serve` never created the log. The command says so, and ends."""
    (kx.workdir / "cfg.json").write_text(json.dumps(CHANNEL_JSON))
    try:
        result = kx.run(*args, timeout=6)
    except subprocess.TimeoutExpired:
        pytest.fail(f"kxr {' '.join(args)} on a prefix without a log did not end within 6 s")
    if args[0] == "status" and result.returncode == 0:  # an empty view is an acceptable answer too
        doc = json.loads(result.stdout)
        assert doc["scopes"] == [] and doc["releases"] == []
        return
    assert_one_line_error(result)


def test_usage_errors_are_one_line(kx):
    assert_one_line_error(kx.run("release", "show", env=offline_env()))
    assert_one_line_error(kx.run("pack", "verify", "no-such.pack", "no-such.json", env=offline_env()), "no-such.pack")
