"""A runtime's verified packs (services/runtime/sdk.py `VerifiedPacks`): a rollback to a pack it ran
is checked in memory, and nothing an attacker can do to the store or the log turns that into a
switch the full verification would refuse.

A pointer back to a recorded pack still has its chain (generation, `prev`, the service's
signature) checked before anything else; the record answers only "yes" (same trust root, not
expired, the identity the pointer names); every "no" goes to the store, whose gates then say why.
Against real JetStream and the service's own consumers (no guard: nothing reacts to the tampering).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from events.codec import decode_event
from events.manifest import pack_object_name
from events.model import PackRef, Scope
from events.signing import SigningKey
from services.actions.pins import pin
from services.actions.trust import rotate
from services.runtime import sdk
from services.runtime.sdk import Identity, RuntimeClient, VerifiedPack, VerifiedPacks
from services.verification.context import verify_context
from services.verification.gates import check_manifest
from tests.harness import OPERATOR, make_pack, running_service, trust_root_for, wait_for
from tests.integration.test_fresh_pointers import replay_pointer, stored_pointers
from tests.integration.test_operator_model import now, scope_act
from tests.integration.test_trust_rotation import root_doc

pytestmark = pytest.mark.security
ROLES = ("preparer", "distributor", "verifier", "activator", "monitor", "promoter")
INTERNAL = Scope(env="prod", channel="canary", cohort="internal")


@pytest.fixture
def store_reads(monkeypatch) -> list[str]:
    """The digests the runtimes verified from the store (every call of the gates over the pack store)."""
    reads: list[str] = []
    gates = sdk.run_gates

    async def counted(store, digest, ctx, **kw):
        reads.append(digest)
        return await gates(store, digest, ctx, **kw)

    monkeypatch.setattr(sdk, "run_gates", counted)
    return reads


async def two_packs_run(svc, first_expires: datetime | None = None):
    """Pack A (1.0.0) then B (1.1.0) released and run by the runtime of cohort `internal`: both recorded."""
    await svc.configure()
    rt = await svc.runtime("t-int-1")
    await svc.runtime("tenant-42")
    a = make_pack("1.0.0", svc.key, expires=first_expires)
    b = make_pack("1.1.0", svc.key)
    for release_id, pack, extra in (("r1", a, {"rollback": {"strategy": "none"}}), ("r2", b, {})):
        await svc.request(release_id, pack, **extra)
        assert (await svc.wait_release(release_id)).outcome == "success"
        await wait_for(lambda p=pack: rt.active and rt.active.digest == p.digest, 10, f"runtime on {pack.version}")
    assert a.digest in rt.verified and b.digest in rt.verified
    return rt, a, b


async def pin_back(svc, version: str) -> None:
    await scope_act(
        svc, pin(svc.world, INTERNAL, version, now(svc) + timedelta(hours=1), "back", OPERATOR, now(svc)), INTERNAL
    )


def refused(rt, digest: str) -> list[str]:
    return [why for d, why in rt.history if d == digest and why.startswith("refused")]


async def pointer_to(svc, n: int):
    """The n-th pointer of scope `internal` as stored (0: the first), decoded."""
    entry = (await stored_pointers(svc.app.js, svc.app.subjects, "internal"))[n]
    return decode_event(entry.data, entry.subject, svc.app.subjects).data


async def test_a_rollback_to_a_recorded_pack_reads_nothing_and_a_tampered_store_is_not_needed(
    nats_url, prefix, store_reads
):
    async with running_service(nats_url, prefix, roles=ROLES) as svc:
        rt, a, b = await two_packs_run(svc)
        # the store's copy of A is replaced by other bytes of the same size (its old chunks purged). The
        # service would now refuse to point anything at A (its pinner verifies in full), so the genuine
        # pointer to A is handed to the runtimes directly, as a rollback pointer would reach them.
        store = await svc.app.js.object_store(svc.app.subjects.packs_bucket)
        await store.put(pack_object_name(a.digest), bytes([a.body[0] ^ 1]) + a.body[1:])
        back_to_a = await pointer_to(svc, 0)
        reads_before = list(store_reads)
        assert await rt.consider(back_to_a) is None
        assert rt.active.digest == a.digest and rt.history[-1] == (a.digest, "activated")
        assert store_reads == reads_before  # switched from its record: the store was not read
        # a runtime that never ran A reads the store and refuses the bytes
        fresh = RuntimeClient(
            svc.app.nc,
            Identity("prod", "canary", "t-int-2", "rt-fresh"),
            svc.trust_root,
            prefix=svc.app.subjects.prefix,
        )
        await fresh.resolve_cohort()
        refusal = await fresh.consider(back_to_a)
        assert refusal is not None and refusal.problem.startswith("integrity/digest_mismatch"), refusal
        assert fresh.active is None and a.digest not in fresh.verified


async def test_a_replayed_old_pointer_to_a_recorded_pack_is_still_refused(nats_url, prefix, store_reads):
    async with running_service(nats_url, prefix, roles=ROLES) as svc:
        rt, a, b = await two_packs_run(svc)
        first = (await stored_pointers(svc.app.js, svc.app.subjects, "internal"))[0]
        reads_before, history_before = list(store_reads), len(rt.history)
        await replay_pointer(svc.app.nc, first, "replayed-a", batch=False)  # genuine bytes and signature, old
        await wait_for(lambda: len(rt.history) > history_before, 10, "the replay noticed", lambda: rt.history)
        await asyncio.sleep(0.3)
        assert "refused pointer" in rt.history[-1][1]
        assert rt.active.digest == b.digest and rt.chain is not None and rt.chain.generation == 2
        assert store_reads == reads_before


async def test_a_recorded_pack_whose_manifest_expired_is_refused(nats_url, prefix, monkeypatch):
    async with running_service(nats_url, prefix, roles=ROLES) as svc:
        rt, a, b = await two_packs_run(svc, first_expires=datetime.now(UTC) + timedelta(days=1))

        class TwoDaysLater(datetime):
            @classmethod
            def now(cls, tz=None):  # the runtime's clock only: A has expired, B (90 days) has not
                return datetime.now(tz) + timedelta(days=2)

        monkeypatch.setattr(sdk, "datetime", TwoDaysLater)
        await pin_back(svc, "1.0.0")
        await wait_for(lambda: refused(rt, a.digest), 10, "the refusal of A", lambda: rt.history)
        assert "expiry/expired" in refused(rt, a.digest)[0]
        assert rt.active.digest == b.digest
        assert a.digest not in rt.verified and b.digest in rt.verified


async def test_a_recorded_pack_no_longer_trusted_after_a_rotation_is_dropped_and_refused(nats_url, prefix):
    old_key, new_key = SigningKey.generate(), SigningKey.generate()
    async with running_service(nats_url, prefix, roles=ROLES, key=old_key) as svc:
        rt, a, b = await two_packs_run(svc)
        # v2 trusts only the new key: every pack the old key signed stops verifying. The service would
        # not point anything at A now (its pinner verifies under v2): the genuine old pointer is handed
        # to the runtime directly, once its reader delivered the rotation.
        seq, _ = await rotate(
            svc.app.log, svc.app.js, svc.trust_root, root_doc([new_key], 2), [old_key, new_key], OPERATOR
        )
        await wait_for(lambda: rt._rotation_seen >= seq, 10, "the runtime to see the rotation")
        refusal = await rt.consider(await pointer_to(svc, 0))
        assert refusal is not None and refusal.problem.startswith("signature/threshold_not_met"), refusal
        assert rt.active.digest == b.digest
        assert len(rt.verified) == 0  # the rotation's re-check dropped both records
        assert rt._trust is not None and rt._trust[1].current.version == 2


# ---- the records themselves (pure) ------------------------------------------------------------------
def _record(key: SigningKey, version: str, root, expires: datetime | None = None) -> tuple[VerifiedPack, PackRef]:
    pack = make_pack(version, key, expires=expires)
    ref = PackRef(name=pack.name, version=version, digest=pack.digest, size=len(pack.body))
    v = check_manifest(pack.manifest, verify_context(ref, root, datetime.now(UTC), "pin"))
    assert v.failure is None and v.manifest is not None
    return VerifiedPack(pack.digest, len(pack.body), pack.manifest, "sha256:x", v, root), ref


def test_a_record_answers_only_for_the_same_root_identity_and_an_unexpired_manifest() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    root = trust_root_for(key)
    record, ref = _record(key, "1.0.0", root, expires=datetime.now(UTC) + timedelta(hours=1))
    at = datetime.now(UTC)
    assert record.answers(ref, verify_context(ref, root, at, "pin"))
    assert not record.answers(ref, verify_context(ref, trust_root_for(other), at, "pin"))  # another root
    assert not record.answers(ref, verify_context(ref, root, at + timedelta(hours=2), "pin"))  # expired
    renamed = ref.model_copy(update={"version": "9.9.9"})
    assert not record.answers(renamed, verify_context(renamed, root, at, "pin"))  # another identity
    resized = ref.model_copy(update={"size": ref.size + 1})
    assert not record.answers(resized, verify_context(resized, root, at, "pin"))


def test_records_are_bounded_and_a_rotation_keeps_only_what_the_new_root_trusts() -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    root = trust_root_for(old)
    packs = VerifiedPacks(limit=3)
    records = [_record(old if i < 3 else [old, new], f"1.{i}.0", root)[0] for i in range(4)]
    for record in records:
        packs.add(record)
    assert len(packs) == 3 and records[0].digest not in packs  # the oldest went
    rotated = trust_root_for(new)
    assert packs.rekey(rotated, datetime.now(UTC)) == [records[1].digest, records[2].digest]
    assert len(packs) == 1 and packs.get(records[3].digest).trust_root == rotated  # signed by both keys: kept
