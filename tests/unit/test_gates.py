"""Verification gates: one negative vector per failure mode, positive controls, the digester."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from events.bundle import PAYLOAD_TYPE, pae
from events.canonical import canonical_bytes
from events.channel import ChannelConfig
from events.manifest import MANIFEST_MAX_BYTES, MAX_SIGNATURES
from events.model import PackRef
from events.signing import TrustedKey, TrustRoot, b64encode
from services.verification import gates
from services.verification.gates import (
    GATE_CODES,
    GATES,
    OK,
    GateFailure,
    PackDigester,
    PackOversized,
    Verification,
    check_manifest,
    check_pack,
    check_policy,
    verify_bytes,
)

from .gate_vectors import (
    ALICE,
    BOB,
    BUILDER,
    CI,
    MALLORY,
    PACK,
    SOURCE_PREFIX,
    Case,
    attested,
    channel_doc,
    del_path,
    pack_ref,
    set_path,
    sha256_digest,
    signature_entry,
    signed_body,
    statement,
)

Mutator = Callable[[Case], None]


# ---- small vocabulary for the vector table ---------------------------------------------------


def case(**fields: Any) -> Mutator:
    def apply(c: Case) -> None:
        for name, value in fields.items():
            setattr(c, name, value(c) if callable(value) else value)

    return apply


def signed(path: str, value: Any) -> Mutator:
    return lambda c: set_path(c.signed, path, value)


def drop(path: str) -> Mutator:
    return lambda c: del_path(c.signed, path)


def doc(edit: Callable[[dict[str, Any]], None]) -> Mutator:
    return lambda c: c.doc_edits.append(edit)


def raw(make: Callable[[Case], Any]) -> Mutator:
    def apply(c: Case) -> None:
        c.raw_manifest = make(c)

    return apply


def channel(**sections: dict[str, Any]) -> Mutator:
    """Override parts of the channel's compatibility/policy sections."""

    def apply(c: Case) -> None:
        body = channel_doc()
        for section, values in sections.items():
            body[section] = {**body[section], **values}
        c.channel_config = ChannelConfig.model_validate(body)

    return apply


def both(*mutators: Mutator) -> Mutator:
    def apply(c: Case) -> None:
        for m in mutators:
            m(c)

    return apply


def sigs(make: Callable[[Case], list[dict[str, str]]]) -> Mutator:
    def apply(c: Case) -> None:
        entries = make(c)
        c.doc_edits.append(lambda d: d.__setitem__("signatures", entries))

    return apply


def text_edit(old: str, new: str) -> Mutator:
    """Rewrite the serialized manifest text (for inputs no JSON encoder would produce)."""

    def make(c: Case) -> bytes:
        text = json.dumps(c.manifest_doc())
        assert old in text
        return text.replace(old, new, 1).encode()

    return raw(make)


def flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x01])


def swap_first_char(b64: str) -> str:
    """Same length, still base64, different signature bytes."""
    return ("B" if b64[0] != "B" else "C") + b64[1:]


class ExplodingMap(dict):
    def __contains__(self, item: object) -> bool:
        raise RuntimeError("projection unavailable")


LAPTOP = "https://laptop.example/me"


def required(make: Callable[[Case], bytes | None] | None) -> Mutator:
    """The channel requires an attestation; the attestation object holds make(case) (None: absent)."""

    def apply(c: Case) -> None:
        channel(policy={"require_attestation": True})(c)
        c.attestation = None if make is None else make(c)

    return apply


def envelope(c: Case, **fields: Any) -> bytes:
    """A valid attestation of the case's pack with envelope fields replaced."""
    doc = json.loads(attested(c.signed["digest"]))
    doc.update(fields)
    return json.dumps(doc).encode()


def signed_payload(payload: bytes) -> bytes:
    """Any payload, correctly signed by the trusted builder key."""
    return json.dumps(
        {
            "payloadType": PAYLOAD_TYPE,
            "payload": b64encode(payload),
            "signatures": [{"keyid": CI.keyid, "sig": b64encode(CI.sign(pae(PAYLOAD_TYPE, payload)))}],
        }
    ).encode()


def signed_statement(stmt: dict[str, Any]) -> bytes:
    return signed_payload(json.dumps(stmt).encode())


EVIDENCE_FIELDS = ["build.id", "build.builder", "build.run", "provenance.source", "provenance.revision"]

