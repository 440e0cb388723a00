"""Tamper evidence: every service signs what it appends.

The signature is Ed25519 over `subject + "\\n" + payload` (the exact bytes stored), sent
in the headers `Kx-Signer` (keyid) and `Kx-Signature` (base64). A service key is trusted
for named roles only (`KX_SERVICE_KEYS`), so an auditor can tell a pointer switched by
the activator from valid JSON written by anyone else with publish rights, and a runtime
can ignore the latter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .signing import SigningKey, b64decode_strict, b64encode, keyid_of

SIGNER_HEADER = "Kx-Signer"
SIGNATURE_HEADER = "Kx-Signature"


def signed_bytes(subject: str, payload: bytes) -> bytes:
    return subject.encode() + b"\n" + payload


def signature_headers(key: SigningKey, subject: str, payload: bytes) -> dict[str, str]:
    return {SIGNER_HEADER: key.keyid, SIGNATURE_HEADER: b64encode(key.sign(signed_bytes(subject, payload)))}


@dataclass(frozen=True)
class ServiceKey:
    keyid: str
    public: bytes
    name: str
    roles: frozenset[str]


@dataclass(frozen=True)
class ServiceKeys:
    keys: Mapping[str, ServiceKey]

    @classmethod
    def from_document(cls, doc: Any) -> ServiceKeys:
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), dict):
            raise ValueError('service keys must be {"keys": {keyid: {public, roles}}}')
        out = {}
        for keyid, entry in doc["keys"].items():
            if not isinstance(entry, dict) or not isinstance(entry.get("public"), str):
                raise ValueError(f"service key {keyid!r} needs a base64 'public'")
            public = b64decode_strict(entry["public"])
            if len(public) != 32 or keyid_of(public) != keyid:
                raise ValueError(f"service key {keyid!r} is not the SHA-256 of a 32-byte Ed25519 key")
            roles = entry.get("roles")
            if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
                raise ValueError(f"service key {keyid!r} needs 'roles': a list of consumer names")
            out[keyid] = ServiceKey(keyid, public, str(entry.get("name", "")), frozenset(roles))
        return cls(out)

    @classmethod
    def of(cls, key: SigningKey, roles: list[str], name: str = "kxr-serve") -> ServiceKeys:
        return cls({key.keyid: ServiceKey(key.keyid, key.public_raw, name, frozenset(roles))})

    def to_document(self) -> dict[str, Any]:
        return {
            "keys": {
                k.keyid: {"public": b64encode(k.public), "name": k.name, "roles": sorted(k.roles)}
                for k in self.keys.values()
            }
        }

    def check(self, role: str, subject: str, payload: bytes, headers: Mapping[str, str] | None) -> str | None:
        """Why this entry is not a genuine append by `role` (None: it is)."""
        headers = headers or {}
        keyid, sig = headers.get(SIGNER_HEADER), headers.get(SIGNATURE_HEADER)
        if not keyid or not sig:
            return "unsigned"
        key = self.keys.get(keyid)
        if key is None:
            return f"signed by unknown key {keyid[:16]}"
        if role not in key.roles:
            return f"key {key.name or keyid[:16]} is not trusted for {role}"
        try:
            raw = b64decode_strict(sig)
        except ValueError:
            return "signature is not base64"
        try:
            _public_key(key.public).verify(raw, signed_bytes(subject, payload))
        except (InvalidSignature, ValueError):
            return "forged: the signature does not match the stored bytes"
        return None


@lru_cache(maxsize=64)
def _public_key(raw: bytes) -> Ed25519PublicKey:
    """Loaded once per key: an auditor checks every append of a long log against a handful of keys."""
    return Ed25519PublicKey.from_public_bytes(raw)
