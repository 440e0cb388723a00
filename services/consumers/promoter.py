"""Promoter: moves a release on after each verdict, and closes it.

- window passed -> next stage (`expanded`), or after the last stage `promoted`
  (a linked release on the next channel, through every gate again) and `closed`;
  before either, every rollback the next step relies on must be ready (`observe`
  checks the targets, a problem holds the release: `escalated` `rollback_not_ready`)
- a stage passed on an operator's word -> `closed` `promoted_by_override`, never
  `success` (its pack never becomes last-known-good) and never promoted
- window failed, activation failed after exposure, abort -> `rollback_started`
  with a deterministic target per cohort: the chosen strategy's, never another's
- rejected / verification failed / nothing exposed -> `closed` (never activated); every stage passed
  with nothing exposed (each cohort pinned by the time its stage came) -> `closed` `pinned`, never promoted
- inconclusive -> nothing: the release holds for an operator
- a pass judged against a channel configuration that is no longer the newest (a change the monitor's append
  could not see; a pass naming none: one whose stage's cohorts the channel no longer has) -> `escalated`
  `stale_pass`: the release holds for an operator, and the pass counts for nothing
- aborted -> never moves on again: it rolls back, holds, or an operator closes it
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from events.channel import ChannelMonitoring
from events.codec import make_event
from events.ids import derived_event_id
from events.model import (
    Actor,
    Closed,
    Escalated,
    Expanded,
    PackRef,
    Promoted,
    Requested,
    RequestedMonitoring,
    RollbackPlan,
    RollbackStarted,
    Target,
)
from events.tokens import is_token
from projections.releases import STALE_PASS, ReleaseState
from projections.rollback import pulled_there, rollback_target, rollback_targets
from projections.world import World, bring_in_first, never_ran, promotion_not_longer, scopes_of, stale_pass
from services.consumers.outputs import Chain, Ctx, Output, Promotion, release_event
from services.consumers.reactor import ReleaseReactor
from services.verification.readiness import readiness_problems, target_problems

NAME = "promoter"


def readiness_targets(world: World, release: ReleaseState, ctx: Ctx) -> dict[str, PackRef | None]:
    """The rollback targets the next step relies on: every cohort exposed so far and the next stage's."""
    assert release.prepared is not None
    nxt = release.stage + 1
    upcoming = release.prepared.stages[nxt] if nxt < len(release.prepared.stages) else []
    cohorts = list(release.activated) + [c for c in upcoming if c not in release.activated]
    return {cohort: rollback_target(world, release, cohort, ctx.now) for cohort in cohorts}


def promotion_blockers(release: ReleaseState) -> list[str]:
    """Why a release that passed its stages must still not be promoted (empty: it may).

    Every stage needs a window that the monitor passed (an operator override passes a
    stage, not a promotion), and no window may have seen an error class new to this pack.
    """
    blockers = []
    passed_by_monitor = release.stages_passed_on_data
    missing = [i + 1 for i in range(len(release.stages)) if i not in passed_by_monitor]
    if missing:
        blockers.append(f"stage(s) {missing} passed on an operator's word, not on monitoring")
    new_classes = sorted({c for _, v in release.verdicts for c in v.figures.get("new_error_classes", [])})
    if new_classes:
        blockers.append(f"new error classes seen: {', '.join(new_classes)}")
    return blockers


def carried_monitoring(asked: RequestedMonitoring | None, nxt: ChannelMonitoring) -> RequestedMonitoring | None:
    """The release's own success criteria, carried to its promotion: the stricter of the request's and
    the next channel's, field by field (a longer window, more samples; the request's thresholds, which
    that channel's pre-flight tightens its own with). None when the request asked for nothing, and a
    field it left out stays out: the next channel's defaults apply, as to any request there."""
    if asked is None:
        return None
    return RequestedMonitoring(
        window_s=None if asked.window_s is None else max(asked.window_s, nxt.window_s),
        min_samples=None if asked.min_samples is None else max(asked.min_samples, nxt.min_samples),
        thresholds=asked.thresholds,
    )


def linked_release_id(release_id: str, channel: str) -> str:
    candidate = f"{release_id}-{channel}"
    if is_token(candidate):
        return candidate
    return f"{release_id[:40]}-{hashlib.sha256(candidate.encode()).hexdigest()[:16]}"


def _rollback(world: World, release: ReleaseState, ctx: Ctx, trigger: str, reason: str) -> list[Output]:
    started = RollbackStarted(trigger=trigger, reason=reason, targets=rollback_targets(world, release, ctx.now))
    return [Chain((release_event(ctx, release, "rollback_started", started),))]


def _close(ctx: Ctx, release: ReleaseState, outcome: str, summary: str) -> list[Output]:
    return [Chain((release_event(ctx, release, "closed", Closed(outcome=outcome, summary=summary)),))]


