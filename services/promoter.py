"""Promoter: moves a release on after each verdict, and closes it.

- window passed -> next stage (`expanded`), or after the last stage `promoted`
  (a linked release on the next channel, through every gate again) and `closed`
- window failed, activation failed after exposure, abort -> `rollback_started`
  with a deterministic target per cohort: its pin, else its last-known-good
- rejected / verification failed / nothing exposed -> `closed` (never activated)
- inconclusive -> nothing: the release holds for an operator
"""

from __future__ import annotations

import hashlib

from events.codec import make_event
from events.ids import derived_event_id
from events.model import Actor, Closed, Expanded, PackRef, Promoted, Requested, RollbackPlan, RollbackStarted, Target
from events.tokens import is_token
from projections.releases import ReleaseState
from projections.world import World, scopes_of
from .outputs import Chain, Ctx, NewRelease, Output, release_event
from .reactor import ReleaseReactor

NAME = "promoter"


def rollback_targets(world: World, release: ReleaseState, ctx: Ctx) -> dict[str, PackRef | None]:
    """Per cohort: the pin in force, else last-known-good, else what the plan recorded."""
    assert release.prepared is not None
    env, channel = release.prepared.target.env, release.prepared.target.channel
    out: dict[str, PackRef | None] = {}
    for cohort in release.activated:
        scope = world.scope(env, channel, cohort)
        pin = scope.pinned_at(ctx.now)
        if pin is not None:
            out[cohort] = pin.pack
        elif scope.lkg is not None and (release.verified is None or scope.lkg.digest != release.verified.pack.digest):
            out[cohort] = scope.lkg
        else:
            out[cohort] = release.prepared.rollback_targets.get(cohort)
    return out


def promotion_blockers(release: ReleaseState) -> list[str]:
    """Why a release that passed its stages must still not be promoted (empty: it may).

    Every stage needs a window that the monitor passed (an operator override passes a
    stage, not a promotion), and no window may have seen an error class new to this pack.
    """
    blockers = []
    passed_by_monitor = {v.stage for kind, v in release.verdicts if kind == "monitoring_passed" and not v.reason.startswith("operator override")}
    missing = [i + 1 for i in range(len(release.stages)) if i not in passed_by_monitor]
    if missing:
        blockers.append(f"stage(s) {missing} passed on an operator's word, not on monitoring")
    new_classes = sorted({c for _, v in release.verdicts for c in v.figures.get("new_error_classes", [])})
    if new_classes:
        blockers.append(f"new error classes seen: {', '.join(new_classes)}")
    return blockers


def linked_release_id(release_id: str, channel: str) -> str:
    candidate = f"{release_id}-{channel}"
    if is_token(candidate):
        return candidate
    return f"{release_id[:40]}-{hashlib.sha256(candidate.encode()).hexdigest()[:16]}"


def _rollback(world: World, release: ReleaseState, ctx: Ctx, trigger: str, reason: str) -> list[Output]:
    started = RollbackStarted(trigger=trigger, reason=reason, targets=rollback_targets(world, release, ctx))  # type: ignore[arg-type]
    return [Chain((release_event(ctx, release, "rollback_started", started),))]


def _close(ctx: Ctx, release: ReleaseState, outcome: str, summary: str) -> list[Output]:
    return [Chain((release_event(ctx, release, "closed", Closed(outcome=outcome, summary=summary)),))]  # type: ignore[arg-type]


def decide(world: World, release: ReleaseState, ctx: Ctx) -> list[Output]:
    phase = release.phase
    if phase == "rejected":
        return _close(ctx, release, "rejected", release.failure or "rejected at pre-flight")
    if phase == "verification_failed":
        return _close(ctx, release, "failed", f"never activated: {release.failure}")
    if phase == "activation_failed":
        if release.activated:
            return _rollback(world, release, ctx, "activation_failure", release.failure or "activation failed")
        return _close(ctx, release, "failed", f"never activated: {release.failure}")
    if phase == "failed":
        last = release.verdicts[-1][1] if release.verdicts else None
        return _rollback(world, release, ctx, "monitoring_failure", last.reason if last else "monitoring failed")
    if phase == "aborting":
        if release.activated:
            return _rollback(world, release, ctx, "abort", release.failure or "aborted by operator")
        return _close(ctx, release, "aborted", release.failure or "aborted before activation")
    if phase == "rolled_back":
        outcome = "aborted" if release.aborted else "rolled_back"
        return _close(ctx, release, outcome, f"{release.failure}; cohorts {', '.join(release.activated)} back on their targets")
    if phase == "promoted":
        return _close(ctx, release, "success", f"promoted to {release.promoted.to_channel if release.promoted else '?'}")
    if phase == "passed" and not release.paused:
        return _advance(world, release, ctx)
    return []


def _advance(world: World, release: ReleaseState, ctx: Ctx) -> list[Output]:
    assert release.prepared is not None
    stages = release.prepared.stages
    nxt = release.stage + 1
    if nxt < len(stages):
        return [Chain((release_event(ctx, release, "expanded", Expanded(from_stage=release.stage, to_stage=nxt, cohorts=stages[nxt])),))]
    target = release.prepared.target
    promote_to = world.channel_config(target.env, target.channel).promote_to
    summary = f"all {len(stages)} stage(s) passed monitoring"
    if not promote_to or release.verified is None or release.requested is None:
        return _close(ctx, release, "success", summary)
    blocked = promotion_blockers(release)
    if blocked:
        return _close(ctx, release, "success", f"{summary}; promotion to {promote_to} withheld: {'; '.join(blocked)}")
    linked = linked_release_id(release.release_id, promote_to)
    req = release.requested
    # The next channel's own history decides its rollback strategy: LKG where it has run a pack.
    ever_active = any(s.ever_active for s in scopes_of(world, target.env, promote_to))
    rollback = req.rollback if req.rollback.strategy == "pinned" else RollbackPlan(strategy="lkg" if ever_active else "none")
    requested = Requested(
        pack=release.verified.pack.model_copy(update={"size": None}),
        target=Target(env=target.env, channel=promote_to),
        owner=req.owner, escalation=req.escalation, rollback=rollback,
        reason=f"promoted from {target.channel} by release {release.release_id}: {summary}",
        promoted_from=release.release_id, acknowledge_no_health=req.acknowledge_no_health,
    )
    new = make_event(
        "release.requested", requested, actor=Actor(kind="service", id=ctx.service), release_id=linked,
        causation_id=release.last_event_id, correlation_id=linked,
        event_id=derived_event_id(release.last_event_id or release.release_id, ctx.service, "promote/request"), occurred_at=ctx.now,
    )
    promoted = Promoted(to_channel=promote_to, promoted_to=linked, rationale=summary)
    return [NewRelease(new), Chain((release_event(ctx, release, "promoted", promoted),))]


# ---- adapter ------------------------------------------------------------------------------------
class Promoter(ReleaseReactor):
    name = NAME
    acts_in = frozenset({"rejected", "verification_failed", "activation_failed", "failed", "aborting", "rolled_back", "promoted", "passed"})

    async def decide(self, world, release, ctx):
        return decide(world, release, ctx)
