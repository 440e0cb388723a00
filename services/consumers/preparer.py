"""Preparer: pre-flight checklist and the operational record of a release.

On `release.requested` it resolves target cohorts and stages from the channel
configuration, the monitoring plan, and a rollback target per cohort, and runs the
seed's pre-flight checklist. Every failed item is listed in `release.rejected`;
otherwise `release.prepared` is the plan the rest of the release follows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta

from events.channel import ChannelConfig, requested_threshold_problems
from events.codec import make_event
from events.ids import derived_event_id
from events.model import ChecklistItem, Closed, Monitoring, PackRef, Prepared, Reason, Rejected, RequestedMonitoring
from events.tokens import is_token
from projections.releases import ReleaseState
from projections.world import World, bring_in_first, never_ran
from services.consumers.outputs import Chain, Ctx, Output, release_event
from services.consumers.reactor import ReleaseReactor
from services.jetstream.log import Entry
from services.jetstream.worker import Poison
from services.reads.health_reads import recent_reporters
from services.verification.readiness import landing, readiness_problems, target_checks

NAME = "preparer"
HEALTH_LOOKBACK_S = 15 * 60


def effective_monitoring(requested: RequestedMonitoring | None, channel) -> Monitoring:
    """The request's monitoring over the channel's: what the request leaves out is the channel's
    default; a request may tighten thresholds, never loosen them (`Thresholds.tightened_by`). A
    window and min_samples it states are checked against the channel's minimum by the checklist.
    """
    base = channel.monitoring
    if requested is None:
        return Monitoring(window_s=base.window_s, min_samples=base.min_samples, thresholds=base.thresholds)
    return Monitoring(
        window_s=base.window_s if requested.window_s is None else requested.window_s,
        min_samples=base.min_samples if requested.min_samples is None else requested.min_samples,
        thresholds=base.thresholds.tightened_by(requested.thresholds),
    )


def coarser_than_channel(requested: list[list[str]], channel_plan: list[list[str]]) -> str:
    """Why a requested plan exposes more at once than the channel allows ("" when it does not).

    Each requested stage must fit inside one channel stage (it may split one, never merge
    two), and the stages must keep the channel's order.
    """
    stage_of = {c: i for i, stage in enumerate(channel_plan) for c in stage}
    problems, last = [], -1
    for n, stage in enumerate(requested, 1):
        spans = sorted({stage_of[c] for c in stage if c in stage_of})
        if len(spans) > 1:
            problems.append(f"stage {n} {stage} spans channel stages {[i + 1 for i in spans]}")
        elif spans and spans[0] < last:
            problems.append(f"stage {n} {stage} comes before channel stage {last + 1}")
        if spans:
            last = max(last, spans[-1])
    return ("plan coarser than the channel's: " + "; ".join(problems)) if problems else ""


def promotion_confirmed(release: ReleaseState) -> bool:
    """The request is a genuine promotion: the service wrote it, and its source's `promoted` names it."""
    req = release.requested
    return (
        req is not None
        and req.promoted_from is not None
        and release.requested_by is not None
        and release.requested_by.kind == "service"
        and release.promotion_confirmed_by == req.promoted_from
    )


def _promotion_gap(release: ReleaseState) -> str:
    req = release.requested
    if req is None or req.promoted_from is None:
        return "names no release it was promoted from"
    if release.requested_by is None or release.requested_by.kind != "service":
        by = release.requested_by
        return f"was written by {by.kind}:{by.id}, not by the service" if by else "has no known writer"
    return f"is not named by a `promoted` event of release {req.promoted_from}"


def awaiting_promotion(world: World, release: ReleaseState) -> bool:
    """The source is about to record `promoted`: a log written before the promoter stored both in one
    atomic batch (`promoted` first) has the service's linked request first. Anyone else's claim is
    answered at once (a request never waits on a release its writer does not control)."""
    req = release.requested
    if req is None or req.promoted_from is None or promotion_confirmed(release):
        return False
    if release.requested_by is None or release.requested_by.kind != "service":
        return False
    source = world.release(req.promoted_from)
    return source is not None and source.phase == "passed" and source.promoted is None


