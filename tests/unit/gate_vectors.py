"""Builders for verification-gate vectors: deterministic keys, one valid release, and a `Case`
that a vector mutates before it is turned into manifest bytes, pack bytes and a context."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from events.canonical import canonical_bytes
from events.channel import ChannelConfig
from events.manifest import sign_manifest
from events.model import PackRef
from events.signing import SigningKey, TrustRoot, b64encode
from services.actions.producer import dsse_envelope
from services.verification.gates import VerifyContext

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
# Larger than one 64 KiB read so verify_bytes really streams in several chunks.
PACK = bytes(range(256)) * 300
BUILDER = "https://ci.konnaxion.example/builders/release"
SOURCE_PREFIX = "https://git.konnaxion.example/kb"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def key(seed: int) -> SigningKey:
    """Deterministic keys keep vectors reproducible."""
    return SigningKey.from_raw(bytes([seed]) * 32)


ALICE, BOB, MALLORY = key(1), key(2), key(66)
CI = key(7)  # the build system's attestation key (trust root `builders`, not a manifest key)


def trust_root(
    keys: list[SigningKey], threshold: int = 1, builders: list[tuple[SigningKey, list[str]]] | None = None
) -> TrustRoot:
    doc: dict[str, Any] = {
        "threshold": threshold,
        "keys": {k.keyid: {"public": b64encode(k.public_raw), "name": f"key-{i}"} for i, k in enumerate(keys)},
    }
    if builders:
        doc["builders"] = {
            k.keyid: {"public": b64encode(k.public_raw), "name": f"builder-{i}", "ids": ids}
            for i, (k, ids) in enumerate(builders)
        }
    return TrustRoot.from_document(doc)


def signed_body(pack: bytes = PACK) -> dict[str, Any]:
    return {
        "name": "kb-core",
        "version": "2.0.0",
        "digest": sha256_digest(pack),
        "size": len(pack),
        "expires": "2030-07-01T00:00:00Z",
        "compatibility": {"schema": "kx-schema-3", "profile": "standard", "runtime": ">=2.3,<3"},
        "build": {"id": "build-42", "builder": BUILDER, "validation": "passed", "run": "run-9001"},
        "provenance": {
            "source": f"{SOURCE_PREFIX}/core",
            "revision": "0f1e2d3c4b5a69788796a5b4c3d2e1f0a1b2c3d4",
            "refs": ["https://git.konnaxion.example/kb/core/-/merge_requests/7"],
        },
        "scopes": {"envs": ["prod", "staging"], "channels": ["canary", "stable"]},
    }


def channel_doc() -> dict[str, Any]:
    return {
        "cohorts": [{"name": "internal", "tenants": ["t1"]}, {"name": "rest"}],
        "compatibility": {"schema": "kx-schema-3", "profiles": ["standard", "lite"], "runtime_version": "2.5.1"},
        "policy": {"allowed_sources": [SOURCE_PREFIX], "allowed_builders": [BUILDER], "forbid_downgrade": True},
    }


def pack_ref(version: str, data: bytes) -> PackRef:
    return PackRef(name="kb-core", version=version, digest=sha256_digest(data), size=len(data))


def signature_entry(signer: SigningKey, signed: dict[str, Any], keyid: str | None = None) -> dict[str, str]:
    """A signature by `signer` over `signed`, labelled with any keyid we like."""
    return {
        "keyid": keyid if keyid is not None else signer.keyid,
        "sig": b64encode(signer.sign(canonical_bytes(signed))),
    }


def statement(digest: str, builder_id: str = BUILDER) -> dict[str, Any]:
    return {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "kb-core-2.0.0.pack", "digest": {"sha256": digest.removeprefix("sha256:")}}],
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {
            "buildDefinition": {"buildType": "https://ci.konnaxion.example/pack/v1", "externalParameters": {}},
            "runDetails": {"builder": {"id": builder_id}, "metadata": {"invocationId": "run-9001"}},
        },
    }


def attested(digest: str, builder_id: str = BUILDER, signers: list[SigningKey] | None = None) -> bytes:
    """A DSSE envelope (as `kxr pack attest` writes it) of the SLSA provenance of `digest`."""
    return dsse_envelope(statement(digest, builder_id), [CI] if signers is None else signers)


_UNSET: Any = object()


@dataclass
class Case:
    """One verification input; vectors change a field, then `build()` makes the bytes."""

    signed: dict[str, Any] = field(default_factory=signed_body)
    sign_with: list[SigningKey] = field(default_factory=lambda: [ALICE])
    trusted: list[SigningKey] = field(default_factory=lambda: [ALICE, BOB])
    threshold: int = 1
    root: Any = _UNSET  # a TrustRoot (or junk) that replaces `trusted`
    doc_edits: list[Callable[[dict[str, Any]], None]] = field(default_factory=list)  # after signing
    raw_manifest: Any = _UNSET  # bytes/None replacing the whole manifest
    pack: bytes | None = PACK
    request_name: str | None = None  # None: what the manifest says
    request_version: str | None = None
    request_digest: str | None = None
    env: str = "prod"
    channel: str = "canary"
    cohorts: tuple[str, ...] = ("internal", "rest")
    channel_config: ChannelConfig | None = field(default_factory=lambda: ChannelConfig.model_validate(channel_doc()))
    active: Any = field(default_factory=lambda: {"internal": pack_ref("1.9.0", b"old pack"), "rest": None})
    purpose: str = "rollout"
    builders: list[tuple[SigningKey, list[str]]] = field(default_factory=lambda: [(CI, [BUILDER])])
    attestation: bytes | None = None  # the raw attestation object, read when the channel requires it
    channel_problem: str | None = None  # why the channel's newest configuration cannot be read
    now: Any = NOW

    def manifest_doc(self) -> dict[str, Any]:
        doc = copy.deepcopy(sign_manifest(self.signed, self.sign_with))
        for edit in self.doc_edits:
            edit(doc)
        return doc

    def manifest_bytes(self) -> bytes | None:
        if self.raw_manifest is not _UNSET:
            return self.raw_manifest
        return json.dumps(self.manifest_doc()).encode()

    def context(self) -> VerifyContext:
        return VerifyContext(
            request_name=self.request_name if self.request_name is not None else self.signed.get("name"),
            request_version=self.request_version if self.request_version is not None else self.signed.get("version"),
            request_digest=self.request_digest if self.request_digest is not None else self.signed.get("digest"),
            env=self.env,
            channel=self.channel,
            cohorts=self.cohorts,
            channel_config=self.channel_config,
            active=self.active,
            trust_root=self.root
            if self.root is not _UNSET
            else trust_root(self.trusted, self.threshold, self.builders),
            now=self.now,
            purpose=self.purpose,  # type: ignore[arg-type]
            attestation=self.attestation,
            channel_problem=self.channel_problem,
        )

    def build(self) -> tuple[bytes | None, bytes | None, VerifyContext]:
        return self.manifest_bytes(), self.pack, self.context()


def set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        doc = doc[part]
    doc[last] = value


def del_path(doc: dict[str, Any], path: str) -> None:
    *parents, last = path.split(".")
    for part in parents:
        doc = doc[part]
    del doc[last]
