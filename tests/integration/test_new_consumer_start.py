"""A brand-new durable consumer on a log with history starts at the oldest entry that may still need
it (a release in flight), not at sequence 1: it does not walk every closed release, and it answers
the request that waited for it. Against a real nats-server."""

from __future__ import annotations

from nats.js.api import DeliverPolicy

from events.signing import SigningKey
from services.settings import ROLES
from tests.harness import make_pack, running_service


async def test_a_new_preparer_starts_at_the_oldest_open_release_and_answers_it(nats_url, prefix):
    key = SigningKey.generate()  # the producer's key: one trust root across the three starts
    async with running_service(nats_url, prefix, key=key) as svc:
        await svc.configure()
        await svc.runtime("t-int-1")
        await svc.runtime("tenant-42")
        await svc.request("r1", make_pack("1.0.0", svc.key), rollback={"strategy": "none"})
        assert (await svc.wait_release("r1")).outcome == "success"
        stream = svc.app.subjects.releases_stream
        first = (await svc.app.js.consumer_info(stream, "kxr-verifier")).config
        assert (first.deliver_policy, first.opt_start_seq) == (DeliverPolicy.BY_START_SEQUENCE, 1)  # an empty log

    # a request arrives while no preparer runs: it is in flight, unanswered
    without_preparer = tuple(r for r in ROLES if r != "preparer")
    async with running_service(nats_url, prefix, key=key, roles=without_preparer) as svc:
        await svc.app.js.delete_consumer(stream, "kxr-preparer")  # as if the preparer were new to this deployment
        await svc.request("r2", make_pack("2.0.0", svc.key))
        asked = (await svc.wait_release("r2", phase="requested")).last_seq
        assert asked > 10  # r1's whole story lies before it

    async with running_service(nats_url, prefix, key=key) as svc:
        await svc.runtime("t-int-1")
        await svc.runtime("tenant-42")
        done = await svc.wait_release("r2")
        assert done.outcome == "success", done
        info = await svc.app.js.consumer_info(stream, "kxr-preparer")
        assert info.config.deliver_policy == DeliverPolicy.BY_START_SEQUENCE
        assert info.config.opt_start_seq == asked  # r2's request: the oldest entry of a release in flight
        # an existing consumer keeps where it started (and its position) over restarts
        kept = (await svc.app.js.consumer_info(stream, "kxr-verifier")).config
        assert (kept.deliver_policy, kept.opt_start_seq) == (DeliverPolicy.BY_START_SEQUENCE, 1)
