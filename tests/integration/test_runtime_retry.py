"""A runtime retries a genuine pointer it could not read (services/runtime/sdk.py), against real JetStream.

The service releases a pack and closes; then its pack object is made unreadable (deleted from
kx_packs with its chunks, so nothing can restore it but a new put) and a runtime (re)starts:
its first attempt is refused as transient, and once the object is back it ends on the pack
without any new pointer. A pack whose bytes were tampered with is refused once, finally.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

from events.manifest import pack_object_name
from events.model import Scope
from services.actions.pins import pin
from services.jetstream.direct import DirectGetError
from services.jetstream.reader import OrderedReader
from services.runtime import sdk
from tests.harness import OPERATOR, make_pack, running_service, wait_for
from tests.integration.test_fresh_pointers import stored_pointers
from tests.integration.test_operator_model import now, scope_act

# the release runs to its end; no guard or notifier reacting to the store being tampered with
ROLES = ("preparer", "distributor", "verifier", "activator", "monitor", "promoter")


async def released(svc, release_id: str, version: str, **extra):
    pack = make_pack(version, svc.key)
    await svc.request(release_id, pack, **extra)
    state = await svc.wait_release(release_id)
    assert state.outcome == "success", state.failure
    return pack


async def health(svc, rt) -> list[dict]:
    """The runtime's health messages as stored, oldest first."""
    reader = OrderedReader(svc.app.js, svc.app.subjects.health_stream, [rt.health_subject])
    try:
        return [json.loads(e.data) async for e in reader.read(follow=False, idle_timeout=0.5)]
    finally:
        await reader.close()


def refusals(rt, digest: str) -> list[str]:
    return [why for d, why in rt.history if d == digest and why.startswith("refused")]


async def test_a_runtime_retries_a_pack_it_could_not_read_and_ends_on_it_without_a_new_pointer(nats_url, prefix):
    async with running_service(nats_url, prefix, roles=ROLES) as svc:
        await svc.configure()
        await svc.runtime("t-int-1")
        await svc.runtime("tenant-42")
        pack = await released(svc, "r1", "1.0.0", rollback={"strategy": "none"})
        pointers = await stored_pointers(svc.app.js, svc.app.subjects, "internal")

        store = await svc.app.js.object_store(svc.app.subjects.packs_bucket)
        await store.delete(pack_object_name(pack.digest))  # metadata marked deleted, chunks purged
        rt = await svc.runtime("t-int-2")
        rt.retry_first_s, rt.retry_cap_s = 0.2, 0.4  # set before its first attempt: the task has not run yet
        await wait_for(lambda: len(refusals(rt, pack.digest)) >= 2, 15, "two transient refusals", lambda: rt.history)
        assert rt.active is None
        assert all("transient, retrying: integrity/pack_missing" in why for why in refusals(rt, pack.digest))

        await store.put(pack_object_name(pack.digest), pack.body)  # the store is readable again
        await wait_for(
            lambda: rt.active is not None and rt.active.digest == pack.digest,
            15,
            "the runtime on the pack, by retrying",
            lambda: rt.history,
        )
        assert rt.history[-1] == (pack.digest, "activated")
        assert rt.chain is not None and rt.chain.generation == 1
        assert len(await stored_pointers(svc.app.js, svc.app.subjects, "internal")) == len(pointers)  # no new pointer
        tries = len(rt.history)
        await asyncio.sleep(1.0)
        assert len(rt.history) == tries  # switched: the retrying stopped
        # on KX_HEALTH: one ok:false per failed attempt, with one stable error text, then ok:true
        reports = [r for r in await health(svc, rt) if r["kind"] == "activation"]
        assert [r["ok"] for r in reports] == [False] * (tries - 1) + [True], reports
        assert {r["error"] for r in reports[:-1]} == {refusals(rt, pack.digest)[0].removeprefix("refused: ")}
        assert reports[-1]["digest"] == pack.digest


