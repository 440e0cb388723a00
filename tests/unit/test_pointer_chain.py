"""Fresh pointers, pure: the chain rules, the writers' next link, the audit, the signed fold."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from events.codec import encode_event, make_event
from events.model import Actor, Scope, ScopeActivated
from events.service_signing import ServiceKeys, signature_headers
from events.signing import SigningKey
from events.subjects import Subjects
from projections.invariants import Audit, apply_signed, audit_entry, audit_signed_entry
from projections.pointer_chain import (
    ChainMark,
    advance,
    chain_break,
    chained_pointer,
    entry_digest,
    next_link,
    pointer_digest,
)
from projections.position import Position
from projections.snapshot import dump_world, load_world
from projections.world import World, apply
from services.consumers import activator, pinner
from services.consumers.outputs import Atomic, Ctx
from services.settings import ROLES, ConfigError, Settings, service_keys_for
from tests.unit.test_projections import CH, ENV, NOW, P0, P1, P2, Log, manifest_of

SUBJECTS = Subjects()
ACTIVATOR = Actor(kind="service", id="activator")


def pointer(
    p: dict,
    generation: int | None = None,
    prev: str | None = None,
    kind: str = "rollout",
    release_id: str | None = "r1",
) -> ScopeActivated:
    return ScopeActivated.model_validate(
        {
            "pack": p,
            "manifest": manifest_of(p),
            "release_id": release_id,
            "kind": kind,
            "generation": generation,
            "prev": prev,
        }
    )


class ChainLog:
    """Pointers as stored: each with its exact bytes, so positions carry the digests readers compute."""

    def __init__(self, key: SigningKey | None = None) -> None:
        self.entries: list[tuple[Position, object, bytes, dict]] = []
        self.key = key or SigningKey.generate()

    def store(self, event, batch: str | None = "b", signer: SigningKey | None | bool = True, cohort: str = "internal"):
        subject = (
            SUBJECTS.scope(ENV, CH, cohort, "activated")
            if event.type == "scope.activated"
            else SUBJECTS.expected_subject(event.type, event.release_id, None)
        )
        payload = encode_event(event)
        key = self.key if signer is True else signer
        headers = signature_headers(key, subject, payload) if key else {}
        position = Position(len(self.entries) + 1, subject, batch, None, entry_digest(subject, payload))
        self.entries.append((position, event, payload, headers))
        return position

    def point(self, data: ScopeActivated, cohort: str = "internal", **kw):
        event = make_event(
            "scope.activated",
            data,
            actor=ACTIVATOR,
            release_id=data.release_id,
            scope=Scope(env=ENV, channel=CH, cohort=cohort),
            occurred_at=NOW + timedelta(seconds=len(self.entries)),
        )
        return self.store(event, cohort=cohort, **kw)

    def next_on(self, world: World, p: dict, cohort: str = "internal", **kw):
        """A pointer as a writer builds it: the next link after the scope's projected chain."""
        return self.point(
            chained_pointer(
                world.scope(ENV, CH, cohort).chain_mark,
                pack=p,
                manifest=manifest_of(p),
                release_id="r1",
                kind="rollout",
            ),
            cohort,
            **kw,
        )

    def world(self) -> World:
        w = World()
        for position, event, _, _ in self.entries:
            w = apply(w, position, event)
        return w

    def audit(self, keys: ServiceKeys | None = None) -> Audit:
        audit = Audit()
        for position, event, payload, headers in self.entries:
            audit = (
                audit_signed_entry(audit, keys, position, event, payload, headers, SUBJECTS)
                if keys
                else audit_entry(audit, position, event, SUBJECTS)
            )
        return audit


def chain_codes(audit: Audit) -> list[tuple[int, str]]:
    return [
        (v.seq, v.code)
        for v in audit.violations
        if v.code.startswith("pointer_not_newer") or v.code == "pointer_chain_broken"
    ]


# ---- the rules ------------------------------------------------------------------------------------
D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


@pytest.mark.parametrize(
    "mark, data, code",
    [
        (None, pointer(P1, 1, None), None),  # a scope's first pointer
        (None, pointer(P1), None),  # a pre-chain pointer on a fresh scope (old logs still fold)
        (ChainMark(None, D1), pointer(P1), None),  # pre-chain after pre-chain
        (ChainMark(None, D1), pointer(P1, 1, D1), None),  # the first chained pointer after pre-chain ones
        (ChainMark(3, D1), pointer(P1, 4, D1), None),
        (ChainMark(3, None), pointer(P1, 4, D2), None),  # the last digest unknown: generation only
        (ChainMark(3, D1), pointer(P1, 3, D1), "pointer_not_newer"),  # a replay of the same generation
        (ChainMark(3, D1), pointer(P1, 2, D2), "pointer_not_newer"),  # an old pointer replayed
        (ChainMark(3, D1), pointer(P1), "pointer_not_newer"),  # a pre-chain pointer replayed after chaining began
        (ChainMark(3, D1), pointer(P1, 4, D2), "pointer_chain_broken"),  # newer, but forked from another link
        (ChainMark(3, D1), pointer(P1, 4, None), "pointer_chain_broken"),
        (None, pointer(P1, 1, D1), "pointer_chain_broken"),  # names a previous pointer the scope never had
    ],
)
def test_chain_break(mark, data, code) -> None:
    broken = chain_break(mark, data)
    assert (broken[0] if broken else None) == code
    if broken:
        assert broken[1]  # always says why