def preflight(
    world: World,
    release: ReleaseState,
    ctx: Ctx,
    health: Mapping[str, int] | None,
    health_error: str | None = None,
    ready: Mapping[str, str | None] | None = None,
    fits: Mapping[str, str | None] | None = None,
) -> tuple[list[ChecklistItem], Prepared | None]:
    """The checklist, and the plan if every item passed.

    `ready`: rollback target digest -> why it is unusable (None: usable), as the adapter
    observed it; None when not observed (a replay), and then no readiness item is recorded.
    `fits`: target digest -> why the channel as configured now would not admit it (a rollback there
    would hold, the activator judges its landing so): a warning on the readiness item, never a refusal.
    """
    req = release.requested
    assert req is not None
    env, channel = req.target.env, req.target.channel
    items: list[ChecklistItem] = []

    def check(item: str, ok: bool, detail: str = "") -> bool:
        items.append(ChecklistItem(item=item, ok=ok, detail=detail))
        return ok

    channel_state = world.channel_state(env, channel)
    unreadable = world.channel_problem(env, channel)  # an unreadable newest config is a problem, never "no config"
    check(
        "target_exists",
        channel_state is not None and unreadable is None,
        unreadable.describe()
        if unreadable
        else f"{env}/{channel} is configured"
        if channel_state
        else f"channel {env}/{channel} has no configuration (kxr channel set)",
    )
    cfg = world.channel_config(env, channel)

    plan = req.plan if req.plan else cfg.effective_plan
    known = set(cfg.cohort_names)
    flat = [c for stage in plan for c in stage]
    unknown = sorted(set(flat) - known)
    dupes = sorted({c for c in flat if flat.count(c) > 1})
    coarser = coarser_than_channel(req.plan, cfg.effective_plan) if req.plan and not unknown else ""
    plan_ok = bool(plan) and all(plan) and not unknown and not dupes and not coarser
    detail = "; ".join(
        filter(
            None,
            [
                f"unknown cohorts {unknown}" if unknown else "",
                f"cohorts named twice {dupes}" if dupes else "",
                "empty stage" if not all(plan) or not plan else "",
                coarser,
            ],
        )
    )
    check("cohort_plan_valid", plan_ok, detail or f"{len(plan)} stage(s): " + " -> ".join("+".join(s) for s in plan))

    monitoring = effective_monitoring(req.monitoring, cfg)
    check(
        "monitoring_window",
        monitoring.window_s >= cfg.monitoring.window_s,
        f"window {monitoring.window_s}s (channel minimum {cfg.monitoring.window_s}s)",
    )
    check(
        "monitoring_min_samples",
        monitoring.min_samples >= cfg.monitoring.min_samples,
        f"min_samples {monitoring.min_samples} (channel minimum {cfg.monitoring.min_samples})",
    )

    if req.monitoring is not None and req.monitoring.thresholds.model_fields_set:  # recorded when asked for
        unjudged = requested_threshold_problems(req.monitoring.thresholds, cfg)
        check("monitoring_thresholds", not unjudged, "; ".join(unjudged) or "every requested threshold can be judged")

    # Pinned cohorts are held by an operator: the rollout skips them and says so.
    skipped: dict[str, str] = {}
    for cohort in flat:
        pin = world.scope(env, channel, cohort).pinned_at(ctx.now)
        if pin is not None:
            skipped[cohort] = f"pinned to {pin.pack.version} until {pin.until.isoformat()}: {pin.rationale}"
    stages = [[c for c in stage if c not in skipped] for stage in plan]
    check("smallest_scope", *smallest_scope(plan, stages))
    stages = [s for s in stages if s]
    # Every cohort pinned is not a failure: nothing is exposed, and the release closes `pinned`.
    check(
        "cohorts_to_roll_out",
        True,
        "every target cohort is pinned: nothing to roll out"
        if not stages
        else f"{sum(map(len, stages))} cohort(s), {len(skipped)} pinned and skipped",
    )

    check("concurrent_releases", True, concurrent_releases(world, release, env, channel, flat))

    strategy = req.rollback.strategy
    targets: dict[str, PackRef | None] = {}
    problems = []
    rolled = [c for s in stages for c in s]
    # a plan over cohorts that have had a pack and others that never had one: no one strategy fits both,
    # so the remedy is named rather than a strategy that fails too
    never, mixed = never_ran(world, env, channel, rolled)
    for cohort in rolled:
        scope = world.scope(env, channel, cohort)
        pin = scope.pinned_at(ctx.now)
        if strategy == "none":
            if scope.ever_active:
                problems.append(f"{cohort} has had an active pack, so rollback strategy 'none' is not allowed")
            targets[cohort] = None
        elif strategy == "pinned":
            # "pinned prior": back to the pack this cohort was last pinned to (a pin in force
            # would have skipped the cohort, so this is an earlier, since-lifted pin).
            prior = scope.last_pin
            if prior is None:
                problems.append(f"{cohort} has never been pinned, so there is no pinned prior to roll back to")
            elif prior.pack.digest in scope.pulled:
                problems.append(
                    f"{cohort}'s pinned prior {prior.pack.version} was rolled back there since it was pinned "
                    "(pin it again to vouch for it)"
                )
            targets[cohort] = prior.pack if prior else None
        else:
            target = pin.pack if pin else scope.lkg
            if target is None:
                if not scope.ever_active and not mixed:
                    hint = " (request rollback strategy 'none' for a never-activated scope)"
                elif scope.pulled:
                    hint = " (its last one was rolled back there: pin a pack to vouch for it)"
                else:
                    hint = ""
                problems.append(f"{cohort} has no last-known-good pack{hint}")
            targets[cohort] = target
        # The pack being released is no rollback target: a rollback would "land" on the pack that
        # failed (no pointer moves, yet `rolled_back` says the cohort is back on its target).
        chosen = targets[cohort]
        if chosen is not None and chosen.digest == req.pack.digest:
            source = "pinned prior" if strategy == "pinned" else "last-known-good"
            problems.append(
                f"{cohort}'s {source} is the pack being released ({chosen.version}): no other pack to roll back to"
            )
            targets[cohort] = None
    if problems and mixed and strategy != "pinned":
        names = ", ".join(never)
        problems.append(
            f"{names} never had an active pack while the plan's other cohorts have, so no one strategy fits: "
            f"{bring_in_first(never)}, or leave {names} out of this plan"
        )
    check(
        "rollback_target",
        not problems,
        "; ".join(problems)
        or f"strategy {strategy}: " + ", ".join(f"{c}->{t.version if t else 'none'}" for c, t in targets.items()),
    )
    if ready is not None and not problems:
        unready = readiness_problems(targets, strategy, ready)
        check(
            "rollback_target_ready",
            not unready,
            "; ".join(unready) or unfit_warning(targets, fits or {}),
        )

    # a promotion-only channel asks every request; any channel asks one that says it was promoted (its
    # evidence record would say so): it must be that release's promotion
    if cfg.policy.accept == "promotion" or req.promoted_from is not None:
        genuine = promotion_confirmed(release)
        if cfg.policy.accept == "promotion":
            detail = f"{env}/{channel} accepts only releases promoted by the service from its previous channel"
            detail += "" if genuine else f"; this request {_promotion_gap(release)}"
        elif genuine:
            detail = f"promoted from release {req.promoted_from}"
        else:
            detail = (
                f"this request names release {req.promoted_from} as the one it was promoted from, "
                f"but it {_promotion_gap(release)}"
            )
        check("accepts_request", genuine, detail)

    if health_error is not None and not req.acknowledge_no_health:
        check("observability", False, f"runtime health could not be read: {health_error}")
    elif health is not None and not req.acknowledge_no_health:
        silent = [c for s in stages for c in s if health.get(c, 0) == 0]
        check(
            "observability",
            not silent,
            f"no runtime reported health in the last {HEALTH_LOOKBACK_S // 60} min for {silent} "
            "(set acknowledge_no_health to proceed)"
            if silent
            else "runtimes report health in every target cohort",
        )
    else:
        check(
            "observability",
            True,
            "acknowledged by the request: no runtime health required" if req.acknowledge_no_health else "not checked",
        )

    # who hears of it when it fails: a rollback, or (strategy none: nothing to go back to) the escalation
    check("alert_route", *alert_route(cfg, ALERT_KINDS if strategy != "none" else ("escalated",)))

    check(
        "owner_and_escalation",
        bool(req.owner.strip()) and bool(req.escalation.strip()),
        f"owner {req.owner!r}, escalation {req.escalation!r}",
    )

    if not all(i.ok for i in items):
        return items, None
    return items, Prepared(
        pack=req.pack,
        target=req.target,
        stages=stages,
        skipped=skipped,
        monitoring=monitoring,
        rollback_strategy=strategy,
        rollback_targets=targets,
        checklist=items,
        owner=req.owner,
        escalation=req.escalation,
    )


