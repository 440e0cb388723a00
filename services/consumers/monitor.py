"""Monitor: opens a window on each activated stage and judges it when it ends.

The window starts when the stage's pointers moved (the `activated` event), not when the
monitor got to it, and its end is a JetStream scheduled message (KX_TIMERS), so a restart
loses no timer. A hard breach (a runtime refusing the pack, an error spike, a tenant-impact
spike) fails the window early — also one reported between the activation and the window's
opening, found by reading the samples stored since the activation when the window opens.
The verdict event carries every figure and every threshold compared; a verdict that could
not be written as contract JSON is replaced by an inconclusive one saying why.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from events.canonical import StrictJSONError
from events.codec import encode_event
from events.health import HealthSample, accept_report
from events.ids import derived_event_id
from events.model import Event, MonitoringStarted, MonitoringVerdict, QueryAnswer
from projections.releases import ReleaseState
from projections.world import World
from services.consumers.live_health import LiveHealth
from services.consumers.outputs import Chain, Ctx, Failed, Output, Timer, release_event
from services.consumers.port import Port
from services.consumers.reactor import ReleaseReactor
from services.jetstream.client import relayed_delivery
from services.jetstream.worker import Poison, Worker
from services.monitoring.judge import (
    CLOCK_SKEW,
    Breach,
    Watch,
    WindowData,
    against_channel,
    baseline_digests,
    breach_of,
    counts_for,
    exposed_before,
    first_breach,
    judge_window,
    live_cohorts,
    live_refusal,
    moved_away,
    read_span,
    refusals_since,
    unswitched,
    window_data,
)
from services.monitoring.prometheus import Place, queries_for
from services.reads.health_reads import newest_reports, samples_between, window_reports
from services.reads.prometheus import ask_all

NAME = "monitor"
log = logging.getLogger(__name__)
TIMER_EARLY_S = 1.0  # a window's timer this early is waited for; earlier, it is ignored (the sweep judges it when due)


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
    return Timer(
        key=key,
        at=m.ends_at,
        payload={"release_id": release.release_id, "stage": m.stage},
        msg_id=derived_event_id(release.release_id, NAME, f"timer/{m.stage}/{m.ends_at.isoformat()}"),
    )


def activated_at(release: ReleaseState, stage: int, fallback: datetime) -> datetime:
    """When the stage's pointers moved: the `activated` event's time (the window starts there)."""
    return release.activated_at.get(stage, fallback)


def verdict_event(ctx: Ctx, release: ReleaseState, outcome: str, verdict: MonitoringVerdict) -> Event:
    """The verdict as an event that can be written, or, failing that, an inconclusive one saying why.

    A figure that is not contract JSON (a non-finite number) or a verdict over the event
    size cap would be refused by the log writer (events/codec.py) and the window would
    never end: hold it instead (inconclusive), keeping its stage, counts and reason.
    """
    step = f"verdict/{verdict.stage}"
    event = release_event(ctx, release, outcome, verdict, step)
    try:
        encode_event(event)
        return event
    except StrictJSONError as exc:
        problem = str(exc)
    slim = MonitoringVerdict(
        stage=verdict.stage,
        samples=verdict.samples,
        runtimes=verdict.runtimes,
        early=verdict.early,
        reason=f"the window's verdict ({outcome}) could not be written: {problem[:300]}; "
        f"it was: {verdict.reason[:1000]}",
        queries=[q.model_copy(update={"result": []}) for q in verdict.queries],  # what was asked, and the figures
    )
    return release_event(ctx, release, "monitoring_inconclusive", slim, step)


def _breach_verdict(stage: int, breach: Breach, figures: dict) -> MonitoringVerdict:
    return MonitoringVerdict(
        stage=stage, figures=figures, early=True, reason=f"hard breach: {breach.reason}", trigger=breach.trigger
    )


def breach_figures(sample: HealthSample, cohort: str | None = None) -> dict:
    figures = {"breach_runtime": sample.runtime_id, "sample": sample.model_dump(mode="json")}
    if cohort is not None:
        figures["breach_cohort"] = cohort
    return figures


def decide_start(release: ReleaseState, ctx: Ctx, early: tuple[Breach, dict] | None = None) -> list[Output]:
    """On an activated stage: open its window (or, while monitoring, make sure its timer exists).

    The window starts at the stage's activation. `early` is a hard breach found among the
    reports stored since the activation (a runtime that refused the pack before the window
    opened): the window opens and fails at once.
    """
    if release.phase == "monitoring":
        timer = window_timer(release)
        return [timer] if timer else []
    if release.phase != "activated" or release.prepared is None or release.verified is None:
        return []
    stage = release.stage
    cohorts = release.prepared.stages[stage] if 0 <= stage < len(release.prepared.stages) else []
    activated_now = [c for c in cohorts if c in release.activated]
    monitoring = release.prepared.monitoring
    starts_at = activated_at(release, stage, ctx.now)
    started = MonitoringStarted(
        stage=stage,
        cohorts=activated_now,
        digest=release.verified.pack.digest,
        starts_at=starts_at,
        ends_at=starts_at + timedelta(seconds=monitoring.window_s),
        monitoring=monitoring,
    )
    events = [release_event(ctx, release, "monitoring_started", started, f"start/{stage}")]
    if not activated_now:  # every cohort of the stage was pinned: nothing to watch, nothing exposed
        verdict = MonitoringVerdict(stage=stage, reason="no cohort of this stage was activated (all pinned)")
        events.append(release_event(ctx, release, "monitoring_passed", verdict, f"verdict/{stage}"))
    elif early is not None:
        events.append(verdict_event(ctx, release, "monitoring_failed", _breach_verdict(stage, *early)))
    return [Chain(tuple(events))]


def decide_window(
    release: ReleaseState, stage: int, data: WindowData, ctx: Ctx, world: World | None = None
) -> list[Output]:
    """The window's verdict from everything it is judged on; with `world`, also against the channel's
    cohorts as configured now (a cohort of the window taken out of the channel, or a configuration that
    cannot be read, is missing evidence: `judge.against_channel`)."""
    if release.phase != "monitoring" or release.monitoring is None or release.monitoring.stage != stage:
        return []
    if world is not None:
        data = against_channel(data, world, release)
    v = judge_window(data, release.monitoring.monitoring)
    verdict = MonitoringVerdict(
        stage=stage,
        samples=v.samples,
        runtimes=v.runtimes,
        figures=v.figures,
        comparisons=v.comparisons,
        reason=v.reason,
        trigger=v.trigger if v.outcome == "monitoring_failed" else None,
        queries=list(data.queries),
        channel_seq=data.channel_seq,
    )
    return [Chain((verdict_event(ctx, release, v.outcome, verdict),))]


def decide_verdict(
    release: ReleaseState,
    stage: int,
    samples: list[HealthSample],
    baseline: list[HealthSample],
    ctx: Ctx,
    world: World | None = None,
) -> list[Output]:
    """`decide_window` on the new pack's samples and the baseline alone (no coverage, no invalid reports)."""
    return decide_window(release, stage, WindowData(list(samples), list(baseline)), ctx, world)


