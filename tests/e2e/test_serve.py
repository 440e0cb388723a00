"""`kxr serve` as a subprocess: the release spine, crash recovery, signals, bad configuration.

The service runs out of process; runtimes are simulated in-process (real RuntimeClients
on plain nats-py); state is read back from the log itself.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest

from events.channel import ChannelConfig
from events.subjects import Subjects
from services.actions.producer import configure_channel, push_pack, request_release
from services.jetstream.embedded import free_port
from services.jetstream.log import EventLog
from services.jetstream.log_reads import load_world
from services.runtime.sdk import Identity, RuntimeClient
from services.runtime.simulation import simulated_runtime
from services.tasks import cancel_and_wait
from tests.harness import CHANNEL, OPERATOR, PRODUCER, Behaviour, make_pack, request_data, trust_root_for

from .support import (
    Kx,
    activations_per_cohort,
    assert_one_line_error,
    count_types,
    describe_release,
    duplicate_event_ids,
    last_event,
    last_msg,
    read_log,
    stderr_lines,
    wait_closed,
    wait_event,
    wait_until,
)

pytestmark = pytest.mark.e2e

COHORTS = ("internal", "rest")
# baselines: the channel's own plan (issue 13: a request may no longer merge its two stages into one)
CHANNEL_PLAN = None


class Rig:
    """The in-process side of a test: producer/operator writes and simulated runtimes."""

    def __init__(self, kx: Kx, nc) -> None:
        self.kx = kx
        self.nc = nc
        self.js = nc.jetstream(timeout=10)
        self.subjects = Subjects(kx.prefix)
        self.log = EventLog(nc, self.js, self.subjects)
        self.trust_root = trust_root_for(kx.key)
        self.runtimes: list[RuntimeClient] = []
        self.tasks: list[asyncio.Task] = []

    async def configure(self, config: dict | None = None, env: str = "prod", channel: str = "canary") -> None:
        await configure_channel(
            self.log, self.js, env, channel, ChannelConfig.model_validate(config or CHANNEL), OPERATOR
        )

    async def runtime(self, tenant: str, behaviours: dict[str, Behaviour] | None = None) -> RuntimeClient:
        rt = simulated_runtime(
            self.nc,
            Identity("prod", "canary", tenant, f"rt-{tenant}"),
            self.trust_root,
            behaviours or {},
            prefix=self.kx.prefix,
            interval=0.1,
            seed=len(self.runtimes),
        )
        await rt.resolve_cohort()
        self.runtimes.append(rt)
        self.tasks.append(asyncio.create_task(rt.run()))
        return rt

    async def request(self, release_id: str, pack, push: bool = True, **extra) -> None:
        if push:
            await push_pack(self.js, self.subjects, pack.body, pack.manifest, pack.digest)
        await request_release(self.log, release_id, request_data(pack, **extra), PRODUCER)

    def pointer_subject(self, cohort: str) -> str:
        return self.subjects.scope("prod", "canary", cohort, "activated")

    async def pointer(self, cohort: str):
        """The newest message on the scope's activated subject (the active-pack pointer), or None."""
        return await last_msg(self.js, self.subjects.releases_stream, self.pointer_subject(cohort))

    async def stop(self) -> None:
        await cancel_and_wait(self.tasks)


@pytest.fixture
async def rig(kx, nc):
    r = Rig(kx, nc)
    try:
        yield r
    finally:
        await r.stop()


async def start_world(kx: Kx, rig: Rig, behaviours: dict | None = None):
    """One `kxr serve`, the channel configured, a runtime in each cohort."""
    serve = kx.serve()
    await serve.ready()
    await rig.configure()
    internal = await rig.runtime("t-int-1", behaviours)
    rest = await rig.runtime("tenant-42")
    assert (internal.cohort, rest.cohort) == COHORTS
    return serve, internal, rest


def on(rt: RuntimeClient, digest: str) -> bool:
    return rt.active is not None and rt.active.digest == digest


async def assert_pointer(rig: Rig, cohort: str, digest: str, release_id: str, kind: str) -> None:
    msg = await rig.pointer(cohort)
    assert msg is not None, f"no scope.activated for {cohort}"
    data = json.loads(msg.data)["data"]
    assert (data["pack"]["digest"], data["release_id"], data["kind"]) == (digest, release_id, kind), data


