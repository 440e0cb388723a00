"""One way of deciding on a release, and the one way every decision is made from it.

A consumer is a step (services/consumers/reactor.py), and so is each of its other triggers (the
monitor's window timer, a live breach; the guard's policy rollback). Whether a decision is made
from the consumer's own delivery or on the fast path (fast_path.py), it is made here: observe,
then decide on what was observed, or, when the observation failed, fail closed saying why.
"""

from __future__ import annotations

import logging
from typing import Protocol, TypeVar

from projections.releases import ReleaseState
from projections.world import World
from services.consumers.outputs import Ctx, Failed, Output

log = logging.getLogger(__name__)

F = TypeVar("F")


class Step(Protocol[F]):
    async def observe(self, world: World, release: ReleaseState, ctx: Ctx) -> F | Failed: ...

    def decide(self, world: World, release: ReleaseState, facts: F, ctx: Ctx) -> list[Output]: ...

    def fail_closed(self, world: World, release: ReleaseState, failed: Failed, ctx: Ctx) -> list[Output]: ...


async def decided(
    step: Step[F], name: str, world: World, release: ReleaseState, ctx: Ctx
) -> tuple[list[Output], Failed | None]:
    """What `step` decides on this state (not performed), and the failure it observed, if any
    (its outputs are then the fail-closed ones). `name`: the consumer, for the log line."""
    facts = await step.observe(world, release, ctx)
    if isinstance(facts, Failed):
        log.warning("%s: %s: %s/%s: %s", name, release.release_id, facts.step, facts.code, facts.message)
        return step.fail_closed(world, release, facts, ctx), facts
    return step.decide(world, release, facts, ctx), None