def decide_unjudgeable(
    release: ReleaseState, stage: int, problem: str, ctx: Ctx, what: str = "health samples could not be read"
) -> list[Output]:
    """The window could not be judged (its samples unreadable, or judging them failed): hold, saying why."""
    if release.phase != "monitoring" or release.monitoring is None or release.monitoring.stage != stage:
        return []
    verdict = MonitoringVerdict(stage=stage, reason=f"{what}: {problem[:1000]}")
    return [Chain((release_event(ctx, release, "monitoring_inconclusive", verdict, f"verdict/{stage}"),))]


def decide_breach(
    release: ReleaseState, reason: str, figures: dict, ctx: Ctx, trigger: str | None = None
) -> list[Output]:
    if release.phase != "monitoring" or release.monitoring is None:
        return []
    verdict = _breach_verdict(release.monitoring.stage, Breach(reason, trigger), figures)
    return [Chain((verdict_event(ctx, release, "monitoring_failed", verdict),))]


def decide_stage(release: ReleaseState, ctx: Ctx, facts: StageFacts) -> list[Output]:
    """On an activated stage or an open window: open it (failing it at once on an early breach), fail
    the window on a breach stored before it opened, or make sure its timer exists (once per process)."""
    if release.phase == "monitoring" and facts.early is not None:
        breach, figures = facts.early
        return decide_breach(release, breach.reason, figures, ctx, breach.trigger)
    return [
        o
        for o in decide_start(release, ctx, facts.early)
        if not (isinstance(o, Timer) and o.msg_id == facts.timer_sent)
    ]


# ---- adapter ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageFacts:
    early: tuple[Breach, dict] | None = None  # a hard breach among the reports stored since the activation
    timer_sent: str | None = None  # the window's timer (its msg id) this process already published


