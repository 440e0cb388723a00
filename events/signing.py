"""Ed25519 keys, signatures and the trust root (CONTRACT §6).

`keyid` is only a hint: a signature counts when it verifies under a trusted key,
and each distinct public key counts once toward the threshold (TUF lesson:
thresholds counted per keyid can be met by one key listed twice).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from nacl.bindings import crypto_core_ed25519_is_valid_point, crypto_sign, crypto_sign_BYTES, crypto_sign_seed_keypair
from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey


def b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def b64decode_strict(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise ValueError(f"not base64: {exc}") from None


def keyid_of(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()


def normal_keyid(keyid: str) -> str:
    """A keyid as it is stored and compared: lower case. CONTRACT §6 says "hex SHA-256", and hex is
    written in either case (.NET's Convert.ToHexString, `xxd -u`): both name the same key. Only ASCII
    is folded, so no other character (the Kelvin sign folds to `k`) comes to look like hex."""
    return keyid.lower() if keyid.isascii() else keyid


def listed_public_key(keyid: str, entry: Any, what: str) -> bytes:
    """The public key of an entry `{"public": base64, ...}` as a trust root, a builder list or the
    service keys list it, checked: base64 of 32 bytes, named by the SHA-256 of them (`keyid`, hex in
    either case: `normal_keyid`; the caller stores that form), and a
    point a signature can be checked under. A
    small-order point (the identity, say) is refused here: OpenSSL's Ed25519 accepts a "signature"
    under it for any message, and though our check (libsodium) refuses those, such a key can only be
    a mistake or an attack, and a threshold counting on it could never be met."""
    if not isinstance(entry, dict) or not isinstance(entry.get("public"), str):
        raise ValueError(f"{what} {keyid!r} needs a base64 'public'")
    public = b64decode_strict(entry["public"])
    if len(public) != 32:
        raise ValueError(f"{what} {keyid!r} is not a 32-byte Ed25519 key")
    if keyid_of(public) != normal_keyid(keyid):
        raise ValueError(f"{what} {keyid!r} does not match the SHA-256 of its public key")
    if not crypto_core_ed25519_is_valid_point(public):
        raise ValueError(
            f"{what} {keyid!r} is not a usable Ed25519 public key (a small-order point, or not on the curve)"
        )
    return public


@dataclass(frozen=True)
class SigningKey:
    """A private Ed25519 key plus its public half and keyid."""

    private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_raw(cls, raw: bytes) -> SigningKey:
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    @property
    def private_raw(self) -> bytes:
        return self.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    # cached: a service signs every append, and deriving the public half costs more than hashing
    @cached_property
    def public_raw(self) -> bytes:
        return self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @cached_property
    def keyid(self) -> str:
        return keyid_of(self.public_raw)

    @cached_property
    def _sodium_secret(self) -> bytes:
        return crypto_sign_seed_keypair(self.private_raw)[1]

    def sign(self, message: bytes) -> bytes:
        # libsodium's (pynacl): a service signs every append, ~18 us here against ~27 us for
        # cryptography's. Ed25519 signatures are deterministic: the same bytes either way
        # (tests/unit/test_service_signature_verify.py)
        return crypto_sign(message, self._sodium_secret)[:crypto_sign_BYTES]

    def to_file_dict(self, name: str) -> dict[str, str]:
        return {
            "keyid": self.keyid,
            "name": name,
            "private": b64encode(self.private_raw),
            "public": b64encode(self.public_raw),
        }

    @classmethod
    def from_file_dict(cls, doc: Mapping[str, Any]) -> SigningKey:
        return cls.from_raw(b64decode_strict(str(doc["private"])))


def verify_ed25519(public_raw: bytes, signature: bytes, message: bytes) -> bool:
    """Ed25519 by libsodium (PyNaCl): strict RFC 8032 checks (a canonical `s`, no small-order key or
    R), about twice as fast here as `cryptography`'s (~55 against ~110 us), and the C call runs
    without the GIL. Used for manifests and service signatures alike (tests/unit/
    test_service_signature_verify.py: it accepts and refuses what OpenSSL does)."""
    if len(signature) != 64:  # crypto_sign_open reads signature+message as one buffer: no other length
        return False
    try:
        _verify_key(public_raw).verify(message, signature)
    except (CryptoError, ValueError, TypeError):
        return False
    return True


@lru_cache(maxsize=1024)
def _verify_key(raw: bytes) -> VerifyKey:
    """Loaded once per key: an auditor checks every append of a long log against a handful of keys."""
    return VerifyKey(raw)


@dataclass(frozen=True)
class TrustedKey:
    keyid: str
    public: bytes
    name: str


@dataclass(frozen=True)
class TrustedBuilder:
    """A build system's key, trusted to attest (in-toto/SLSA) only for the builder ids it names."""

    keyid: str
    public: bytes
    name: str
    ids: tuple[str, ...]


def _builders(raw: Any) -> tuple[TrustedBuilder, ...]:
    """The `builders` section: {"<keyid>": {"public": b64, "name": str, "ids": [builder id, ...]}}."""
    if not isinstance(raw, dict):
        raise ValueError("trust root 'builders' must be an object")
    out: list[TrustedBuilder] = []
    for keyid, entry in raw.items():
        public = listed_public_key(keyid, entry, "builder key")
        ids = entry.get("ids")
        # Fail closed: a builder key vouches for named builders only, never for "any builder".
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
            raise ValueError(
                f"builder key {keyid!r} needs 'ids': a non-empty list of the builder ids it may attest for"
            )
        if any(b.public == public for b in out):  # `ABC…` and `abc…`: one key listed twice, ids ambiguous
            raise ValueError(f"builder key {keyid!r} is listed twice (keyids compare regardless of case)")
        out.append(
            TrustedBuilder(keyid=normal_keyid(keyid), public=public, name=str(entry.get("name", "")), ids=tuple(ids))
        )
    return tuple(out)


@dataclass(frozen=True)
class TrustRoot:
    """Keys trusted to sign manifests, and how many distinct ones must agree.

    `builders` (optional section of the same file, rotated with it) are kept apart from
    `keys`: a builder key never counts toward the manifest threshold.
    """

    threshold: int
    keys: tuple[TrustedKey, ...]
    version: int = 1
    builders: tuple[TrustedBuilder, ...] = ()

    @classmethod
    def from_document(cls, doc: Any) -> TrustRoot:
        """Build from the parsed trust-root file; raises ValueError naming the problem."""
        if not isinstance(doc, dict):
            raise ValueError("trust root must be a JSON object")
        threshold = doc.get("threshold")
        if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 1:
            raise ValueError("trust root 'threshold' must be an integer >= 1")
        version = doc.get("version", 1)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError("trust root 'version' must be an integer >= 1")
        raw_keys = doc.get("keys")
        if not isinstance(raw_keys, dict) or not raw_keys:
            raise ValueError("trust root 'keys' must be a non-empty object")
        keys: list[TrustedKey] = []
        seen_public: set[bytes] = set()
        for keyid, entry in raw_keys.items():
            public = listed_public_key(keyid, entry, "trust root key")
            if public in seen_public:
                continue
            seen_public.add(public)
            keys.append(TrustedKey(keyid=normal_keyid(keyid), public=public, name=str(entry.get("name", ""))))
        if threshold > len(keys):
            raise ValueError(f"trust root threshold {threshold} exceeds its {len(keys)} distinct keys")
        return cls(threshold=threshold, keys=tuple(keys), version=version, builders=_builders(doc.get("builders", {})))

    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "version": self.version,
            "threshold": self.threshold,
            "keys": {k.keyid: {"public": b64encode(k.public), "name": k.name} for k in self.keys},
        }
        if self.builders:
            doc["builders"] = {
                b.keyid: {"public": b64encode(b.public), "name": b.name, "ids": list(b.ids)} for b in self.builders
            }
        return doc

    def count_valid(self, message: bytes, signatures: list[tuple[str, bytes]]) -> set[bytes]:
        """Distinct trusted public keys with a valid signature over `message`.

        Every signature is tried against every trusted key: the keyid label is not
        trusted, so a mislabelled signature still counts only for the key that made it.
        """
        valid: set[bytes] = set()
        for _label, sig in signatures:
            for key in self.keys:
                if key.public not in valid and verify_ed25519(key.public, sig, message):
                    valid.add(key.public)
                    break
        return valid
