"""Signed evidence bundles (events/bundle.py): DSSE + in-toto, verifiable offline."""

from __future__ import annotations

import base64
import json

import pytest

from events.bundle import BundleError, make_bundle, verify_bundle
from events.signing import SigningKey, TrustRoot, b64encode

KEY, OTHER = SigningKey.generate(), SigningKey.generate()
TRUSTED = TrustRoot.from_document(
    {"threshold": 1, "keys": {KEY.keyid: {"public": b64encode(KEY.public_raw), "name": "auditor"}}}
)
RECORD = {
    "release_id": "r1",
    "pack": {"name": "kb", "version": "1.0.0", "digest": "sha256:" + "ab" * 32},
    "outcome": {"outcome": "success"},
    "windows": [{"figures": {"error_rate": 0.01}}],
    "timeline": [{"seq": 1}],
}


def raw(bundle) -> bytes:
    return json.dumps(bundle).encode()


def test_a_bundle_verifies_and_names_the_pack() -> None:
    stmt = verify_bundle(raw(make_bundle(RECORD, [KEY])), TRUSTED)
    assert stmt["subject"][0] == {"name": "kb@1.0.0", "digest": {"sha256": "ab" * 32}}
    assert stmt["predicate"] == RECORD


def tampered_payload(bundle):
    stmt = json.loads(base64.b64decode(bundle["payload"]))
    stmt["predicate"]["outcome"]["outcome"] = "rolled_back"
    return {**bundle, "payload": base64.b64encode(json.dumps(stmt).encode()).decode()}


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: {**b, "signatures": []}, "0 of 1"),
        (lambda b: make_bundle(RECORD, [OTHER]), "0 of 1"),
        (tampered_payload, "0 of 1"),
        (lambda b: {**b, "payloadType": "text/plain"}, "not a DSSE envelope"),
        (lambda b: {**b, "payload": "%%%"}, "malformed"),
    ],
    ids=["unsigned", "untrusted-signer", "edited-after-signing", "wrong-type", "garbage-payload"],
)
def test_a_bad_bundle_is_refused(mutate, message) -> None:
    with pytest.raises(BundleError, match=message):
        verify_bundle(raw(mutate(make_bundle(RECORD, [KEY]))), TRUSTED)


def test_subject_must_be_the_records_pack() -> None:
    bundle = make_bundle(RECORD, [KEY])
    stmt = json.loads(base64.b64decode(bundle["payload"]))
    stmt["subject"][0]["digest"]["sha256"] = "cd" * 32
    payload = json.dumps(stmt, sort_keys=True, separators=(",", ":")).encode()
    from events.bundle import PAYLOAD_TYPE, pae

    forged = {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": KEY.keyid, "sig": b64encode(KEY.sign(pae(PAYLOAD_TYPE, payload)))}],
    }
    with pytest.raises(BundleError, match="subject digest"):
        verify_bundle(raw(forged), TRUSTED)