SHOWN_CONCURRENT = 3  # releases named in the item's detail; the rest counted


def concurrent_releases(world: World, release: ReleaseState, env: str, channel: str, cohorts: list[str]) -> str:
    """The checklist's word on the channel's other releases in flight (a warning, never a refusal).

    Nothing stops two releases of one channel running at once, and every safety rule holds then (the
    lifecycle model drives it): a cohort runs the pack of whichever release switched it last, and a
    rollback leaves a cohort another release has switched since. But an operator reading one release's
    record should not have to find the other by chance: each one in flight is named, with the cohorts
    both plans share."""
    others = []
    for other in sorted(_in_flight_on(world, env, channel, release.release_id), key=lambda r: r.release_id):
        shared = [c for c in cohorts if any(c in stage for stage in other.stages)]
        pack = other.pack
        others.append(
            f"{other.release_id} ({pack.version if pack else 'pack unknown'}, {other.phase}"
            + (f", sharing {'+'.join(shared)})" if shared else ")")
        )
    if not others:
        return f"no other release of {env}/{channel} in flight"
    named = ", ".join(others[:SHOWN_CONCURRENT]) + (
        f" and {len(others) - SHOWN_CONCURRENT} more" if len(others) > SHOWN_CONCURRENT else ""
    )
    return (
        f"warning: {len(others)} other release(s) of {env}/{channel} in flight: {named}; a cohort runs the pack "
        "of whichever release switches it last, and a rollback leaves a cohort another release has switched since"
    )


