"""Signed evidence bundles: an in-toto Statement in a DSSE envelope, verifiable offline.

subject   = the pack (name@version, sha256 digest)
predicate = the release's evidence record
The envelope's signatures are Ed25519 over DSSE's pre-authentication encoding, so the
bytes signed are unambiguous; verification needs only the bundle and trusted keys.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from .canonical import StrictJSONError, loads_strict
from .signing import SigningKey, TrustRoot, b64decode_strict, b64encode

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://konnaxion.dev/releases/evidence-record/v1"


class BundleError(ValueError):
    pass


def pae(payload_type: str, payload: bytes) -> bytes:
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def statement(record: dict[str, Any]) -> dict[str, Any]:
    pack = record.get("pack") or {}
    digest = str(pack.get("digest", ""))
    if not digest.startswith("sha256:"):
        raise BundleError("the record names no pack digest: nothing to attest")
    return {
        "_type": STATEMENT_TYPE,
        "subject": [
            {"name": f"{pack.get('name')}@{pack.get('version')}", "digest": {"sha256": digest.removeprefix("sha256:")}}
        ],
        "predicateType": PREDICATE_TYPE,
        "predicate": record,
    }


def make_bundle(record: dict[str, Any], keys: list[SigningKey]) -> dict[str, Any]:
    # floats are allowed in evidence figures; canonical form is only needed for signed manifests
    payload = json.dumps(statement(record), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": b64encode(payload),
        "signatures": [{"keyid": k.keyid, "sig": b64encode(k.sign(pae(PAYLOAD_TYPE, payload)))} for k in keys],
    }


def verify_bundle(raw: bytes, trusted: TrustRoot) -> dict[str, Any]:
    """The statement, if a threshold of trusted keys signed it and it is self-consistent."""
    try:
        envelope = loads_strict(raw, allow_floats=True, max_bytes=16 * 1024 * 1024)
    except StrictJSONError as exc:
        raise BundleError(f"not a bundle: {exc}") from None
    if (
        not isinstance(envelope, dict)
        or envelope.get("payloadType") != PAYLOAD_TYPE
        or not isinstance(envelope.get("payload"), str)
    ):
        raise BundleError("not a DSSE envelope of an in-toto statement")
    try:
        payload = base64.b64decode(envelope["payload"], validate=True)
        sigs = [(str(s["keyid"]), b64decode_strict(s["sig"])) for s in envelope.get("signatures", [])]
    except (binascii.Error, AttributeError, KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"malformed envelope: {exc}") from None
    valid = trusted.count_valid(pae(PAYLOAD_TYPE, payload), sigs)
    if len(valid) < trusted.threshold:
        raise BundleError(f"{len(valid)} of {trusted.threshold} required trusted keys signed this bundle")
    try:
        stmt = loads_strict(payload, allow_floats=True)
    except StrictJSONError as exc:
        raise BundleError(f"signed payload is not JSON: {exc}") from None
    if not isinstance(stmt, dict) or stmt.get("_type") != STATEMENT_TYPE or stmt.get("predicateType") != PREDICATE_TYPE:
        raise BundleError("the payload is not an evidence-record statement")
    try:
        subject_digest = stmt["subject"][0]["digest"]["sha256"]
        record_digest = stmt["predicate"]["pack"]["digest"]
    except (KeyError, IndexError, TypeError) as exc:
        raise BundleError(f"the statement lacks a subject or a record pack: {exc!r}") from None
    if not isinstance(subject_digest, str) or "sha256:" + subject_digest != record_digest:
        raise BundleError("the subject digest is not the record's pack digest")
    return stmt
