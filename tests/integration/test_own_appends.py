"""A process trusts the entries it appended itself: its follower folds them without an Ed25519
verification, and only those (issue 18: the per-event fold cost), on a real server.

"Its own" means: the stored entry carries this process's keyid and a signature this process
made, over byte for byte the stored subject and payload. Anything else is verified as before
(other bytes under our signature, another signature, another key, a second copy of one of
ours), and the fold (world and ignored entries) is the one that verifies all.
"""

from __future__ import annotations

import asyncio

import pytest

import events.service_signing as service_signing
from events.codec import encode_event, make_event
from events.model import Actor, Scope
from events.service_signing import OwnAppends, ServiceKey, ServiceKeys, signature_headers
from events.signing import SigningKey
from events.subjects import Subjects
from services.jetstream.client import connect
from services.jetstream.layout import ensure_layout
from services.jetstream.log import Entry, EventLog
from services.jetstream.log_reads import log_entries
from services.reads.follower import Follower
from tests.harness import running_service


def pointer(channel: str, cohort: str, release_id: str):
    data = {
        "pack": {"name": "kb", "version": "1.0.0", "digest": "sha256:" + "ab" * 32, "size": 1},
        "manifest": "m",
        "release_id": release_id,
        "kind": "rollout",
        "generation": 1,  # each scope's first pointer: one more there is not newer (a replay)
    }
    scope = Scope(env="prod", channel=channel, cohort=cohort)
    actor = Actor(kind="service", id="activator")
    return make_event("scope.activated", data, actor=actor, release_id=release_id, scope=scope)


@pytest.fixture
def verifications(monkeypatch) -> list[int]:
    """Every Ed25519 verification a ServiceKeys check makes, counted."""
    calls: list[int] = []
    real = service_signing.verify_signature

    def counted(public: bytes, signature: bytes, message: bytes) -> bool:
        calls.append(1)
        return real(public, signature, message)

    monkeypatch.setattr(service_signing, "verify_signature", counted)
    return calls


