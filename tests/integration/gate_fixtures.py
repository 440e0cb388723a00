"""Hostile packs and manifests, and a bench to run them against, for test_gate_conformance.py.

A *bench* is one running service (every consumer, in-process, on the suite's nats-server,
own prefix) with a configured one-stage channel, a simulated runtime in each cohort and a
valid v1.0.0 already released to success, so every scope has an active pack and an LKG.

A *builder* turns (keys, baseline, tag) into a `Hostile`: what `release.requested` names and
the raw objects to put into the packs bucket. Bodies are derived from the tag, so vectors
sharing a bench never share a digest (object names are digests).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.js.errors import NotFoundError

from events.canonical import canonical_bytes, compact_bytes
from events.manifest import (
    MANIFEST_MAX_BYTES,
    MAX_SIGNATURES,
    attestation_object_name,
    manifest_object_name,
    pack_object_name,
    sign_manifest,
)
from events.signing import SigningKey, TrustRoot, b64encode
from projections.world import scopes_of
from services.actions.producer import build_signed, dsse_envelope, provenance_statement, push_attestation, sha256_digest
from services.app import App
from services.consumers.verifier import Verifier
from services.jetstream.packstore import PackStore
from services.runtime.sdk import RuntimeClient
from tests.harness import CHANNEL, Pack, Service, make_pack, running_service, trust_root_for, wait_for

ENV, CHAN = "prod", "canary"
COHORTS = ("internal", "rest")
TENANTS = {"internal": "t-int-1", "rest": "tenant-42"}
# One stage covering both cohorts: the baseline closes after a single 1 s window.
ONE_STAGE = {**CHANNEL, "plan": [["internal", "rest"]]}
BASELINE_VERSION = "1.0.0"
NEXT = "1.1.0"  # newer than the baseline: what a hostile rollout claims to be


# ---- keys and hostile inputs -------------------------------------------------------------------


BUILDER_ID = "kx-pipeline"  # what make_pack's manifests name, and CHANNEL allows
OTHER_BUILDER_ID = "laptop-build"  # the builder key may attest for it, the channel does not allow it


@dataclass(frozen=True)
class Keys:
    trusted: tuple[SigningKey, ...]  # in the service's trust root
    threshold: int
    outsider: SigningKey  # never trusted
    builder: SigningKey = field(
        default_factory=SigningKey.generate
    )  # trust root `builders`, for BUILDER_ID and OTHER_BUILDER_ID

    @property
    def signers(self) -> list[SigningKey]:
        """Enough distinct trusted keys to meet the threshold."""
        return list(self.trusted[: self.threshold])

    @property
    def trust_root(self) -> TrustRoot:
        doc = trust_root_for(*self.trusted, threshold=self.threshold).to_document()
        doc["builders"] = {
            self.builder.keyid: {
                "public": b64encode(self.builder.public_raw),
                "name": "ci",
                "ids": [BUILDER_ID, OTHER_BUILDER_ID],
            }
        }
        return TrustRoot.from_document(doc)


@dataclass(frozen=True)
class Hostile:
    request: Pack  # name, version and digest the release request names
    objects: dict[str, bytes]  # raw puts into the packs bucket: object name -> bytes


Builder = Callable[[Keys, Pack, str], Hostile]


def body_for(tag: str, repeat: int = 400) -> bytes:
    return f"hostile pack {tag} ".encode() * repeat


def signed_for(body: bytes, version: str = NEXT, **overrides: Any) -> dict[str, Any]:
    """A `signed` document exactly like harness.make_pack's, with field overrides."""
    fields: dict[str, Any] = dict(
        name="kb",
        version=version,
        schema="kx-pack/1",
        profile="standard",
        runtime=">=2.3,<3",
        build_id=f"b-{version}",
        builder="kx-pipeline",
        run=f"r-{version}",
        source="https://git.example/kb/core",
        revision=f"rev-{version}",
    )
    fields.update(overrides)
    return build_signed(body, **fields)


def sig(key: SigningKey, message: dict[str, Any] | bytes, keyid: str | None = None) -> dict[str, str]:
    """A signature by `key` over `message` (a signed dict or raw bytes), labelled with any keyid."""
    raw = message if isinstance(message, bytes) else canonical_bytes(message)
    return {"keyid": keyid if keyid is not None else key.keyid, "sig": b64encode(key.sign(raw))}