# ---- the negative vectors: (mutation, failing gate, code) ------------------------------------

V = pytest.param
NEGATIVE = [
    # trust_root: only the caller's root counts, and it must be usable.
    V(case(root=None), "trust_root", "trust_root_missing", id="trust-root-missing"),
    V(case(root=TrustRoot(threshold=0, keys=())), "trust_root", "trust_root_invalid", id="trust-root-threshold-zero"),
    V(
        case(
            root=TrustRoot(
                threshold=2,
                keys=(TrustedKey(ALICE.keyid, ALICE.public_raw, "a"), TrustedKey("alias", ALICE.public_raw, "a-again")),
            )
        ),
        "trust_root",
        "trust_root_invalid",
        id="trust-root-one-key-listed-twice-threshold-2",
    ),
    # manifest envelope: nothing inside `signed` is read here.
    V(raw(lambda c: None), "manifest", "manifest_missing", id="manifest-missing"),
    V(
        raw(lambda c: c.manifest_bytes() + b" " * MANIFEST_MAX_BYTES),
        "manifest",
        "manifest_oversized",
        id="manifest-oversized",
    ),
    V(raw(lambda c: b"\x00\xffPK\x03\x04 garbage"), "manifest", "malformed_json", id="garbage-manifest"),
    V(raw(lambda c: b'{"signed": {"name": "kb-core"'), "manifest", "malformed_json", id="truncated-manifest-json"),
    V(raw(lambda c: b'{"signed": {"size": NaN}, "signatures": []}'), "manifest", "malformed_json", id="nan-constant"),
    V(text_edit('"size": 76800', '"size": ' + "7" * 5000), "manifest", "malformed_json", id="integer-over-4300-digits"),
    V(
        text_edit('"id": "build-42"', '"id": "\\ud800"'),
        "manifest",
        "malformed_json",
        id="lone-surrogate-no-canonical-form",
    ),
    V(text_edit('"size": 76800', '"size": 76800.0'), "manifest", "float_forbidden", id="float-in-signed"),
    V(
        text_edit('{"signed": {', '{"signed": {"version": "9.9.9", '),
        "manifest",
        "duplicate_key",
        id="duplicate-key-in-signed",
    ),
    V(
        text_edit('{"signed": {', '{"signatures": [], "signed": {'),
        "manifest",
        "duplicate_key",
        id="duplicate-top-level-key",
    ),
    V(raw(lambda c: b'[{"signed": {}, "signatures": []}]'), "manifest", "bad_shape", id="top-level-array"),
    V(doc(lambda d: d.pop("signed")), "manifest", "bad_shape", id="signed-absent"),
    V(
        doc(lambda d: d.__setitem__("signed", json.dumps(d["signed"]))),
        "manifest",
        "bad_shape",
        id="signed-is-a-string",
    ),
    V(
        doc(lambda d: d.__setitem__("signatures", d["signatures"][0])),
        "manifest",
        "bad_shape",
        id="signatures-not-a-list",
    ),
    V(doc(lambda d: d["signatures"][0].pop("keyid")), "manifest", "bad_shape", id="signature-without-keyid"),
    V(
        doc(lambda d: d["signatures"][0].__setitem__("sig", "not base64!")),
        "manifest",
        "bad_shape",
        id="signature-not-base64",
    ),
    V(
        doc(lambda d: d.__setitem__("signatures", d["signatures"] * (MAX_SIGNATURES + 1))),
        "manifest",
        "too_many_signatures",
        id="too-many-signatures",
    ),
    # signature: distinct trusted keys over the canonical bytes; keyid is only a label.
    V(case(sign_with=[]), "signature", "no_signatures", id="no-signatures"),
    V(case(sign_with=[MALLORY]), "signature", "threshold_not_met", id="untrusted-key"),
    V(
        sigs(lambda c: [signature_entry(MALLORY, c.signed, keyid=ALICE.keyid)]),
        "signature",
        "threshold_not_met",
        id="keyid-spoof-trusted-label-other-key",
    ),
    V(
        both(
            case(threshold=2),
            sigs(lambda c: [signature_entry(ALICE, c.signed), signature_entry(ALICE, c.signed, keyid=BOB.keyid)]),
        ),
        "signature",
        "threshold_not_met",
        id="same-key-twice-threshold-2",
    ),
    V(
        sigs(lambda c: [signature_entry(ALICE, {**c.signed, "version": "2.0.1"})]),
        "signature",
        "threshold_not_met",
        id="signature-over-other-content",
    ),
    V(
        doc(lambda d: set_path(d["signed"], "provenance.source", "https://evil.example/kb")),
        "signature",
        "threshold_not_met",
        id="signed-content-tampered-after-signing",
    ),
    V(
        doc(lambda d: d["signatures"][0].__setitem__("sig", swap_first_char(d["signatures"][0]["sig"]))),
        "signature",
        "threshold_not_met",
        id="signature-bytes-corrupted",
    ),
    # manifest schema: typed only once the signatures are good.
    *[V(drop(f), "manifest", "schema_invalid", id=f"evidence-absent-{f}") for f in EVIDENCE_FIELDS],
    V(signed("size", "76800"), "manifest", "schema_invalid", id="schema-size-is-string"),
    V(signed("expires", "2030-07-01T00:00:00"), "manifest", "schema_invalid", id="schema-expires-without-timezone"),
    V(signed("version", "two point oh"), "manifest", "schema_invalid", id="schema-version-unparsable"),
    V(drop("compatibility"), "manifest", "schema_invalid", id="schema-compatibility-absent"),
    # expiry
    V(signed("expires", "2030-05-01T00:00:00Z"), "expiry", "expired", id="expired"),
    V(signed("expires", "2030-06-01T12:00:00Z"), "expiry", "expired", id="expires-exactly-now"),
    # RFC 3339 in every form it allows (lower-case t and z, nine fraction digits, an offset): read as the
    # instant it names, not refused as unparsable (found by tests/unit/test_schema_acceptance.py)
    V(signed("expires", "2030-05-01t00:00:00z"), "expiry", "expired", id="expires-lower-case-t-and-z"),
    V(signed("expires", "2030-06-01T14:00:00.000000001+02:00"), "expiry", "expired", id="expires-ns-and-offset"),
    V(signed("expires", "2030-05-31T23:59:60Z"), "expiry", "expired", id="expires-on-a-leap-second"),
    # and nothing else: seconds since the epoch, a minute without seconds, an offset without its colon
    V(signed("expires", 1906156800), "manifest", "schema_invalid", id="schema-expires-unix-seconds"),
    V(signed("expires", "2030-07-01T00:00Z"), "manifest", "schema_invalid", id="schema-expires-without-seconds"),
    V(signed("expires", "2030-07-01T00:00:00+0200"), "manifest", "schema_invalid", id="schema-expires-offset-no-colon"),
    V(case(now=datetime(2030, 6, 1, 12, 0)), "expiry", "reference_time_invalid", id="naive-reference-time"),
    # identity: the request and the manifest name the same pack.
    V(case(request_name="kb-other"), "identity", "name_mismatch", id="request-name-mismatch"),
    V(case(request_version="2.0.1"), "identity", "version_mismatch", id="request-version-mismatch"),
    V(case(request_digest=sha256_digest(b"another pack")), "identity", "digest_mismatch", id="request-digest-mismatch"),
    # integrity: the exact bytes, capped at the declared size.
    V(case(pack=None), "integrity", "pack_missing", id="pack-missing"),
    V(case(pack=flip_last_byte(PACK)), "integrity", "digest_mismatch", id="tampered-pack-bytes"),
    V(signed("size", len(PACK) + 1), "integrity", "size_mismatch", id="wrong-size-declared-larger"),
    V(case(pack=PACK[:-100]), "integrity", "size_mismatch", id="truncated-pack"),
    V(case(pack=PACK + b"!"), "integrity", "pack_oversized", id="oversized-pack-aborts"),
    V(signed("size", len(PACK) - 1), "integrity", "pack_oversized", id="wrong-size-declared-smaller"),
    # compatibility: unconfigured fails closed.
    V(case(channel_config=None), "compatibility", "channel_unconfigured", id="channel-unconfigured-none"),
    # an unreadable newest entry: refused saying so, even with the older configuration at hand
    V(
        case(channel_problem="channel config at seq 6 could not be decoded: x"),
        "compatibility",
        "channel_unreadable",
        id="channel-newest-entry-unreadable",
    ),
    V(case(channel_config=ChannelConfig()), "compatibility", "channel_unconfigured", id="channel-compatibility-empty"),
    V(channel(compatibility={"profiles": []}), "compatibility", "channel_unconfigured", id="channel-profiles-empty"),
    V(signed("compatibility.schema", "kx-schema-4"), "compatibility", "schema_mismatch", id="schema-mismatch"),
    V(signed("compatibility.profile", "heavy"), "compatibility", "profile_mismatch", id="profile-mismatch"),
    V(channel(compatibility={"runtime_version": "3.1.0"}), "compatibility", "runtime_mismatch", id="runtime-mismatch"),
    V(
        signed("compatibility.runtime", "~>2.3"),
        "compatibility",
        "runtime_specifier_invalid",
        id="runtime-specifier-invalid",
    ),
    V(signed("compatibility.runtime", " "), "compatibility", "runtime_specifier_invalid", id="runtime-specifier-empty"),
    V(
        channel(compatibility={"runtime_version": "two"}),
        "compatibility",
        "runtime_version_invalid",
        id="channel-runtime-version-invalid",
    ),
    # policy
    V(
        case(active={"internal": pack_ref("1.9.0", b"old"), "rest": pack_ref("2.1.0", b"newer")}),
        "policy",
        "downgrade",
        id="downgrade-on-one-cohort",
    ),
    V(
        case(active={"internal": None, "rest": pack_ref("2.0.0", PACK)}),
        "policy",
        "not_newer",
        id="same-version-same-bytes-rollout",
    ),
    V(
        case(active={"internal": pack_ref("2.0.0", b"other bytes"), "rest": None}),
        "policy",
        "same_version_other_digest",
        id="same-version-other-bytes",
    ),
    V(
        case(purpose="pin", active={"internal": pack_ref("2.0", b"other bytes"), "rest": None}),
        "policy",
        "same_version_other_digest",
        id="same-version-other-bytes-even-when-pinning",
    ),
    V(case(purpose="hotfix"), "policy", "purpose_invalid", id="purpose-unknown"),
    V(case(cohorts=()), "policy", "no_cohorts", id="no-target-cohorts"),
    V(case(active={"internal": None}), "policy", "active_unknown", id="active-pack-of-cohort-not-given"),
    V(
        signed("provenance.source", "https://github.com/someone/kb"),
        "policy",
        "source_forbidden",
        id="forbidden-source",
    ),
    V(
        signed("provenance.source", f"{SOURCE_PREFIX}-evil/core"),
        "policy",
        "source_forbidden",
        id="source-prefix-without-boundary",
    ),
    V(channel(policy={"allowed_sources": []}), "policy", "source_forbidden", id="allowed-sources-empty-list"),
    V(signed("build.builder", "https://laptop.example/me"), "policy", "builder_forbidden", id="forbidden-builder"),
    V(case(env="dev"), "policy", "scope_forbidden", id="forbidden-scope-env"),
    V(case(channel="stable-eu"), "policy", "scope_forbidden", id="forbidden-scope-channel"),
    # evidence: present, non-blank, validated.
    # (source/builder restrictions lifted so the blank value reaches the evidence gate)
    *[
        V(
            both(channel(policy={"allowed_sources": None, "allowed_builders": None}), signed(f, "  ")),
            "evidence",
            "evidence_missing",
            id=f"evidence-blank-{f}",
        )
        for f in EVIDENCE_FIELDS
    ],
    V(signed("build.validation", "failed"), "evidence", "validation_not_passed", id="validation-not-passed"),
    # the seed's "floating latest": a revision that can move, where the channel wants the commit
    *[
        V(
            both(channel(policy={"require_commit_revision": True}), signed("provenance.revision", revision)),
            "evidence",
            "revision_not_commit",
            id=f"revision-not-a-full-commit-{n}",
        )
        for n, revision in enumerate(
            ["main", "HEAD", "v1.2.0", "3f2a9c1", "a" * 39, "a" * 41, "g" * 40, "a" * 40 + "\n"]
        )
    ],
    V(case(sign_with=[CI]), "signature", "threshold_not_met", id="builder-key-cannot-sign-manifests"),
    # attestation, when the channel requires one: one vector per failure mode
    V(required(None), "evidence", "attestation_missing", id="attestation-missing-when-required"),
    V(required(lambda c: b"not an envelope {"), "evidence", "attestation_malformed", id="attestation-not-json"),
    V(
        required(lambda c: envelope(c, payloadType="application/json")),
        "evidence",
        "attestation_malformed",
        id="attestation-wrong-payload-type",
    ),
    V(
        required(lambda c: envelope(c, payload="***")),
        "evidence",
        "attestation_malformed",
        id="attestation-payload-not-base64",
    ),
    V(
        required(lambda c: envelope(c, signatures=[{"keyid": CI.keyid}])),
        "evidence",
        "attestation_malformed",
        id="attestation-signature-without-sig",
    ),
    V(
        required(lambda c: envelope(c, signatures="none")),
        "evidence",
        "attestation_malformed",
        id="attestation-signatures-not-list",
    ),
    V(
        required(lambda c: b" " * (gates.ATTESTATION_MAX_BYTES + 1)),
        "evidence",
        "attestation_malformed",
        id="attestation-oversized",
    ),
    V(required(lambda c: envelope(c, signatures=[])), "evidence", "attestation_unsigned", id="attestation-unsigned"),
    V(
        required(lambda c: attested(c.signed["digest"], signers=[MALLORY])),
        "evidence",
        "attestation_untrusted",
        id="attestation-wrong-key",
    ),
    V(
        required(lambda c: attested(c.signed["digest"], signers=[ALICE])),
        "evidence",
        "attestation_untrusted",
        id="attestation-by-manifest-key-not-builder-key",
    ),
    V(
        both(required(lambda c: attested(c.signed["digest"])), case(builders=[])),
        "evidence",
        "attestation_untrusted",
        id="attestation-trust-root-without-builders",
    ),
    V(
        required(lambda c: envelope(c, payload=b64encode(json.dumps(statement(sha256_digest(b"x"))).encode()))),
        "evidence",
        "attestation_untrusted",
        id="attestation-payload-swapped-after-signing",
    ),
    V(
        both(required(lambda c: attested(c.signed["digest"])), case(builders=[(CI, ["https://ci.other.example/b"])])),
        "evidence",
        "attestation_untrusted",
        id="attestation-key-trusted-for-another-builder",
    ),
    V(
        required(lambda c: attested(sha256_digest(b"some other pack"))),
        "evidence",
        "attestation_subject_mismatch",
        id="attestation-wrong-subject-digest",
    ),
    V(
        both(
            required(lambda c: attested(c.signed["digest"], builder_id=LAPTOP)),
            case(builders=[(CI, [BUILDER, LAPTOP])]),
        ),
        "evidence",
        "attestation_builder_forbidden",
        id="attestation-builder-not-allowed",
    ),
    V(
        required(lambda c: signed_statement({"_type": "https://in-toto.io/Statement/v0.1"})),
        "evidence",
        "attestation_invalid",
        id="attestation-not-statement-v1",
    ),
    V(
        required(
            lambda c: signed_statement({**statement(c.signed["digest"]), "predicateType": "https://example/other"})
        ),
        "evidence",
        "attestation_invalid",
        id="attestation-not-slsa-provenance",
    ),
    V(
        required(lambda c: signed_statement({**statement(c.signed["digest"]), "predicate": {}})),
        "evidence",
        "attestation_invalid",
        id="attestation-without-builder",
    ),
    V(
        required(lambda c: signed_payload(b"[1, 2")),
        "evidence",
        "attestation_invalid",
        id="attestation-signed-payload-not-json",
    ),
    # fail closed on surprises
    V(case(active=ExplodingMap()), "policy", "internal_error", id="exception-inside-gate-is-failure"),
]