async def fold(
    js, subjects: Subjects, keys: ServiceKeys, last_seq: int, own: OwnAppends | None, archive: bool = False
) -> Follower:
    """The log up to `last_seq` folded by a follower trusting `keys` (and `own`'s appends)."""
    follower = Follower(js, subjects, service_keys=keys, own_appends=own, archive_closed=archive)
    task = asyncio.create_task(follower.run())
    try:
        await follower.wait_for(last_seq, timeout=10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return follower


async def test_own_appends_are_folded_unverified_anything_else_is_checked_and_the_fold_is_identical(
    nats_url, prefix, verifications
):
    key = SigningKey.generate()
    keys = ServiceKeys.of(key, ["activator"])
    subjects = Subjects(prefix)
    nc_mine, nc_other = await connect(nats_url), await connect(nats_url)
    try:
        js = nc_mine.jetstream()
        await ensure_layout(js, subjects)
        mine = EventLog(nc_mine, js, subjects, signer=key)
        other_js = nc_other.jetstream()
        same_key_elsewhere = EventLog(nc_other, other_js, subjects, signer=key)  # verifies: not in mine's memory
        unsigned = EventLog(nc_other, other_js, subjects)
        untrusted = EventLog(nc_other, other_js, subjects, signer=SigningKey.generate())
        assert mine.own_appends is not None

        own = [await mine.append(Entry(pointer("c1", "a", "r1")))]  # a plain append
        own.append(await mine.commit_batch([Entry(pointer("c2", "a", "r2")), Entry(pointer("c2", "b", "r2"))]))
        own.append(own[-1] - 1)
        grouped = await asyncio.gather(  # batches waiting behind one in flight: one group commit
            *(mine.commit_batch([Entry(pointer(f"g{i}", c, f"rg{i}")) for c in ("a", "b")]) for i in range(4))
        )
        own += [s for last in grouped for s in (last - 1, last)]
        replayed = await mine.append(Entry(pointer("c1", "a", "r1-again")))  # signed by us, breaks c1.a's chain
        own.append(replayed)
        await same_key_elsewhere.append(Entry(pointer("c3", "a", "r3")))
        c3_subject, c3_other = subjects.scope("prod", "c3", "a", "activated"), encode_event(pointer("c3", "a", "r3"))
        other_bytes = (c3_other, signature_headers(key, c3_subject, c3_other))
        forged = await unsigned.append(Entry(pointer("c4", "a", "r4")))
        resigned = await untrusted.append(Entry(pointer("c5", "a", "r5")))
        # our key's genuine signature of other bytes, stored over a tampered payload (by someone with publish rights)
        subject6 = subjects.scope("prod", "c6", "a", "activated")
        genuine, tampered = encode_event(pointer("c6", "a", "r6")), encode_event(pointer("c6", "a", "evil"))
        copied = signature_headers(key, subject6, genuine)
        tampered_seq = (await other_js.publish(subject6, tampered, headers=copied)).seq
        assert len(mine.own_appends) == len(own) == 12

        # the memory holds other bytes of the same-key append made elsewhere (not its signature)
        mine.own_appends.remember(c3_subject, *other_bytes)
        mine.own_appends.remember(subject6, genuine, copied)  # our signature of `genuine`, `tampered` stored
        # an exact copy of our first pointer (bytes and signature) stored again by someone else: a replay
        first = await js.get_msg(subjects.releases_stream, own[0])
        assert first.data is not None and first.headers is not None
        signature_only = {k: v for k, v in first.headers.items() if k.startswith("Kx-")}
        copy = (await other_js.publish(first.subject, first.data, headers=signature_only)).seq
        last = copy

        verifications.clear()
        trusting = await fold(js, subjects, keys, last, mine.own_appends)
        checks_trusting = len(verifications)
        verifications.clear()
        checking = await fold(js, subjects, keys, last, None)
        checks_all = len(verifications)

        # verifying all: our 12, the same key's from elsewhere, the tampered one and the copy (unsigned
        # and unknown-key ones are refused before any verification); trusting our own: those three only
        assert (checks_all, checks_trusting) == (15, 3)
        assert mine.own_appends.vouched == len(own)
        assert trusting.world == checking.world
        assert trusting.ignored == checking.ignored
        # the chain check stays for our own (the replay) and for the copy
        assert set(checking.ignored) == {replayed, forged, resigned, tampered_seq, copy}
        assert "forged" in checking.ignored[tampered_seq]
        assert len(mine.own_appends) == 2  # each of ours forgotten once vouched for; the two planted stay

        # keys that list our keyid with other key bytes: our memory stands for nothing, all is verified
        other_bytes_key = ServiceKey(key.keyid, SigningKey.generate().public_raw, "x", frozenset({"activator"}))
        wrong = ServiceKeys({key.keyid: other_bytes_key})
        memory = OwnAppends(key)
        for seq in own:  # what we signed, remembered again (the stored bytes are exactly those)
            stored = await js.get_msg(subjects.releases_stream, seq)
            assert stored.data is not None and stored.headers is not None
            memory.remember(stored.subject, stored.data, stored.headers)
        verifications.clear()
        misled = await fold(js, subjects, wrong, last, memory)
        assert len(verifications) == 15 and memory.vouched == 0
        assert misled.ignored == (await fold(js, subjects, wrong, last, None)).ignored
        assert set(own) <= set(misled.ignored)  # ours are forgeries under those keys
    finally:
        await nc_mine.close()
        await nc_other.close()


def test_own_appends_stay_bounded_and_forget_what_they_vouched_for():
    key = SigningKey.generate()
    own = OwnAppends(key, cap=3)
    signed = {n: signature_headers(key, "s", f"p{n}".encode()) for n in range(5)}
    for n, headers in signed.items():
        own.remember("s", f"p{n}".encode(), headers)
    assert len(own) == 3  # the oldest went first
    assert not own.vouches("s", b"p0", signed[0])  # evicted: verified as ever
    assert own.vouches("s", b"p3", signed[3]) and len(own) == 2
    assert not own.vouches("s", b"p3", signed[3])  # vouched once, then forgotten: a copy is verified
    assert not own.vouches("s", b"p4", {**signed[4], "Kx-Signer": "other"})  # another signer
    assert not own.vouches("s", b"other", signed[4])  # other bytes under our signature
    assert not own.vouches("t", b"p4", signed[4])  # another subject
    assert not own.vouches("s", b"p4", None)
    own.remember("s", b"x", {})  # nothing signed: nothing to vouch for
    own.remember("s", b"x", signature_headers(SigningKey.generate(), "s", b"x"))  # not this process's key
    assert len(own) == 2 and own.vouched == 1
    own.remember("s", b"p4", signed[4])  # signed again (a retry): kept once
    assert len(own) == 2


def test_own_appends_stay_within_their_byte_bound():
    key = SigningKey.generate()
    own = OwnAppends(key, cap=100, max_bytes=250)
    payloads = [bytes([n]) * 100 for n in range(3)]
    signed = [signature_headers(key, "s", p) for p in payloads]
    for payload, headers in zip(payloads, signed):
        own.remember("s", payload, headers)
    assert len(own) == 2  # 300 bytes over 250: the oldest went
    assert not own.vouches("s", payloads[0], signed[0])
    assert own.vouches("s", payloads[1], signed[1]) and own.vouches("s", payloads[2], signed[2])
    assert len(own) == 0
    own.remember("s", b"x" * 300, signature_headers(key, "s", b"x" * 300))  # alone over the bound: not kept
    assert len(own) == 0


async def test_a_service_folds_every_append_of_its_own_unverified_and_as_a_checking_fold_does(nats_url, prefix):
    async with running_service(nats_url, prefix) as svc:
        await svc.first_release("r1")
        await svc.catch_up()
        own = svc.app.log.own_appends
        assert own is not None and svc.service_keys is not None
        service = svc.app.follower
        signed_here = 0
        async for entry, _, _ in log_entries(svc.app.js, svc.app.subjects):
            if entry.seq <= service.position and entry.headers.get("Kx-Signer") == own.keyid:
                signed_here += 1
        # the lifecycle's appends (prepared ... closed, pointers): each one folded without a verification,
        # also those the follower read before the append's acknowledgement came back
        assert signed_here >= 8 and own.vouched == signed_here
        checking = await fold(svc.app.js, svc.app.subjects, svc.service_keys, service.position, None, archive=True)
        assert checking.position == service.position
        assert checking.world == service.world and checking.ignored == service.ignored == {}


def test_own_appends_stand_only_for_keys_that_hold_this_process_key():
    key, other = SigningKey.generate(), SigningKey.generate()
    own = OwnAppends(key)
    assert own.known_to(ServiceKeys.of(key, ["activator"]))
    assert not own.known_to(ServiceKeys.of(other, ["activator"]))  # not listed
    # our keyid listed with other key bytes (never from a validated document): verifies nothing of ours
    forged = ServiceKeys({key.keyid: ServiceKey(key.keyid, other.public_raw, "x", frozenset({"activator"}))})
    assert not own.known_to(forged)
