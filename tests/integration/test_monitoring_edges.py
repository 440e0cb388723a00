"""The monitor fails closed at every edge, against a real JetStream (issues 13 and 14).

Each test drives a whole service with runtimes (real RuntimeClients) and, where the defect
is about what a hostile or broken runtime sends, raw health messages published from
outside, exactly as any client with a runtime's publish rights could.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from events.model import MonitoringVerdict
from events.signing import SigningKey
from services.actions import operator as ops
from services.consumers.monitor import Monitor
from services.jetstream.log import Entry
from services.runtime.sdk import Identity, RuntimeClient
from services.settings import ROLES
from services.tasks import cancel_and_wait
from tests.harness import CHANNEL, OPERATOR, Behaviour, make_pack, running_service, trust_root_for, wait_for

WITHOUT_MONITOR = tuple(r for r in ROLES if r != "monitor")


def verdicts(svc, release_id: str, stage: int = 0) -> list[tuple[str, MonitoringVerdict]]:
    release = svc.world.release(release_id)
    return [(kind, v) for kind, v in (release.verdicts if release else ()) if v.stage == stage]


async def first_verdict(svc, release_id: str, timeout: float = 30.0) -> tuple[str, MonitoringVerdict]:
    found = await wait_for(
        lambda: verdicts(svc, release_id), timeout, f"a verdict on {release_id}", lambda: svc.world.release(release_id)
    )
    return found[0]


def health_subject(svc, runtime_id: str, cohort: str = "internal") -> str:
    return svc.app.subjects.health("prod", "canary", cohort, runtime_id)


@asynccontextmanager
async def publishing(
    svc, runtime_id: str, body: Callable[[], bytes], every: float = 0.1, cohort: str = "internal"
) -> AsyncIterator[None]:
    """Publish `body()` on `runtime_id`'s health subject (of `cohort`) every `every` s while inside."""

    async def loop() -> None:
        while True:
            await svc.app.js.publish(health_subject(svc, runtime_id, cohort), body())
            await asyncio.sleep(every)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        await cancel_and_wait([task])


def raw(runtime_id: str, digest: str | None, **fields: Any) -> Callable[[], bytes]:
    """A hand-written health message: `fields` are spliced in as raw JSON text (10**400 stays an integer)."""

    def body() -> bytes:
        head = {"runtime_id": runtime_id, "digest": digest, "at": datetime.now(UTC).isoformat(), "kind": "sample"}
        text = json.dumps(head)[:-1]
        for key, value in fields.items():
            text += f', "{key}": {value if isinstance(value, str) else json.dumps(value)}'
        return (text + "}").encode()

    return body


async def add_runtime(svc, tenant: str, *, sample=None, trust_root=None) -> RuntimeClient:
    """A real runtime with its own sample function or trust root (harness.runtime covers the common case)."""
    rt = RuntimeClient(
        svc.app.nc,
        Identity("prod", "canary", tenant, f"rt-{tenant}"),
        trust_root or svc.trust_root,
        prefix=svc.app.subjects.prefix,
        sample=sample,
        sample_interval=0.1,
        service_keys=svc.service_keys,
    )
    await rt.resolve_cohort()
    svc.runtimes.append(rt)
    svc.tasks.append(asyncio.create_task(rt.run()))
    return rt


async def act(svc, action) -> int:
    seq = await svc.app.log.append(
        Entry(action.event, action.expected_seq, svc.app.subjects.release_filter(action.event.release_id))
    )
    await svc.wait_for(seq)
    return seq


# ==== 1. missing data is never a pass =============================================================


async def test_a_threshold_without_data_holds_the_window_naming_the_metric(nats_url, prefix):
    channel = {
        **CHANNEL,
        "monitoring": {**CHANNEL["monitoring"], "thresholds": {"error_rate_max": 0.05, "latency_p99_ms_max": 400}},
    }
    async with running_service(nats_url, prefix) as svc:
        await svc.configure(config=channel)
        for tenant in ("t-int-1", "tenant-42"):  # traffic, but not one latency figure
            await add_runtime(svc, tenant, sample=lambda digest: {"requests": 100, "errors": 0})
        pack = make_pack("1.0.0", svc.key)
        await svc.request("r1", pack, rollback={"strategy": "none"})
        kind, verdict = await first_verdict(svc, "r1")
        assert kind == "monitoring_inconclusive", verdict.reason
        assert "no data for latency_p99_ms" in verdict.reason
        (p99,) = [c for c in verdict.comparisons if c.metric == "latency_p99_ms"]
        assert p99.value is None and not p99.ok
        release = await svc.wait_release("r1", "held")
        assert release.outcome is None and release.stage == 0  # held for an operator, never expanded