@dataclass(frozen=True)
class WindowVerdict:
    """The window's end (its timer, or the sweep of an overdue one): read everything it is judged on, judge it."""

    monitor: Monitor
    stage: int

    def _open(self, release: ReleaseState) -> bool:
        return (
            release.phase == "monitoring" and release.monitoring is not None and release.monitoring.stage == self.stage
        )

    async def observe(self, world: World, release: ReleaseState, ctx: Ctx) -> WindowData | None | Failed:
        if not self._open(release):
            return None
        assert release.monitoring is not None
        if ctx.now < release.monitoring.ends_at:
            # never judged before its end, whatever fired: a timer message anyone can make JetStream publish
            # (an API request with the timer's subject as its reply: docs/permissions.md) ended a 60 s window
            # after 6 s. The sweep judges it once it is due.
            log.warning("monitor: window %d of %s not over yet: not judged", self.stage, release.release_id)
            return None
        try:
            return await self.monitor.window_data(world, release)
        except Exception as exc:  # fail closed: an unreadable window holds the release, recorded
            return Failed.of(exc)

    def decide(self, world: World, release: ReleaseState, facts: WindowData | None, ctx: Ctx) -> list[Output]:
        if facts is None:
            return []
        try:
            return decide_window(release, self.stage, facts, ctx, world)
        except Exception as exc:  # a window the judge chokes on is held with the reason, never retried forever
            log.exception("monitor: window %d of %s could not be judged", self.stage, release.release_id)
            return decide_unjudgeable(
                release, self.stage, f"{exc.__class__.__name__}: {exc}", ctx, "the window could not be judged"
            )

    def fail_closed(self, world: World, release: ReleaseState, failed: Failed, ctx: Ctx) -> list[Output]:
        return decide_unjudgeable(release, self.stage, failed.message, ctx)


@dataclass(frozen=True)
class LiveBreach:
    """A hard breach in a report as it arrived (observed already): fail the window early."""

    breach: Breach
    figures: dict

    async def observe(self, world: World, release: ReleaseState, ctx: Ctx) -> None:
        return None

    def decide(self, world: World, release: ReleaseState, facts: None, ctx: Ctx) -> list[Output]:
        return decide_breach(release, self.breach.reason, self.figures, ctx, self.breach.trigger)

    def fail_closed(self, world: World, release: ReleaseState, failed: Failed, ctx: Ctx) -> list[Output]:
        return []  # never observed to fail: the window's end judges this sample anyway