def stopped_at(v: Verification, gate: str, code: str) -> None:
    """The run failed at `gate`/`code`, every earlier gate passed, and no later gate ran."""
    assert not v.ok
    assert v.failure == GateFailure(gate, code, v.failure.message), v.failure
    assert v.failure.message
    last = v.outcomes[-1]
    assert (last.gate, last.ok, last.code, last.message) == (gate, False, code, v.failure.message)
    assert all(o.ok and o.code == OK for o in v.outcomes[:-1]), v.outcomes
    # The typed schema check belongs to gate "manifest" but runs after the signature gate.
    before = GATES[:3] if (gate, code) == ("manifest", "schema_invalid") else GATES[: GATES.index(gate)]
    assert [o.gate for o in v.outcomes[:-1]] == list(before)
    if "signature" not in v.passed:  # nothing was read from `signed` before it was authenticated
        assert v.manifest is None and v.signers == []


@pytest.fixture
def release() -> Case:
    """A valid release: pack, manifest signed by ALICE (sign_manifest), trust root {ALICE, BOB}, k=1."""
    return Case()


@pytest.mark.parametrize(("mutate", "gate", "code"), NEGATIVE)
def test_negative_vector(release: Case, mutate: Mutator, gate: str, code: str) -> None:
    mutate(release)
    stopped_at(verify_bytes(*release.build()), gate, code)


