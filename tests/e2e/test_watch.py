"""`kxr watch` as a person or a pipeline runs it, against `kxr serve` (no terminal: lines, then the final frame)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess

import pytest

from tests.e2e.support import assert_one_line_error, describe_release, wait_closed, wait_event
from tests.e2e.test_serve import CHANNEL_PLAN, rig, start_world  # noqa: F401  (rig is a fixture)
from tests.harness import Behaviour, make_pack

pytestmark = pytest.mark.e2e


def json_lines(stdout: str) -> list[dict]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines, "no output"
    return [json.loads(line) for line in lines]


async def test_watch_a_release_to_success_then_as_json_and_an_unknown_one(kx, rig):  # noqa: F811
    await start_world(kx, rig)
    await rig.request("r1", make_pack("1.0.0", kx.key), rollback={"strategy": "none"}, plan=CHANNEL_PLAN)
    # started while the release runs: the watch follows it to its end, whatever it has already missed
    live_json, text = await asyncio.gather(
        kx.arun("watch", "r1", "--json", "--interval", "0.2", timeout=60),
        kx.arun("watch", "r1", "--interval", "0.2", timeout=60),
    )
    assert (live_json.returncode, text.returncode) == (0, 0), live_json.stderr + text.stderr
    assert "Traceback" not in live_json.stderr + text.stderr
    views = json_lines(live_json.stdout)  # every line parses
    final = views[-1]
    assert final["schema"] == "kxr.release-view/2" and final["terminal"] and final["outcome"] == "success"
    assert [v["terminal"] for v in views].count(True) == 1
    assert [(s["stage"], s["state"]) for s in final["stages"]] == [
        (1, "passed"),
        (2, "passed"),
    ]  # the channel plan (a request may not merge its stages)
    assert final["gates"] and all(g["ok"] for g in final["gates"])
    window = final["window"]
    assert window["source"] == "verdict" and window["result"] == "passed"
    # activations are compared as `activation_refusals` (a refusal always fails, issue 13); the
    # success rate is compared only when a channel sets activation_success_min
    assert {f["metric"] for f in window["figures"]} >= {"error_rate", "latency_p95_ms", "activation_refusals"}
    # text: a line per change, then the final frame with stages, gates, the window's figures and thresholds
    out = text.stdout
    assert "release r1: kb@1.0.0 -> prod/canary — success" in out
    for needle in (
        "Stages",
        "passed",
        "gates: trust_root pass",
        "Window figures against thresholds",
        "error_rate",
        "<= 0.05",
        "latency_p95_ms",
        "<= 250",
        "Scopes",
        "prod/canary/internal",
        "Last events",
        "closed",
        "outcome success",
    ):
        assert needle in out, f"{needle!r} not in the output:\n{out}"

    again = json_lines((await kx.arun("watch", "r1", "--json")).stdout)
    assert len(again) == 1 and again[0]["outcome"] == "success"  # an ended release: its final view, at once

    assert_one_line_error(await kx.arun("watch", "nope"), "no release nope in the log")
    assert (await kx.arun("watch", "nope")).returncode == 2


async def test_watch_exit_status_for_a_rollback_a_held_release_a_timeout_and_ctrl_c(kx, rig):  # noqa: F811
    bad = make_pack("1.1.0", kx.key)
    await start_world(kx, rig, {bad.digest: Behaviour(error_rate=0.5)})
    await rig.request("r1", make_pack("1.0.0", kx.key), rollback={"strategy": "none"}, plan=CHANNEL_PLAN)
    assert (await wait_closed(rig.js, kx, "r1"))["data"]["outcome"] == "success"

    await rig.request("r2", bad)
    regression = await kx.arun("watch", "r2", "--interval", "0.2", timeout=60)
    assert regression.returncode == 1, regression.stdout + regression.stderr + await describe_release(rig.js, kx, "r2")
    out = regression.stdout
    # failed early (a hard breach) or at the window's end (a comparison): either way the figure and its threshold show
    assert "— rolled_back" in out and "1:rolled_back" in out and "why: monitoring_failed" in out, out
    assert ("error rate 0.500 over twice the threshold 0.05" in out) or ("error_rate 0.5 <= 0.05 BREACH" in out), out

    # more samples than one window can hold: inconclusive, the release holds for an operator
    await rig.request("r3", make_pack("1.2.0", kx.key), monitoring={"window_s": 1, "min_samples": 100000})
    held = await kx.arun("watch", "r3", "--until-held", "--json", "--interval", "0.2", timeout=60)
    assert held.returncode == 3, held.stdout + held.stderr
    last = json_lines(held.stdout)[-1]
    assert last["held"] and last["waiting"] and last["window"]["result"] == "inconclusive"

    assert (await kx.arun("watch", "r3", "--timeout", "0.5", "--json")).returncode == 4

    proc = subprocess.Popen(
        [kx.binary, "watch", "r3", "--json"],
        env=kx.env(),
        cwd=kx.workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = await asyncio.to_thread(proc.stdout.readline)  # it is watching
        assert json.loads(first)["release_id"] == "r3"
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.to_thread(proc.communicate, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in out + err and err.strip() == ""
    await wait_event(rig.js, kx, "r3", "monitoring_inconclusive")
