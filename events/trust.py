"""Trust-root rotation, as TUF rotates its root.

The trust root in KX_TRUST_ROOT is the anchor. A new root (version N+1) takes over only
when its canonical `signed` bytes carry signatures from a threshold of the CURRENT
root's keys AND a threshold of its OWN keys: a stolen old key cannot install a root on
its own, and a new root cannot be installed without the holders of the old one.
Rotations are events in the log (`trust.rotated`), so every process, and every
auditor, derives the same current root from the anchor plus the log.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .canonical import StrictJSONError, canonical_bytes
from .manifest import MAX_SIGNATURES
from .signing import SigningKey, TrustRoot, b64decode_strict, b64encode


class RotationError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def sign_root(signed: dict[str, Any], keys: list[SigningKey]) -> dict[str, Any]:
    message = canonical_bytes(signed)
    return {"signed": signed, "signatures": [{"keyid": k.keyid, "sig": b64encode(k.sign(message))} for k in keys]}


def _signatures(doc: dict[str, Any]) -> list[tuple[str, bytes]]:
    sigs = doc.get("signatures")
    if not isinstance(sigs, list) or len(sigs) > MAX_SIGNATURES:
        raise RotationError("bad_shape", f"signatures must be a list of at most {MAX_SIGNATURES}")
    out = []
    for s in sigs:
        if not isinstance(s, dict) or not isinstance(s.get("keyid"), str) or not isinstance(s.get("sig"), str):
            raise RotationError("bad_shape", "each signature needs a keyid and a base64 sig")
        try:
            out.append((s["keyid"], b64decode_strict(s["sig"])))
        except ValueError as exc:
            raise RotationError("bad_shape", f"signature is not base64: {exc}") from None
    return out


def verify_rotation(current: TrustRoot, doc: Any) -> TrustRoot:
    """The new root `doc` describes, if `current` may hand over to it; RotationError otherwise."""
    if not isinstance(doc, dict) or not isinstance(doc.get("signed"), dict):
        raise RotationError("bad_shape", "a rotation is {signed: {...root...}, signatures: [...]}")
    signed = doc["signed"]
    try:
        message = canonical_bytes(signed)
    except StrictJSONError as exc:
        raise RotationError("bad_shape", str(exc)) from None
    except RecursionError:
        raise RotationError("bad_shape", "the root is nested too deeply") from None
    signatures = _signatures(doc)
    old_valid = current.count_valid(message, signatures)
    if len(old_valid) < current.threshold:
        raise RotationError(
            "old_threshold_not_met",
            f"{len(old_valid)} of {current.threshold} keys of root v{current.version} signed the new root",
        )
    try:
        new = TrustRoot.from_document(signed)
    except ValueError as exc:
        raise RotationError("invalid_root", f"the new root is invalid: {exc}") from None
    if new.version != current.version + 1:
        raise RotationError(
            "wrong_version", f"root v{current.version} can only hand over to v{current.version + 1}, not v{new.version}"
        )
    new_valid = new.count_valid(message, signatures)
    if len(new_valid) < new.threshold:
        raise RotationError(
            "new_threshold_not_met",
            f"{len(new_valid)} of {new.threshold} keys of the new root v{new.version} signed it",
        )
    return new


@dataclass(frozen=True)
class TrustChain:
    """The anchor, the root in force, and every rotation refused on the way (with why)."""

    current: TrustRoot
    accepted: tuple[int, ...] = ()  # versions installed by rotation
    refused: tuple[tuple[int, str, str], ...] = ()  # (log seq, code, message)


def follow_chain(anchor: TrustRoot, rotations: Iterable[tuple[int, Any]]) -> TrustChain:
    """Apply the log's rotations (seq, document) in order to the anchor. Pure."""
    chain = TrustChain(current=anchor)
    for seq, doc in rotations:
        try:
            new = verify_rotation(chain.current, doc)
        except RotationError as exc:
            chain = TrustChain(chain.current, chain.accepted, chain.refused + ((seq, exc.code, str(exc)),))
        else:
            chain = TrustChain(new, chain.accepted + (new.version,), chain.refused)
    return chain
