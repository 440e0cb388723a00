"""The fast path against a real JetStream: a release's path in one atomic batch, decided as step by step.

With the preparer, distributor, verifier and activator in one process, the preparer's decision goes on
through the others' (services/consumers/fast_path.py) and every step's events are stored together,
the pointer switch after the events that earned it. Off (KX_FAST_PATH=off), or with a step that cannot
go on, each consumer decides from its own delivery. Either way the log tells the same story.
"""

from __future__ import annotations

import pytest

from events.signing import SigningKey
from services.consumers import reactor, verifier
from services.observability.metrics import FAST_PATH
from services.reads.audit import replay
from tests.e2e.support import read_log
from tests.harness import Pack, make_pack, refuse_batches, running_service

PATH = ["prepared", "distributed", "verified"]
# what two runs of one request differ in however it goes: the object store's chunk ids (`stored`), the batch
# id (derived from event ids, which derive from the producer's random request id), and decision times
VARIES = ("stored", "batch_id", "at", "checked_at", "requested_at", "reference_time")


async def _story(svc, release_id: str) -> list[tuple[int, str, str | None, dict]]:
    """(seq, event type, Nats-Batch-Id, data) of the release's events and its pointers, in log order."""
    s = svc.app.subjects
    entries = await read_log(svc.app.js, s.releases_stream, [s.release_filter(release_id), f"{s.prefix}.scope.>"])
    return [
        (seq, body["type"], headers.get("Nats-Batch-Id"), body["data"])
        for seq, _, body, headers in entries
        if body.get("release_id") == release_id or body["data"].get("release_id") == release_id
    ]


async def _first_stage(
    fast_path: bool,
    nats_url: str,
    prefix: str,
    tamper: bool = False,
    pack: Pack | None = None,
    key=None,
    verify_timeout_s: float = 30.0,
):
    async with running_service(
        nats_url, prefix, fast_path=fast_path, key=key, verify_timeout_s=verify_timeout_s
    ) as svc:
        await svc.configure()
        pack = pack or make_pack("1.0.0", svc.key)
        if tamper:  # stored bytes that do not hash to the digest: the verifier's digest gate refuses them
            await svc.publish(pack)
            pack = type(pack)(pack.body[:-1] + b"!", pack.manifest, pack.digest, pack.version)
        await svc.request("r1", pack, rollback={"strategy": "none"})
        if tamper or verify_timeout_s < 30:
            release = await svc.wait_release("r1")
        else:
            release = await svc.wait_release("r1", "monitoring")
        story = await _story(svc, "r1")
        audit = await replay(svc.app.js, svc.app.subjects, service_keys=svc.service_keys)
        return release, story, audit


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "step-by-step"])
async def test_a_release_path_is_stored_in_one_atomic_batch_only_on_the_fast_path(nats_url, prefix, fast_path):
    release, story, audit = await _first_stage(fast_path, nats_url, prefix)
    types = [t for _, t, _, _ in story]
    assert types[:6] == ["release.requested", *(f"release.{t}" for t in PATH), "scope.activated", "release.activated"]
    seqs = [seq for seq, *_ in story[:6]]
    batches = [batch for _, _, batch, _ in story[:6]]
    activated = story[5][3]
    assert batches[0] is None  # the producer's request, on its own
    if fast_path:
        # one batch, in consecutive sequences: prepared .. the pointer and its record
        assert seqs[1:] == list(range(seqs[1], seqs[1] + 5))
        assert set(batches[1:]) == {activated["batch_id"]}
    else:
        assert batches[1:4] == [None, None, None]  # each step its own append
        assert batches[4] == batches[5] == activated["batch_id"]
    assert release.activated == ("internal",) and release.verified is not None
    assert audit.violations == (), audit.violations


async def test_the_fast_path_decides_what_the_steps_decide(nats_url, prefix):
    """The same request, fast and step by step: the same events, with the same contents (but when
    they were decided, and the ids derived from the producer's request id, which differs)."""

    def contents(story):
        out = []
        for _, event_type, _, data in story[:6]:
            out.append((event_type, {k: v for k, v in data.items() if k not in VARIES}))
        return out

    # one pack for both (its manifest's expiry is set when it is made, and a gate's message names it)
    key = SigningKey.generate()
    pack = make_pack("1.0.0", key)
    _, fast, _ = await _first_stage(True, nats_url, prefix + "f", pack=pack, key=key)
    _, steps, _ = await _first_stage(False, nats_url, prefix + "s", pack=pack, key=key)
    assert contents(fast) == contents(steps)