def test_next_link_and_advance() -> None:
    assert next_link(None) == next_link(None) and (next_link(None).generation, next_link(None).prev) == (1, None)
    assert (next_link(ChainMark(None, D1)).generation, next_link(ChainMark(None, D1)).prev) == (1, D1)
    assert (next_link(ChainMark(7, D2)).generation, next_link(ChainMark(7, D2)).prev) == (8, D2)
    assert advance(ChainMark(4, D1), pointer(P1), D2) == ChainMark(4, D2)
    assert advance(None, pointer(P1, 1), D1) == ChainMark(1, D1)


def test_entry_digest_is_of_the_exact_bytes_and_only_for_scope_subjects() -> None:
    assert entry_digest("kx.scope.prod.canary.all.activated", b"abc") == pointer_digest(b"abc")
    assert pointer_digest(b"abc") != pointer_digest(b"abc ")
    assert entry_digest("kx.release.r1.activated", b"abc") is None


# ---- the projection -------------------------------------------------------------------------------
def test_the_scope_keeps_the_last_generation_and_the_digest_of_its_stored_bytes() -> None:
    log = ChainLog()
    first = log.next_on(log.world(), P0)
    second = log.next_on(log.world(), P1)
    log.point(pointer(P2, 1, None), cohort="rest")  # another scope has its own chain
    state = log.world().scope(ENV, CH, "internal")
    assert (state.generation, state.pointer_digest) == (2, second.digest)
    assert state.active.prev == first.digest and state.active.generation == 2
    assert log.world().scope(ENV, CH, "rest").generation == 1


def test_a_snapshot_keeps_the_chain() -> None:
    log = ChainLog()
    log.next_on(log.world(), P0)
    log.next_on(log.world(), P1)
    world = log.world()
    again = load_world(dump_world(world))
    assert (
        again.scope(ENV, CH, "internal").chain_mark
        == world.scope(ENV, CH, "internal").chain_mark
        == ChainMark(2, log.entries[-1][0].digest)
    )


# ---- the writers ----------------------------------------------------------------------------------
def _on_chain(world: World, generation: int, digest: str) -> World:
    """`world` with the internal scope at a chained pointer to P0 (generation, digest)."""
    state = world.scope(ENV, CH, "internal")
    state = replace(
        state, active=pointer(P0, generation, None, release_id=None), generation=generation, pointer_digest=digest
    )
    return replace(world, scopes=world.scopes.insert((ENV, CH, "internal"), state))


def _pointers(outputs) -> dict[str, ScopeActivated]:
    [atomic] = [o for o in outputs if isinstance(o, Atomic)]
    return {w.event.scope.cohort: w.event.data for w in atomic.scope_writes}


def test_the_activator_writes_the_next_link_of_every_scope_it_switches() -> None:
    log = Log()
    log.channel()
    log.through_verified("r1")
    world = _on_chain(log.world(), 5, D1)
    written = _pointers(activator.decide_rollout(world, world.release("r1"), Ctx(now=NOW, service="activator")))
    assert (written["internal"].generation, written["internal"].prev) == (6, D1)


def test_a_scope_first_pointer_is_generation_one_without_prev() -> None:
    log = Log()
    log.channel()
    log.through_verified("r1")
    world = log.world()
    written = _pointers(activator.decide_rollout(world, world.release("r1"), Ctx(now=NOW, service="activator")))
    assert (written["internal"].generation, written["internal"].prev) == (1, None)


def test_the_rollback_pointer_is_chained_too() -> None:
    log = Log()
    log.channel()
    log.through_verified("r1", stages=[["internal"]])
    log.activate("r1", 0, ["internal"])
    log.rollback_started("r1", {"internal": {**P0, "size": 10}})
    world = log.world()
    digest = "sha256:" + "a" * 64
    state = replace(world.scope(ENV, CH, "internal"), generation=9, pointer_digest=digest)
    world = replace(world, scopes=world.scopes.insert((ENV, CH, "internal"), state))
    written = _pointers(
        activator.decide_rollback(world, world.release("r1"), Ctx(now=NOW, service="activator"), {P0["digest"]: None})
    )
    assert (written["internal"].generation, written["internal"].prev, written["internal"].kind) == (
        10,
        digest,
        "rollback",
    )


