"""Distributor: the pack and its manifest are fetchable from `kx_packs`.

Distribution never implies activation: this only records that the exact objects
named by digest are present (and their sizes), or fails the release closed.
"""

from __future__ import annotations

import asyncio

from typing import Mapping

from events.manifest import manifest_object_name, pack_object_name
from events.model import Distributed, GateOutcome, VerificationFailed
from projections.releases import ReleaseState
from .outputs import Chain, Ctx, Output, release_event
from .packstore import PackStore
from .reactor import ReleaseReactor

NAME = "distributor"


def decide(release: ReleaseState, ctx: Ctx, objects: Mapping[str, int | None], store_error: str | None = None) -> list[Output]:
    """`objects` maps each object name to its stored size, or None when it is absent.

    `store_error` says why the store could not even be asked: fail closed, saying so.
    """
    if release.phase != "prepared" or release.prepared is None:
        return []
    pack = release.prepared.pack
    pack_name, manifest_name = pack_object_name(pack.digest), manifest_object_name(pack.digest)
    missing = [(name, code) for name, code in ((manifest_name, "manifest_missing"), (pack_name, "pack_missing")) if objects.get(name) is None]
    if store_error is not None:
        missing = [(pack_name, "store_unreadable")]
    if missing:
        name, code = missing[0]
        message = (f"the pack store could not be read: {store_error}" if store_error is not None else
                   f"object {name} is not in kx_packs" + (f" (also missing: {', '.join(n for n, _ in missing[1:])})" if len(missing) > 1 else ""))
        failed = VerificationFailed(
            gate="distribution", code=code, message=message, reference_time=ctx.now,
            gates=[GateOutcome(gate="distribution", ok=False, code=code, message=message)],
        )
        return [Chain((release_event(ctx, release, "verification_failed", failed),))]
    distributed = Distributed(
        pack=pack.model_copy(update={"size": objects[pack_name]}),
        manifest=manifest_name,
        objects={pack_name: objects[pack_name], manifest_name: objects[manifest_name]},  # type: ignore[dict-item]
    )
    return [Chain((release_event(ctx, release, "distributed", distributed),))]


# ---- adapter ------------------------------------------------------------------------------------
class Distributor(ReleaseReactor):
    name = NAME
    acts_in = frozenset({"prepared"})

    async def decide(self, world, release, ctx):
        if release.phase != "prepared" or release.prepared is None:
            return []
        store = PackStore(self.app.js, self.app.subjects)
        digest = release.prepared.pack.digest
        names = [pack_object_name(digest), manifest_object_name(digest)]
        try:
            sizes = dict(zip(names, await asyncio.gather(*(store.size(name) for name in names))))
        except Exception as exc:  # fail closed: a store we cannot read distributes nothing
            return decide(release, ctx, {}, f"{exc.__class__.__name__}: {exc}")
        return decide(release, ctx, sizes)