async def test_a_gate_refusal_on_the_fast_path_is_the_verifiers_own(nats_url, prefix):
    """A pack whose bytes do not hash to its digest: the release fails at verification as step by step,
    and nothing is switched; the log holds no pointer for it."""
    release, story, audit = await _first_stage(True, nats_url, prefix, tamper=True)
    assert release.outcome == "failed" and "digest_mismatch" in (release.failure or "")
    assert not any(t == "scope.activated" for _, t, _, _ in story)
    assert audit.violations == (), audit.violations


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "step-by-step"])
async def test_a_verification_past_its_deadline_fails_closed_once_and_in_the_batch(nats_url, prefix, fast_path):
    """The verifier cannot finish within its deadline: the release fails closed at verification, from
    that one observation, both ways. On the fast path the refusal is stored with the steps before it,
    in their batch; before, the verifier's own consumer observed again and the deadline was paid twice."""
    before = FAST_PATH.labels("verifier", "failed_closed")._value.get()
    release, story, audit = await _first_stage(fast_path, nats_url, prefix, verify_timeout_s=0.000_001)
    assert release.outcome == "failed" and "deadline" in (release.failure or ""), release.failure
    types = [t for _, t, _, _ in story]
    assert types[:4] == ["release.requested", "release.prepared", "release.distributed", "release.verification_failed"]
    assert "scope.activated" not in types
    batches = [batch for _, _, batch, _ in story[1:4]]
    if fast_path:
        assert batches[0] is not None and set(batches) == {batches[0]}  # one batch: prepared .. the refusal
        assert FAST_PATH.labels("verifier", "failed_closed")._value.get() == before + 1
    else:
        assert batches == [None, None, None]
    assert audit.violations == (), audit.violations


async def test_a_pack_over_the_bound_is_verified_from_the_verifiers_own_delivery(nats_url, prefix, monkeypatch):
    """Nothing of a fast-path batch is stored before its verifier has read and hashed the whole pack: over
    `FAST_PATH_MAX_PACK_BYTES` (here: any pack) the batch ends before the verifier (`prepared` and
    `distributed` stored, and seen, at once), whose own delivery then verifies and, the activator
    following it, switches the pointer in the next batch."""
    monkeypatch.setattr(verifier, "FAST_PATH_MAX_PACK_BYTES", 0)
    before = FAST_PATH.labels("verifier", "not_joining")._value.get()
    release, story, audit = await _first_stage(True, nats_url, prefix)
    types = [t for _, t, _, _ in story]
    assert types[:6] == ["release.requested", *(f"release.{t}" for t in PATH), "scope.activated", "release.activated"]
    batches = [batch for _, _, batch, _ in story[1:6]]
    assert batches[0] is not None and batches[0] == batches[1]  # prepared, distributed: the preparer's batch
    assert batches[2] not in (None, batches[0]) and set(batches[2:]) == {batches[2]}  # verified + the switch
    assert FAST_PATH.labels("verifier", "not_joining")._value.get() >= before + 1
    assert release.activated == ("internal",) and audit.violations == (), audit.violations


async def test_a_batch_the_server_refuses_leaves_each_step_to_its_own_consumer(nats_url, prefix, monkeypatch):
    """The server refuses every batch that carries a `distributed` (a fault, injected at the wire: an
    error answer to the commit). The preparer, whose step is fine, stores its `prepared` alone; the
    distributor's own delivery then stores its step alone too; the verifier's joins the activator's
    switch. The release activates, and nothing is written under the preparer's name for a batch it
    did not fail on. Before, the preparer retried the whole batch on every delivery and, giving up,
    rejected the request "pre-flight could not evaluate the request: ... AppendFailed"."""
    refuse_batches(monkeypatch, lambda subject: subject.endswith(".distributed"))
    before = {step: FAST_PATH.labels(step, "batch_failed")._value.get() for step in ("preparer", "distributor")}
    release, story, audit = await _first_stage(True, nats_url, prefix)
    types = [t for _, t, _, _ in story]
    assert types[:6] == ["release.requested", *(f"release.{t}" for t in PATH), "scope.activated", "release.activated"]
    batches = [batch for _, _, batch, _ in story[1:6]]
    assert batches[:2] == [None, None]  # prepared, distributed: each stored alone
    assert batches[2] is not None and set(batches[2:]) == {batches[2]}  # verified + the switch: one batch
    assert {step: FAST_PATH.labels(step, "batch_failed")._value.get() - n for step, n in before.items()} == {
        "preparer": 1,
        "distributor": 1,
    }
    assert release.activated == ("internal",) and audit.violations == (), audit.violations


async def test_a_pointer_batch_the_server_keeps_refusing_fails_the_activation_not_the_pre_flight(
    nats_url, prefix, monkeypatch
):
    """Every batch that moves a pointer is refused (injected at the wire). The steps before the switch are
    stored, each alone; the activator's own delivery cannot switch, and giving up it writes what a failed
    switch is: `activation_failed`, in its words. Before, the preparer's delivery retried the joined
    batch and, giving up, rejected the request at pre-flight, naming an AppendFailed it never caused."""
    refuse_batches(monkeypatch, lambda subject: ".scope." in f".{subject}", "injected: pointer batch refused")
    monkeypatch.setattr(reactor, "MAX_DELIVER", 2)  # the give-up after two deliveries, not ten (~50 s of back-off)
    async with running_service(nats_url, prefix, fast_path=True) as svc:
        await svc.configure()
        await svc.request("r1", make_pack("1.0.0", svc.key), rollback={"strategy": "none"})
        release = await svc.wait_release("r1")
        story = await _story(svc, "r1")
    types = [t for _, t, _, _ in story]
    assert types[:5] == ["release.requested", *(f"release.{t}" for t in PATH), "release.activation_failed"], types
    assert "scope.activated" not in types and "release.rejected" not in types
    failed = next(data for _, t, _, data in story if t == "release.activation_failed")
    assert failed["stage"] == 0 and "activator gave up" in failed["message"] and "injected" in failed["message"]
    assert release.outcome is not None and release.activated == ()