def test_every_reason_code_has_a_vector() -> None:
    covered = {(p.values[1], p.values[2]) for p in NEGATIVE} | {
        ("integrity", "gate_order"),
        ("compatibility", "gate_order"),
    }
    declared = {(g, c) for g, codes in GATE_CODES.items() for c in codes}
    assert declared - covered == set()
    assert covered - declared == {("policy", "internal_error")}
    assert list(GATE_CODES) == list(GATES)


def test_failure_messages_say_why() -> None:
    c = Case(threshold=2)
    c.doc_edits.append(lambda d: d.__setitem__("signatures", [signature_entry(ALICE, c.signed)] * 2))
    assert verify_bytes(*c.build()).failure.message.startswith("1 of 2 required distinct trusted keys")
    c = Case()
    del c.signed["build"]["run"]
    assert "build.run" in verify_bytes(*c.build()).failure.message
    c = Case()
    c.signed["provenance"]["revision"] = ""
    assert "provenance.revision" in verify_bytes(*c.build()).failure.message
    c = Case()
    c.signed["build"]["id"] = " "
    assert "build.id" in verify_bytes(*c.build()).failure.message


# ---- positive controls -----------------------------------------------------------------------


def passes(c: Case) -> Verification:
    v = verify_bytes(*c.build())
    assert v.failure is None, v.failure
    assert v.ok
    assert [(o.gate, o.ok, o.code) for o in v.outcomes] == [(g, True, OK) for g in GATES]
    return v