class Monitor(ReleaseReactor[StageFacts]):
    name = NAME
    acts_in = frozenset({"activated", "monitoring"})

    def __init__(self, port: Port) -> None:
        super().__init__(port)
        self._timers_sent: dict[str, str] = {}  # release id -> its current window's timer, as published
        self._scanned: dict[str, str] = {}  # release id -> the window (its timer id) already scanned for early breaches

    def runners(self) -> list:
        timers = Worker(
            self.port.js,
            self.port.subjects.timers_stream,
            "kxr-monitor-timers",
            [self.port.subjects.timer_fire("*.*")],
            self.on_timer,
            self.port.deadletters,
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
            world = self.port.follower.world
            now = self.port.clock()
            for release_id in list(world.in_flight):
                release = world.release(release_id)
                m = release.monitoring if release else None
                if release and release.phase == "monitoring" and m and (now - m.ends_at).total_seconds() > grace:
                    try:
                        await self.settle(release_id, WindowVerdict(self, m.stage))
                    except Exception as exc:  # the next sweep tries again
                        log.warning("monitor: overdue window of %s not judged yet: %s", release_id, exc)

    async def observe(self, world, release, ctx) -> StageFacts:
        if release.phase == "activated":
            # a runtime may refuse the pack before the window opens: look before opening it
            return StageFacts(
                early=await self.early_breach(
                    release, release.stage, release.verified.pack.digest if release.verified else None
                )
            )
        timer = window_timer(release)
        if (
            release.phase == "monitoring"
            and timer is not None
            and self._scanned.get(release.release_id) != timer.msg_id
        ):
            # once per window and process: what was stored between the activation and the window's opening
            m = release.monitoring
            found = await self.early_breach(release, m.stage, m.digest)
            if found is not None:
                return StageFacts(early=found)
            self._scanned[release.release_id] = timer.msg_id
        # A window's timer is (re)published once per process: at start-up that covers a timer
        # lost with a crash, and the sweep judges an overdue window whatever happened to it.
        return StageFacts(timer_sent=self._timers_sent.get(release.release_id))

    def decide(self, world, release, facts: StageFacts, ctx):
        return decide_stage(release, ctx, facts)

    def fail_closed(self, world, release, failed, ctx):
        """An open window this monitor cannot keep watching holds (inconclusive), saying why."""
        if release.phase == "monitoring" and release.monitoring is not None:
            return decide_unjudgeable(
                release, release.monitoring.stage, failed.message, ctx, "the window could not be watched"
            )
        return super().fail_closed(world, release, failed, ctx)

    async def early_breach(self, release: ReleaseState, stage: int, digest: str | None) -> tuple[Breach, dict] | None:
        """A hard breach among the reports stored since the stage's activation, if any (best effort:
        a read that fails finds nothing here, and the window's end judges every report anyway)."""
        if release.prepared is None or digest is None or stage not in release.activated_at:
            return None
        since = release.activated_at[stage]
        cohorts = (
            [c for c in release.prepared.stages[stage] if c in release.activated]
            if stage < len(release.prepared.stages)
            else []
        )
        target, until = release.prepared.target, self.port.clock() + CLOCK_SKEW
        try:
            stored = await samples_between(
                self.port.js, self.port.subjects, target.env, target.channel, cohorts, since - CLOCK_SKEW, until
            )
            earlier = await self.earlier_refusals(release, digest, until)
        except Exception as exc:
            log.info("monitor: reports since the activation of %s not read: %s", release.release_id, exc)
            return None
        found = first_breach(stored, digest, release.prepared.monitoring, since)
        if found is not None:  # the window's own cohorts first
            return found[0], breach_figures(found[1])
        for refusal in earlier:
            breach = breach_of(refusal, release.prepared.monitoring)
            if breach is not None:
                return breach, breach_figures(refusal)
        return None

    async def earlier_refusals(self, release: ReleaseState, digest: str, until: datetime) -> list[HealthSample]:
        """The pack's refusals stored in the cohorts of earlier stages since each stage's pointers moved
        (`exposed_before`), up to `until`, oldest stage first."""
        assert release.prepared is not None
        target = release.prepared.target
        groups = exposed_before(release)
        reads = await asyncio.gather(
            *(
                samples_between(
                    self.port.js, self.port.subjects, target.env, target.channel, list(cohorts), at - CLOCK_SKEW, until
                )
                for cohorts, at in groups
            )
        )
        return [s for (_, at), stored in zip(groups, reads) for s in refusals_since(stored, digest, at)]

    def emitted(self, outputs) -> None:
        for o in outputs:
            if isinstance(o, Timer):
                self._timers_sent[o.payload["release_id"]] = o.msg_id
        in_flight = self.port.follower.world.in_flight
        if len(self._timers_sent) > 2 * len(in_flight) + 100:  # forget releases that ended
            self._timers_sent = {r: m for r, m in self._timers_sent.items() if r in in_flight}
        if len(self._scanned) > 2 * len(in_flight) + 100:
            self._scanned = {r: m for r, m in self._scanned.items() if r in in_flight}

    async def on_timer(self, msg) -> None:
        _, tokens = self.port.subjects.parse(msg.subject)
        parsed = parse_timer_key(tokens[1:])
        if parsed is None:
            raise Poison(f"not a window timer: {msg.subject}")
        release_id, stage = parsed
        await self.port.follower.catch_up()
        release = self.port.follower.world.release(release_id)
        m = release.monitoring if release is not None else None
        if m is not None and m.stage == stage:
            early = (m.ends_at - self.port.clock()).total_seconds()
            if 0 < early <= TIMER_EARLY_S:  # the server's clock a little ahead of ours: wait for the end
                await asyncio.sleep(early)
        await self.settle(release_id, WindowVerdict(self, stage))

    async def window_data(self, world: World, release: ReleaseState) -> WindowData:
        """Every report of the window's cohorts from a window length before the activation to the window's end."""
        m = release.monitoring
        assert m is not None and release.prepared is not None
        env, channel = release.prepared.target.env, release.prepared.target.channel
        since = release.activated_at.get(m.stage)
        reports = await window_reports(self.port.js, self.port.subjects, env, channel, m.cohorts, *read_span(m, since))
        data = window_data(
            reports.valid,
            m,
            baseline_digests=baseline_digests(world, release),
            activated_at=since,
            invalid=reports.invalid,
            earlier_refusals=await self.earlier_refusals(release, m.digest, m.ends_at),
        )
        missing = unswitched(data)
        if missing:  # asked only then: where do they report from now (moved by a reconfiguration)?
            newest = await newest_reports(self.port.js, self.port.subjects, env, channel, missing)
            data = replace(data, moved=moved_away(newest, m.cohorts, since or m.starts_at))
        return replace(data, queries=await self.prometheus_answers(world, release))

    async def prometheus_answers(self, world: World, release: ReleaseState) -> tuple[QueryAnswer, ...]:
        """The channel's Prometheus queries for the window, asked at its end (none configured: none).

        The queries are the channel's as configured when the window ends; the verdict records each
        one as sent with its answer, so the evidence says exactly what judged the window.
        """
        m = release.monitoring
        assert m is not None and release.prepared is not None
        env, channel = release.prepared.target.env, release.prepared.target.channel
        source = world.channel_config(env, channel).monitoring.prometheus
        if source is None:
            return ()
        place = Place(env, channel, tuple(m.cohorts), m.digest, m.monitoring.window_s)
        asked = queries_for(source, place, m.ends_at)
        return await ask_all(source, asked, m.monitoring.thresholds, self.port.settings.prometheus_url)

    async def watch_health(self) -> None:
        """Live: fail a window early on a hard breach. The window's end judges everything anyway.

        Only the cohorts where a window is open or about to open are listened to (`LiveHealth`),
        following the releases as the follower folds their events."""
        queue: asyncio.Queue = asyncio.Queue(maxsize=10_000)

        async def on_msg(msg) -> None:
            if not queue.full():
                queue.put_nowait(msg)

        feed = LiveHealth(self.port.nc, on_msg)
        changes = self.port.follower.listen()
        try:
            world = self.port.follower.world
            for release_id in world.in_flight:
                await feed.want(release_id, self.live_subjects(world.release(release_id)))
            await asyncio.gather(self._follow_windows(feed, changes), self._judge_live(queue))
        finally:
            self.port.follower.unlisten(changes)
            await feed.close()

    def live_subjects(self, release: ReleaseState | None) -> list[str]:
        return [self.port.subjects.health_cohort(*place) for place in live_cohorts(release)]

    async def _follow_windows(self, feed: LiveHealth, changes: asyncio.Queue) -> None:
        """The feed kept on the releases' current phases: what each entry folded changed, batch by batch."""
        while True:
            entries = [await changes.get()]
            while not changes.empty():
                entries.append(changes.get_nowait())
            world = self.port.follower.world
            for release_id in {event.release_id for _, event in entries if event is not None and event.release_id}:
                await feed.want(release_id, self.live_subjects(world.release(release_id)))

    async def _judge_live(self, queue: asyncio.Queue) -> None:
        while True:
            msg = await queue.get()
            if relayed_delivery(msg.headers) is not None:
                continue  # JetStream relayed it onto a health subject (an API answer): no runtime sent it
            await self.check_breach(msg.subject, msg.data)

    async def check_breach(self, subject: str, data: bytes) -> None:
        parts = self.port.subjects.health_parts(subject)
        if parts is None:
            return  # an invalid report makes its window inconclusive when the window is judged
        world = self.port.follower.world
        place = (parts.env, parts.channel, parts.cohort)
        watches = [  # the open windows of releases the report's cohort can fail (their own, or an earlier stage's)
            (release, watch)
            for release_id in world.in_flight
            if (release := world.releases[release_id]).phase == "monitoring"
            and (watch := Watch.of_release(release)) is not None
            and place in live_cohorts(release)
        ]
        if not watches:
            # no open window on its cohort: not decoded at all (a thousand runtimes reporting a rollback
            # cost the service ~80 us of validation each, none of it evidence); the windows read every
            # stored report again when they open and end
            return
        sample = accept_report(data, parts)
        if not isinstance(sample, HealthSample) or sample.digest is None:
            return
        for release, watch in watches:
            if release.monitoring is None:
                continue
            if counts_for(watch, sample, subject=parts):
                found = breach_of(sample, release.monitoring.monitoring)
            else:
                found = live_refusal(release, parts.cohort, sample)
            if found:
                try:
                    await self.settle(release.release_id, LiveBreach(found, breach_figures(sample, parts.cohort)))
                except Exception as exc:  # best effort: the window's end still judges this sample
                    log.warning("monitor: early fail of %s not recorded: %s", release.release_id, exc)
