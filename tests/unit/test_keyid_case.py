"""Keyids are hex (CONTRACT §6: "hex SHA-256 of the raw 32-byte public key"), and hex comes in either case.

.NET's Convert.ToHexString, Java's HexFormat.withUpperCase() and `xxd -u` write upper case; a trust
root, builder list or service-keys file written by them names the same keys. They are compared
regardless of case and stored lower case (events/signing.py `normal_keyid`), so `kxr serve` and
`kxr runtime simulate` start on them and a `Kx-Signer` header in either case finds its key.
"""

from __future__ import annotations

import pytest

from events.service_signing import SIGNER_HEADER, ServiceKeys, signature_headers
from events.signing import SigningKey, TrustRoot, b64encode

KEY = SigningKey.generate()
BUILDER = SigningKey.generate()


def entry(key: SigningKey, **extra) -> dict:
    return {"public": b64encode(key.public_raw), "name": "k", **extra}


def test_an_upper_case_keyid_names_the_same_trust_root_key_and_is_stored_lower_case():
    doc = {
        "threshold": 1,
        "keys": {KEY.keyid.upper(): entry(KEY)},
        "builders": {BUILDER.keyid.upper(): entry(BUILDER, ids=["kx-pipeline"])},
    }
    root = TrustRoot.from_document(doc)
    assert [(k.keyid, k.public) for k in root.keys] == [(KEY.keyid, KEY.public_raw)]
    assert [(b.keyid, b.public) for b in root.builders] == [(BUILDER.keyid, BUILDER.public_raw)]
    lower = {"keys": {KEY.keyid: entry(KEY)}, "builders": {BUILDER.keyid: entry(BUILDER, ids=["kx-pipeline"])}}
    assert root == TrustRoot.from_document({**doc, **lower})  # the same root: a rotation to it changes nothing


def test_a_keyid_that_is_not_the_keys_is_still_refused_in_any_case():
    other = SigningKey.generate().keyid
    for keyid in (other, other.upper(), KEY.keyid[:-1] + "\u212a"):  # another key's; a Kelvin sign, not hex
        with pytest.raises(ValueError, match="does not match the SHA-256 of its public key"):
            TrustRoot.from_document({"threshold": 1, "keys": {keyid: entry(KEY)}})


def test_service_keys_listed_in_upper_case_verify_a_signer_header_in_either_case():
    keys = ServiceKeys.from_document({"keys": {KEY.keyid.upper(): entry(KEY, roles=["activator"])}})
    assert list(keys.keys) == [KEY.keyid]
    subject, payload = "kx.scope.prod.canary.internal.activated", b"{}"
    headers = signature_headers(KEY, subject, payload)
    assert keys.check("activator", subject, payload, headers) is None
    shouting = {**headers, SIGNER_HEADER: headers[SIGNER_HEADER].upper()}
    assert keys.check("activator", subject, payload, shouting) is None
    assert keys.job(subject, payload, shouting) is not None


def test_one_key_listed_twice_in_two_cases_is_refused_where_its_rights_would_be_ambiguous():
    with pytest.raises(ValueError, match="listed twice"):
        ServiceKeys.from_document(
            {"keys": {KEY.keyid: entry(KEY, roles=["activator"]), KEY.keyid.upper(): entry(KEY, roles=["pinner"])}}
        )
    builders = {BUILDER.keyid: entry(BUILDER, ids=["a"]), BUILDER.keyid.upper(): entry(BUILDER, ids=["b"])}
    with pytest.raises(ValueError, match="listed twice"):
        TrustRoot.from_document({"threshold": 1, "keys": {KEY.keyid: entry(KEY)}, "builders": builders})
