"""A runtime's cohort is the channel configuration's in force, not the one it started under (CONTRACT §7).

`RuntimeClient.follow` reads `channel.configured` through its pointer reader: a newer configuration
that moves the runtime restarts following on the new scope from its history, with a fresh chain, and
re-keys its health; one that does not decode keeps the pack it runs and follows no new pointer until
a configuration that decodes arrives (fail closed, services/runtime/sdk.py).
"""

from __future__ import annotations

import asyncio
import json

from events.codec import make_event
from events.manifest import manifest_object_name
from events.model import Actor, PackRef, Scope, VersionDigest
from projections.pointer_chain import ChainMark, chained_pointer
from services.jetstream.log import Entry
from services.jetstream.reader import OrderedReader
from tests.harness import CHANNEL, make_pack, running_service, wait_for

ROLES = ("preparer", "distributor", "verifier", "activator", "monitor", "promoter")


async def health(svc, subject: str) -> list[dict]:
    """The health messages stored on `subject`, oldest first."""
    reader = OrderedReader(svc.app.js, svc.app.subjects.health_stream, [subject])
    try:
        return [json.loads(e.data) async for e in reader.read(follow=False, idle_timeout=0.5)]
    finally:
        await reader.close()


def on(rt, digest: str) -> bool:
    return rt.active is not None and rt.active.digest == digest


async def test_a_runtime_started_before_its_channel_is_configured_follows_its_configured_cohort(nats_url, prefix):
    """compose.yaml starts the runtime right after the activator, before the operator's `kxr channel set`."""
    async with running_service(nats_url, prefix, roles=ROLES) as svc:
        early = await svc.runtime("t-int-1")
        assert early.cohort == "all"  # correct at that moment: an unconfigured channel has one cohort
        await svc.configure()  # t-int-1 -> internal
        await wait_for(lambda: early.cohort == "internal", 10, "the cohort re-resolved", lambda: list(early.history))
        await svc.runtime("tenant-42")
        pack = make_pack("1.0.0", svc.key)
        await svc.request("r1", pack, rollback={"strategy": "none"})
        assert (await svc.wait_release("r1")).outcome == "success"
        await wait_for(lambda: on(early, pack.digest), 10, "the early runtime on the pack", lambda: list(early.history))
        # its health moved with it: the internal stage's window counted it
        s = svc.app.subjects
        reports = await health(svc, s.health("prod", "canary", "internal", early.id.runtime_id))
        assert any(r["kind"] == "activation" and r["ok"] and r["digest"] == pack.digest for r in reports)


async def test_a_runtime_a_reconfiguration_moves_follows_the_new_scope_with_a_chain_of_its_own(nats_url, prefix):
    async with running_service(nats_url, prefix, roles=ROLES) as svc:
        await svc.configure()
        await svc.runtime("t-int-1")
        await svc.runtime("tenant-42")
        mover = await svc.runtime("t-mover")  # in `rest`
        first = make_pack("1.0.0", svc.key)
        await svc.request("r1", first, rollback={"strategy": "none"})
        assert (await svc.wait_release("r1")).outcome == "success"
        await wait_for(lambda: on(mover, first.digest), 10, "the mover on the first pack")
        rest_chain = mover.chain
        assert mover.cohort == "rest" and rest_chain is not None and rest_chain.generation == 1

        # the operator moves t-mover into `internal`
        cohorts = [{"name": "internal", "tenants": ["t-int-1", "t-int-2", "t-mover"]}, {"name": "rest"}]
        await svc.configure(config={**CHANNEL, "cohorts": cohorts})
        await wait_for(lambda: mover.cohort == "internal", 10, "the mover in internal", lambda: list(mover.history))
        assert on(mover, first.digest)  # it runs what it ran until its new scope's pointer says otherwise

        second = make_pack("1.1.0", svc.key)
        await svc.request("r2", second)
        # internal's pointers: generation 1 is not newer than rest's generation 1, and generation 2's
        # `prev` names internal's first pointer, not rest's: under rest's chain both would be refused
        await wait_for(
            lambda: on(mover, second.digest), 20, "the mover on internal's pack", lambda: list(mover.history)
        )
        assert mover.chain is not None and mover.chain.generation == 2 and mover.chain.digest != rest_chain.digest
        assert not [why for _, why in mover.history if why.startswith("refused")], list(mover.history)
        # its health is internal's now: the internal stage's window judged it
        passed = await wait_for(
            lambda: [v for kind, v in svc.world.release("r2").verdicts if v.stage == 0 and kind == "monitoring_passed"],
            20,
            "the internal stage passed",
            lambda: svc.world.release("r2"),
        )
        assert mover.id.runtime_id in passed[0].figures["per_runtime"]["runtimes"]


async def append_pointer(svc, cohort: str, pack, release_id: str, kind: str) -> int:
    """A genuine next pointer of `cohort` (signed by the service's key, chained to the scope's last)
    to `pack`, appended as the activator would."""
    scope = Scope(env="prod", channel="canary", cohort=cohort)
    state = svc.world.scope(scope.env, scope.channel, scope.cohort)
    pointer = chained_pointer(
        ChainMark(state.generation, state.pointer_digest),
        pack=PackRef(name="kb", version=pack.version, digest=pack.digest, size=len(pack.body)),
        manifest=manifest_object_name(pack.digest),
        release_id=release_id,
        kind=kind,
        previous=VersionDigest(version=state.active.pack.version, digest=state.active.pack.digest),
    )
    event = make_event(
        "scope.activated", pointer, actor=Actor(kind="service", id="activator"), release_id=release_id, scope=scope
    )
    s = svc.app.subjects
    seq = await svc.app.log.append(Entry(event, state.last_seq, s.scope_filter(scope.env, scope.channel, cohort)))
    await svc.wait_for(seq)
    return seq


async def test_an_undecodable_reconfiguration_keeps_the_pack_and_follows_no_pointer_until_one_decodes(nats_url, prefix):
    async with running_service(nats_url, prefix, roles=ROLES) as svc:
        assert (await svc.first_release()).outcome == "success"
        first = make_pack("1.0.0", svc.key)  # the pack first_release released
        second = make_pack("1.1.0", svc.key)
        await svc.request("r2", second)
        assert (await svc.wait_release("r2")).outcome == "success"
        rt = await svc.runtime("t-int-2")
        await wait_for(lambda: on(rt, second.digest), 10, "the runtime on the second pack")

        s = svc.app.subjects
        await svc.app.js.publish(s.channel("prod", "canary"), b'{"not": "a channel configuration"}')
        await wait_for(lambda: rt.cohort_problem is not None, 10, "the runtime to see it", lambda: list(rt.history))
        assert "could not be decoded" in rt.cohort_problem and rt.cohort == "internal"

        # a genuine newer pointer of its scope (a rollback to the first pack): the configuration in force
        # is unknown, so is whether this scope is still the runtime's: it is not followed
        await append_pointer(svc, "internal", first, "r2", "rollback")
        assert svc.world.scope("prod", "canary", "internal").active_pack.digest == first.digest
        await asyncio.sleep(1.5)
        assert on(rt, second.digest), list(rt.history)
        assert not [d for d, _ in rt.history if d == first.digest]
        # it keeps reporting where it did
        assert rt.health_subject == s.health("prod", "canary", "internal", rt.id.runtime_id)

        await svc.configure()  # a configuration that decodes: the same cohort, followed again from its history
        await wait_for(lambda: on(rt, first.digest), 10, "the runtime on the newest pointer", lambda: list(rt.history))
        assert rt.cohort_problem is None and rt.cohort == "internal"
        assert rt.chain is not None and rt.chain.generation == 3