def test_the_pin_switch_is_chained() -> None:
    log = Log()
    log.pin("internal", P0, NOW + timedelta(days=1))
    world = _on_chain(log.world(), 3, D2)
    state = world.scope(ENV, CH, "internal")
    state = replace(state, active=pointer(P1, 3, None))
    event = pinner.switch_to_pin(
        state, Scope(env=ENV, channel=CH, cohort="internal"), "pin-1", Actor(kind="service", id="pinner"), NOW
    )
    assert (event.data.generation, event.data.prev, event.data.kind) == (4, D2, "pin")


# ---- the audit ------------------------------------------------------------------------------------
def test_a_chain_written_by_the_writers_has_no_pointer_violations() -> None:
    log = ChainLog()
    for p in (P0, P1, P2):
        log.next_on(log.world(), p)
    assert chain_codes(log.audit()) == []


@pytest.mark.parametrize("batch", [None, "replay-batch"], ids=["plain", "one-message-atomic-batch"])
def test_an_old_signed_pointer_replayed_is_flagged_in_a_batch_or_not(batch) -> None:
    log = ChainLog()
    log.next_on(log.world(), P0)
    old = log.entries[0][1]
    log.next_on(log.world(), P1)
    # the exact stored bytes again, genuinely signed: only its place in the chain gives it away
    replayed = log.store(old, batch=batch)
    assert chain_codes(log.audit()) == [(replayed.seq, "pointer_not_newer")]
    assert chain_codes(log.audit(ServiceKeys.of(log.key, list(ROLES)))) == [(replayed.seq, "pointer_not_newer")]


def test_the_fold_never_lets_a_stale_or_forked_pointer_move_the_scope() -> None:
    log = ChainLog()
    log.next_on(log.world(), P0)
    old = log.entries[0][1]
    log.next_on(log.world(), P1)
    head = log.world().scope(ENV, CH, "internal")
    log.store(old)  # replayed
    log.point(pointer(P2, 3, "sha256:" + "f" * 64))  # forked
    state = log.world().scope(ENV, CH, "internal")
    assert (state.active_pack.digest, state.generation, state.pointer_digest) == (P1["digest"], 2, head.pointer_digest)
    assert state.active_seq == 4  # the CAS value still follows the subject
    # and the next genuine link (the writers build it from this state) is accepted
    log.next_on(log.world(), P2)
    assert log.world().scope(ENV, CH, "internal").active_pack.digest == P2["digest"]
    assert [seq for seq, _ in chain_codes(log.audit())] == [3, 4]
    # a reader that trusts only signed, fresh state says why it ignored them
    world, reasons = World(), {}
    for position, event, payload, headers in log.entries:
        world, why = apply_signed(
            world, ServiceKeys.of(log.key, list(ROLES)), position, event, payload, headers, SUBJECTS
        )
        if why:
            reasons[position.seq] = why
    assert sorted(reasons) == [3, 4] and "pointer_not_newer" in reasons[3] and "pointer_chain_broken" in reasons[4]
    assert world.scope(ENV, CH, "internal").active_pack.digest == P2["digest"]


def test_a_forked_pointer_is_flagged() -> None:
    log = ChainLog()
    log.next_on(log.world(), P0)
    log.next_on(log.world(), P1)
    forked = log.point(pointer(P2, 3, "sha256:" + "f" * 64))
    assert chain_codes(log.audit()) == [(forked.seq, "pointer_chain_broken")]


def test_pre_chain_logs_still_fold_and_audit_clean() -> None:
    log = ChainLog()
    log.point(pointer(P0))
    log.point(pointer(P1))
    assert chain_codes(log.audit()) == []
    log.next_on(log.world(), P2)  # chaining starts on an old log: generation 1, prev = the last pre-chain pointer
    assert log.entries[-1][1].data.generation == 1 and log.entries[-1][1].data.prev == log.entries[1][0].digest
    assert chain_codes(log.audit()) == []
    replayed = log.store(log.entries[0][1])  # and then a pre-chain pointer replayed
    assert chain_codes(log.audit()) == [(replayed.seq, "pointer_not_newer")]


def test_with_the_keys_an_unsigned_pointer_is_flagged_and_does_not_break_the_next_genuine_link() -> None:
    log = ChainLog()
    keys = ServiceKeys.of(log.key, list(ROLES))
    log.next_on(log.world(), P0)
    # a well-formed next link, unsigned: the service's own fold ignores it...
    forged = log.next_on(log.world(), P2, signer=None)
    signed_world = World()
    for position, event, payload, headers in log.entries:
        signed_world, _ = apply_signed(signed_world, keys, position, event, payload, headers, SUBJECTS)
    # ...so its next genuine pointer follows the signed one; the auditor with the keys agrees
    log.next_on(signed_world, P1)
    audit = log.audit(keys)
    assert [
        (v.seq, v.code)
        for v in audit.violations
        if v.code in ("unsigned_or_forged", "pointer_not_newer", "pointer_chain_broken")
    ] == [(forged.seq, "unsigned_or_forged")]
    assert audit.world.scope(ENV, CH, "internal").active_pack.digest == P1["digest"]


