"""`kxr release list` (history with filters) and `kxr watch --wait`, against `kxr serve`."""

from __future__ import annotations

import asyncio
import json
import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from tests.e2e.support import assert_one_line_error, describe_release, wait_closed, wait_event
from tests.e2e.test_serve import rig, start_world  # noqa: F401  (rig is a fixture)
from tests.harness import Behaviour, make_pack

pytestmark = pytest.mark.e2e


async def listed(kx, *args: str) -> list[dict]:
    result = await kx.arun("release", "list", "--json", *args)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    if "--fold" not in args:  # the read models answer as a fold of the log does (say which, when not)
        folded = json.loads((await kx.arun("release", "list", "--json", "--fold", *args)).stdout)
        assert rows == folded, f"read models (stderr {result.stderr!r}):\n{rows}\nfold:\n{folded}"
    return rows


async def listed_ids(kx, *args: str) -> list[str]:
    return [r["release_id"] for r in await listed(kx, *args)]


async def test_release_list_shows_history_newest_first_with_filters_and_json(kx, rig):  # noqa: F811
    bad = make_pack("1.1.0", kx.key)
    await start_world(kx, rig, {bad.digest: Behaviour(error_rate=0.5)})
    started = datetime.now(UTC)

    # r0: a channel nothing configured: rejected at pre-flight
    await rig.request("r0", make_pack("0.9.0", kx.key), channel="stable", rollback={"strategy": "none"})
    assert (await wait_closed(rig.js, kx, "r0"))["data"]["outcome"] == "rejected"
    # r1: success; r2: a regression, rolled back; r3: more samples than a window holds, held (in flight)
    good = make_pack("1.0.0", kx.key)
    await rig.request("r1", good, rollback={"strategy": "none"})
    assert (await wait_closed(rig.js, kx, "r1"))["data"]["outcome"] == "success", await describe_release(
        rig.js, kx, "r1"
    )
    await rig.request("r2", bad)
    assert (await wait_closed(rig.js, kx, "r2", timeout=60))["data"]["outcome"] == "rolled_back"
    await rig.request("r3", make_pack("1.2.0", kx.key), monitoring={"window_s": 1, "min_samples": 100000})
    await wait_event(rig.js, kx, "r3", "monitoring_inconclusive")

    everything = await listed(kx)
    assert [r["release_id"] for r in everything] == ["r3", "r2", "r1", "r0"]
    r1 = everything[2]
    assert r1["pack"] == {"name": good.name, "version": "1.0.0", "digest": good.digest}
    assert r1["pack"]["digest"].startswith("sha256:")
    assert (r1["target"], r1["owner"], r1["phase"], r1["outcome"]) == ("prod/canary", "kb-team", "closed", "success")
    assert r1["stages"] == {"passed": 2, "total": 2}
    assert (r1["promoted_to"], r1["promoted_from"]) == (None, None)
    requested_at = datetime.fromisoformat(r1["requested_at"].replace("Z", "+00:00"))
    closed_at = datetime.fromisoformat(r1["closed_at"].replace("Z", "+00:00"))
    assert started - timedelta(seconds=5) <= requested_at <= closed_at <= datetime.now(UTC) + timedelta(seconds=5)
    r3 = everything[0]
    assert (r3["outcome"], r3["closed_at"], r3["phase"]) == (None, None, "held")
    print("R2EVENTS", await describe_release(rig.js, kx, "r2"))
    assert everything[1]["outcome"] == "rolled_back" and everything[1]["why"]
    assert everything[3]["target"] == "prod/stable" and everything[3]["outcome"] == "rejected"

    assert await listed_ids(kx, "--outcome", "success") == ["r1"]
    assert await listed_ids(kx, "--outcome", "rolled_back") == ["r2"]
    assert await listed_ids(kx, "--outcome", "in-flight") == ["r3"]
    assert await listed_ids(kx, "--outcome", "aborted") == []
    assert await listed_ids(kx, "--channel", "prod/stable") == ["r0"]
    assert await listed_ids(kx, "--channel", "prod/canary", "--limit", "2") == ["r3", "r2"]
    assert await listed_ids(kx, "--since", "1h") == ["r3", "r2", "r1", "r0"]
    later = (datetime.now(UTC) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert await listed_ids(kx, "--since", later) == ["r3"]  # only what is still open then

    table = await kx.arun("release", "list", env=kx.env(COLUMNS="160"))  # (how 80 columns look: views.table's)
    assert table.returncode == 0, table.stderr
    for needle in ("r0", "r1", "r2", "r3", "success", "rolled_back", "rejected", "(held)", "2/2", "kb@1.0.0"):
        assert needle in table.stdout, f"{needle!r} not in:\n{table.stdout}"

    for args, why in [
        (("--outcome", "sucess"), "expected one of"),
        (("--since", "yesterday"), "RFC 3339"),
        (("--since", "2030-01-01T00:00:00"), "timezone"),
        (("--channel", "prod/canary/rest"), "ENV/CHANNEL"),
        (("--limit", "0"), "--limit"),
    ]:
        result = await kx.arun("release", "list", *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert_one_line_error(result, why)

    # the held release ends by an operator's abort: its outcome moves in the list
    assert kx.run("release", "abort", "r3", "-m", "stop").returncode == 0
    assert (await wait_closed(rig.js, kx, "r3", timeout=60))["data"]["outcome"] == "aborted"
    assert await listed_ids(kx, "--outcome", "aborted") == ["r3"]
    assert await listed_ids(kx, "--outcome", "in-flight") == []


async def test_watch_wait_started_before_the_request_follows_it_to_the_end(kx, rig):  # noqa: F811
    await start_world(kx, rig)
    proc = subprocess.Popen(
        [kx.binary, "watch", "r1", "--wait", "--json", "--interval", "0.2", "--timeout", "60"],
        env=kx.env(),
        cwd=kx.workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        waiting = await asyncio.to_thread(proc.stderr.readline)  # it is in the log, waiting
        assert "waiting for release r1 to be requested" in waiting, waiting
        assert proc.poll() is None
        await rig.request("r1", make_pack("1.0.0", kx.key), rollback={"strategy": "none"})
        out, err = await asyncio.to_thread(proc.communicate, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out + err
    assert "Traceback" not in err
    views = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert views[0]["release_id"] == "r1" and views[-1]["terminal"] and views[-1]["outcome"] == "success"

    # never requested: --timeout ends the wait with 4; without --wait it is still exit 2 at once
    never = await kx.arun("watch", "nope", "--wait", "--timeout", "1", "--json", timeout=30)
    assert never.returncode == 4 and never.stdout == "", never.stdout + never.stderr
    assert "waiting for release nope" in never.stderr and "Traceback" not in never.stderr
    assert_one_line_error(await kx.arun("watch", "nope"), "no release nope in the log")