def assert_alive(*serves) -> None:
    for s in serves:
        assert s.proc.poll() is None, f"kxr serve ({s.name}) died with {s.proc.returncode}:\n{s.stderr()}"
        assert "Traceback" not in s.stderr(), s.stderr()


# ---- a. healthy -----------------------------------------------------------------------------------


async def test_healthy_release_closes_success_and_pointer_holds_new_pack(kx, rig):
    serve, internal, rest = await start_world(kx, rig)
    pack = make_pack("1.0.0", kx.key)
    await rig.request("r1", pack, rollback={"strategy": "none"})

    closed = await wait_closed(rig.js, kx, "r1")
    assert closed["data"]["outcome"] == "success", await describe_release(rig.js, kx, "r1")
    for cohort in COHORTS:
        await assert_pointer(rig, cohort, pack.digest, "r1", "rollout")
    await wait_until(
        lambda: on(internal, pack.digest) and on(rest, pack.digest),
        5,
        "runtimes to end on the new pack",
        lambda: [(rt.cohort, rt.history) for rt in rig.runtimes],
    )

    world = await load_world(rig.js, rig.subjects)
    release = world.release("r1")
    assert release.activated == COHORTS and release.outcome == "success"
    for cohort in COHORTS:
        assert world.scope("prod", "canary", cohort).lkg.digest == pack.digest

    status = await kx.arun("status", "--json", "--all")
    assert status.returncode == 0, status.stderr
    rows = {row["scope"]: row for row in json.loads(status.stdout)["scopes"]}
    for cohort in COHORTS:
        row = rows[f"prod/canary/{cohort}"]
        assert (row["version"], row["digest"], row["release"], row["lkg"]["version"]) == (
            "1.0.0",
            pack.digest,
            "r1",
            "1.0.0",
        ), row
    assert_alive(serve)


# ---- b. tampered bytes ------------------------------------------------------------------------------


async def test_tampered_bytes_never_activate(kx, rig):
    serve, internal, rest = await start_world(kx, rig)
    good = make_pack("1.0.0", kx.key)
    await rig.request("r1", good, plan=CHANNEL_PLAN, rollback={"strategy": "none"})
    assert (await wait_closed(rig.js, kx, "r1"))["data"]["outcome"] == "success"
    before = {c: (await rig.pointer(c)).seq for c in COHORTS}

    bad = make_pack("1.1.0", kx.key)
    await push_pack(
        rig.js, rig.subjects, bad.body[:-1] + b"!", bad.manifest, bad.digest
    )  # bytes differ from the signed digest
    await rig.request("r2", bad, push=False)

    closed = await wait_closed(rig.js, kx, "r2")
    events = await read_log(rig.js, kx.stream, [f"{kx.prefix}.release.r2.*"])
    types = [body["type"] for _, _, body, _ in events]
    assert closed["data"]["outcome"] == "failed", types
    failed = [body["data"] for _, _, body, _ in events if body["type"] == "release.verification_failed"]
    assert failed and failed[0]["code"] == "digest_mismatch", failed
    assert "release.activated" not in types
    for cohort in COHORTS:
        msg = await rig.pointer(cohort)
        assert msg.seq == before[cohort], f"{cohort} pointer moved"
        assert json.loads(msg.data)["data"]["pack"]["digest"] == good.digest
    for rt in (internal, rest):
        assert bad.digest not in [d for d, _ in rt.history], rt.history
        assert on(rt, good.digest)
    entries = await read_log(rig.js, kx.stream)
    assert not activations_per_cohort(entries, "r2")
    assert_alive(serve)


# ---- c. failing window -> rollback to last-known-good ------------------------------------------------