def override_note(release: ReleaseState) -> str:
    """Which stages moved on by an operator's word, and whose ("" when every one passed on data)."""
    stages = release.stages_passed_by_override
    if not stages:
        return ""
    who = sorted({actor for stage, actor in release.overrides if stage in stages}) or ["an operator"]
    return f"stage(s) {[s + 1 for s in stages]} passed by operator override ({', '.join(who)}), not on monitoring data"


def unplanned_note(world: World, release: ReleaseState) -> str:
    """The channel's cohorts, as configured now, that the release's plan never named ("" when none): a
    cohort added since the release was prepared (or left out of a requested plan) does not run its pack,
    and a record that says "every stage passed" must not read as "the whole channel runs it"."""
    assert release.prepared is not None
    target = release.prepared.target
    planned = {c for stage in release.prepared.stages for c in stage} | release.prepared.skipped.keys()
    unplanned = [c for c in world.channel_config(target.env, target.channel).cohort_names if c not in planned]
    if not unplanned:
        return ""
    where, version = f"{target.env}/{target.channel}", release.prepared.pack.version
    return f"; cohort(s) {', '.join(unplanned)} of {where} not in its plan: this release did not roll {version} to them"


def new_cohorts_note(world: World, env: str, promote_to: str) -> str:
    """Why the next channel's pre-flight would refuse any promotion now ("" when it would not on this count):
    a cohort of its plan never ran a pack while the others did (`never_ran`). Said in the source's close
    rather than writing a linked release pre-flight is sure to reject."""
    plan = world.channel_config(env, promote_to).effective_plan
    never, mixed = never_ran(world, env, promote_to, [c for stage in plan for c in stage])
    if not mixed:
        return ""
    return f"{promote_to}'s cohort(s) {', '.join(never)} never ran a pack while its others did: {bring_in_first(never)}"


def decide(
    world: World, release: ReleaseState, ctx: Ctx, ready: Mapping[str, str | None] | None = None
) -> list[Output]:
    """`ready`: digest -> why that rollback target is unusable (None: usable), observed by the
    adapter for the targets `readiness_targets` names; None when not observed (a replay)."""
    phase = release.phase
    if release.aborted and phase in ("passed", "promoted"):
        phase = "aborting"  # abort is final: a pass or promotion logged after it moves nothing on
    if phase == "rejected":
        return _close(ctx, release, "rejected", release.failure or "rejected at pre-flight")
    if phase == "verification_failed":
        return _close(ctx, release, "failed", f"never activated: {release.failure}")
    if phase == "activation_failed":
        if release.activated:
            return _rollback(world, release, ctx, "activation_failure", release.failure or "activation failed")
        if release.prepared is not None and not release.prepared.stages:
            return _close(ctx, release, "pinned", release.prepared.pinned_summary())
        return _close(ctx, release, "failed", f"never activated: {release.failure}")
    if phase == "failed":
        last = release.verdicts[-1][1] if release.verdicts else None
        trigger = (last.trigger if last else None) or "monitoring_failure"  # the verdict names its own trigger
        return _rollback(world, release, ctx, trigger, last.reason if last else "monitoring failed")
    if phase == "aborting":
        if release.activated:
            return _rollback(world, release, ctx, "abort", release.failure or "aborted by operator")
        return _close(ctx, release, "aborted", release.failure or "aborted before activation")
    if phase == "rolled_back":
        outcome = "aborted" if release.aborted else "rolled_back"
        return _close(
            ctx, release, outcome, f"{release.failure}; cohorts {', '.join(release.activated)} back on their targets"
        )
    if phase == "promoted":
        promoted_to = f"promoted to {release.promoted.to_channel if release.promoted else '?'}"
        note = override_note(release)
        if note or not release.passed_on_data:  # a promotion is only ever written on data; say so if not
            return _close(
                ctx,
                release,
                "promoted_by_override",
                f"{promoted_to}; {note or 'not every stage passed on monitoring data'}",
            )
        return _close(ctx, release, "success", promoted_to)
    if phase == "passed" and not release.paused:
        return _advance(world, release, ctx, ready)
    return []


def _not_ready(
    world: World, release: ReleaseState, ctx: Ctx, ready: Mapping[str, str | None] | None, step: str
) -> list[Output]:
    """`escalated` (the release holds) when a rollback the next step relies on would not land; [] when ready."""
    if ready is None:
        return []
    assert release.prepared is not None
    targets = readiness_targets(world, release, ctx)
    problems = readiness_problems(targets, release.prepared.rollback_strategy, ready)
    problems += [p for c, t in targets.items() if (p := pulled_there(world, release, c, t)) is not None]
    if not problems:
        return []
    held = Escalated(
        code="rollback_not_ready",
        message=f"{step} held, rollback not ready: {'; '.join(problems)}",
        escalation=release.prepared.escalation,
    )
    return [Chain((release_event(ctx, release, "escalated", held),))]


