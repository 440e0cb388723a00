"""A runtime switches only to the pack a pointer names in full (services/runtime/sdk.py `consider`).

Besides name, version and digest (the identity gate), a pointer names the pack's `size` and its
`manifest` object (CONTRACT §4). The store path compares neither (a request names no size; the SDK
reads the manifest of `pack.digest`), so each is checked against the pointer here: a pointer whose
size is not the bytes', or whose manifest is not its pack's, is refused, finally — as a runtime
built from the contract (comparing the size with the bytes, reading the manifest the pointer
names) refuses it. Both were switched to before.
"""

from __future__ import annotations

from events.codec import decode_event
from services.runtime.sdk import Identity, RuntimeClient
from tests.harness import make_pack, running_service
from tests.integration.test_fresh_pointers import stored_pointers

ROLES = ("preparer", "distributor", "verifier", "activator", "monitor", "promoter")


async def genuine_pointer(svc):
    """The service's pointer of `internal` after a first release, and the pack it names."""
    assert (await svc.first_release()).outcome == "success"
    pack = make_pack("1.0.0", svc.key)  # the pack first_release released (its bytes follow from the version)
    entry = (await stored_pointers(svc.app.js, svc.app.subjects, "internal"))[0]
    return decode_event(entry.data, entry.subject, svc.app.subjects).data, pack


async def fresh_runtime(svc, runtime_id: str) -> RuntimeClient:
    rt = RuntimeClient(
        svc.app.nc, Identity("prod", "canary", "t-int-2", runtime_id), svc.trust_root, prefix=svc.app.subjects.prefix
    )
    await rt.resolve_cohort()
    return rt


async def test_a_pointer_naming_another_size_than_the_packs_is_refused_finally(nats_url, prefix):
    async with running_service(nats_url, prefix, roles=ROLES) as svc:
        genuine, pack = await genuine_pointer(svc)
        assert genuine.pack.size == len(pack.body)
        wrong = genuine.model_copy(update={"pack": genuine.pack.model_copy(update={"size": 5})})

        rt = await fresh_runtime(svc, "rt-size")
        refusal = await rt.consider(wrong)
        assert refusal is not None and not refusal.transient, f"switched to size 5 for {len(pack.body)} bytes"
        assert refusal.problem.startswith("identity/size_mismatch"), refusal
        assert rt.active is None
        assert await rt.consider(genuine) is None and rt.active == genuine.pack  # the true size switches


async def test_a_pointer_naming_another_manifest_than_its_packs_is_refused_finally(nats_url, prefix):
    async with running_service(nats_url, prefix, roles=ROLES) as svc:
        genuine, _ = await genuine_pointer(svc)
        elsewhere = genuine.model_copy(update={"manifest": "sha256-" + "0" * 64 + ".manifest"})

        rt = await fresh_runtime(svc, "rt-manifest")
        refusal = await rt.consider(elsewhere)
        assert refusal is not None and not refusal.transient, f"switched on manifest {elsewhere.manifest}"
        assert refusal.problem.startswith("identity/manifest_mismatch"), refusal
        assert rt.active is None
        assert await rt.consider(genuine) is None and rt.active == genuine.pack