async def test_failing_window_rolls_back_to_last_known_good(kx, rig):
    good = make_pack("1.0.0", kx.key)
    bad = make_pack("1.1.0", kx.key)
    serve, internal, rest = await start_world(kx, rig, {bad.digest: Behaviour(error_rate=0.5)})
    await rig.request("r1", good, plan=CHANNEL_PLAN, rollback={"strategy": "none"})
    assert (await wait_closed(rig.js, kx, "r1"))["data"]["outcome"] == "success"

    await rig.request("r2", bad)
    closed = await wait_closed(rig.js, kx, "r2")
    assert closed["data"]["outcome"] == "rolled_back", await describe_release(rig.js, kx, "r2")
    started = await last_event(rig.js, kx.stream, f"{kx.prefix}.release.r2.rollback_started")
    assert started["data"]["trigger"] == "monitoring_failure"
    assert started["data"]["targets"]["internal"]["digest"] == good.digest

    await assert_pointer(rig, "internal", good.digest, "r2", "rollback")
    await assert_pointer(rig, "rest", good.digest, "r1", "rollout")  # the second stage was never exposed
    await wait_until(
        lambda: on(internal, good.digest), 5, "the internal runtime back on last-known-good", lambda: internal.history
    )
    assert (bad.digest, "activated") in internal.history  # it did run the bad pack, then went back
    assert bad.digest not in [d for d, _ in rest.history]
    assert_alive(serve)


# ---- d. SIGKILL mid-release, restart -------------------------------------------------------------------


@pytest.mark.parametrize("kill_after", ["activated", "monitoring_started"])
async def test_sigkill_mid_release_then_restart_finishes_from_the_log(kx, rig, kill_after):
    first, internal, rest = await start_world(kx, rig)
    pack = make_pack("1.0.0", kx.key)
    await rig.request("r1", pack, rollback={"strategy": "none"}, monitoring={"window_s": 3, "min_samples": 1})

    trigger = await wait_event(rig.js, kx, "r1", kill_after, interval=0.01)
    first.kill()  # SIGKILL: no shutdown code runs
    at_kill = count_types(await read_log(rig.js, kx.stream), "r1")
    assert (
        at_kill["release.activated"] == 1
        and at_kill["release.monitoring_passed"] == 0
        and at_kill["release.closed"] == 0
    ), at_kill

    if kill_after == "monitoring_started":
        # Leave the service down until the window's end has passed: the timer must not be lost.
        ends_at = datetime.fromisoformat(trigger["data"]["ends_at"].replace("Z", "+00:00"))
        await wait_until(lambda: datetime.now(UTC) > ends_at + timedelta(milliseconds=300), 10, "the window to end")

    second = kx.serve()
    await second.ready()
    # What is left is at most two 3 s windows: 12 s is generous (waiting for a 30 s ack_wait redelivery is not).
    closed = await wait_closed(rig.js, kx, "r1", timeout=12)
    assert closed["data"]["outcome"] == "success", await describe_release(rig.js, kx, "r1")

    entries = await read_log(rig.js, kx.stream)
    assert duplicate_event_ids(entries) == {}
    assert activations_per_cohort(entries, "r1") == {"internal": 1, "rest": 1}
    counts = count_types(entries, "r1")
    for event_type, n in {
        "release.requested": 1,
        "release.prepared": 1,
        "release.distributed": 1,
        "release.verified": 1,
        "release.activated": 2,
        "release.monitoring_started": 2,
        "release.monitoring_passed": 2,
        "release.expanded": 1,
        "release.closed": 1,
    }.items():
        assert counts[event_type] == n, (event_type, counts)
    await wait_until(
        lambda: on(internal, pack.digest) and on(rest, pack.digest),
        5,
        "runtimes to end on the pack",
        lambda: [rt.history for rt in rig.runtimes],
    )
    assert_alive(second)


async def freeze_with_open_pull(rig: Rig, kx: Kx, serve, role: str, attempts: int = 200) -> None:
    """SIGSTOP `serve` at a moment its `role` consumer has a pull request open at the server.

    Whatever the server then delivers to it stays delivered-but-unacknowledged, exactly
    as with an instance that crashed while holding messages.
    """
    for _ in range(attempts):
        serve.signal(signal.SIGSTOP)
        for info in await rig.js.consumers_info(kx.stream):
            if role in info.name and (info.num_waiting or 0) > 0:
                return
        serve.signal(signal.SIGCONT)
        await asyncio.sleep(0.01)
    pytest.fail(f"could not freeze the {role} instance with an open pull request")