def test_valid_pack_passes_all_nine_gates_in_order(release: Case) -> None:
    v = passes(release)
    assert len(v.outcomes) == 9
    assert v.signers == [ALICE.keyid]
    assert v.pack == PackRef(name="kb-core", version="2.0.0", digest=sha256_digest(PACK), size=len(PACK))


def test_a_float_beside_signed_passes() -> None:
    """CONTRACT §6 forbids floats in `signed`, and lets a producer add fields freely: a float outside
    `signed` is not covered by any signature and is no reason to refuse the pack (it once was)."""
    c = Case()
    c.doc_edits.append(lambda d: d.__setitem__("x_meta", {"score": 0.5, "sizes": [1.25, 2]}))
    passes(c)


def test_null_provenance_refs_pass_as_none() -> None:
    """Go's nil slice: `"refs": null` (signed as written), read as no refs."""
    c = Case()
    c.signed["provenance"]["refs"] = None
    assert passes(c).manifest.provenance.refs == []


def test_extra_signed_fields_pass_and_are_kept() -> None:
    c = Case()
    c.signed["notes"] = "knowledge refresh"
    c.signed["build"]["cache"] = {"hits": 3, "keys": ["a", "b"]}
    v = passes(c)
    assert v.manifest.model_extra == {"notes": "knowledge refresh"}


