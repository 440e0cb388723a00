"""Trust-root rotation end to end: the log carries it, verifier and runtimes follow it."""

from __future__ import annotations

import pytest

from events.codec import make_event
from events.signing import SigningKey, b64encode
from events.trust import RotationError, sign_root
from services.actions.trust import rotate
from services.jetstream.log import Entry
from services.jetstream.log_reads import current_chain
from tests.harness import CHANNEL, OPERATOR, make_pack, running_service, wait_for


def root_doc(keys, version: int, threshold: int = 1) -> dict:
    return {
        "version": version,
        "threshold": threshold,
        "keys": {k.keyid: {"public": b64encode(k.public_raw), "name": f"k{version}"} for k in keys},
    }


async def test_rotation_moves_trust_to_the_new_keys_and_refuses_forged_ones(nats_url, prefix):
    old_key, new_key, rogue = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    async with running_service(nats_url, prefix, key=old_key) as svc:
        await svc.configure()
        rt = await svc.runtime("t-int-1")
        await svc.runtime("tenant-42")
        app = svc.app
        # the new root without the old root's signature is refused before anything is published
        with pytest.raises(RotationError) as refused:
            await rotate(app.log, app.js, svc.trust_root, root_doc([new_key], 2), [new_key], OPERATOR)
        assert refused.value.code == "old_threshold_not_met"
        seq, new = await rotate(
            app.log, app.js, svc.trust_root, root_doc([new_key], 2), [old_key, new_key], OPERATOR, "yearly rotation"
        )
        assert new.version == 2
        # a forged rotation written straight to the log (only the rogue key signed v3) is ignored
        forged = make_event(
            "trust.rotated", {"root": sign_root(root_doc([rogue], 3), [rogue]), "version": 3}, actor=OPERATOR
        )
        await app.log.append(Entry(forged, seq))
        await wait_for(lambda: len(app.follower.world.trust_rotations) == 2, 5, "both rotations folded")
        chain = app.trust_chain()
        assert chain.current.version == 2 and chain.accepted == (2,)
        assert [code for _, code, _ in chain.refused] == ["old_threshold_not_met"]
        assert (
            await current_chain(app.js, app.subjects, svc.trust_root)
        ).current.version == 2  # what `kxr trust show` reads

        await svc.request("old-signed", make_pack("1.0.0", old_key), rollback={"strategy": "none"})
        release = await svc.wait_release("old-signed")
        assert release.outcome == "failed" and "signature/threshold_not_met" in release.failure

        await svc.request("rogue-signed", make_pack("1.0.1", rogue), rollback={"strategy": "none"})
        assert (await svc.wait_release("rogue-signed")).outcome == "failed"

        good = make_pack("1.1.0", new_key)
        await svc.request("new-signed", good, rollback={"strategy": "none"})
        assert (await svc.wait_release("new-signed")).outcome == "success"
        # the runtime's anchor is still v1: it followed the logged rotation to accept the new key
        await wait_for(lambda: rt.active and rt.active.digest == good.digest, 5, "runtime on the new-key pack")


async def test_a_runtime_reads_the_chain_again_after_a_rotation(nats_url, prefix):
    # the runtime keeps the chain it verified with and reads it again only when a rotation was
    # appended (services/runtime/sdk.py `trust_root_now`): a stale cache would refuse the new key
    old_key, new_key = SigningKey.generate(), SigningKey.generate()
    async with running_service(nats_url, prefix, key=old_key) as svc:
        # a 3 s window: the runtime reads the chain again, then fetches and verifies before its first
        # sample of the new pack; a 1 s window held the release once on a loaded machine (no sample yet)
        await svc.configure(config={**CHANNEL, "monitoring": {**CHANNEL["monitoring"], "window_s": 3}})
        rt = await svc.runtime("t-int-1")
        await svc.runtime("tenant-42")
        first = make_pack("1.0.0", old_key)
        await svc.request("before", first, rollback={"strategy": "none"})
        assert (await svc.wait_release("before")).outcome == "success"
        await wait_for(lambda: rt.active and rt.active.digest == first.digest, 5, "runtime on the first pack")
        assert rt._trust is not None and rt._trust[1].current.version == 1  # the chain it verified with
        # v2 keeps the old key (the LKG stays a trusted rollback target) and adds one only v2 trusts
        app = svc.app
        await rotate(app.log, app.js, svc.trust_root, root_doc([old_key, new_key], 2), [old_key, new_key], OPERATOR)
        second = make_pack("1.1.0", new_key)
        await svc.request("after", second)
        assert (await svc.wait_release("after")).outcome == "success"
        await wait_for(lambda: rt.active and rt.active.digest == second.digest, 5, "runtime on the new-key pack")
        assert rt._trust[1].current.version == 2