# ---- the signed fold ------------------------------------------------------------------------------
def test_the_signed_fold_ignores_unsigned_pointers_and_service_events_but_moves_their_sequence() -> None:
    log = ChainLog()
    keys = ServiceKeys.of(log.key, list(ROLES))
    log.next_on(log.world(), P0)
    log.next_on(log.world(), P2, signer=None)
    log.next_on(log.world(), P2, signer=SigningKey.generate())  # a key nobody trusts
    forged_release_event = make_event(
        "release.activation_failed",
        {"stage": 0, "code": "x", "message": "y"},
        actor=Actor(kind="service", id="activator"),
        release_id="r1",
    )
    log.store(forged_release_event, signer=None, batch=None)
    world, ignored = World(), {}
    for position, event, payload, headers in log.entries:
        world, why = apply_signed(world, keys, position, event, payload, headers, SUBJECTS)
        if why:
            ignored[position.seq] = why
    state = world.scope(ENV, CH, "internal")
    assert state.active_pack.digest == P0["digest"] and state.generation == 1
    assert state.active_seq == 3  # the CAS value still matches what is stored
    assert world.release("r1") is None
    assert sorted(ignored) == [2, 3, 4] and "unsigned" in ignored[2] and "unknown key" in ignored[3]
    # without keys (an auditor or a tool that was given none) signatures are not checked, as before
    first = apply(World(), log.entries[0][0], log.entries[0][1])
    position, event, payload, _ = log.entries[1]
    unchecked, why = apply_signed(first, None, position, event, payload, {}, SUBJECTS)
    assert why is None and unchecked.scope(ENV, CH, "internal").active_pack.digest == P2["digest"]


def test_producer_and_operator_events_need_no_signature() -> None:
    log = ChainLog()
    keys = ServiceKeys.of(log.key, list(ROLES))
    event = make_event(
        "release.requested",
        {"pack": P1, "target": {"env": ENV, "channel": CH}, "owner": "o", "escalation": "e"},
        actor=Actor(kind="producer", id="ci"),
        release_id="r1",
    )
    position = log.store(event, signer=None, batch=None)
    world, why = apply_signed(World(), keys, position, event, log.entries[0][2], {}, SUBJECTS)
    assert why is None and world.release("r1") is not None


# ---- configuration --------------------------------------------------------------------------------
def test_a_service_trusts_its_own_key_by_default_and_refuses_keys_that_exclude_it(tmp_path) -> None:
    import json

    own, other = SigningKey.generate(), SigningKey.generate()
    keys = service_keys_for(Settings(), own)
    assert keys.check("activator", "s", b"p", signature_headers(own, "s", b"p")) is None
    assert service_keys_for(Settings(), None) is None
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(ServiceKeys.of(other, list(ROLES)).to_document()))
    with pytest.raises(ConfigError, match="do not trust this process's key"):
        service_keys_for(Settings(service_keys_path=path), own)
    both = {
        "keys": {
            **ServiceKeys.of(other, list(ROLES)).to_document()["keys"],
            **ServiceKeys.of(own, ["activator"]).to_document()["keys"],
        }
    }
    path.write_text(json.dumps(both))
    assert service_keys_for(Settings(service_keys_path=path, roles=("activator",)), own).keys.keys() == {
        own.keyid,
        other.keyid,
    }
    with pytest.raises(ConfigError, match="verifier"):
        service_keys_for(Settings(service_keys_path=path, roles=("activator", "verifier")), own)


def test_reading_tools_find_the_keys_kxr_serve_wrote_beside_its_key(tmp_path) -> None:
    import json

    from services.settings import reader_service_keys

    assert reader_service_keys(Settings(data_dir=tmp_path)) is None  # nothing configured: signatures unchecked
    own = SigningKey.generate()
    (tmp_path / "service-keys.json").write_text(json.dumps(ServiceKeys.of(own, list(ROLES)).to_document()))
    assert set(reader_service_keys(Settings(data_dir=tmp_path)).keys) == {own.keyid}
    other = tmp_path / "other.json"
    other.write_text(json.dumps(ServiceKeys.of(SigningKey.generate(), ["activator"]).to_document()))
    assert set(reader_service_keys(Settings(data_dir=tmp_path, service_keys_path=other)).keys) != {
        own.keyid
    }  # KX_SERVICE_KEYS wins