@pytest.mark.parametrize("revision", ["0f1e2d3c4b5a69788796a5b4c3d2e1f0a1b2c3d4", "AB" * 20, "c" * 64])
def test_a_full_commit_id_passes_where_the_channel_requires_one(revision: str) -> None:
    c = Case()
    both(channel(policy={"require_commit_revision": True}), signed("provenance.revision", revision))(c)
    assert passes(c).ok  # every gate, the evidence last


def test_threshold_two_with_two_distinct_keys() -> None:
    v = passes(Case(sign_with=[ALICE, BOB], threshold=2))
    assert sorted(v.signers) == sorted([ALICE.keyid, BOB.keyid])


@pytest.mark.parametrize("purpose", ["pin", "rollback"])
def test_pin_and_rollback_accept_an_older_version(purpose: str) -> None:
    passes(Case(purpose=purpose, active={"internal": pack_ref("2.4.0", b"newer"), "rest": pack_ref("2.0.0", PACK)}))


def test_downgrade_allowed_when_the_channel_permits_it() -> None:
    c = Case(active={"internal": pack_ref("3.0.0", b"newer"), "rest": None})
    channel(policy={"forbid_downgrade": False})(c)
    passes(c)


def test_first_activation_has_nothing_to_compare() -> None:
    passes(Case(active={"internal": None, "rest": None}))