def envelope(signed: Any, signatures: list[Any]) -> bytes:
    return compact_bytes({"signed": signed, "signatures": signatures})


def valid_manifest(signed: dict[str, Any], keys: Keys) -> bytes:
    return compact_bytes(sign_manifest(signed, keys.signers))


def hostile(
    body: bytes,
    manifest: bytes | None,
    *,
    stored_pack: bytes | None = ...,
    digest: str | None = None,
    name: str = "kb",
    version: str = NEXT,
) -> Hostile:
    """Objects stored under `digest` (default: the digest of `body`); `None` leaves one out."""
    digest = digest or sha256_digest(body)
    pack_bytes = body if stored_pack is ... else stored_pack
    objects: dict[str, bytes] = {}
    if pack_bytes is not None:
        objects[pack_object_name(digest)] = pack_bytes
    if manifest is not None:
        objects[manifest_object_name(digest)] = manifest
    return Hostile(Pack(body, manifest or b"", digest, version, name), objects)


def signed_variant(version: str = NEXT, **overrides: Any) -> Builder:
    """A correctly signed manifest whose content says something the service must refuse."""

    def build(keys: Keys, base: Pack, tag: str) -> Hostile:
        body = body_for(tag)
        return hostile(body, valid_manifest(signed_for(body, version, **overrides), keys), version=version)

    return build


def mutated(mutate: Callable[[dict[str, Any]], None], version: str = NEXT) -> Builder:
    """A correctly signed manifest whose `signed` was edited (any nesting) before signing."""

    def build(keys: Keys, base: Pack, tag: str) -> Hostile:
        body = body_for(tag)
        signed = signed_for(body, version)
        mutate(signed)
        return hostile(body, valid_manifest(signed, keys), version=version)

    return build


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for p in parents:
            doc = doc[p]
        doc[last] = value

    return mutate