def _advance(world: World, release: ReleaseState, ctx: Ctx, ready: Mapping[str, str | None] | None) -> list[Output]:
    assert release.prepared is not None
    stale = stale_pass(world, release)
    if stale is not None:  # the channel changed since the window was judged: the pass carries nothing on (void)
        held = Escalated(code=STALE_PASS, message=stale, escalation=release.prepared.escalation)
        return [Chain((release_event(ctx, release, "escalated", held),))]
    stages = release.prepared.stages
    nxt = release.stage + 1
    if nxt < len(stages):
        return _not_ready(world, release, ctx, ready, f"stage {nxt + 1}") or [
            Chain(
                (
                    release_event(
                        ctx, release, "expanded", Expanded(from_stage=release.stage, to_stage=nxt, cohorts=stages[nxt])
                    ),
                )
            )
        ]
    target = release.prepared.target
    promote_to = world.channel_config(target.env, target.channel).promote_to
    if not release.activated:
        # every cohort was pinned by the time its stage came: no window judged the pack on data, so it earns
        # nothing (as when pre-flight finds every cohort pinned): neither `success` nor a promotion
        return _close(
            ctx, release, "pinned", f"all {len(stages)} stage(s) passed with nothing exposed (every cohort pinned)"
        )
    summary = f"all {len(stages)} stage(s) passed monitoring" + unplanned_note(world, release)
    note = override_note(release)
    if note:
        withheld = f"; not promoted to {promote_to}" if promote_to else ""
        return _close(ctx, release, "promoted_by_override", f"all {len(stages)} stage(s) passed; {note}{withheld}")
    if not promote_to or release.verified is None or release.requested is None:
        return _close(ctx, release, "success", summary)
    blocked = promotion_blockers(release)
    shorter = promotion_not_longer(world, target.env, target.channel, promote_to)
    blocked += [shorter] if shorter else []
    blocked += [unrun] if (unrun := new_cohorts_note(world, target.env, promote_to)) else []
    if blocked:
        return _close(ctx, release, "success", f"{summary}; promotion to {promote_to} withheld: {'; '.join(blocked)}")
    not_ready = _not_ready(world, release, ctx, ready, f"promotion to {promote_to}")
    if not_ready:
        return not_ready
    linked = linked_release_id(release.release_id, promote_to)
    req = release.requested
    # The next channel's own history decides its rollback strategy: LKG where it has run a pack.
    ever_active = any(s.ever_active for s in scopes_of(world, target.env, promote_to))
    rollback = (
        req.rollback if req.rollback.strategy == "pinned" else RollbackPlan(strategy="lkg" if ever_active else "none")
    )
    requested = Requested(
        pack=release.verified.pack.model_copy(update={"size": None}),
        target=Target(env=target.env, channel=promote_to),
        owner=req.owner,
        escalation=req.escalation,
        rollback=rollback,
        reason=f"promoted from {target.channel} by release {release.release_id}: {summary}",
        promoted_from=release.release_id,
        acknowledge_no_health=req.acknowledge_no_health,
        monitoring=carried_monitoring(req.monitoring, world.channel_config(target.env, promote_to).monitoring),
    )
    new = make_event(
        "release.requested",
        requested,
        actor=Actor(kind="service", id=ctx.service),
        release_id=linked,
        causation_id=release.last_event_id,
        correlation_id=linked,
        event_id=derived_event_id(release.last_event_id or release.release_id, ctx.service, "promote/request"),
        occurred_at=ctx.now,
    )
    promoted = Promoted(to_channel=promote_to, promoted_to=linked, rationale=summary)
    return [Promotion(release_event(ctx, release, "promoted", promoted), new)]


# ---- adapter ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReadinessFacts:
    """Before exposing more: digest -> why that rollback target is unusable (None: usable);
    `ready` is None when nothing is about to be exposed (nothing was read)."""

    ready: Mapping[str, str | None] | None = None


class Promoter(ReleaseReactor[ReadinessFacts]):
    name = NAME
    acts_in = frozenset(
        {
            "rejected",
            "verification_failed",
            "activation_failed",
            "failed",
            "aborting",
            "rolled_back",
            "promoted",
            "passed",
        }
    )

    async def observe(self, world, release, ctx) -> ReadinessFacts:
        """The facts `decide` needs before exposing more: is every rollback target still usable?"""
        if release.phase != "passed" or release.paused or release.aborted or release.prepared is None:
            return ReadinessFacts()
        target = release.prepared.target
        return ReadinessFacts(
            await target_problems(
                self.port,
                readiness_targets(world, release, ctx).values(),
                target.env,
                target.channel,
                tuple(release.activated),
                ctx.now,
            )
        )

    def decide(self, world, release, facts: ReadinessFacts, ctx):
        return decide(world, release, ctx, facts.ready)