# ==== 2. coverage and refusals ====================================================================


async def test_a_runtime_that_reported_before_the_activation_and_never_switched_holds_the_window(nats_url, prefix):
    async with running_service(nats_url, prefix) as svc:
        await svc.configure()
        await svc.runtime("t-int-1")
        await svc.runtime("tenant-42")
        pack = make_pack("1.0.0", svc.key)
        # reports health in the internal cohort like any runtime, but never follows a pointer
        async with publishing(
            svc, "rt-stuck", raw("rt-stuck", None, requests=100, errors=0, latency_ms={"p95": 50, "p99": 80})
        ):
            await svc.request("r1", pack, rollback={"strategy": "none"})
            kind, verdict = await first_verdict(svc, "r1")
        assert kind == "monitoring_inconclusive", verdict.reason
        assert "not activating the new pack: rt-stuck" in verdict.reason
        assert verdict.figures["coverage"]["missing"] == ["rt-stuck"]
        assert (await svc.wait_release("r1", "held")).stage == 0


async def test_a_runtime_a_reconfiguration_moved_to_another_cohort_is_not_expected_to_switch(nats_url, prefix):
    """A runtime that reported in the window's cohort before the activation and reports from another cohort
    since (a channel reconfiguration moved its tenant; runtimes follow `channel.configured`) was never to
    switch here: the window passes and names it as moved, where it held inconclusive for window_s + 5 s
    after every such move. Only a report from elsewhere excuses it: one that went silent, or reports here
    with the old pack, stays missing (the test above)."""
    async with running_service(nats_url, prefix) as svc:
        await svc.configure()
        await svc.runtime("t-int-1")
        await svc.runtime("tenant-42")
        pack = make_pack("1.0.0", svc.key)
        body = raw("rt-moved", None, requests=100, errors=0, latency_ms={"p95": 50, "p99": 80})
        async with publishing(svc, "rt-moved", body):
            await asyncio.sleep(0.5)  # in the internal cohort before the activation
        async with publishing(svc, "rt-moved", body, cohort="rest"):
            await svc.request("r1", pack, rollback={"strategy": "none"})
            kind, verdict = await first_verdict(svc, "r1")
        assert kind == "monitoring_passed", verdict.reason
        assert verdict.figures["coverage"]["moved"] == ["rt-moved (now in rest)"]
        assert verdict.figures["coverage"]["missing"] == []


async def test_a_refusal_before_the_window_opened_fails_the_stage_as_an_activation_failure(nats_url, prefix):
    async with running_service(nats_url, prefix, roles=WITHOUT_MONITOR) as svc:
        await svc.configure()
        honest = await svc.runtime("t-int-1")
        # this runtime trusts another key: it refuses the pack the moment it sees the pointer
        refuser = await add_runtime(
            svc,
            "t-int-2",
            trust_root=trust_root_for(SigningKey.generate()),
            sample=lambda digest: {"requests": 100, "errors": 0, "latency_ms": {"p95": 50, "p99": 80}},
        )
        await svc.runtime("tenant-42")
        pack = make_pack("1.0.0", svc.key)
        await svc.request("r1", pack, rollback={"strategy": "none"})
        await svc.wait_release("r1", "activated")
        await wait_for(lambda: any(h[1].startswith("refused") for h in refuser.history), 15, "the refusal")
        await wait_for(lambda: honest.active is not None, 15, "the honest runtime to switch")
        # only now does a monitor look: the refusal is older than its reaction
        async with running_service(nats_url, prefix, roles=("monitor",), trust_root=svc.trust_root):
            kind, verdict = await first_verdict(svc, "r1")
        assert kind == "monitoring_failed", verdict.reason
        assert verdict.trigger == "activation_failure"
        assert "rt-t-int-2 failed to activate" in verdict.reason
        started = svc.world.release("r1").monitoring
        assert started.starts_at == svc.world.release("r1").activated_at[0]  # the window starts at the activation


