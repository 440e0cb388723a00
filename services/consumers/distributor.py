"""Distributor: the pack and its manifest (and, when the channel requires one, its
attestation) are fetchable from `kx_packs`.

Distribution never implies activation: this only records that the exact objects
named by digest are present (and their sizes), or fails the release closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from events.manifest import attestation_object_name, manifest_object_name, pack_object_name
from events.model import Distributed, GateOutcome, StoredObject, VerificationFailed
from projections.releases import ReleaseState
from services.consumers.outputs import Chain, Ctx, Failed, Output, release_event
from services.consumers.reactor import ReleaseReactor
from services.jetstream.packstore import PackStore
from services.verification.gates import attestation_required

NAME = "distributor"


def required_objects(digest: str, require_attestation: bool) -> list[tuple[str, str]]:
    """(object name, the code naming its absence), in the order absences are reported."""
    required = [(manifest_object_name(digest), "manifest_missing"), (pack_object_name(digest), "pack_missing")]
    if require_attestation:
        required.append((attestation_object_name(digest), "attestation_missing"))
    return required


def refuse(release: ReleaseState, ctx: Ctx, code: str, message: str) -> list[Output]:
    """`verification_failed` at gate `distribution`: the pack is not (or cannot be seen to be) in the store."""
    failed = VerificationFailed(
        gate="distribution",
        code=code,
        message=message,
        reference_time=ctx.now,
        gates=[GateOutcome(gate="distribution", ok=False, code=code, message=message)],
    )
    return [Chain((release_event(ctx, release, "verification_failed", failed),))]


def decide(
    release: ReleaseState,
    ctx: Ctx,
    objects: Mapping[str, int | None],
    store_error: str | None = None,
    require_attestation: bool = False,
    stored: Mapping[str, StoredObject | None] | None = None,
) -> list[Output]:
    """`objects` maps each object name to its stored size, or None when it is absent.

    `stored`: each object's metadata as read (nuid, chunks, digest), recorded in the event
    so the service can restore it if a producer later deletes or re-points it
    (services/jetstream/pack_keeper.py).

    `store_error` says why the store could not even be asked: fail closed, saying so.
    `require_attestation`: the channel's policy wants `sha256-<hex>.attestation` too.
    """
    if release.phase != "prepared" or release.prepared is None:
        return []
    pack = release.prepared.pack
    pack_name = pack_object_name(pack.digest)
    required = required_objects(pack.digest, require_attestation)
    missing = [(name, code) for name, code in required if objects.get(name) is None]
    if store_error is not None:
        missing = [(pack_name, "store_unreadable")]
    if missing:
        name, code = missing[0]
        why = " (the channel's policy requires an attestation beside the pack)" if code == "attestation_missing" else ""
        message = (
            f"the pack store could not be read: {store_error}"
            if store_error is not None
            else f"object {name} is not in kx_packs{why}"
            + (f" (also missing: {', '.join(n for n, _ in missing[1:])})" if len(missing) > 1 else "")
        )
        return refuse(release, ctx, code, message)
    distributed = Distributed(
        pack=pack.model_copy(update={"size": objects[pack_name]}),
        manifest=manifest_object_name(pack.digest),
        objects={name: objects[name] for name in (pack_name, *(n for n, _ in required if n != pack_name))},
        stored={
            name: obj
            for name, _ in required
            if (obj := (stored or {}).get(name)) is not None and obj.size == objects[name]
        },
    )
    return [Chain((release_event(ctx, release, "distributed", distributed),))]


# ---- adapter ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoreFacts:
    """What the pack store holds of the release's objects."""

    sizes: Mapping[str, int | None]  # object name -> stored size (None: absent)
    stored: Mapping[str, StoredObject | None]  # object name -> its metadata as read
    require_attestation: bool


class Distributor(ReleaseReactor[StoreFacts]):
    name = NAME
    acts_in = frozenset({"prepared"})

    async def observe(self, world, release, ctx) -> StoreFacts | Failed:
        if release.prepared is None:
            return StoreFacts({}, {}, False)
        store = PackStore(self.port.js, self.port.subjects)
        target = release.prepared.target
        require = attestation_required(world.channel_config(target.env, target.channel))
        names = [name for name, _ in required_objects(release.prepared.pack.digest, require)]
        try:
            # every object's metadata read once, all at once: one round trip on the path to activation
            described = dict(zip(names, await asyncio.gather(*(store.described(name) for name in names))))
            sizes = {name: size for name, (size, _) in described.items()}
            stored = {name: obj for name, (_, obj) in described.items()}
        except Exception as exc:  # fail closed: a store we cannot read distributes nothing
            return Failed.of(exc, code="store_unreadable", step="distribution")
        return StoreFacts(sizes, stored, require)

    def decide(self, world, release, facts: StoreFacts, ctx):
        return decide(release, ctx, facts.sizes, require_attestation=facts.require_attestation, stored=facts.stored)

    def fail_closed(self, world, release, failed, ctx):
        if release.phase != "prepared" or release.prepared is None:
            return []
        if failed.code == "store_unreadable":
            return decide(release, ctx, {}, failed.message)
        return refuse(release, ctx, failed.code, failed.message)