def _in_flight_on(world: World, env: str, channel: str, but: str) -> list[ReleaseState]:
    """The releases in flight on `env`/`channel` other than `but`, in no order (sorted by whoever shows them:
    only those, not every release in flight, at each pre-flight)."""
    out = []
    for rid in world.in_flight:
        other = world.releases.get(rid)
        if other is None or rid == but:
            continue
        target = other.prepared.target if other.prepared else other.requested.target if other.requested else None
        if target is not None and (target.env, target.channel) == (env, channel):
            out.append(other)
    return out


def unfit_warning(targets: Mapping[str, PackRef | None], fits: Mapping[str, str | None]) -> str:
    """The readiness item's detail for targets that are sound: a warning for each the channel no longer
    admits (a rollback would hold and escalate there, not land)."""
    unfit = [f"{c}'s {t.short()} ({fits[t.digest]})" for c, t in targets.items() if t and fits.get(t.digest)]
    if not unfit:
        return "every target is trusted, unexpired and present in the pack store"
    return (
        "warning: trusted, unexpired and present, but the channel as configured now no longer admits "
        + "; ".join(unfit)
        + ": a rollback would hold and escalate, not land (pin a pack that fits, or roll forward)"
    )


def smallest_scope(plan: list[list[str]], unpinned: list[list[str]]) -> tuple[bool, str]:
    """The pack first runs where the plan starts (the seed: "start in the smallest safe scope"): a plan
    whose first stages are all pinned would expose it first in a wider one, without a canary's data.
    `unpinned`: each stage of `plan` without its pinned cohorts (ok, detail)."""
    first = next((i for i, stage in enumerate(unpinned) if stage), None)
    if first is None:
        return True, "every target cohort is pinned"
    if first == 0:
        return True, "the pack first runs in the plan's first stage"
    return False, (
        f"every cohort of the plan's first stage ({', '.join(plan[0])}) is pinned: the pack would first run in "
        f"stage {first + 1} ({', '.join(unpinned[first])}), a wider scope; unpin the first stage's cohorts, "
        "or set a plan that starts elsewhere (kxr channel set)"
    )


