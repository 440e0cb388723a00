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
from typing import Any, Protocol

from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey

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
        return self.judge(role, subject, payload, headers, None)

    def judge(
        self, role: str, subject: str, payload: bytes, headers: Mapping[str, str] | None, valid: bool | None
    ) -> str | None:
        """`check`, given what `verify_job(*self.job(...))` said of this entry (None: verified here)."""
        headers = headers or {}
        keyid, sig = headers.get(SIGNER_HEADER), headers.get(SIGNATURE_HEADER)
        if not keyid or not sig:
            return "unsigned"
        key = self.keys.get(keyid)
        if key is None:
            return f"signed by unknown key {keyid[:16]}"
        if role not in key.roles:
            return f"key {key.name or keyid[:16]} is not trusted for {role}"
        if valid is True:
            return None  # verify_job decoded it (so it is base64) and it verified
        try:
            raw = b64decode_strict(sig)
        except ValueError:
            return "signature is not base64"
        if valid is None:
            valid = verify_signature(key.public, raw, signed_bytes(subject, payload))
        return None if valid else "forged: the signature does not match the stored bytes"

    def job(
        self, subject: str, payload: bytes, headers: Mapping[str, str] | None
    ) -> tuple[bytes, str, str, bytes] | None:
        """The verification `check` would make for this entry whatever the role, as arguments of
        `verify_job` (plain values: it may run in another process); None if `check` verifies nothing."""
        headers = headers or {}
        keyid, sig = headers.get(SIGNER_HEADER), headers.get(SIGNATURE_HEADER)
        key = self.keys.get(keyid) if keyid and sig else None
        return None if key is None or sig is None else (key.public, sig, subject, payload)


class SignatureChecker(Protocol):
    """What judges an entry's service signature: `ServiceKeys`, or `Prechecked` over them."""

    def check(self, role: str, subject: str, payload: bytes, headers: Mapping[str, str] | None) -> str | None: ...


class Prechecked:
    """`ServiceKeys.check` with the Ed25519 verification of the entry at hand done ahead (in bulk,
    possibly in another process): the owner announces each entry's outcome with `expect` before the
    check; a check of any other payload verifies as `ServiceKeys.check` does. Verdicts are the same."""

    def __init__(self, keys: ServiceKeys) -> None:
        self.keys = keys
        self._payload: bytes | None = None
        self._subject = ""
        self._valid: bool | None = None

    def expect(self, subject: str, payload: bytes, valid: bool | None) -> None:
        self._subject, self._payload, self._valid = subject, payload, valid

    def check(self, role: str, subject: str, payload: bytes, headers: Mapping[str, str] | None) -> str | None:
        known = payload is self._payload and subject == self._subject
        return self.keys.judge(role, subject, payload, headers, self._valid if known else None)


class OwnAppends:
    """The entries this process signed and the log acknowledged, by stream sequence: what its own
    follower need not verify again.

    An entry whose stored subject, payload and signature headers are byte for byte what this
    process signed with its own key verifies by construction (Ed25519 over those very bytes), so
    `ServiceKeys.judge(..., valid=True)` gives the verdict the verification would: the keyid, the
    key's roles and the pointer chain are still checked. Anything else at that sequence (other
    bytes, another signature, another signer) is verified as before. Bounded: an entry is dropped
    once the follower has checked its sequence, and at most `cap` are kept (the oldest go first).
    """

    def __init__(self, keyid: str, cap: int = 4096) -> None:
        self.keyid = keyid
        self._cap = cap
        self._by_seq: dict[int, tuple[str, bytes, str]] = {}  # seq -> (subject, payload, signature)
        self._checked = 0  # the highest sequence the follower has asked about (it folds in order)
        self.vouched = 0  # entries the follower folded without an Ed25519 verification
        self.late = 0  # acknowledgements that came after the follower had checked their entry

    def __len__(self) -> int:
        return len(self._by_seq)

    def remember(self, seq: int, subject: str, payload: bytes, headers: Mapping[str, str]) -> None:
        """`seq` acknowledged for this subject, payload and the headers this process sent (signed by it)."""
        signature = headers.get(SIGNATURE_HEADER)
        if signature is None or headers.get(SIGNER_HEADER) != self.keyid:
            return
        if seq <= self._checked:  # folded already (the follower read it before the ack came back)
            self.late += 1
            return
        self._by_seq[seq] = (subject, payload, signature)
        if len(self._by_seq) > self._cap:
            del self._by_seq[next(iter(self._by_seq))]

    def vouches(self, seq: int, subject: str, payload: bytes, headers: Mapping[str, str] | None) -> bool:
        """Whether the stored entry at `seq` is exactly what this process signed and was acknowledged
        at `seq` (then forgotten: each sequence is checked once)."""
        self._checked = max(self._checked, seq)
        mine = self._by_seq.pop(seq, None)
        if self._by_seq:  # one stale entry per call (its sequence never came to be checked): bounded sweep
            oldest = next(iter(self._by_seq))
            if oldest < seq:
                del self._by_seq[oldest]
        if mine is None or headers is None:
            return False
        ok = (
            mine[0] == subject
            and mine[1] == payload
            and headers.get(SIGNATURE_HEADER) == mine[2]
            and headers.get(SIGNER_HEADER) == self.keyid
        )
        self.vouched += ok
        return ok


class OwnSigned:
    """`ServiceKeys.check` for an entry `OwnAppends.vouches` for: every check but the Ed25519
    verification itself (which this process's own signature over these bytes passes)."""

    def __init__(self, keys: ServiceKeys) -> None:
        self.keys = keys

    def check(self, role: str, subject: str, payload: bytes, headers: Mapping[str, str] | None) -> str | None:
        return self.keys.judge(role, subject, payload, headers, True)


def verify_job(public: bytes, signature_b64: str, subject: str, payload: bytes) -> bool:
    """Whether the signature header verifies (False also when it is not base64: `check` says so first)."""
    try:
        raw = b64decode_strict(signature_b64)
    except ValueError:
        return False
    return verify_signature(public, raw, signed_bytes(subject, payload))


def verify_jobs(jobs: list[tuple[bytes, str, str, bytes]]) -> list[bool]:
    """`verify_job` over a list (what a worker process runs for a batch of a replay)."""
    return [verify_job(*job) for job in jobs]


def verify_signature(public: bytes, signature: bytes, message: bytes) -> bool:
    """Ed25519 by libsodium (PyNaCl): strict RFC 8032 checks (a canonical `s`, no small-order key or
    R), about twice as fast here as `cryptography`'s, and the C call runs without the GIL."""
    if len(signature) != 64:  # crypto_sign_open reads signature+message as one buffer: no other length
        return False
    try:
        _verify_key(public).verify(message, signature)
    except (CryptoError, ValueError, TypeError):
        return False
    return True


@lru_cache(maxsize=64)
def _verify_key(raw: bytes) -> VerifyKey:
    """Loaded once per key: an auditor checks every append of a long log against a handful of keys."""
    return VerifyKey(raw)
