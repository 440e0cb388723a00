"""Service signatures are verified by libsodium (PyNaCl) now: it must accept and refuse exactly what
`cryptography` (OpenSSL) did for every signature an honest service key can be judged on."""

from __future__ import annotations

import os

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from events.service_signing import ServiceKeys, signature_headers, signed_bytes, verify_job, verify_signature
from events.signing import SigningKey, b64encode

L = 2**252 + 27742317777372353535851937790883648493  # the order of the Ed25519 base point


def openssl_verifies(public: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def cases():
    key, other = SigningKey.generate(), SigningKey.generate()
    for size in (0, 1, 63, 64, 65, 1300, 70_000):
        message = os.urandom(size)
        sig = key.sign(message)
        flipped = bytes([sig[0] ^ 1]) + sig[1:]
        s = int.from_bytes(sig[32:], "little")
        malleable = sig[:32] + (s + L).to_bytes(32, "little")  # the same point, s not reduced: refused by both
        yield "valid", key.public_raw, sig, message
        yield "tampered message", key.public_raw, sig, message + b"x"
        yield "flipped signature bit", key.public_raw, flipped, message
        yield "other key", other.public_raw, sig, message
        yield "non-canonical s", key.public_raw, malleable, message
        yield "short signature", key.public_raw, sig[:63], message
        yield "long signature", key.public_raw, sig + b"\0", message
        yield "signature moved into the message", key.public_raw, sig[:63], sig[63:] + message
        yield "empty signature", key.public_raw, b"", message


@pytest.mark.parametrize("case", list(cases()), ids=lambda c: f"{c[0]}-{len(c[3])}")
def test_libsodium_and_openssl_agree(case):
    what, public, signature, message = case
    assert verify_signature(public, signature, message) is openssl_verifies(public, signature, message)
    assert verify_signature(public, signature, message) is (what == "valid")


def test_a_job_verifies_as_check_does():
    key = SigningKey.generate()
    keys = ServiceKeys.of(key, ["activator"])
    subject, payload = "kx.scope.prod.canary.all.activated", b'{"x":1}'
    headers = signature_headers(key, subject, payload)
    job = keys.job(subject, payload, headers)
    assert job is not None and verify_job(*job) is True
    assert verify_job(*keys.job(subject, b'{"x":2}', headers)) is False
    assert keys.job(subject, payload, {}) is None  # unsigned: check verifies nothing
    assert keys.job(subject, payload, signature_headers(SigningKey.generate(), subject, payload)) is None
    bad = {**headers, "Kx-Signature": "not base64!"}
    assert verify_job(*keys.job(subject, payload, bad)) is False
    assert keys.judge("activator", subject, payload, bad, False) == "signature is not base64"
    assert keys.judge("activator", subject, payload, headers, False).startswith("forged")
    assert keys.judge("activator", subject, payload, headers, True) is None
    assert keys.judge("verifier", subject, payload, headers, True).endswith("not trusted for verifier")
    short = {**headers, "Kx-Signature": b64encode(key.sign(signed_bytes(subject, payload))[:63])}
    assert keys.check("activator", subject, payload, short).startswith("forged")


def test_manifests_are_checked_by_the_same_libsodium_check():
    from events.signing import verify_ed25519

    assert verify_signature is verify_ed25519  # one Ed25519 check for manifests and service signatures


def test_a_small_order_key_in_a_trust_root_verifies_no_forgery():
    """OpenSSL accepts, under the identity point as a public key, the "signature" (R = identity, s = 0)
    for any message; libsodium refuses small-order keys. A trust root (or a builder key) that lists
    such a key must not let anyone sign manifests: no signature counts under it."""
    from events.signing import TrustedKey, TrustRoot, verify_ed25519

    identity = (1).to_bytes(32, "little")  # the encoding of the neutral point: order 1
    forged = identity + bytes(32)
    assert openssl_verifies(identity, forged, b"any manifest at all") is True  # what the check used to be
    assert verify_ed25519(identity, forged, b"any manifest at all") is False
    root = TrustRoot(threshold=1, keys=(TrustedKey(keyid="weak", public=identity, name="weak"),))
    assert root.count_valid(b"any manifest at all", [("weak", forged)]) == set()


@pytest.mark.parametrize("what", ["trust root", "builders", "service keys"])
def test_a_small_order_key_is_refused_where_keys_are_listed(what):
    """Fail closed at configuration: a trust root, a builder list or the service keys naming a
    small-order point is refused with the reason, not loaded with a key no signature counts under."""
    from events.signing import TrustRoot, keyid_of

    good = SigningKey.generate()
    identity = (1).to_bytes(32, "little")
    weak = {keyid_of(identity): {"public": b64encode(identity), "name": "weak"}}
    strong = {good.keyid: {"public": b64encode(good.public_raw), "name": "good"}}
    with pytest.raises(ValueError, match="not a usable Ed25519 public key"):
        if what == "trust root":
            TrustRoot.from_document({"threshold": 1, "keys": {**strong, **weak}})
        elif what == "builders":
            builder = {k: {**v, "ids": ["kx-pipeline"]} for k, v in weak.items()}
            TrustRoot.from_document({"threshold": 1, "keys": strong, "builders": builder})
        else:
            ServiceKeys.from_document({"keys": {k: {**v, "roles": ["activator"]} for k, v in weak.items()}})
    TrustRoot.from_document({"threshold": 1, "keys": strong})  # the good key alone is fine


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 1300, 70_000])
def test_libsodium_signs_the_same_bytes_as_openssl(size: int) -> None:
    """`SigningKey.sign` runs on libsodium (faster here); Ed25519 is deterministic, so every signature
    is the one `cryptography` (OpenSSL) makes with the same key, and OpenSSL verifies it."""
    key = SigningKey.generate()
    message = os.urandom(size)
    signature = key.sign(message)
    assert signature == key.private.sign(message)
    assert openssl_verifies(key.public_raw, signature, message)