ALERT_KINDS = ("rolled_back", "escalated")


def alert_route(cfg: ChannelConfig, kinds: tuple[str, ...] = ALERT_KINDS) -> tuple[bool, str]:
    """Whether a rollback or an escalation of this channel's releases reaches someone (ok, detail):
    `kinds`, the events a failed release of this one's strategy ends in (strategy none: `escalated`).

    A missing route is a recorded warning (ok, the detail says so), not a rejection: the default
    rollback strategy is `lkg`, so rejecting would stop every release of every channel configured
    before notifications existed. A channel that wants the gate sets `require_alert_route`; one
    that alerts some other way records why in `alert_waiver`.
    """
    covering = sorted(s.name for s in cfg.notifications if set(s.on) & set(kinds))
    missing = [k for k in kinds if not any(k in s.on for s in cfg.notifications)]
    if not missing:
        what = "rollbacks and escalations" if "rolled_back" in kinds else "escalations"
        return True, f"{what} notify {', '.join(covering)}"
    gap = f"no notification sink is subscribed to {' or '.join(missing)}"
    if cfg.policy.alert_waiver is not None:
        return True, f"{gap}; waived by the channel: {cfg.policy.alert_waiver}"
    hint = "add a [[notifications]] sink, or record [policy] alert_waiver"
    if cfg.policy.require_alert_route:
        return False, f"{gap} and the channel requires an alert route ({hint})"
    return True, f"warning: {gap}, so it would reach nobody ({hint})"


def decide(
    world: World,
    release: ReleaseState,
    ctx: Ctx,
    health: Mapping[str, int] | None,
    health_error: str | None = None,
    ready: Mapping[str, str | None] | None = None,
    fits: Mapping[str, str | None] | None = None,
) -> list[Output]:
    if release.phase != "requested" or release.requested is None:
        return []
    if awaiting_promotion(world, release):
        return []  # decided again once the source's `promoted` is in the log (the reconcile sweep)
    try:
        items, prepared = preflight(world, release, ctx, health, health_error, ready, fits)
    except (ValueError, TypeError) as exc:  # an inconsistent plan must still be answered, closed
        items, prepared = (
            [ChecklistItem(item="preflight", ok=False, detail=f"pre-flight could not evaluate the request: {exc}")],
            None,
        )
    if prepared is None:
        reasons = [Reason(code=i.item, message=i.detail, field=None) for i in items if not i.ok]
        return [Chain((release_event(ctx, release, "rejected", Rejected(reasons=reasons)),))]
    event = release_event(ctx, release, "prepared", prepared)
    if not prepared.stages:  # every cohort pinned: the record of the plan, then the close that says so
        closed = release_event(
            ctx,
            replace(release, last_event_id=event.event_id),
            "closed",
            Closed(outcome="pinned", summary=prepared.pinned_summary()),
        )
        return [Chain((event, closed))]
    return [Chain((event,))]


# ---- adapter ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PreflightFacts:
    """What pre-flight reads outside the log: who reported health lately, and the rollback targets' readiness."""

    health: Mapping[str, int] | None  # cohort -> runtimes that reported (None: not read)
    health_error: str | None  # why health could not be read (a fact: `acknowledge_no_health` may waive it)
    ready: Mapping[str, str | None]  # rollback target digest -> why it is unusable (None: usable)
    fits: Mapping[str, str | None] = field(default_factory=dict)  # digest -> why the channel no longer admits it