# ==== 3. numbers are data, not a weapon ===========================================================


POISON = {
    "p95-1e308": {"requests": 200, "errors": 0, "latency_ms": '{"p95": 1e308, "p99": 1e308}'},
    "requests-10**400": {"requests": "1" + "0" * 400, "errors": 0, "latency_ms": {"p95": 50, "p99": 80}},
}


async def _poisoned_window_is_judged_and_rolled_back(nats_url, prefix, poison: dict) -> None:
    async with running_service(nats_url, prefix) as svc:
        await svc.configure()
        await svc.runtime("t-int-1")
        await svc.runtime("tenant-42")
        good, bad = make_pack("1.0.0", svc.key), make_pack("1.1.0", svc.key)
        await svc.request("r1", good, rollback={"strategy": "none"})
        assert (await svc.wait_release("r1")).outcome == "success"
        async with publishing(svc, "rt-poison", raw("rt-poison", bad.digest, **poison)):
            await svc.request("r2", bad)
            kind, verdict = await first_verdict(svc, "r2")
        # judged, with the reason, and readable by every consumer (the fold applied it)
        assert kind == "monitoring_inconclusive", verdict.reason
        assert "invalid health report(s) in the window (rt-poison)" in verdict.reason
        await svc.wait_release("r2", "held")
        await act(svc, ops.rollback(svc.world, "r2", "operator", "poisoned health data", OPERATOR, svc.app.clock()))
        release = await svc.wait_release("r2")
        assert release.outcome == "rolled_back"
        assert svc.world.scope("prod", "canary", "internal").active_pack.digest == good.digest
        assert not svc.app.follower.undecodable  # nothing the service wrote is unreadable


async def test_a_1e308_latency_sample_cannot_wedge_a_release(nats_url, prefix):
    await _poisoned_window_is_judged_and_rolled_back(nats_url, prefix, POISON["p95-1e308"])


async def test_a_10_pow_400_requests_sample_cannot_leave_a_window_unjudged(nats_url, prefix):
    await _poisoned_window_is_judged_and_rolled_back(nats_url, prefix, POISON["requests-10**400"])


# ==== 4. one runtime cannot outvote the cohort ====================================================


async def test_one_forged_huge_healthy_sample_cannot_pass_a_failing_window(nats_url, prefix):
    async with running_service(nats_url, prefix) as svc:
        await svc.configure()
        pack = make_pack("1.0.0", svc.key)
        failing = Behaviour(error_rate=0.1)  # twice the 0.05 threshold: failing, not quite a hard breach
        await svc.runtime("t-int-1", {pack.digest: failing})
        await svc.runtime("t-int-2", {pack.digest: failing})
        await svc.runtime("tenant-42")
        forged = raw("rt-forger", pack.digest, requests=10**9, errors=0, latency_ms={"p95": 10, "p99": 20})
        async with publishing(svc, "rt-forger", forged):
            await svc.request("r1", pack, rollback={"strategy": "none"})
            kind, verdict = await first_verdict(svc, "r1")
        assert verdict.figures["error_rate"] < 0.05  # the aggregate alone passes: the forger outweighs everyone
        assert kind == "monitoring_failed", verdict.reason
        assert "runtimes_breaching 2 breaches <= 0" in verdict.reason
        rows = verdict.figures["per_runtime"]["runtimes"]
        assert rows["rt-t-int-1"]["breaches"] and rows["rt-t-int-2"]["breaches"] and not rows["rt-forger"]["breaches"]


# ==== 5. seed signals: tenant impact ===============================================================


