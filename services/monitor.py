"""Monitor: opens a window on each activated stage and judges it when it ends.

The window's end is a JetStream scheduled message (KX_TIMERS), so a restart loses
no timer. A hard breach (a runtime failing to activate, an error spike) fails the
window early. The verdict event carries every figure and every threshold compared.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from events.health import HealthSample
from events.ids import derived_event_id
from events.model import MonitoringStarted, MonitoringVerdict
from projections.releases import ReleaseState
from .health_reads import parse_sample, samples_between
from .judge import hard_breach, judge, split_window, window_span
from .outputs import Chain, Ctx, Output, Timer, release_event
from .reactor import ReleaseReactor
from .worker import Poison, Worker

NAME = "monitor"
log = logging.getLogger(__name__)


def timer_key(release_id: str, stage: int) -> str:
    return f"{release_id}.{stage}"


def parse_timer_key(tokens: list[str]) -> tuple[str, int] | None:
    if len(tokens) != 2 or not tokens[1].isdigit():
        return None
    return tokens[0], int(tokens[1])


def window_timer(release: ReleaseState) -> Timer | None:
    m = release.monitoring
    if m is None:
        return None
    key = timer_key(release.release_id, m.stage)
    return Timer(key=key, at=m.ends_at, payload={"release_id": release.release_id, "stage": m.stage},
                 msg_id=derived_event_id(release.release_id, NAME, f"timer/{m.stage}/{m.ends_at.isoformat()}"))


def decide_start(release: ReleaseState, ctx: Ctx) -> list[Output]:
    """On an activated stage: open its window (or, while monitoring, make sure its timer exists)."""
    if release.phase == "monitoring":
        timer = window_timer(release)
        return [timer] if timer else []
    if release.phase != "activated" or release.prepared is None or release.verified is None:
        return []
    stage = release.stage
    cohorts = release.prepared.stages[stage] if 0 <= stage < len(release.prepared.stages) else []
    activated_now = [c for c in cohorts if c in release.activated]
    monitoring = release.prepared.monitoring
    started = MonitoringStarted(
        stage=stage, cohorts=activated_now, digest=release.verified.pack.digest,
        starts_at=ctx.now, ends_at=ctx.now + timedelta(seconds=monitoring.window_s), monitoring=monitoring,
    )
    events = [release_event(ctx, release, "monitoring_started", started, f"start/{stage}")]
    if not activated_now:  # every cohort of the stage was pinned: nothing to watch, nothing exposed
        verdict = MonitoringVerdict(stage=stage, reason="no cohort of this stage was activated (all pinned)")
        events.append(release_event(ctx, release, "monitoring_passed", verdict, f"verdict/{stage}"))
    return [Chain(tuple(events))]


def decide_verdict(release: ReleaseState, stage: int, samples: list[HealthSample], baseline: list[HealthSample], ctx: Ctx) -> list[Output]:
    if release.phase != "monitoring" or release.monitoring is None or release.monitoring.stage != stage:
        return []
    v = judge(samples, baseline, release.monitoring.monitoring)
    verdict = MonitoringVerdict(stage=stage, samples=v.samples, runtimes=v.runtimes, figures=v.figures, comparisons=v.comparisons, reason=v.reason)
    return [Chain((release_event(ctx, release, v.outcome, verdict, f"verdict/{stage}"),))]


def decide_unjudgeable(release: ReleaseState, stage: int, problem: str, ctx: Ctx) -> list[Output]:
    """The window's samples could not be read: no verdict on missing evidence — hold, saying why."""
    if release.phase != "monitoring" or release.monitoring is None or release.monitoring.stage != stage:
        return []
    verdict = MonitoringVerdict(stage=stage, reason=f"health samples could not be read: {problem}")
    return [Chain((release_event(ctx, release, "monitoring_inconclusive", verdict, f"verdict/{stage}"),))]


def decide_breach(release: ReleaseState, reason: str, figures: dict, ctx: Ctx) -> list[Output]:
    if release.phase != "monitoring" or release.monitoring is None:
        return []
    stage = release.monitoring.stage
    verdict = MonitoringVerdict(stage=stage, figures=figures, early=True, reason=f"hard breach: {reason}")
    return [Chain((release_event(ctx, release, "monitoring_failed", verdict, f"verdict/{stage}"),))]


