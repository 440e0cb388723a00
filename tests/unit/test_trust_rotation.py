"""Trust-root rotation (events/trust.py): TUF's rule, both thresholds."""

from __future__ import annotations

import pytest

from events.signing import SigningKey, TrustRoot, b64encode
from events.trust import RotationError, follow_chain, sign_root, verify_rotation

OLD = [SigningKey.generate() for _ in range(3)]
NEW = [SigningKey.generate() for _ in range(2)]


def root_doc(keys: list[SigningKey], threshold: int, version: int) -> dict:
    return {
        "version": version,
        "threshold": threshold,
        "keys": {k.keyid: {"public": b64encode(k.public_raw), "name": f"k{i}"} for i, k in enumerate(keys)},
    }


ANCHOR = TrustRoot.from_document(root_doc(OLD, 2, 1))
V2 = root_doc(NEW, 2, 2)


def test_rotation_signed_by_both_thresholds_installs_the_new_root() -> None:
    new = verify_rotation(ANCHOR, sign_root(V2, OLD[:2] + NEW))
    assert new.version == 2 and {k.public for k in new.keys} == {k.public_raw for k in NEW}


@pytest.mark.parametrize(
    "signers, code",
    [
        (NEW, "old_threshold_not_met"),  # the new keys alone cannot take over
        (OLD[:1] + NEW, "old_threshold_not_met"),  # one old key is under the old threshold of 2
        (OLD[:1] + OLD[:1] + NEW, "old_threshold_not_met"),  # the same old key twice counts once
        (OLD, "new_threshold_not_met"),  # the old keys alone cannot install keys nobody holds
        (OLD[:2] + NEW[:1], "new_threshold_not_met"),
    ],
    ids=["new-only", "one-old", "same-old-twice", "old-only", "one-new"],
)
def test_rotation_without_both_thresholds_is_refused(signers, code) -> None:
    with pytest.raises(RotationError) as err:
        verify_rotation(ANCHOR, sign_root(V2, signers))
    assert err.value.code == code


def test_rotation_must_be_the_next_version() -> None:
    with pytest.raises(RotationError) as err:
        verify_rotation(ANCHOR, sign_root(root_doc(NEW, 2, 3), OLD + NEW))
    assert err.value.code == "wrong_version"


def test_tampered_rotation_is_refused() -> None:
    doc = sign_root(V2, OLD + NEW)
    doc["signed"]["threshold"] = 1  # changed after signing
    with pytest.raises(RotationError) as err:
        verify_rotation(ANCHOR, doc)
    assert err.value.code == "old_threshold_not_met"


@pytest.mark.parametrize(
    "doc", [None, [], {"signed": []}, {"signed": {}, "signatures": "x"}, {"signed": {"a": 1.5}, "signatures": []}]
)
def test_malformed_rotation_is_refused(doc) -> None:
    with pytest.raises(RotationError):
        verify_rotation(ANCHOR, doc)


def test_chain_applies_valid_rotations_and_records_refused_ones() -> None:
    v3_keys = [SigningKey.generate()]
    rotations = [
        (10, sign_root(V2, NEW)),  # refused: the old root did not sign
        (11, sign_root(V2, OLD + NEW)),  # accepted: v2
        (12, sign_root(root_doc(v3_keys, 1, 3), OLD + v3_keys)),  # refused: v2's keys did not sign
        (13, sign_root(root_doc(v3_keys, 1, 3), NEW + v3_keys)),  # accepted: v3
    ]
    chain = follow_chain(ANCHOR, rotations)
    assert chain.current.version == 3 and chain.accepted == (2, 3)
    assert [(seq, code) for seq, code, _ in chain.refused] == [
        (10, "old_threshold_not_met"),
        (12, "old_threshold_not_met"),
    ]


def test_a_rotation_to_a_root_listing_a_small_order_key_is_refused() -> None:
    """The new root lists the identity point beside real keys (under which OpenSSL would accept a forged
    signature for any message): refused as an invalid root, before `kxr trust rotate` publishes it and
    by every fold that meets it in the log."""
    from events.signing import keyid_of

    identity = (1).to_bytes(32, "little")
    doc = root_doc(NEW, 2, 2)
    doc["keys"][keyid_of(identity)] = {"public": b64encode(identity), "name": "weak"}
    with pytest.raises(RotationError) as err:
        verify_rotation(ANCHOR, sign_root(doc, OLD[:2] + NEW))
    assert err.value.code == "invalid_root" and "not a usable Ed25519 public key" in str(err.value)