def _del(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for p in parents:
            doc = doc[p]
        del doc[last]

    return mutate


def valid(keys: Keys, base: Pack, tag: str) -> Hostile:
    """A pack that passes every gate (for vectors where the service, not the pack, is the problem)."""
    body = body_for(tag, repeat=40_000)  # ~1 MB: verification takes a few round trips at least
    return hostile(body, valid_manifest(signed_for(body), keys))


# -- manifest envelope ---------------------------------------------------------------------------


def manifest_absent(keys: Keys, base: Pack, tag: str) -> Hostile:
    body = body_for(tag)
    return hostile(body, None)


def pack_absent(keys: Keys, base: Pack, tag: str) -> Hostile:
    body = body_for(tag)
    return hostile(body, valid_manifest(signed_for(body), keys), stored_pack=None)


def nothing_uploaded(keys: Keys, base: Pack, tag: str) -> Hostile:
    body = body_for(tag)
    return hostile(body, None, stored_pack=None)


def raw_manifest(raw: bytes) -> Builder:
    def build(keys: Keys, base: Pack, tag: str) -> Hostile:
        return hostile(body_for(tag), raw)

    return build


def manifest_oversized(keys: Keys, base: Pack, tag: str) -> Hostile:
    """Validly signed, but over the manifest cap: refused by size before it is parsed."""
    body = body_for(tag)
    signed = signed_for(body, extra={"padding": "x" * (MANIFEST_MAX_BYTES + 4096)})
    manifest = valid_manifest(signed, keys)
    assert len(manifest) > MANIFEST_MAX_BYTES
    return hostile(body, manifest)


def duplicate_key(keys: Keys, base: Pack, tag: str) -> Hostile:
    """`signed` carries "version" twice; a last-wins parser would see a validly signed 1.1.0."""
    body = body_for(tag)
    signed = signed_for(body)
    canonical = canonical_bytes(signed)
    assert canonical.startswith(b"{")
    doctored = b'{"version":"0.0.1",' + canonical[1:]
    assert json.loads(doctored) == signed  # what a lenient parser sees
    raw = b'{"signed":' + doctored + b',"signatures":' + compact_bytes([sig(k, canonical) for k in keys.signers]) + b"}"
    return hostile(body, raw)


def float_in_signed(keys: Keys, base: Pack, tag: str) -> Hostile:
    """A float inside `signed`, signed over the bytes a naive canonicaliser would produce."""
    body = body_for(tag)
    signed = {**signed_for(body), "ratio": 0.5}
    naive = json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hostile(body, envelope(signed, [sig(k, naive) for k in keys.signers]))


def signed_not_object(keys: Keys, base: Pack, tag: str) -> Hostile:
    return hostile(body_for(tag), envelope(["not", "an", "object"], []))


def sig_not_base64(keys: Keys, base: Pack, tag: str) -> Hostile:
    body = body_for(tag)
    return hostile(body, envelope(signed_for(body), [{"keyid": keys.trusted[0].keyid, "sig": "***not base64***"}]))


def too_many_signatures(keys: Keys, base: Pack, tag: str) -> Hostile:
    body = body_for(tag)
    signed = signed_for(body)
    one = sig(keys.trusted[0], signed)
    return hostile(body, envelope(signed, [one] * (MAX_SIGNATURES + 1)))


# -- signatures ------------------------------------------------------------------------------------


def no_signatures(keys: Keys, base: Pack, tag: str) -> Hostile:
    body = body_for(tag)
    return hostile(body, envelope(signed_for(body), []))


def untrusted_key(keys: Keys, base: Pack, tag: str) -> Hostile:
    body = body_for(tag)
    signed = signed_for(body)
    return hostile(body, envelope(signed, [sig(keys.outsider, signed)]))


def keyid_spoof(keys: Keys, base: Pack, tag: str) -> Hostile:
    """Labelled with every trusted keyid, signed by the outsider."""
    body = body_for(tag)
    signed = signed_for(body)
    return hostile(body, envelope(signed, [sig(keys.outsider, signed, keyid=k.keyid) for k in keys.trusted]))


def signature_over_other_content(keys: Keys, base: Pack, tag: str) -> Hostile:
    """Trusted signatures, but over another `signed` (the same one, with an older version)."""
    body = body_for(tag)
    signed = signed_for(body)
    other = {**signed, "version": "0.0.1"}
    return hostile(body, envelope(signed, [sig(k, other) for k in keys.signers]))


def same_key_twice(keys: Keys, base: Pack, tag: str) -> Hostile:
    """One trusted key's signature listed under every trusted keyid (threshold 2 needs two keys)."""
    body = body_for(tag)
    signed = signed_for(body)
    return hostile(body, envelope(signed, [sig(keys.trusted[0], signed, keyid=k.keyid) for k in keys.trusted]))


def one_of_two(keys: Keys, base: Pack, tag: str) -> Hostile:
    body = body_for(tag)
    signed = signed_for(body)
    return hostile(body, envelope(signed, [sig(keys.trusted[0], signed)]))


def trusted_plus_outsider(keys: Keys, base: Pack, tag: str) -> Hostile:
    """Threshold 2 met only if an untrusted key counts."""
    body = body_for(tag)
    signed = signed_for(body)
    return hostile(
        body, envelope(signed, [sig(keys.trusted[0], signed), sig(keys.outsider, signed, keyid=keys.trusted[1].keyid)])
    )


# -- identity ------------------------------------------------------------------------------------


def request_names(name: str | None = None, version: str | None = None) -> Builder:
    """A valid pack, requested under another name or version."""

    def build(keys: Keys, base: Pack, tag: str) -> Hostile:
        body = body_for(tag)
        h = hostile(body, valid_manifest(signed_for(body), keys))
        return replace(h, request=replace(h.request, name=name or h.request.name, version=version or h.request.version))

    return build


def manifest_of_other_pack(keys: Keys, base: Pack, tag: str) -> Hostile:
    """Mix and match: a valid manifest for pack A stored as the manifest of pack B."""
    body = body_for(tag)
    other = body_for(tag + "-other")
    return hostile(body, valid_manifest(signed_for(other), keys))


# -- integrity -----------------------------------------------------------------------------------


def stored_pack(transform: Callable[[bytes], bytes]) -> Builder:
    """A valid manifest for `body`, but the bucket holds transform(body) under its digest."""

    def build(keys: Keys, base: Pack, tag: str) -> Hostile:
        body = body_for(tag)
        return hostile(body, valid_manifest(signed_for(body), keys), stored_pack=transform(body))

    return build


def flip_last_byte(body: bytes) -> bytes:
    return body[:-1] + bytes([body[-1] ^ 0x01])


def declared_size(delta: int) -> Builder:
    def build(keys: Keys, base: Pack, tag: str) -> Hostile:
        body = body_for(tag)
        signed = signed_for(body)
        signed["size"] = len(body) + delta
        return hostile(body, valid_manifest(signed, keys))

    return build


# -- policy --------------------------------------------------------------------------------------


def baseline_again(keys: Keys, base: Pack, tag: str) -> Hostile:
    """The active pack itself, requested again (its objects are already stored)."""
    return Hostile(base, {})


# -- attestation (on a bench whose channel requires one) -------------------------------------------


def attestation_for(digest: str, signers: list[SigningKey], builder_id: str = BUILDER_ID) -> bytes:
    """What `kxr pack attest` writes: the SLSA provenance of `digest` in a DSSE envelope."""
    return dsse_envelope(
        provenance_statement(
            digest, name="kb.pack", builder_id=builder_id, build_type="https://konnaxion.dev/releases/pack-build/v1"
        ),
        signers,
    )


def attested(make: Callable[[Keys, str], bytes | None]) -> Builder:
    """A valid pack and manifest; the attestation object holds make(keys, digest) (None: absent)."""

    def build(keys: Keys, base: Pack, tag: str) -> Hostile:
        body = body_for(tag)
        h = hostile(body, valid_manifest(signed_for(body), keys))
        data = make(keys, h.request.digest)
        if data is None:
            return h
        return replace(h, objects={**h.objects, attestation_object_name(h.request.digest): data})

    return build


def valid_attestation(keys: Keys, digest: str) -> bytes:
    return attestation_for(digest, [keys.builder])


def unsigned_attestation(keys: Keys, digest: str) -> bytes:
    return attestation_for(digest, [])


def attestation_by_outsider(keys: Keys, digest: str) -> bytes:
    return attestation_for(digest, [keys.outsider])


def attestation_of_other_pack(keys: Keys, digest: str) -> bytes:
    return attestation_for(sha256_digest(b"some other pack"), [keys.builder])


def attestation_by_other_builder(keys: Keys, digest: str) -> bytes:
    return attestation_for(digest, [keys.builder], builder_id=OTHER_BUILDER_ID)


def attestation_not_dsse(keys: Keys, digest: str) -> bytes:
    return compact_bytes({"payload": "e30=", "signatures": []})  # no payloadType: not a DSSE envelope


# ---- the bench ---------------------------------------------------------------------------------


@dataclass
class Bench:
    svc: Service
    keys: Keys
    baseline: Pack
    runtimes: dict[str, RuntimeClient]
    baseline_pointers: dict = field(default_factory=dict)

    @property
    def store(self) -> PackStore:
        return PackStore(self.svc.app.js, self.svc.app.subjects)

    async def put(self, objects: dict[str, bytes]) -> None:
        for name, data in objects.items():
            await self.store.put(name, data)

    async def pointers(self) -> dict[str, Any]:
        """Every scope pointer of the channel, as the projection has it and as JetStream stores it."""
        app = self.svc.app
        out: dict[str, Any] = {}
        cohorts = set(COHORTS) | {s.key[2] for s in scopes_of(self.svc.world, ENV, CHAN)}
        for cohort in sorted(cohorts):
            scope = self.svc.world.scope(ENV, CHAN, cohort)
            try:
                msg = await app.js.get_last_msg(
                    app.subjects.releases_stream, app.subjects.scope(ENV, CHAN, cohort, "activated")
                )
                stored = (json.loads(msg.data)["data"]["pack"]["digest"], msg.seq)
            except NotFoundError:
                stored = None
            out[cohort] = {
                "digest": scope.active_pack.digest if scope.active_pack else None,
                "active_seq": scope.active_seq,
                "stored": stored,
            }
        return out


@asynccontextmanager
async def trusted_service(
    nats_url: str, prefix: str, keys: Keys, verify_timeout_s: float = 30.0
) -> AsyncIterator[Service]:
    """harness.running_service, with the bench's trust root (which may need several keys)."""
    async with running_service(
        nats_url, prefix, key=keys.trusted[0], trust_root=keys.trust_root, verify_timeout_s=verify_timeout_s
    ) as svc:
        yield svc


def new_keys(threshold: int) -> Keys:
    return Keys(
        trusted=tuple(SigningKey.generate() for _ in range(max(1, threshold))),
        threshold=threshold,
        outsider=SigningKey.generate(),
    )


REQUIRE_ATTESTATION = {**ONE_STAGE, "policy": {**ONE_STAGE["policy"], "require_attestation": True}}


@asynccontextmanager
async def open_bench(nats_url: str, threshold: int = 1, require_attestation: bool = False) -> AsyncIterator[Bench]:
    """A service with v1.0.0 released to success on both cohorts, and both runtimes on it.

    `require_attestation`: the channel's policy requires one (the baseline carries a valid one).
    """
    keys = new_keys(threshold)
    async with trusted_service(nats_url, "t" + uuid.uuid4().hex[:12], keys) as svc:
        await svc.configure(ENV, CHAN, REQUIRE_ATTESTATION if require_attestation else ONE_STAGE)
        runtimes = {cohort: await svc.runtime(tenant) for cohort, tenant in TENANTS.items()}
        assert {c: rt.cohort for c, rt in runtimes.items()} == {c: c for c in COHORTS}
        baseline = make_pack(BASELINE_VERSION, keys.signers)
        if require_attestation:
            await push_attestation(
                svc.app.js, svc.app.subjects, baseline.digest, valid_attestation(keys, baseline.digest)
            )
        await svc.request("baseline", baseline, rollback={"strategy": "none"})
        release = await svc.wait_release("baseline", timeout=20)
        assert release.outcome == "success", f"baseline release did not succeed: {release.failure}"
        await wait_for(
            lambda: all(rt.active and rt.active.digest == baseline.digest for rt in runtimes.values()),
            10,
            "runtimes on the baseline",
        )
        bench = Bench(svc, keys, baseline, runtimes)
        bench.baseline_pointers = await bench.pointers()
        for cohort in COHORTS:
            p = bench.baseline_pointers[cohort]
            assert p["digest"] == baseline.digest and p["stored"] == (baseline.digest, p["active_seq"]), p
        yield bench


# ---- temporary changes to the running service --------------------------------------------------


AppPatch = Callable[[App], AbstractContextManager[None]]


def app_patch(**changes: Callable[[App], Any]) -> AppPatch:
    """Replace App attributes (computed from the app) for one vector, then restore them."""

    @contextmanager
    def patch(app: App) -> Iterator[None]:
        saved = {name: getattr(app, name) for name in changes}
        try:
            for name, make in changes.items():
                setattr(app, name, make(app))
            yield
        finally:
            for name, value in saved.items():
                setattr(app, name, value)

    return patch


def verify_deadline(seconds: float) -> AppPatch:
    return app_patch(settings=lambda app: replace(app.settings, verify_timeout_s=seconds))


def verifier_root(make: Callable[[App], Any]) -> AppPatch:
    """The verifier alone with another trust root (a verifier process configured so): the
    preparer's and promoter's rollback-readiness checks keep the service's, so the request
    reaches the gate under test."""

    @contextmanager
    def patch(app: App) -> Iterator[None]:
        saved = Verifier.trust_root
        root = make(app)
        Verifier.trust_root = lambda self: root  # type: ignore[method-assign]
        try:
            yield
        finally:
            Verifier.trust_root = saved  # type: ignore[method-assign]

    return patch


def no_trust_root() -> AppPatch:
    return verifier_root(lambda app: None)


def unreachable_threshold() -> AppPatch:
    """A trust root whose threshold exceeds its keys (bypassing from_document, which refuses it)."""
    return verifier_root(lambda app: TrustRoot(threshold=len(app.trust_root.keys) + 1, keys=app.trust_root.keys))


def expired(keys: Keys, base: Pack, tag: str) -> Hostile:
    """Validly signed, expired yesterday (a freeze attack replays such a manifest)."""
    body = body_for(tag)
    signed = signed_for(body, expires=datetime.now(UTC) - timedelta(days=1))
    return hostile(body, valid_manifest(signed, keys))


__all__ = [
    "BASELINE_VERSION",
    "BUILDER_ID",
    "COHORTS",
    "REQUIRE_ATTESTATION",
    "ENV",
    "CHAN",
    "NEXT",
    "ONE_STAGE",
    "Bench",
    "Builder",
    "Hostile",
    "Keys",
    "open_bench",
    "trusted_service",
    "new_keys",
]