class Preparer(ReleaseReactor[PreflightFacts]):
    name = NAME
    acts_in = frozenset({"requested"})

    async def observe(self, world, release, ctx) -> PreflightFacts:
        req = release.requested
        if req is None:
            return PreflightFacts(None, None, {})
        cohorts = [
            c
            for stage in (req.plan or world.channel_config(req.target.env, req.target.channel).effective_plan)
            for c in stage
        ]
        ready, fits = await self.observe_targets(world, release, ctx)
        try:
            health = await recent_reporters(
                self.port.js,
                self.port.subjects,
                req.target.env,
                req.target.channel,
                cohorts,
                ctx.now - timedelta(seconds=HEALTH_LOOKBACK_S),
            )
        except Exception as exc:  # fail closed: unknown observability is not observability
            return PreflightFacts(None, f"{exc.__class__.__name__}: {exc}", ready, fits)
        return PreflightFacts(health, None, ready, fits)

    def decide(self, world, release, facts: PreflightFacts, ctx):
        return decide(world, release, ctx, facts.health, facts.health_error, facts.ready, facts.fits)

    def fail_closed(self, world, release, failed, ctx):
        """A request pre-flight could not get through is answered, closed: `rejected`, saying why."""
        if release.phase != "requested":
            return []
        reason = Reason(
            code="preflight", message=f"pre-flight could not evaluate the request: {failed.message}", field=None
        )
        return [Chain((release_event(ctx, release, "rejected", Rejected(reasons=[reason])),))]

    async def observe_targets(self, world, release, ctx) -> tuple[dict[str, str | None], dict[str, str | None]]:
        """Rollback readiness of the targets pre-flight would record (checked in the pack store), and, for
        those that are sound, whether the channel as configured now admits them (where a rollback lands)."""
        try:
            _, prepared = preflight(world, release, ctx, None)
        except (ValueError, TypeError):
            return {}, {}  # the request is answered with the reason by `decide`
        if prepared is None:
            return {}, {}
        env, channel = prepared.target.env, prepared.target.channel
        cohorts = tuple(c for s in prepared.stages for c in s)
        checks = await target_checks(
            self.port,
            prepared.rollback_targets.values(),
            env,
            channel,
            cohorts,
            ctx.now,
            landing(world, env, channel, cohorts),
        )
        ready = {d: None if c.channel_refuses else c.problem for d, c in checks.items()}
        fits = {d: c.problem if c.channel_refuses else None for d, c in checks.items()}
        return ready, fits

    def answers_junk(self, world, problem) -> bool:
        """A junk request not answered yet (its release id unknown): `on_undecodable` answers it."""
        parts = self.port.subjects.parse(problem.subject) if problem.subject else None
        return parts is not None and _unanswered(world, parts[0], parts[1])

    async def on_undecodable(self, msg, release_id, problem):
        """A request that does not decode is answered with `rejected`, listing every problem."""
        family, tokens = self.port.subjects.parse(msg.subject)
        if not _unanswered(self.port.follower.world, family, tokens):
            raise Poison(str(problem))
        seq = msg.metadata.sequence.stream
        ctx = self.port.ctx(NAME)
        rejected = make_event(
            "release.rejected",
            Rejected(reasons=[Reason(**r) for r in problem.reasons]),
            actor=ctx.actor,
            release_id=release_id,
            event_id=derived_event_id(f"{msg.subject}@{seq}", NAME, "rejected"),
            occurred_at=ctx.now,
        )
        await self.port.log.append(Entry(rejected, seq, self.port.subjects.release_filter(release_id)))


def _unanswered(world, family: str, tokens: list[str]) -> bool:
    """A `release.<id>.requested` entry whose id is a valid token no release has used yet."""
    return (
        family == "release"
        and len(tokens) == 2
        and tokens[1] == "requested"
        and is_token(tokens[0])
        and not world.known(tokens[0])
    )
