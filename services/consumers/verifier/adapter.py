"""Verifier adapter: fetch, stream, run the gates under one deadline, record the outcome.

Fail closed: a timeout is gate `deadline`, anything unexpected is gate `internal`,
and either ends in `verification_failed` — never in `verified`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from events.manifest import MANIFEST_MAX_BYTES, attestation_object_name, manifest_object_name, pack_object_name
from events.model import GateOutcome, VerificationFailed, Verified
from projections.releases import ReleaseState
from projections.world import World
from services.consumers.outputs import Chain, Ctx, Output, release_event
from services.jetstream.packstore import ObjectTooLarge, PackStore
from services.consumers.reactor import Failed, ReleaseReactor
from services.consumers.verifier.gates import (
    ATTESTATION_MAX_BYTES, DEADLINE_GATE, INTERNAL_ERROR, TIMEOUT_CODE, GateFailure, PackDigester, PackOversized,
    Verification, VerifyContext, attestation_required, check_manifest, check_pack, check_policy,
)

NAME = "verifier"
log = logging.getLogger(__name__)


def context_for(world: World, release: ReleaseState, ctx: Ctx, trust_root) -> VerifyContext:
    assert release.prepared is not None
    prepared = release.prepared
    env, channel = prepared.target.env, prepared.target.channel
    cohorts = tuple(c for stage in prepared.stages for c in stage)
    return VerifyContext(
        request_name=prepared.pack.name, request_version=prepared.pack.version, request_digest=prepared.pack.digest,
        env=env, channel=channel, cohorts=cohorts, channel_config=world.channel_config(env, channel) if world.channel_state(env, channel) else None,
        active={c: world.scope(env, channel, c).active_pack for c in cohorts}, trust_root=trust_root, now=ctx.now,
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
        failed = VerificationFailed(gate=failure.gate, code=failure.code, message=failure.message, reference_time=ctx.now, gates=outcomes)
        return [Chain((release_event(ctx, release, "verification_failed", failed),))]
    assert release.distributed is not None and v.pack is not None
    verified = Verified(pack=v.pack, manifest=release.distributed.manifest, reference_time=ctx.now, gates=outcomes, signers=v.signers)
    return [Chain((release_event(ctx, release, "verified", verified),))]


async def read_attestation(store: PackStore, digest: str) -> bytes | None:
    """The attestation object beside the pack (None: absent); an oversized one is handed on
    as over-cap bytes so the evidence gate refuses it by its cap, by name."""
    try:
        return await store.read(attestation_object_name(digest), ATTESTATION_MAX_BYTES)
    except ObjectTooLarge:
        return b"x" * (ATTESTATION_MAX_BYTES + 1)


async def run_gates(store: PackStore, digest: str, vctx: VerifyContext, *, policy: bool = True) -> Verification:
    """Fetch and check: manifest gates, then the pack streamed through the digester, then policy.

    Runtimes call this with `policy=False`: they re-check integrity, not channel policy.
    The attestation is read only when the channel requires one, after integrity passed.
    """
    # the pack's first chunks are on their way while the manifest is read and checked
    opening = asyncio.ensure_future(store.chunks(pack_object_name(digest)))
    chunks = None
    try:
        try:
            manifest = await store.read(manifest_object_name(digest), MANIFEST_MAX_BYTES)
        except ObjectTooLarge:
            manifest = b"x" * (MANIFEST_MAX_BYTES + 1)  # let the manifest gate refuse it by its cap, by name
        v = check_manifest(manifest, vctx)
        if v.failure is not None or v.manifest is None:
            return v
        chunks = await opening
        if chunks is None:
            return check_pack(v, None, vctx)
        digester = PackDigester(v.manifest.size)
        try:
            async for chunk in chunks:
                digester.update(chunk)  # hashed as it streams; never the whole pack in memory
        except PackOversized:
            pass
        v = check_pack(v, None if digester.oversized else digester.result(), vctx, oversized=digester.oversized)
        if not policy or v.failure is not None:
            return v
        if attestation_required(vctx.channel_config):
            vctx = replace(vctx, attestation=await read_attestation(store, digest))
        return check_policy(v, vctx)
    finally:
        if not opening.done():
            opening.cancel()
        await asyncio.gather(opening, return_exceptions=True)
        opened = opening.result() if opening.done() and not opening.cancelled() and opening.exception() is None else None
        if opened is not None:
            await opened.close()


class Verifier(ReleaseReactor[Verification]):
    name = NAME
    acts_in = frozenset({"distributed"})

    def trust_root(self):
        """The root in force for this verifier (None: it has none, and refuses everything)."""
        return self.port.current_trust_root()

    async def observe(self, world, release, ctx) -> Verification | Failed:
        """The gates run on the stored pack, under one deadline; a failure to run them is named
        by the gate it stands for (`trust_root`, `deadline`, `internal`)."""
        if release.prepared is None:
            return Failed("release_not_prepared", "the release has no plan", "internal")  # never acted on: not `distributed`
        trust_root = self.trust_root()
        if trust_root is None:
            return Failed("trust_root_missing", "the verifier has no trust root", "trust_root")
        vctx = context_for(world, release, ctx, trust_root)
        timeout = self.port.settings.verify_timeout_s
        late = Failed(TIMEOUT_CODE, f"verification did not finish within {timeout:g}s", DEADLINE_GATE)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            v = await asyncio.wait_for(run_gates(PackStore(self.port.js, self.port.subjects), release.prepared.pack.digest, vctx), timeout)
        except asyncio.TimeoutError:
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