async def test_a_tenant_impact_spike_fails_the_window_early_with_its_own_trigger(nats_url, prefix):
    channel = {
        **CHANNEL,
        "monitoring": {
            **CHANNEL["monitoring"],
            "window_s": 30,
            "thresholds": {**CHANNEL["monitoring"]["thresholds"], "tickets_max": 3},
        },
    }
    async with running_service(nats_url, prefix) as svc:
        await svc.configure(config=channel)
        pack = make_pack("1.0.0", svc.key)
        await svc.runtime("t-int-1", {pack.digest: Behaviour(tickets=5)})  # healthy figures, angry tenants
        await svc.runtime("tenant-42")
        await svc.request("r1", pack, rollback={"strategy": "none"})
        kind, verdict = await first_verdict(svc, "r1")  # long before the 30 s window ends
        assert kind == "monitoring_failed", verdict.reason
        assert verdict.early and verdict.trigger == "tenant_impact"
        assert "5 tickets in one sample" in verdict.reason


async def test_the_live_feed_carries_only_the_cohorts_of_a_window_open_or_about_to_open(nats_url, prefix, monkeypatch):
    """A fleet's reports reach the monitor live only where a window may fail early: the cohorts of the
    stage activated or watched. Elsewhere they are stored for the windows to read, never delivered to
    the service (a rollback's 1,000 activation reports were each delivered, parsed and dropped)."""
    delivered: list[str] = []
    check_breach = Monitor.check_breach

    async def noted(self, subject: str, data: bytes) -> None:
        delivered.append(subject)
        await check_breach(self, subject, data)

    monkeypatch.setattr(Monitor, "check_breach", noted)
    long_window = {**CHANNEL, "monitoring": {**CHANNEL["monitoring"], "window_s": 30}}
    async with running_service(nats_url, prefix) as svc:
        await svc.configure(config=long_window)
        s, js = svc.app.subjects, svc.app.js

        async def stored_report(cohort: str, probe: str) -> str:
            """A healthy report on `cohort` from runtime `probe`, stored (acknowledged), the connection flushed."""
            subject = s.health("prod", "canary", cohort, probe)
            await js.publish(subject, raw(probe, None, requests=10, errors=0)())
            await svc.app.nc.flush()
            return subject

        idle = await stored_report("internal", "rt-idle")  # no release in flight: nothing is listened to
        await svc.runtime("t-int-1")
        await svc.request("r1", make_pack("1.0.0", svc.key), rollback={"strategy": "none"})
        await svc.wait_release("r1", "monitoring")  # stage 0 (internal) watched for 30 s
        watched = await stored_report("internal", "rt-watched")
        await wait_for(lambda: watched in delivered, 10, "the watched cohort's report delivered live")
        elsewhere = await stored_report("rest", "rt-elsewhere")  # stage 1's cohort: no window there yet
        await act(svc, ops.abort(svc.world, "r1", "test over", OPERATOR, datetime.now(UTC)))
        await svc.wait_release("r1", "held")  # aborted with no rollback target: held, the window over
        after = await stored_report("internal", "rt-after")
        await asyncio.sleep(0.3)  # time enough for a delivery that should not come
        assert [d for d in (idle, elsewhere, after) if d in delivered] == []
        stored = await js.get_last_msg(s.health_stream, after)  # stored all the same, for windows to read
        assert stored.data


# ==== a refusal in a cohort an earlier stage exposed fails the release ===========================


def _refusal_of(digest: str, runtime_id: str) -> bytes:
    body = {
        "runtime_id": runtime_id,
        "digest": digest,
        "at": datetime.now(UTC).isoformat(),
        "kind": "activation",
        "ok": False,
        "took_ms": 12.0,
        "error": "pack fails to load: index corrupt",
    }
    return json.dumps(body).encode()


async def _second_release(svc, window_s: int) -> str:
    """r1 closes success (1 s windows); r2, a new pack asking for `window_s` windows, is requested. Its digest."""
    assert (await svc.first_release()).outcome == "success"
    bad = make_pack("1.1.0", svc.key)
    await svc.request("r2", bad, monitoring={"window_s": window_s, "min_samples": 1})
    return bad.digest


async def _fails_on_the_refusal(svc, digest: str) -> MonitoringVerdict:
    release = await svc.wait_release("r2", timeout=40)
    failed = [v for kind, v in release.verdicts if kind == "monitoring_failed"]
    assert release.outcome != "success" and failed, release.verdicts
    assert failed[0].trigger == "activation_failure" and "rt-t-int-2" in failed[0].reason
    internal = svc.world.scope("prod", "canary", "internal")
    assert internal.lkg is None or internal.lkg.digest != digest  # never the known-good where it was refused
    return failed[0]