# ---- adapter ------------------------------------------------------------------------------------
class Monitor(ReleaseReactor):
    name = NAME
    acts_in = frozenset({"activated", "monitoring"})

    def __init__(self, app) -> None:
        super().__init__(app)
        self._timers_sent: dict[str, str] = {}  # release id -> its current window's timer, as published

    def runners(self) -> list:
        timers = Worker(
            self.app.js, self.app.subjects.timers_stream, "kxr-monitor-timers", [self.app.subjects.timer_fire("*.*")],
            self.on_timer, self.app.deadletters,
        )
        return super().runners() + [timers.run(), self.watch_health(), self.sweep()]

    async def sweep(self, every: float = 1.0, grace: float = 2.0) -> None:
        """Safety net for timers: judge any window overdue by more than `grace` seconds.

        A timer can be late (its fire message was fetched by a process that then died, and
        waits out the ack deadline): the verdict must not wait with it. Deciding twice is
        harmless, the verdict's id is derived.
        """
        while True:
            await asyncio.sleep(every)
            world = self.app.follower.world
            now = self.app.clock()
            for release_id in list(world.in_flight):
                release = world.release(release_id)
                m = release.monitoring if release else None
                if release and release.phase == "monitoring" and m and (now - m.ends_at).total_seconds() > grace:
                    try:
                        await self.settle(release_id, self._verdict_for(m.stage))
                    except Exception as exc:  # the next sweep tries again
                        log.warning("monitor: overdue window of %s not judged yet: %s", release_id, exc)

    async def decide(self, world, release, ctx):
        # A window's timer is (re)published once per process: at start-up that covers a timer
        # lost with a crash, and the sweep judges an overdue window whatever happened to it.
        sent = self._timers_sent.get(release.release_id)
        return [o for o in decide_start(release, ctx) if not (isinstance(o, Timer) and o.msg_id == sent)]

    def emitted(self, outputs) -> None:
        for o in outputs:
            if isinstance(o, Timer):
                self._timers_sent[o.payload["release_id"]] = o.msg_id
        in_flight = self.app.follower.world.in_flight
        if len(self._timers_sent) > 2 * len(in_flight) + 100:  # forget releases that ended
            self._timers_sent = {r: m for r, m in self._timers_sent.items() if r in in_flight}

    async def on_timer(self, msg) -> None:
        _, tokens = self.app.subjects.parse(msg.subject)
        parsed = parse_timer_key(tokens[1:])
        if parsed is None:
            raise Poison(f"not a window timer: {msg.subject}")
        release_id, stage = parsed
        await self.app.follower.catch_up()
        await self.settle(release_id, self._verdict_for(stage))

    def _verdict_for(self, stage: int):
        async def verdict(world, release, ctx):
            if release.phase != "monitoring" or release.monitoring is None or release.monitoring.stage != stage:
                return []
            try:
                new, baseline = await self.window_samples(release)
            except Exception as exc:  # fail closed: an unreadable window holds the release, recorded
                return decide_unjudgeable(release, stage, f"{exc.__class__.__name__}: {exc}", ctx)
            return decide_verdict(release, stage, new, baseline, ctx)

        return verdict

    async def window_samples(self, release: ReleaseState) -> tuple[list[HealthSample], list[HealthSample]]:
        """Samples of the new pack inside the window, and of the previous pack just before it."""
        m = release.monitoring
        assert m is not None and release.prepared is not None
        env, channel = release.prepared.target.env, release.prepared.target.channel
        stored = await samples_between(self.app.js, self.app.subjects, env, channel, m.cohorts, *window_span(m))
        return split_window(stored, m)

    async def watch_health(self) -> None:
        """Live: fail a window early on a hard breach. The window's end judges everything anyway."""
        queue: asyncio.Queue = asyncio.Queue(maxsize=10_000)

        async def on_msg(msg) -> None:
            if not queue.full():
                queue.put_nowait(msg)

        sub = await self.app.nc.subscribe(self.app.subjects.health_all(), cb=on_msg)
        try:
            while True:
                msg = await queue.get()
                await self.check_breach(msg.subject, msg.data)
        finally:
            await sub.unsubscribe()

    async def check_breach(self, subject: str, data: bytes) -> None:
        parts = subject.split(".")
        if len(parts) != 6:
            return
        _, _, env, channel, cohort, runtime_id = parts
        sample = parse_sample(data)
        if sample is None or sample.digest is None or sample.runtime_id != runtime_id:
            return
        world = self.app.follower.world
        for release_id in world.in_flight:
            release = world.releases[release_id]
            m = release.monitoring
            if release.phase != "monitoring" or m is None or m.digest != sample.digest or cohort not in m.cohorts:
                continue
            if release.prepared is None or (release.prepared.target.env, release.prepared.target.channel) != (env, channel):
                continue
            reason = hard_breach(sample, m.monitoring)
            if reason:
                figures = {"breach_runtime": runtime_id, "breach_cohort": cohort, "sample": sample.model_dump(mode="json")}

                async def breach(world, current, ctx, reason=reason, figures=figures):
                    return decide_breach(current, reason, figures, ctx)

                try:
                    await self.settle(release.release_id, breach)
                except Exception as exc:  # best effort: the window's end still judges this sample
                    log.warning("monitor: early fail of %s not recorded: %s", release.release_id, exc)