def test_keyid_is_only_a_hint() -> None:
    c = Case(sign_with=[])
    c.doc_edits.append(
        lambda d: d.__setitem__(
            "signatures",
            [
                signature_entry(MALLORY, c.signed),  # unknown key: ignored
                signature_entry(ALICE, c.signed, keyid="not-a-keyid"),  # mislabelled but valid: counts
            ],
        )
    )
    assert passes(c).signers == [ALICE.keyid]


def test_required_attestation_by_a_trusted_builder_passes() -> None:
    c = Case()
    required(lambda c: attested(c.signed["digest"]))(c)
    v = passes(c)
    assert "attested by builder " + BUILDER in v.outcomes[-1].message


def test_attestation_signed_by_any_one_of_several_builder_keys_passes() -> None:
    c = Case(builders=[(MALLORY, ["https://ci.other.example/b"]), (CI, [BUILDER])])
    required(lambda c: attested(c.signed["digest"], signers=[MALLORY, CI]))(c)
    passes(c)


def test_attestation_is_not_read_when_the_channel_does_not_require_it() -> None:
    c = Case(attestation=b"garbage the verifier never looks at")
    v = passes(c)
    assert "attested" not in v.outcomes[-1].message


def test_channel_policy_requires_no_attestation_by_default() -> None:
    assert ChannelConfig.model_validate(channel_doc()).policy.require_attestation is False
    assert gates.attestation_required(None) is False


def test_manifest_without_scopes_goes_anywhere() -> None:
    c = Case(env="dev", channel="nightly")
    del c.signed["scopes"]
    passes(c)


def test_prerelease_runtime_inside_the_range() -> None:
    c = Case()
    channel(compatibility={"runtime_version": "2.6.0rc1"})(c)
    passes(c)


def test_empty_pack() -> None:
    passes(Case(signed=signed_body(b""), pack=b""))


# ---- phases, as the NATS adapter calls them -------------------------------------------------


def test_phases_compose_like_verify_bytes() -> None:
    manifest, pack, ctx = Case().build()
    v = check_manifest(manifest, ctx)
    assert [o.gate for o in v.outcomes] == list(GATES[:5]) and v.failure is None
    digester = PackDigester(v.manifest.size)
    for i in range(0, len(pack), 1000):
        digester.update(pack[i : i + 1000])
    v = check_policy(check_pack(v, digester.result(), ctx), ctx)
    assert v.ok and v.outcomes == verify_bytes(manifest, pack, ctx).outcomes


def test_streaming_oversized_pack_is_reported_by_check_pack() -> None:
    manifest, _, ctx = Case().build()
    v = check_manifest(manifest, ctx)
    digester = PackDigester(v.manifest.size)
    with pytest.raises(PackOversized):
        digester.update(PACK + b"x")
    stopped_at(check_pack(v, None, ctx, oversized=True), "integrity", "pack_oversized")


def test_gates_refuse_to_run_out_of_order() -> None:
    manifest, pack, ctx = Case().build()
    v = check_pack(Verification(), (sha256_digest(pack), len(pack)), ctx)
    assert not v.ok and (v.failure.gate, v.failure.code) == ("integrity", "gate_order")
    assert [(o.gate, o.ok) for o in v.outcomes] == [("integrity", False)]
    v = check_policy(check_manifest(manifest, ctx), ctx)  # check_pack skipped
    assert not v.ok and (v.failure.gate, v.failure.code) == ("compatibility", "gate_order")
    assert [o.gate for o in v.outcomes] == [*GATES[:5], "compatibility"]


def test_nothing_runs_after_a_failure() -> None:
    manifest, pack, ctx = Case(sign_with=[MALLORY]).build()
    v = check_manifest(manifest, ctx)
    later = check_policy(check_pack(v, (sha256_digest(pack), len(pack)), ctx), ctx)
    assert later.outcomes == v.outcomes and later.failure == v.failure


def test_gate_failure_is_a_value_not_an_exception() -> None:
    assert not issubclass(GateFailure, BaseException)
    assert (gates.DEADLINE_GATE, gates.TIMEOUT_CODE) == ("deadline", "timeout")


# ---- the digester ----------------------------------------------------------------------------


