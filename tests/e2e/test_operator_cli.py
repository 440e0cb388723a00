"""The operator's and auditor's commands against `kxr serve`, as a person would type them."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from tests.e2e.support import assert_one_line_error, wait_closed, wait_event
from tests.e2e.test_serve import CHANNEL_PLAN, rig, start_world  # noqa: F401  (rig is a fixture)
from tests.harness import make_pack

pytestmark = pytest.mark.e2e


def ok(result) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


async def test_operator_and_auditor_commands_end_to_end(kx, rig):  # noqa: F811
    await start_world(kx, rig)
    await rig.request("r1", make_pack("1.0.0", kx.key), rollback={"strategy": "none"}, plan=CHANNEL_PLAN)
    assert (await wait_closed(rig.js, kx, "r1"))["data"]["outcome"] == "success"

    await rig.request("r2", make_pack("1.1.0", kx.key), monitoring={"window_s": 30, "min_samples": 1})
    await wait_event(rig.js, kx, "r2", "monitoring_started")
    ok(await kx.arun("release", "pause", "r2", "-m", "looking at a graph"))
    ok(await kx.arun("release", "resume", "r2", "-m", "graph explained"))
    ok(await kx.arun("release", "annotate", "r2", "--incident", "https://status.example/inc/7"))
    ok(await kx.arun("release", "abort", "r2", "-m", "wrong week"))
    assert (await wait_closed(rig.js, kx, "r2"))["data"]["outcome"] == "aborted"
    assert_one_line_error(await kx.arun("release", "pause", "r2", "-m", "too late"), "closed")

    ok(await kx.arun("pin", "prod/canary/internal", "--version", "1.0.0", "--until", "2h", "-m", "audit baseline"))
    status = json.loads(ok(await kx.arun("status", "--json")))
    assert any(row["scope"] == "prod/canary/internal" for row in status["scopes"])
    ok(await kx.arun("unpin", "prod/canary/internal", "-m", "audit done"))
    assert_one_line_error(
        await kx.arun("pin", "prod/canary/internal", "--version", "9.9.9", "--until", "2h", "-m", "x"), "9.9.9"
    )
    assert_one_line_error(
        await kx.arun("pin", "prod/canary/internal", "--version", "1.0.0", "--until", "90d", "-m", "x"), "max_pin_days"
    )

    keys = kx.workdir / "kx-data" / "service-keys.json"
    replay = json.loads(ok(await kx.arun("audit", "replay", "--json", "--service-keys", str(keys))))
    assert replay["violations"] == [] and replay["releases"] == {"aborted": 1, "success": 1}
    shown = ok(await kx.arun("release", "show", "r1"))
    assert "Monitoring windows" in shown and "error_rate" in shown and "passed" in shown
    page = kx.workdir / "r2.html"
    ok(await kx.arun("audit", "release", "r2", "--html", str(page)))
    assert "https://status.example/inc/7" in page.read_text()
    at = json.loads(ok(await kx.arun("audit", "at", datetime.now(UTC).isoformat(), "--scope", "prod/canary", "--json")))
    assert {r["scope"]: r["version"] for r in at["scopes"]} == {
        "prod/canary/internal": "1.0.0",
        "prod/canary/rest": "1.0.0",
    }

    ok(await kx.arun("keys", "generate", "auditor.key.json", "--name", "auditor", "--trust-root", "auditors.json"))
    ok(await kx.arun("audit", "export", "r2", "--key", "auditor.key.json", "--out", "r2.bundle.json"))
    assert "valid: release r2" in ok(await kx.arun("audit", "verify", "r2.bundle.json", "--trusted", "auditors.json"))
    verified = json.loads(
        ok(await kx.arun("audit", "verify", "r2.bundle.json", "--trusted", "auditors.json", "--json"))
    )
    assert (verified["valid"], verified["release_id"], verified["outcome"]) == (True, "r2", "aborted")
    bundle = json.loads((kx.workdir / "r2.bundle.json").read_text())
    bundle["signatures"] = []
    (kx.workdir / "forged.json").write_text(json.dumps(bundle))
    assert_one_line_error(await kx.arun("audit", "verify", "forged.json", "--trusted", "auditors.json"), "0 of 1")
    assert json.loads(ok(await kx.arun("trust", "show", "--json")))["version"] == 1


async def test_deadletter_commands_list_and_show_poison(kx, rig):  # noqa: F811
    await start_world(kx, rig)
    await rig.js.publish(rig.subjects.release("x1", "verified"), b"{ not json")

    async def listed():
        result = await kx.arun("deadletter", "list", "--json")
        rows = json.loads(ok(result))
        return rows if any(r["subject"] == rig.subjects.release("x1", "verified") for r in rows) else None

    from tests.e2e.support import wait_until

    rows = await wait_until(listed, 15, "the poison message to be dead-lettered")
    row = next(r for r in rows if r["subject"] == rig.subjects.release("x1", "verified"))
    assert "malformed JSON" in row["reason"]
    shown = json.loads(ok(await kx.arun("deadletter", "show", str(row["id"]), "--json")))
    assert shown["data_text"] == "{ not json"
    table = ok(await kx.arun("deadletter", "show", str(row["id"])))
    assert f"Dead letter {row['id']}" in table and "{ not json" in table and "malformed JSON" in table
    assert_one_line_error(await kx.arun("deadletter", "show", "999999"), "no dead letter")


def test_the_readme_demo_runs_to_its_expected_outcomes(tmp_path):
    """The README's first command ends in `kxr demo`: it must keep telling the whole story."""
    import subprocess

    from tests.e2e.support import base_env, kxr_binary

    result = subprocess.run(
        [kxr_binary(), "demo", "--window", "1"],
        env={**base_env(), "COLUMNS": "150"},
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    for line in ("demo-healthy", "verification_failed", "rolled_back", "demo finished as expected"):
        assert line in result.stdout
