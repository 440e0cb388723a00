"""Fresh pointers against real JetStream: the chain as stored, replays refused by runtimes and flagged by the audit."""

from __future__ import annotations

from events.service_signing import SIGNATURE_HEADER, SIGNER_HEADER
from projections.pointer_chain import pointer_digest
from services.jetstream.reader import OrderedReader, RawEntry
from services.reads.audit import replay
from tests.harness import make_pack, running_service, wait_for

CHAIN_CODES = {"pointer_not_newer", "pointer_chain_broken"}


async def stored_pointers(js, subjects, cohort: str, env: str = "prod", channel: str = "canary") -> list[RawEntry]:
    """Every message on a scope's pointer subject, oldest first, exactly as stored."""
    reader = OrderedReader(js, subjects.releases_stream, [subjects.scope(env, channel, cohort, "activated")])
    try:
        return [e async for e in reader.read(follow=False, idle_timeout=0.5)]
    finally:
        await reader.close()


async def replay_pointer(nc, entry: RawEntry, msg_id: str, batch: bool) -> None:
    """Publish a stored pointer again: the same subject, bytes and (genuine) signature; a new message id
    (the signature does not cover it), plainly or as a one-message atomic batch."""
    headers = {
        "Nats-Msg-Id": msg_id,
        SIGNER_HEADER: entry.headers[SIGNER_HEADER],
        SIGNATURE_HEADER: entry.headers[SIGNATURE_HEADER],
    }
    if batch:
        headers.update({"Nats-Batch-Id": msg_id, "Nats-Batch-Sequence": "1", "Nats-Batch-Commit": "1"})
    reply = await nc.request(entry.subject, entry.data, headers=headers, timeout=5)
    assert b'"error"' not in reply.data, reply.data


def chain_violations(audit) -> list[tuple[int, str]]:
    return [(v.seq, v.code) for v in audit.violations if v.code in CHAIN_CODES]


async def test_every_pointer_names_the_digest_of_the_previous_one_as_stored(nats_url, prefix):
    async with running_service(nats_url, prefix) as svc:
        await svc.first_release("r1")
        await svc.request("r2", make_pack("1.1.0", svc.key))
        await svc.wait_release("r2")
        for cohort in ("internal", "rest"):
            stored = await stored_pointers(svc.app.js, svc.app.subjects, cohort)
            data = [_decoded(svc, e) for e in stored]
            assert [d.generation for d in data] == [1, 2]
            assert [d.prev for d in data] == [None, pointer_digest(stored[0].data)]
            state = svc.app.follower.world.scope("prod", "canary", cohort)
            assert (state.generation, state.pointer_digest) == (2, pointer_digest(stored[-1].data))
        audit = await replay(svc.app.js, svc.app.subjects, service_keys=svc.service_keys)
        assert audit.violations == ()


def _decoded(svc, entry: RawEntry):
    from events.codec import decode_event

    return decode_event(entry.data, entry.subject, svc.app.subjects).data


async def test_a_replayed_signed_pointer_is_refused_by_running_and_starting_runtimes_and_flagged(nats_url, prefix):
    async with running_service(nats_url, prefix) as svc:
        await svc.configure()
        rt = await svc.runtime("t-int-1")
        await svc.runtime("tenant-42")
        await svc.request("r1", make_pack("1.0.0", svc.key), rollback={"strategy": "none"})
        await svc.wait_release("r1")
        newer = make_pack("1.1.0", svc.key)
        await svc.request("r2", newer)
        await svc.wait_release("r2")
        assert rt.active.digest == newer.digest and rt.chain.generation == 2
        old = (await stored_pointers(svc.app.js, svc.app.subjects, "internal"))[0]

        await replay_pointer(svc.app.nc, old, "replay-plain", batch=False)
        await replay_pointer(svc.app.nc, old, "replay-batch", batch=True)
        await wait_for(
            lambda: sum("refused pointer" in why and "pointer_not_newer" in why for _, why in rt.history) == 2,
            10,
            "the runtime to refuse both replays",
            lambda: rt.history,
        )
        assert rt.active.digest == newer.digest and rt.chain.generation == 2
        # a runtime (re)starting now reads the replay as the newest message stored: it still runs the chain's head
        late = await svc.runtime("t-int-2")
        await wait_for(
            lambda: late.active is not None and len([h for h in late.history if "refused pointer" in h[1]]) == 2,
            10,
            "the late runtime to run the chain's head",
            lambda: late.history,
        )
        assert late.active.digest == newer.digest

        stored = await stored_pointers(svc.app.js, svc.app.subjects, "internal")
        replays = [e.seq for e in stored[-2:]]
        await svc.catch_up()
        for world in (svc.app.follower.world, svc.world):  # the service's fold, and a fold without keys: neither moves
            state = world.scope("prod", "canary", "internal")
            assert (state.active_pack.digest, state.generation, state.active_seq) == (newer.digest, 2, replays[-1])
        audit = await replay(svc.app.js, svc.app.subjects, service_keys=svc.service_keys)
        assert chain_violations(audit) == [(replays[0], "pointer_not_newer"), (replays[1], "pointer_not_newer")]
        assert not [
            v for v in audit.violations if v.code == "unsigned_or_forged"
        ]  # genuinely signed: only freshness catches it


async def test_a_starting_runtime_told_nothing_is_pending_at_an_older_pointer_runs_only_the_newest(
    nats_url, prefix, monkeypatch
):
    """The consumer's pending count is the server's estimate: a "0 pending" on an older pointer of the
    history (seen under load) must not make a (re)starting runtime switch to that older pack first."""
    from services.jetstream import reader as reader_module

    async with running_service(nats_url, prefix) as svc:
        await svc.first_release("r1")
        newer = make_pack("1.1.0", svc.key)
        await svc.request("r2", newer)
        await svc.wait_release("r2")
        stored = await stored_pointers(svc.app.js, svc.app.subjects, "rest")
        assert len(stored) == 2
        real = reader_module._delivery

        def delivery(msg):
            seq, stored_at, pending = real(msg)
            return seq, stored_at, 0 if seq == stored[0].seq else pending

        monkeypatch.setattr(reader_module, "_delivery", delivery)
        late = await svc.runtime("tenant-77")
        assert late.cohort == "rest"
        await wait_for(
            lambda: late.active is not None and late.active.digest == newer.digest,
            15,
            "the newest pack",
            lambda: late.history,
        )
        assert [digest for digest, _ in late.history] == [newer.digest], late.history