async def test_monitor_killed_while_holding_an_event_does_not_stall_the_release(kx, rig):
    """Deterministic variant of (d): the monitor instance dies with `release.activated` delivered but not acknowledged.

    The monitor runs in its own `kxr serve --only monitor`; it is frozen (SIGSTOP) with a pull
    request open, so the server hands it the activation, then it is SIGKILLed and replaced.
    Catching that moment depends on the host's timing, so up to three releases are tried.
    """
    main = kx.serve("--only", "preparer,distributor,verifier,activator,promoter")
    monitor = kx.serve("--only", "monitor")
    await main.ready()
    await monitor.ready()
    await rig.configure()
    internal = await rig.runtime("t-int-1")
    rest = await rig.runtime("tenant-42")

    async def held_by_frozen_monitor(activated_seq: int):
        for info in await rig.js.consumers_info(kx.stream):
            if "monitor" in info.name and info.delivered.stream_seq >= activated_seq > info.ack_floor.stream_seq:
                return info

    for attempt, version in enumerate(("1.0.0", "1.1.0", "1.2.0")):
        release_id = f"r{attempt + 1}"
        pack = make_pack(version, kx.key)
        extra = {"rollback": {"strategy": "none"}} if attempt == 0 else {}
        await rig.request(release_id, pack, monitoring={"window_s": 2, "min_samples": 1}, **extra)
        await wait_event(rig.js, kx, release_id, "verified", interval=0.005)
        await freeze_with_open_pull(rig, kx, monitor, "monitor")
        await wait_event(rig.js, kx, release_id, "activated", interval=0.01)
        activated_seq = (await last_msg(rig.js, kx.stream, f"{kx.prefix}.release.{release_id}.activated")).seq
        try:
            await wait_until(
                lambda seq=activated_seq: held_by_frozen_monitor(seq),
                2,
                "the frozen monitor to hold release.activated",
                interval=0.02,
            )
            break
        except AssertionError:  # the moment was missed: let this release finish and try again
            monitor.signal(signal.SIGCONT)
            assert (await wait_closed(rig.js, kx, release_id))["data"]["outcome"] == "success"
    else:
        pytest.skip("could not catch the monitor holding an unacknowledged event in three attempts")

    monitor.kill()
    restarted = kx.serve("--only", "monitor")
    await restarted.ready()

    # What is left is two 2 s windows; the restarted monitor has the whole log.
    closed = await wait_closed(rig.js, kx, release_id, timeout=10)
    assert closed["data"]["outcome"] == "success", await describe_release(rig.js, kx, release_id)
    entries = await read_log(rig.js, kx.stream)
    assert duplicate_event_ids(entries) == {}
    assert activations_per_cohort(entries, release_id) == {"internal": 1, "rest": 1}
    await wait_until(lambda: on(internal, pack.digest) and on(rest, pack.digest), 5, "runtimes to end on the pack")
    assert_alive(main, restarted)


# ---- f. two instances at once -------------------------------------------------------------------------


async def test_two_serve_processes_activate_each_cohort_once(kx, rig):
    a, b = kx.serve(), kx.serve()  # started together: both create the layout at the same time
    await a.ready()
    await b.ready()
    await rig.configure()
    internal = await rig.runtime("t-int-1")
    rest = await rig.runtime("tenant-42")
    pack = make_pack("1.0.0", kx.key)
    await rig.request("r1", pack, rollback={"strategy": "none"})

    closed = await wait_closed(rig.js, kx, "r1")
    assert closed["data"]["outcome"] == "success", await describe_release(rig.js, kx, "r1")
    # Let both instances see the close and any late duplicate decisions land before counting.
    await wait_until(lambda: on(internal, pack.digest) and on(rest, pack.digest), 5, "runtimes to switch")
    entries = await read_log(rig.js, kx.stream)
    assert duplicate_event_ids(entries) == {}
    assert activations_per_cohort(entries, "r1") == {"internal": 1, "rest": 1}
    counts = count_types(entries, "r1")
    assert (counts["release.closed"], counts["release.activated"], counts["release.expanded"]) == (1, 2, 1), counts
    assert_alive(a, b)


# ---- request monitoring override keeps the channel's thresholds ------------------------------------------


