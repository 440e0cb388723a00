"""Verifier adapter: fetch, stream, run the gates under one deadline, record the outcome.

Fail closed: a timeout is gate `deadline`, anything unexpected is gate `internal`,
and either ends in `verification_failed` — never in `verified`.
"""

from __future__ import annotations

import asyncio
import logging

from events.manifest import pack_object_name
from events.model import GateOutcome, VerificationFailed, Verified
from projections.releases import ReleaseState
from projections.world import World
from services.consumers.outputs import Chain, Ctx, Failed, Output, release_event
from services.consumers.reactor import ReleaseReactor
from services.jetstream.packstore import PackStore
from services.verification.context import configured_channel, verify_context
from services.verification.gates import (
    DEADLINE_GATE,
    INTERNAL_ERROR,
    TIMEOUT_CODE,
    GateFailure,
    Verification,
    VerifyContext,
)
from services.verification.pipeline import run_gates

NAME = "verifier"
log = logging.getLogger(__name__)
# the largest pack the fast path verifies in the batch of the steps before (a 64 MiB read and hash
# takes ~0.2 s here); a larger one is verified from this consumer's own delivery, after they are stored
FAST_PATH_MAX_PACK_BYTES = 64 * 1024 * 1024


def context_for(world: World, release: ReleaseState, ctx: Ctx, trust_root) -> VerifyContext:
    """A rollout's context: every cohort of every stage, against what each runs now."""
    assert release.prepared is not None
    prepared = release.prepared
    env, channel = prepared.target.env, prepared.target.channel
    cohorts = tuple(c for stage in prepared.stages for c in stage)
    config, unreadable = configured_channel(world, env, channel)
    return verify_context(
        prepared.pack,
        trust_root,
        ctx.now,
        "rollout",
        env=env,
        channel=channel,
        cohorts=cohorts,
        channel_config=config,
        channel_problem=unreadable,
        active={c: world.scope(env, channel, c).active_pack for c in cohorts},
    )


def decide(release: ReleaseState, ctx: Ctx, v: Verification, failure: GateFailure | None) -> list[Output]:
    """Turn a finished verification (or the adapter's own failure) into the release's next event."""
    failure = failure or v.failure
    outcomes = list(v.outcomes)
    if failure is None and (not v.ok or v.pack is None):
        failure = GateFailure(gate="internal", code=INTERNAL_ERROR, message="verification ended without a verdict")
    if failure is not None:
        if not outcomes or outcomes[-1].ok:
            outcomes.append(GateOutcome(gate=failure.gate, ok=False, code=failure.code, message=failure.message))
        failed = VerificationFailed(
            gate=failure.gate, code=failure.code, message=failure.message, reference_time=ctx.now, gates=outcomes
        )
        return [Chain((release_event(ctx, release, "verification_failed", failed),))]
    assert release.distributed is not None and v.pack is not None
    verified = Verified(
        pack=v.pack, manifest=release.distributed.manifest, reference_time=ctx.now, gates=outcomes, signers=v.signers
    )
    return [Chain((release_event(ctx, release, "verified", verified),))]


class Verifier(ReleaseReactor[Verification]):
    name = NAME
    acts_in = frozenset({"distributed"})

    def trust_root(self):
        """The root in force for this verifier (None: it has none, and refuses everything)."""
        return self.port.current_trust_root()

    def joins(self, world, release) -> bool:
        """On the fast path only for a pack read in a moment: nothing of the batch is stored before the
        verifier has read and hashed the whole pack, so a large one (~3 s a GiB here) would hide the
        release's `prepared` and `distributed` for as long, and hold the preparer's delivery unacked."""
        d = release.distributed
        size = d.objects.get(pack_object_name(d.pack.digest)) if d is not None else None
        return size is not None and size <= FAST_PATH_MAX_PACK_BYTES

    async def observe(self, world, release, ctx) -> Verification | Failed:
        """The gates run on the stored pack, under one deadline; a failure to run them is named
        by the gate it stands for (`trust_root`, `deadline`, `internal`)."""
        if release.prepared is None:
            return Failed(
                "release_not_prepared", "the release has no plan", "internal"
            )  # never acted on: not `distributed`
        trust_root = self.trust_root()
        if trust_root is None:
            return Failed("trust_root_missing", "the verifier has no trust root", "trust_root")
        timeout = self.port.settings.verify_timeout_s
        late = Failed(TIMEOUT_CODE, f"verification did not finish within {timeout:g}s", DEADLINE_GATE)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            # the context too: a raise building it fails closed now, not after the Worker's retries
            vctx = context_for(world, release, ctx, trust_root)
            v = await asyncio.wait_for(
                run_gates(PackStore(self.port.js, self.port.subjects), release.prepared.pack.digest, vctx), timeout
            )
        except TimeoutError:
            return late
        except Exception as exc:  # fail closed on anything unexpected, and say what it was
            log.exception("verifier: %s", release.release_id)
            return Failed.of(exc, INTERNAL_ERROR, "internal")
        if loop.time() - started > timeout:
            # Python 3.11's wait_for can lose its cancellation inside the NATS client and hand back a
            # result after the deadline: a late verdict is a timeout all the same (fail closed).
            return late
        return v

    def decide(self, world, release, facts: Verification, ctx):
        return decide(release, ctx, facts, None)

    def fail_closed(self, world, release, failed, ctx):
        if release.phase != "distributed" or release.prepared is None:
            return []
        empty = Verification(outcomes=[], failure=None, manifest=None, signers=[])
        return decide(release, ctx, empty, GateFailure(failed.step, failed.code, failed.message))