def test_digester_aborts_on_the_chunk_that_crosses_the_limit() -> None:
    d = PackDigester(10)
    d.update(b"12345")
    with pytest.raises(PackOversized) as err:
        d.update(b"678901")
    assert (err.value.limit, err.value.seen) == (10, 11) and d.oversized
    with pytest.raises(PackOversized):
        d.update(b"")  # it keeps refusing
    with pytest.raises(PackOversized):
        d.result()


def test_digester_exact_size_is_fine() -> None:
    d = PackDigester(10)
    d.update(b"0123456789")
    assert d.result() == (sha256_digest(b"0123456789"), 10)


@pytest.mark.parametrize("bad", [-1, True, 1.5, "10"])
def test_digester_needs_a_size(bad: Any) -> None:
    with pytest.raises(ValueError):
        PackDigester(bad)


def test_digester_chunking_does_not_matter() -> None:
    rng = random.Random(20300601)  # seeded: the same 200 cases every run
    for _ in range(200):
        data = rng.randbytes(rng.randrange(0, 4096))
        points = sorted({0, len(data), *(rng.randrange(0, len(data) + 1) for _ in range(rng.randrange(0, 8)))})
        d = PackDigester(len(data))
        for lo, hi in zip(points, points[1:]):
            d.update(data[lo:hi])
        assert d.result() == ("sha256:" + hashlib.sha256(data).hexdigest(), len(data))


# ---- properties ------------------------------------------------------------------------------

_VALID = Case()
_MANIFEST, _PACK_BYTES, _CTX = _VALID.build()


def test_arbitrary_manifest_bytes_never_pass_and_never_raise() -> None:
    rng = random.Random(7)
    samples = [rng.randbytes(rng.randrange(0, 2048)) for _ in range(300)]
    samples += [_MANIFEST[:cut] for cut in range(0, len(_MANIFEST), 7)]  # every truncation point
    for data in samples:
        v = verify_bytes(data, _PACK_BYTES, _CTX)
        assert not v.ok and v.failure is not None and v.failure.code != OK


def test_a_flipped_manifest_byte_never_changes_what_passes() -> None:
    """Every byte position, several flips each: a pass is only possible for harmless edits."""
    rng = random.Random(11)
    for position in range(len(_MANIFEST)):
        for xor in (0x01, 0x20, rng.randrange(1, 256)):
            mutated = bytearray(_MANIFEST)
            mutated[position] ^= xor
            v = verify_bytes(bytes(mutated), _PACK_BYTES, _CTX)
            if v.ok:  # e.g. whitespace, or a keyid label, which signatures do not cover
                assert canonical_bytes(json.loads(bytes(mutated))["signed"]) == canonical_bytes(_VALID.signed)


# ---- builder keys in the trust root ------------------------------------------------------------


def _builder_doc(ids: Any) -> dict[str, Any]:
    return {
        "threshold": 1,
        "keys": {ALICE.keyid: {"public": b64encode(ALICE.public_raw)}},
        "builders": {CI.keyid: {"public": b64encode(CI.public_raw), "name": "ci", "ids": ids}},
    }


def test_trust_root_builders_round_trip_and_stay_apart_from_manifest_keys() -> None:
    root = TrustRoot.from_document(_builder_doc([BUILDER]))
    assert [(b.keyid, b.ids) for b in root.builders] == [(CI.keyid, (BUILDER,))]
    assert [k.keyid for k in root.keys] == [ALICE.keyid]
    assert TrustRoot.from_document(root.to_document()) == root


@pytest.mark.parametrize(
    "ids", [None, [], [""], "https://ci.example/b"], ids=["absent", "empty", "blank", "not-a-list"]
)
def test_a_builder_key_must_name_the_builders_it_may_attest_for(ids: Any) -> None:
    doc = _builder_doc(ids)
    if ids is None:
        del doc["builders"][CI.keyid]["ids"]
    with pytest.raises(ValueError, match="ids"):
        TrustRoot.from_document(doc)


def test_builder_keys_rotate_with_the_root() -> None:
    from events.trust import follow_chain, sign_root

    anchor = TrustRoot.from_document(_builder_doc([BUILDER]))
    new = {**_builder_doc(["https://ci.next.example/b"]), "version": 2}
    chain = follow_chain(anchor, [(1, sign_root(new, [ALICE]))])
    assert chain.refused == () and [b.ids for b in chain.current.builders] == [("https://ci.next.example/b",)]