async def test_request_window_override_keeps_channel_thresholds(kx, rig):
    """`kxr release request --window` changes the window only; the channel's error-rate threshold still applies."""
    bad = make_pack("1.0.0", kx.key)
    serve, internal, rest = await start_world(kx, rig, {bad.digest: Behaviour(error_rate=0.5)})
    (kx.workdir / "p.pack").write_bytes(bad.body)
    (kx.workdir / "p.manifest.json").write_bytes(bad.manifest)
    result = await kx.arun(
        "release",
        "request",
        "r1",
        "--target",
        "prod/canary",
        "--manifest",
        "p.manifest.json",
        "--pack",
        "p.pack",
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
    )
    assert result.returncode == 0, result.stderr

    async def verdict():
        for suffix in ("monitoring_failed", "monitoring_passed", "monitoring_inconclusive"):
            ev = await last_event(rig.js, kx.stream, f"{kx.prefix}.release.r1.{suffix}")
            if ev is not None:
                return suffix, ev

    suffix, _ = await wait_until(verdict, 20, "a verdict on stage 1", lambda: describe_release(rig.js, kx, "r1"))
    prepared = await last_event(rig.js, kx.stream, f"{kx.prefix}.release.r1.prepared")
    thresholds = prepared["data"]["monitoring"]["thresholds"]
    assert thresholds.get("error_rate_max") == CHANNEL["monitoring"]["thresholds"]["error_rate_max"], thresholds
    assert suffix == "monitoring_failed", f"a pack with 50% errors got {suffix}"
    assert_alive(serve)


# ---- e. signals and bad configuration -------------------------------------------------------------------


def test_sigterm_and_sigint_exit_0_promptly(kx):
    procs = {signal.SIGTERM: kx.serve(), signal.SIGINT: kx.serve()}
    for p in procs.values():
        p.wait_ready()
    for sig, p in procs.items():
        p.signal(sig)
    deadline = time.monotonic() + 10
    results = {}
    for sig, p in procs.items():
        try:
            results[sig.name] = p.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            results[sig.name] = "still running 10 s after the signal"
    assert results == {"SIGTERM": 0, "SIGINT": 0}, {
        k: (v, procs[getattr(signal, k)].stderr()[-400:]) for k, v in results.items()
    }
    for p in procs.values():
        assert "Traceback" not in p.stderr(), p.stderr()


@pytest.mark.parametrize("case", ["missing_trust_root", "invalid_trust_root", "only_nonsense", "bad_prefix"])
def test_bad_configuration_exits_non_zero_with_one_line(kx, case):
    env = kx.env()
    args: list[str] = []
    expect = ""
    if case == "missing_trust_root":
        env["KX_TRUST_ROOT"] = str(kx.workdir / "no-such-trust-root.json")
        expect = "trust root"
    elif case == "invalid_trust_root":
        (kx.workdir / "bad-root.json").write_text('{"threshold": 1, "keys": {}}')
        env["KX_TRUST_ROOT"] = str(kx.workdir / "bad-root.json")
        expect = "trust root"
    elif case == "only_nonsense":
        args = ["--only", "nonsense"]
        expect = "nonsense"
    elif case == "bad_prefix":
        env["KX_PREFIX"] = "a.b"
        expect = "a.b"
    result = kx.run("serve", *args, env=env, timeout=15)
    line = assert_one_line_error(result, expect)
    assert line.startswith("kxr: error:"), line


def test_unreachable_nats_exits_non_zero_with_one_line(kx):
    env = kx.env(KX_NATS_URL=f"nats://127.0.0.1:{free_port()}")
    proc = kx.serve(env=env)
    try:
        rc = proc.proc.wait(timeout=6)
    except subprocess.TimeoutExpired:
        proc.signal(signal.SIGTERM)
        try:
            proc.proc.wait(timeout=3)
            after = f"it exited with {proc.proc.returncode} on SIGTERM"
        except subprocess.TimeoutExpired:
            after = "and it ignored SIGTERM too"
        lines = stderr_lines(proc.stderr())
        pytest.fail(
            f"kxr serve against an unreachable NATS neither failed nor stopped within 6 s ({after}); "
            f"{len(lines)} stderr lines, last: {lines[-1:]}"
        )
    err = proc.stderr()
    assert rc != 0 and "Traceback" not in err, err
    lines = stderr_lines(err)
    assert len(lines) == 1 and "cannot reach NATS" in lines[0], err