def _in_stage_window(svc, stage: int):
    release = svc.world.release("r2")
    return release if release and release.phase == "monitoring" and release.monitoring.stage == stage else None


async def test_a_refusal_in_an_earlier_stages_cohort_fails_the_later_window_live(nats_url, prefix):
    """During stage 2's window (`rest`), a runtime of `internal` (exposed at stage 1, its pointer live) refuses
    the pack: the window fails at once (the live feed listens to every cohort the release exposed)."""
    async with running_service(nats_url, prefix) as svc:
        digest = await _second_release(svc, 30)
        await wait_for(lambda: _in_stage_window(svc, 1), 40, "r2's second window", lambda: svc.world.release("r2"))
        await svc.app.js.publish(health_subject(svc, "rt-t-int-2"), _refusal_of(digest, "rt-t-int-2"))
        assert (await _fails_on_the_refusal(svc, digest)).early  # long before the 30 s window ends


async def test_a_refusal_in_an_earlier_stages_cohort_fails_the_window_at_its_end(nats_url, prefix, monkeypatch):
    """Without the live feed and the scans when windows open (a monitor that missed it on the way), the
    window's end reads the earlier stages' cohorts for refusals of the pack since their own activation."""

    async def deaf(self) -> None:
        await asyncio.Event().wait()

    async def blind(self, release, stage, digest):
        return None

    monkeypatch.setattr(Monitor, "watch_health", deaf)
    monkeypatch.setattr(Monitor, "early_breach", blind)
    async with running_service(nats_url, prefix) as svc:
        digest = await _second_release(svc, 3)
        await wait_for(lambda: _in_stage_window(svc, 1), 40, "r2's second window", lambda: svc.world.release("r2"))
        await svc.app.js.publish(health_subject(svc, "rt-t-int-2"), _refusal_of(digest, "rt-t-int-2"))
        assert not (await _fails_on_the_refusal(svc, digest)).early


async def test_a_refusal_between_windows_fails_the_next_window_as_it_opens(nats_url, prefix):
    """A refusal stored in stage 1's cohort after its window passed and before stage 2 activates (here: the
    release paused there by an operator) fails stage 2's window the moment it opens."""
    async with running_service(nats_url, prefix) as svc:
        digest = await _second_release(svc, 3)
        await wait_for(lambda: _in_stage_window(svc, 0), 40, "r2's first window", lambda: svc.world.release("r2"))
        await act(svc, ops.pause(svc.world, "r2", "hold between stages", OPERATOR, datetime.now(UTC)))
        await svc.wait_release("r2", "passed", timeout=20)  # judged; the promoter waits for the resume
        await svc.app.js.publish(health_subject(svc, "rt-t-int-2"), _refusal_of(digest, "rt-t-int-2"))
        await act(svc, ops.resume(svc.world, "r2", "go on", OPERATOR, datetime.now(UTC)))
        failed = await _fails_on_the_refusal(svc, digest)
        assert failed.stage == 1 and failed.early


async def test_a_window_timer_fired_early_judges_nothing(nats_url, prefix):
    """Anyone can make JetStream publish on a timer's subject (an API request naming it as the reply:
    docs/permissions.md). A window's fire message long before its end is ignored; the window is judged
    at its end all the same (the sweep, or the genuine timer)."""
    from services.consumers.monitor import timer_key

    async with running_service(nats_url, prefix) as svc:
        assert (await svc.first_release()).outcome == "success"
        await svc.request("r2", make_pack("1.1.0", svc.key), monitoring={"window_s": 4, "min_samples": 1})
        await wait_for(lambda: _in_stage_window(svc, 0), 40, "r2's first window", lambda: svc.world.release("r2"))
        opened = svc.world.release("r2").monitoring
        await svc.app.js.publish(svc.app.subjects.timer_fire(timer_key("r2", 0)), b"forged")
        await asyncio.sleep(1.5)
        assert verdicts(svc, "r2") == []  # nothing judged before the window's end
        kind, verdict = await first_verdict(svc, "r2")
        assert kind == "monitoring_passed"
        assert svc.world.release("r2").verdicts and datetime.now(UTC) >= opened.ends_at
