"""Verification over the pack store: fetch a pack's objects and run the gates on them.

The IO half of verification (gates.py is the pure half): the manifest is read under its
cap, the pack streamed through the digester (never whole in memory), and the attestation
read only where the channel requires one. No deadline here: callers own theirs (the
verifier reports it as gate `deadline`, a runtime refuses the switch).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from events.manifest import MANIFEST_MAX_BYTES, attestation_object_name, manifest_object_name, pack_object_name
from services.jetstream.packstore import ObjectTooLarge, PackStore
from services.verification.gates import (
    ATTESTATION_MAX_BYTES,
    PackDigester,
    PackOversized,
    Verification,
    VerifyContext,
    attestation_required,
    check_manifest,
    check_pack,
    check_policy,
)


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
        opened = (
            opening.result() if opening.done() and not opening.cancelled() and opening.exception() is None else None
        )
        if opened is not None:
            await opened.close()