async def test_a_store_that_did_not_answer_is_retried_and_the_runtime_ends_on_the_pack(nats_url, prefix, monkeypatch):
    """The pack store's reads go through direct gets, whose "no answer in time" is a DirectGetError, not
    a nats.errors.Error: it is a read that failed (transient), never a verdict on the pack (final)."""
    async with running_service(nats_url, prefix, roles=ROLES) as svc:
        await svc.configure()
        await svc.runtime("t-int-1")
        await svc.runtime("tenant-42")
        pack = await released(svc, "r1", "1.0.0", rollback={"strategy": "none"})

        failures = {"left": 1}
        read = sdk._RecordingStore.read

        async def stalls_once(self, name, max_bytes):
            if failures["left"]:
                failures["left"] -= 1
                raise DirectGetError("no answer to a direct get within 10s")  # what a stalled store raises
            return await read(self, name, max_bytes)

        monkeypatch.setattr(sdk._RecordingStore, "read", stalls_once)
        rt = await svc.runtime("t-int-2")  # (re)starts on the genuine newest pointer; the store stalls once
        rt.retry_first_s, rt.retry_cap_s = 0.1, 0.2
        await wait_for(
            lambda: rt.active is not None and rt.active.digest == pack.digest,
            10,
            "the runtime on the pack after one stalled read",
            lambda: list(rt.history),
        )
        why = "verification error: DirectGetError('no answer to a direct get within 10s')"
        assert refusals(rt, pack.digest) == [f"refused: transient, retrying: {why}"]


async def test_a_newer_pointer_supersedes_one_being_retried(nats_url, prefix):
    async with running_service(nats_url, prefix, roles=ROLES) as svc:
        await svc.configure()
        await svc.runtime("t-int-1")
        await svc.runtime("tenant-42")
        first = await released(svc, "r1", "1.0.0", rollback={"strategy": "none"})
        second = await released(svc, "r2", "1.1.0")
        store = await svc.app.js.object_store(svc.app.subjects.packs_bucket)
        await store.delete(pack_object_name(second.digest))
        rt = await svc.runtime("t-int-2")  # (re)starts on the newest pointer, whose pack it cannot read
        rt.retry_first_s, rt.retry_cap_s = 0.2, 0.4
        await wait_for(
            lambda: len(refusals(rt, second.digest)) >= 2, 15, "retries of the vanished pack", lambda: rt.history
        )
        assert rt.active is None

        # a newer pointer (the operator pins the scope back to the first pack): the runtime moves on
        scope = Scope(env="prod", channel="canary", cohort="internal")
        await scope_act(
            svc, pin(svc.world, scope, "1.0.0", now(svc) + timedelta(hours=1), "hold", OPERATOR, now(svc)), scope
        )
        await wait_for(
            lambda: rt.active is not None and rt.active.digest == first.digest,
            15,
            "the pinned pack active",
            lambda: rt.history,
        )
        tries = len(refusals(rt, second.digest))
        await asyncio.sleep(1.0)
        assert len(refusals(rt, second.digest)) == tries  # superseded: no more attempts at the older pointer
        assert rt.active.digest == first.digest and rt.chain.generation == 3


async def test_a_tampered_pack_is_refused_once_and_not_retried(nats_url, prefix):
    async with running_service(nats_url, prefix, roles=ROLES) as svc:
        await svc.configure()
        await svc.runtime("t-int-1")
        await svc.runtime("tenant-42")
        pack = await released(svc, "r1", "1.0.0", rollback={"strategy": "none"})

        store = await svc.app.js.object_store(svc.app.subjects.packs_bucket)
        tampered = bytes([pack.body[0] ^ 1]) + pack.body[1:]  # the same size, other bytes
        await store.put(pack_object_name(pack.digest), tampered)  # new chunks; the old ones purged
        rt = await svc.runtime("t-int-2")
        rt.retry_first_s, rt.retry_cap_s = 0.1, 0.2  # were it retried, it would be many times below
        await wait_for(lambda: refusals(rt, pack.digest), 15, "the refusal", lambda: rt.history)
        await asyncio.sleep(1.5)
        assert [why.split(":")[1].strip() for why in refusals(rt, pack.digest)] == ["integrity/digest_mismatch"]
        assert "transient" not in refusals(rt, pack.digest)[0]
        assert rt.active is None
