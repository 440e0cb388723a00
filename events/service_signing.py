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
from typing import Any, Protocol

from .signing import SigningKey, b64decode_strict, b64encode, listed_public_key, normal_keyid, verify_ed25519

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
        for listed, entry in doc["keys"].items():
            public = listed_public_key(listed, entry, "service key")
            roles = entry.get("roles")
            if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
                raise ValueError(f"service key {listed!r} needs 'roles': a list of consumer names")
            keyid = normal_keyid(listed)  # stored lower case; `Kx-Signer` is looked up the same way
            if keyid in out:  # `ABC…` and `abc…`: one key listed twice, which roles it has is ambiguous
                raise ValueError(f"service key {listed!r} is listed twice (keyids compare regardless of case)")
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
        key = self.keys.get(normal_keyid(keyid))
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
        key = self.keys.get(normal_keyid(keyid)) if keyid and sig else None
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
    """What this process signed for the log, by signature: the entries its own follower need not
    verify again.

    An entry stored with this process's keyid and a signature it made, over byte for byte the
    subject and payload it made it for, verifies by construction (Ed25519 is deterministic and
    the keyid is the SHA-256 of the public key), so `ServiceKeys.judge(..., valid=True)` gives
    the verdict the verification would: the key's roles and the pointer chain are still checked.
    Anything else (other bytes under that signature, another signature or signer) is verified
    as before. Remembered when signed, not when acknowledged: the follower usually reads an
    entry before its append's acknowledgement has resumed the appender (78% of them in
    bench.time_to_activate), and the verdict does not depend on where the entry is stored.
    Bounded: forgotten once vouched for, and at most `cap` entries and `max_bytes` of payload
    kept (the oldest go first: a follower far behind verifies those as ever).
    """

    def __init__(self, key: SigningKey, cap: int = 4096, max_bytes: int = 16 * 1024 * 1024) -> None:
        self.keyid = key.keyid
        self._public = key.public_raw
        self._cap = cap
        self._max_bytes = max_bytes
        self._bytes = 0
        self._signed: dict[str, tuple[str, bytes]] = {}  # signature (base64) -> (subject, payload)
        self.vouched = 0  # entries the follower folded without an Ed25519 verification

    def __len__(self) -> int:
        return len(self._signed)

    def known_to(self, keys: ServiceKeys) -> bool:
        """Whether `keys` hold this process's key under its keyid (then their verification of what it
        signed succeeds, and `OwnSigned` may stand for it); a key listed under our keyid with other
        bytes (never from a validated document) verifies nothing of ours, so nothing is vouched for."""
        listed = keys.keys.get(self.keyid)
        return listed is not None and listed.public == self._public

    def remember(self, subject: str, payload: bytes, headers: Mapping[str, str]) -> None:
        """This process signed `subject` + `payload` with the signature headers in `headers`."""
        signature = headers.get(SIGNATURE_HEADER)
        if signature is None or headers.get(SIGNER_HEADER) != self.keyid:
            return
        kept = self._signed.pop(signature, None)  # signed again (a retry): the same bytes, kept once
        if kept is not None:
            self._bytes -= len(kept[1])
        self._signed[signature] = (subject, payload)
        self._bytes += len(payload)
        while self._signed and (len(self._signed) > self._cap or self._bytes > self._max_bytes):
            self._bytes -= len(self._signed.pop(next(iter(self._signed)))[1])

    def vouches(self, subject: str, payload: bytes, headers: Mapping[str, str] | None) -> bool:
        """Whether this stored entry is exactly what this process signed (then forgotten: a copy
        stored again later is verified as ever)."""
        if not headers or headers.get(SIGNER_HEADER) != self.keyid:
            return False
        signature = headers.get(SIGNATURE_HEADER)
        mine = self._signed.get(signature) if signature is not None else None
        if mine is None or mine[0] != subject or mine[1] != payload:
            return False
        del self._signed[signature]  # type: ignore[arg-type]
        self._bytes -= len(payload)
        self.vouched += 1
        return True


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


# the one Ed25519 check (libsodium), under the name this module's callers (and tests) use
verify_signature = verify_ed25519
