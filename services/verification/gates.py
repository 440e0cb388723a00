"""Verification gates: pure, ordered, fail-closed (CONTRACT §6, §7; seed "Verification gates").

Nothing here does IO or reads the clock. The NATS adapter fetches the manifest, calls
`check_manifest`, streams the pack through a `PackDigester`, calls `check_pack`, then
`check_policy`; `verify_bytes` does the same for bytes already in memory (`kxr pack verify`,
tests). The adapter also owns the deadline and reports it as gate `deadline`, code `timeout`.

Gates run in this order; the first failure stops the run, so a failed verification says
exactly which gate refused and why, and no later gate was consulted:

    trust_root  the caller's trust root is usable (it never comes from the pack)
    manifest    size cap, strict JSON, envelope shape - nothing inside `signed` is read yet
    signature   threshold of distinct trusted keys over the canonical bytes of `signed`
    (manifest)  only now is `signed` typed (SignedManifest); failure is gate manifest/schema_invalid
    expiry      reference time before `expires`
    identity    the request names the pack this manifest describes
    integrity   SHA-256 and size of the exact pack bytes, capped at the declared size
    compatibility  channel schema/profile/runtime expectations (unconfigured fails closed)
    policy      downgrade, source, builder, scope
    evidence    build identity, provenance, validation; when the channel requires it
                (policy.require_attestation), a DSSE-signed in-toto/SLSA provenance of this
                pack by a trusted builder key (trust root `builders`) for an allowed builder

A passing gate records code "ok". Any exception inside a gate is that gate's failure with
code "internal_error": an unexpected state never turns into a pass.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from events.bundle import PAYLOAD_TYPE, pae
from events.canonical import StrictJSONError, canonical_bytes, loads_strict
from events.channel import ChannelConfig, ChannelPolicy
from events.manifest import MANIFEST_MAX_BYTES, MAX_SIGNATURES, SignedManifest, attestation_object_name
from events.model import GateOutcome, PackRef
from events.signing import TrustRoot, b64decode_strict, verify_ed25519
from events.versions import SpecifierError, matches, parse_specifier, parse_version

__all__ = [
    "ATTESTATION_MAX_BYTES",
    "DEADLINE_GATE",
    "GATES",
    "GATE_CODES",
    "INTERNAL_ERROR",
    "OK",
    "PURPOSES",
    "TIMEOUT_CODE",
    "GateFailure",
    "PackDigester",
    "PackOversized",
    "Verification",
    "VerifyContext",
    "attestation_required",
    "check_manifest",
    "check_pack",
    "check_policy",
    "verify_bytes",
]

OK = "ok"
INTERNAL_ERROR = "internal_error"
GATE_ORDER_CODE = "gate_order"
# The deadline is enforced by the async adapter (pure code has no clock); these are its names.
DEADLINE_GATE = "deadline"
TIMEOUT_CODE = "timeout"

GATES: tuple[str, ...] = (
    "trust_root",
    "manifest",
    "signature",
    "expiry",
    "identity",
    "integrity",
    "compatibility",
    "policy",
    "evidence",
)

# Every reason code a gate can give (besides "internal_error", which any gate can give).
GATE_CODES: dict[str, tuple[str, ...]] = {
    "trust_root": ("trust_root_missing", "trust_root_invalid"),
    "manifest": (
        "manifest_missing",
        "manifest_oversized",
        "malformed_json",
        "duplicate_key",
        "float_forbidden",
        "bad_shape",
        "too_many_signatures",
        "schema_invalid",
    ),
    "signature": ("no_signatures", "threshold_not_met"),
    "expiry": ("reference_time_invalid", "expired"),
    "identity": ("name_mismatch", "version_mismatch", "digest_mismatch"),
    "integrity": (GATE_ORDER_CODE, "pack_oversized", "pack_missing", "size_mismatch", "digest_mismatch"),
    "compatibility": (
        GATE_ORDER_CODE,
        "channel_unconfigured",
        "channel_unreadable",
        "schema_mismatch",
        "profile_mismatch",
        "runtime_specifier_invalid",
        "runtime_version_invalid",
        "runtime_mismatch",
    ),
    "policy": (
        "purpose_invalid",
        "no_cohorts",
        "active_unknown",
        "same_version_other_digest",
        "downgrade",
        "not_newer",
        "source_forbidden",
        "builder_forbidden",
        "scope_forbidden",
    ),
    "evidence": (
        "evidence_missing",
        "validation_not_passed",
        "revision_not_commit",
        "attestation_missing",
        "attestation_malformed",
        "attestation_unsigned",
        "attestation_untrusted",
        "attestation_invalid",
        "attestation_subject_mismatch",
        "attestation_builder_forbidden",
    ),
}

Purpose = Literal["rollout", "pin", "rollback"]
PURPOSES: tuple[str, ...] = ("rollout", "pin", "rollback")

IN_TOTO_STATEMENT_V1 = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE_V1 = "https://slsa.dev/provenance/v1"
ATTESTATION_MAX_BYTES = 1024 * 1024
# After an allowed source prefix the URI must continue at a boundary, so that the prefix
# "https://git.example/team" does not also allow "https://git.example/team-evil/...".
_SOURCE_BOUNDARY = "/?#@:"


# ---- inputs and results ----------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyContext:
    """Everything a verification may rely on besides the untrusted bytes, fixed by the caller."""

    request_name: str
    request_version: str
    request_digest: str
    env: str
    channel: str
    cohorts: tuple[str, ...]  # the target cohorts this verification covers
    channel_config: ChannelConfig | None  # None: the channel was never configured, or (below) is unreadable
    active: Mapping[str, PackRef | None]  # cohort -> active pack; None = never activated
    trust_root: TrustRoot  # from KX_TRUST_ROOT, never from the pack
    now: datetime  # reference time, read once by the caller
    purpose: Purpose = "rollout"
    # The raw `sha256-<hex>.attestation` object (a DSSE envelope), read only when the channel's
    # policy requires one; None = not found (a failure then) or not required.
    attestation: bytes | None = None
    # why the channel's newest configuration cannot be read (None: it can): the compatibility gate says so
    channel_problem: str | None = None


@dataclass(frozen=True)
class GateFailure:
    """Which gate refused, a machine-readable code, and a sentence for people (a value, not an exception)."""

    gate: str
    code: str
    message: str


@dataclass
class Verification:
    """The record of one verification; each check_* returns an extended copy."""

    outcomes: list[GateOutcome] = field(default_factory=list)  # in evaluation order, passes included
    failure: GateFailure | None = None
    # Set only once the signature gate passed and `signed` was typed; kept on later failures for
    # the failure record. Never act on it without `ok`.
    manifest: SignedManifest | None = None
    signers: list[str] = field(default_factory=list)  # keyids of distinct trusted keys that signed

    @property
    def passed(self) -> tuple[str, ...]:
        return tuple(o.gate for o in self.outcomes if o.ok)

    @property
    def ok(self) -> bool:
        """True only when every gate ran and passed, in order."""
        return self.failure is None and self.passed == GATES

    @property
    def pack(self) -> PackRef | None:
        m = self.manifest
        return None if m is None else PackRef(name=m.name, version=m.version, digest=m.digest, size=m.size)


class PackOversized(Exception):
    """More pack bytes arrived than the manifest declares; reading must stop."""

    def __init__(self, limit: int, seen: int) -> None:
        super().__init__(f"pack exceeds its declared {limit} bytes ({seen} bytes arrived before reading stopped)")
        self.limit = limit
        self.seen = seen


class PackDigester:
    """SHA-256 of a pack as it streams in, with the manifest's `size` as a hard cap.

    TUF lesson (endless-data attack): the signed length is a limit, not a hint. The first
    chunk that goes past it raises PackOversized and the digester refuses everything after;
    no byte is kept, only the running hash.
    """

    def __init__(self, expected_size: int) -> None:
        if not isinstance(expected_size, int) or isinstance(expected_size, bool) or expected_size < 0:
            raise ValueError(f"expected_size must be a non-negative int, not {expected_size!r}")
        self.expected_size = expected_size
        self._hash: Any = hashlib.sha256()
        self._seen = 0
        self._oversized = False

    @property
    def oversized(self) -> bool:
        return self._oversized

    @property
    def seen(self) -> int:
        return self._seen

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        if self._oversized:
            raise PackOversized(self.expected_size, self._seen)
        self._seen += len(chunk)
        if self._seen > self.expected_size:
            self._oversized = True
            self._hash = None
            raise PackOversized(self.expected_size, self._seen)
        self._hash.update(chunk)

    def result(self) -> tuple[str, int]:
        """("sha256:<hex>", size) of everything fed so far."""
        if self._oversized:
            raise PackOversized(self.expected_size, self._seen)
        return "sha256:" + self._hash.hexdigest(), self._seen


# ---- the runner ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Verdict:
    code: str
    message: str = ""


def _ok(message: str = "") -> _Verdict:
    return _Verdict(OK, message)


def _reject(code: str, message: str) -> _Verdict:
    return _Verdict(code, message)


@dataclass
class _Work:
    """Scratch state of one phase; only the runner copies results back into a Verification."""

    manifest_bytes: bytes | None = None
    signed: Any = None  # raw `signed`: opaque until signatures pass
    signatures: list[tuple[str, bytes]] = field(default_factory=list)
    message: bytes = b""  # canonical bytes of `signed`
    manifest: SignedManifest | None = None
    signers: list[str] = field(default_factory=list)
    observed: tuple[str, int] | None = None
    oversized: bool = False

    @property
    def typed(self) -> SignedManifest:
        """The typed manifest, for the gates that run after the schema gate (which sets it)."""
        if self.manifest is None:
            raise RuntimeError("a gate ran before the manifest was typed")  # a wrong step order, not bad input
        return self.manifest


Check = Callable[[_Work, VerifyContext], _Verdict]


@dataclass(frozen=True)
class _Step:
    gate: str
    check: Check
    records_pass: bool = True  # False for a second step of a gate that already recorded its pass


def _run(
    v: Verification, steps: tuple[_Step, ...], w: _Work, ctx: VerifyContext, requires: tuple[str, ...] = ()
) -> Verification:
    out = Verification(list(v.outcomes), v.failure, v.manifest, list(v.signers))
    if out.failure is not None:
        return out  # short-circuit across phases too: nothing after a failure is evaluated
    if out.passed != requires or (requires and out.manifest is None):
        # Called out of order (e.g. check_policy before check_pack): refuse rather than assume.
        return _fail(
            out,
            steps[0].gate,
            GATE_ORDER_CODE,
            f"needs gates {', '.join(requires) or '(none)'} passed first; "
            f"passed so far: {', '.join(out.passed) or '(none)'}",
        )
    for step in steps:
        try:
            verdict = step.check(w, ctx)
            if not isinstance(verdict, _Verdict):
                raise TypeError(f"gate returned {type(verdict).__name__}, not a verdict")
        except Exception as exc:  # fail closed: a crash in a gate is that gate's failure
            verdict = _Verdict(INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
        if verdict.code != OK:
            out.manifest, out.signers = w.manifest, list(w.signers)
            return _fail(out, step.gate, verdict.code, verdict.message)
        if step.records_pass:
            out.outcomes.append(GateOutcome(gate=step.gate, ok=True, code=OK, message=verdict.message))
    out.manifest, out.signers = w.manifest, list(w.signers)
    return out


def _fail(v: Verification, gate: str, code: str, message: str) -> Verification:
    v.failure = GateFailure(gate, code, message)
    v.outcomes.append(GateOutcome(gate=gate, ok=False, code=code, message=message))
    return v


# ---- phase 1: the manifest (before any pack byte is read) ------------------------------------


def _gate_trust_root(w: _Work, ctx: VerifyContext) -> _Verdict:
    # The trust root is configuration handed in by the caller; a pack can never supply or widen it.
    root = ctx.trust_root
    if root is None:
        return _reject("trust_root_missing", "no trust root was configured (KX_TRUST_ROOT)")
    if not isinstance(root, TrustRoot):
        return _reject("trust_root_invalid", f"trust root is a {type(root).__name__}, not a TrustRoot")
    threshold = root.threshold
    if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 1:
        # A threshold of 0 would accept an unsigned manifest.
        return _reject("trust_root_invalid", f"threshold must be an integer >= 1, not {threshold!r}")
    distinct = {k.public for k in root.keys if isinstance(k.public, bytes) and len(k.public) == 32}
    if len(distinct) < threshold:
        return _reject("trust_root_invalid", f"threshold {threshold} exceeds the {len(distinct)} distinct usable keys")
    return _ok(f"threshold {threshold} of {len(distinct)} trusted keys")


def _gate_manifest_envelope(w: _Work, ctx: VerifyContext) -> _Verdict:
    raw = w.manifest_bytes
    if raw is None:
        return _reject("manifest_missing", "no signed manifest was found for this pack")
    if not isinstance(raw, (bytes, bytearray)):
        return _reject("bad_shape", f"manifest must be bytes, not {type(raw).__name__}")
    # Size cap before parsing: an attacker-sized document must not cost memory or CPU.
    if len(raw) > MANIFEST_MAX_BYTES:
        return _reject("manifest_oversized", f"manifest is {len(raw)} bytes, over the {MANIFEST_MAX_BYTES}-byte cap")
    # Strict parsing: two parsers disagreeing on duplicate keys or numbers is how
    # signature-bypass bugs happen, so such input is refused, not interpreted. Floats (finite) are
    # read here: CONTRACT §6 forbids them in `signed` only (its canonical form, below, refuses them),
    # and a producer may add fields beside it freely.
    try:
        doc = loads_strict(bytes(raw), allow_floats=True)
    except StrictJSONError as exc:
        text = str(exc)  # events.canonical has one error type; its message prefixes name the cause
        return _reject("duplicate_key" if text.startswith("duplicate key") else "malformed_json", text)
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("signed"), dict)
        or not isinstance(doc.get("signatures"), list)
    ):
        return _reject("bad_shape", 'manifest must be {"signed": {...}, "signatures": [...]}')
    entries = doc["signatures"]
    if len(entries) > MAX_SIGNATURES:
        # Bounded work: each signature is tried against every trusted key.
        return _reject("too_many_signatures", f"{len(entries)} signatures, at most {MAX_SIGNATURES} are accepted")
    signatures: list[tuple[str, bytes]] = []
    for index, entry in enumerate(entries):
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("keyid"), str)
            or not isinstance(entry.get("sig"), str)
        ):
            return _reject("bad_shape", f'signatures[{index}] must be {{"keyid": str, "sig": base64 str}}')
        try:
            signatures.append((entry["keyid"], b64decode_strict(entry["sig"])))
        except ValueError as exc:
            return _reject("bad_shape", f"signatures[{index}].sig: {exc}")
    try:
        message = canonical_bytes(doc["signed"])
    except (StrictJSONError, RecursionError) as exc:
        code = "float_forbidden" if str(exc).startswith("float at ") else "malformed_json"
        return _reject(code, f"signed has no canonical form: {exc}")
    # Only the envelope is judged here; `signed` stays opaque until the signature gate passed.
    w.signed, w.signatures, w.message = doc["signed"], signatures, message
    return _ok(f"{len(raw)} bytes, {len(signatures)} signature(s); signed content typed after the signature gate")


def _gate_signature(w: _Work, ctx: VerifyContext) -> _Verdict:
    root = ctx.trust_root
    if not w.signatures:
        return _reject("no_signatures", "the manifest carries no signatures")
    # keyid labels are hints only: count_valid tries every signature against every trusted key
    # and counts each distinct public key once (TUF: a threshold met by one key listed twice).
    valid = root.count_valid(w.message, w.signatures)
    if len(valid) < root.threshold:
        return _reject(
            "threshold_not_met",
            f"{len(valid)} of {root.threshold} required distinct trusted keys signed "
            f"({len(w.signatures)} signature(s) present)",
        )
    seen: set[bytes] = set()
    signers = []
    for key in root.keys:
        if key.public in valid and key.public not in seen:
            seen.add(key.public)
            signers.append(key)
    w.signers = [k.keyid for k in signers]
    names = ", ".join(k.name or k.keyid[:16] for k in signers)
    return _ok(f"{len(valid)} of {root.threshold} required distinct trusted keys signed: {names}")


def _gate_manifest_schema(w: _Work, ctx: VerifyContext) -> _Verdict:
    # Typed only now that the content is authenticated; extra fields are kept (they are signed).
    try:
        w.manifest = SignedManifest.model_validate(w.signed)
    except ValidationError as exc:
        return _reject("schema_invalid", _pydantic_problems(exc))
    return _ok()


def _gate_expiry(w: _Work, ctx: VerifyContext) -> _Verdict:
    # TUF freeze-attack lesson: a validly signed but stale manifest must stop working.
    now, expires = ctx.now, w.typed.expires
    if not isinstance(now, datetime) or now.utcoffset() is None:
        return _reject("reference_time_invalid", f"reference time must be a timezone-aware datetime, not {now!r}")
    if now >= expires:
        return _reject("expired", f"manifest expired at {expires.isoformat()} (reference time {now.isoformat()})")
    return _ok(f"valid until {expires.isoformat()}")


def _gate_identity(w: _Work, ctx: VerifyContext) -> _Verdict:
    # The manifest must describe the pack that was requested, not merely some validly signed pack
    # (TUF mix-and-match lesson).
    m = w.typed
    for code, what, requested, signed in (
        ("name_mismatch", "name", ctx.request_name, m.name),
        ("version_mismatch", "version", ctx.request_version, m.version),
        ("digest_mismatch", "digest", ctx.request_digest, m.digest),
    ):
        if requested != signed:
            return _reject(code, f"request {what} {requested!r} differs from the manifest's {signed!r}")
    return _ok(f"{m.name}@{m.version} {m.digest}")


PHASE_MANIFEST: tuple[_Step, ...] = (
    _Step("trust_root", _gate_trust_root),
    _Step("manifest", _gate_manifest_envelope),
    _Step("signature", _gate_signature),
    _Step("manifest", _gate_manifest_schema, records_pass=False),
    _Step("expiry", _gate_expiry),
    _Step("identity", _gate_identity),
)


# ---- phase 2: the pack bytes -----------------------------------------------------------------


def _gate_integrity(w: _Work, ctx: VerifyContext) -> _Verdict:
    m = w.typed
    if w.oversized:
        return _reject("pack_oversized", f"more than the {m.size} bytes the manifest declares arrived; reading stopped")
    if w.observed is None:
        return _reject("pack_missing", f"pack {m.digest} was not found")
    digest, size = w.observed
    # Size first: a truncated pack is reported as what it is.
    if size != m.size:
        return _reject("size_mismatch", f"pack is {size} bytes, the manifest declares {m.size}")
    if digest != m.digest:
        return _reject("digest_mismatch", f"pack hashes to {digest}, the manifest declares {m.digest}")
    return _ok(f"{m.digest}, {m.size} bytes")


PHASE_PACK: tuple[_Step, ...] = (_Step("integrity", _gate_integrity),)


# ---- phase 3: channel compatibility, policy, evidence ----------------------------------------


def _gate_compatibility(w: _Work, ctx: VerifyContext) -> _Verdict:
    if ctx.channel_problem is not None:  # never judged against the older configuration it replaced
        return _reject("channel_unreadable", f"channel {ctx.env}/{ctx.channel}: {ctx.channel_problem}")
    cfg = ctx.channel_config
    compat = None if cfg is None else cfg.compatibility
    if compat is None or not compat.configured:
        # No expectations is not "anything goes": an unconfigured gate fails closed.
        return _reject(
            "channel_unconfigured",
            f"channel {ctx.env}/{ctx.channel} has no compatibility expectations (schema, profiles, runtime_version)",
        )
    need = w.typed.compatibility
    profiles, runtime_version = compat.profiles or [], compat.runtime_version or ""  # `configured` checked both
    if need.schema_ != compat.schema_:
        return _reject("schema_mismatch", f"pack schema {need.schema_!r}, channel expects {compat.schema_!r}")
    if need.profile not in profiles:
        return _reject("profile_mismatch", f"pack profile {need.profile!r} is not one of the channel's {profiles}")
    # One version model (events/versions.py): the runtime version means here what a pack
    # version means to the downgrade gate (1.0.0-1 is 1.0.0.post1 in both).
    try:
        spec = parse_specifier(need.runtime)
    except SpecifierError as exc:
        return _reject("runtime_specifier_invalid", f"manifest runtime: {exc}")
    try:
        runtime = parse_version(runtime_version)
        ok = matches(runtime, spec)
    except ValueError as exc:  # unparsable, or SemVer-only (UnmatchableVersion): no guess
        return _reject("runtime_version_invalid", f"channel runtime_version: {exc}")
    if not ok:
        return _reject("runtime_mismatch", f"channel runtime {runtime} does not satisfy the pack's {need.runtime!r}")
    return _ok(f"schema {need.schema_}, profile {need.profile}, runtime {runtime} in {need.runtime}")


def _gate_policy(w: _Work, ctx: VerifyContext) -> _Verdict:
    m = w.typed
    policy = ctx.channel_config.policy if ctx.channel_config is not None else ChannelPolicy()
    if ctx.purpose not in PURPOSES:
        return _reject("purpose_invalid", f"purpose {ctx.purpose!r} is not one of {', '.join(PURPOSES)}")
    if not ctx.cohorts:
        return _reject("no_cohorts", "no target cohort was given: nothing to compare against")
    verdict = _version_rule(m, ctx, policy.forbid_downgrade)
    if verdict is not None:
        return verdict
    if policy.allowed_sources is not None and not any(
        _source_allowed(m.provenance.source, p) for p in policy.allowed_sources
    ):
        return _reject(
            "source_forbidden",
            f"source {m.provenance.source!r} is not under any allowed prefix {policy.allowed_sources}",
        )
    if policy.allowed_builders is not None and m.build.builder not in policy.allowed_builders:
        return _reject("builder_forbidden", f"builder {m.build.builder!r} is not one of {policy.allowed_builders}")
    if m.scopes is not None:
        # The signer limited where this pack may go; an absent list means no limit on that axis.
        if m.scopes.envs is not None and ctx.env not in m.scopes.envs:
            return _reject("scope_forbidden", f"env {ctx.env!r} is outside the manifest's envs {m.scopes.envs}")
        if m.scopes.channels is not None and ctx.channel not in m.scopes.channels:
            return _reject(
                "scope_forbidden", f"channel {ctx.channel!r} is outside the manifest's channels {m.scopes.channels}"
            )
    return _ok(f"{ctx.purpose} to {ctx.env}/{ctx.channel} cohorts {', '.join(ctx.cohorts)}")


def _version_rule(m: SignedManifest, ctx: VerifyContext, forbid_downgrade: bool) -> _Verdict | None:
    """Compare with the active pack of EVERY target cohort (TUF rollback-attack lesson).

    Same version with other bytes is always refused: a version must name one pack. A rollout
    must be strictly newer when downgrades are forbidden; pins and rollbacks re-activate older
    packs on purpose and skip only that rule.
    """
    new = parse_version(m.version)
    for cohort in ctx.cohorts:
        if cohort not in ctx.active:
            # Unknown is not "never activated": the caller must say None explicitly.
            return _reject("active_unknown", f"the active pack of cohort {cohort!r} was not provided")
        active = ctx.active[cohort]
        if active is None:
            continue
        current = parse_version(active.version)
        if new == current and m.digest != active.digest:
            return _reject(
                "same_version_other_digest",
                f"version {m.version} is active on cohort {cohort} with other bytes ({active.digest})",
            )
        if not forbid_downgrade or ctx.purpose != "rollout":
            continue
        if new < current:
            return _reject("downgrade", f"version {m.version} is older than {active.version} active on cohort {cohort}")
        if new == current:
            return _reject(
                "not_newer", f"version {m.version} is already active on cohort {cohort}; a rollout must be newer"
            )
    return None


def _source_allowed(source: str, prefix: str) -> bool:
    if not prefix or not source.startswith(prefix):
        return False
    return len(source) == len(prefix) or prefix[-1] in _SOURCE_BOUNDARY or source[len(prefix)] in _SOURCE_BOUNDARY


COMMIT_ID = re.compile(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}")  # a git commit id in full: SHA-1 or SHA-256

_EVIDENCE: tuple[tuple[str, Callable[[SignedManifest], Any]], ...] = (
    ("build.id", lambda m: m.build.id),
    ("build.builder", lambda m: m.build.builder),
    ("build.run", lambda m: m.build.run),
    ("provenance.source", lambda m: m.provenance.source),
    ("provenance.revision", lambda m: m.provenance.revision),
)


def _gate_evidence(w: _Work, ctx: VerifyContext) -> _Verdict:
    m = w.typed
    for name, get in _EVIDENCE:
        value = get(m)
        if not isinstance(value, str) or not value.strip():
            return _reject("evidence_missing", f"{name} is missing or blank: the release could not be audited")
    if m.build.validation != "passed":
        return _reject("validation_not_passed", f"build.validation is {m.build.validation!r}, not 'passed'")
    cfg = ctx.channel_config
    if cfg is not None and cfg.policy.require_commit_revision and not COMMIT_ID.fullmatch(m.provenance.revision):
        return _reject(
            "revision_not_commit",
            f"provenance.revision {m.provenance.revision[:80]!r} is not a full commit id (40 or 64 hex digits): "
            "a branch or tag can move, so the evidence would not name what was built (policy require_commit_revision)",
        )
    summary = f"build {m.build.id} run {m.build.run} from {m.provenance.source}@{m.provenance.revision}"
    if not attestation_required(ctx.channel_config):
        return _ok(summary)
    verdict = _attestation_rule(ctx.attestation, m, ctx)
    if verdict.code != OK:
        return verdict
    return _ok(f"{summary}; {verdict.message}")


def attestation_required(cfg: ChannelConfig | None) -> bool:
    """Whether the channel's policy requires an attestation beside the pack."""
    return cfg is not None and cfg.policy.require_attestation is True


def _attestation_rule(raw: Any, m: SignedManifest, ctx: VerifyContext) -> _Verdict:
    """A DSSE envelope of an in-toto Statement v1 with a SLSA provenance v1 predicate.

    Same discipline as the manifest: size cap, strict JSON, then the signature (Ed25519 over
    DSSE's pre-authentication encoding) by a `builders` key of the trust root, and only then is
    the payload read: about this pack, by a builder that key may speak for, that the channel allows.
    """
    if raw is None:
        return _reject(
            "attestation_missing",
            f"the channel requires an attestation and {attestation_object_name(m.digest)} was not found",
        )
    envelope = _dsse_envelope(raw)
    if isinstance(envelope, _Verdict):
        return envelope
    payload, signatures = envelope
    if not signatures:
        return _reject("attestation_unsigned", "the attestation envelope carries no signatures")
    builders = ctx.trust_root.builders
    if not builders:
        return _reject(
            "attestation_untrusted",
            "the trust root names no builder keys (section 'builders'): no attestation can be trusted",
        )
    message = pae(PAYLOAD_TYPE, payload)
    signed_by = [b for b in builders if any(verify_ed25519(b.public, sig, message) for _, sig in signatures)]
    if not signed_by:
        return _reject(
            "attestation_untrusted", f"none of the {len(signatures)} signature(s) verifies under a trusted builder key"
        )
    try:
        statement = loads_strict(payload, allow_floats=True, max_bytes=ATTESTATION_MAX_BYTES)
    except StrictJSONError as exc:
        return _reject("attestation_invalid", f"the signed payload is not JSON: {exc}")
    verdict = _statement_rule(statement, m)
    if isinstance(verdict, _Verdict):
        return verdict
    builder_id = verdict
    keys = [b for b in signed_by if builder_id in b.ids]
    if not keys:
        names = ", ".join(f"{b.name or b.keyid[:16]} (for {', '.join(b.ids)})" for b in signed_by)
        return _reject(
            "attestation_untrusted", f"signed by {names}: no signing key is trusted for builder {builder_id!r}"
        )
    allowed = ctx.channel_config.policy.allowed_builders if ctx.channel_config is not None else None
    if allowed is not None and builder_id not in allowed:
        return _reject("attestation_builder_forbidden", f"attested builder {builder_id!r} is not one of {allowed}")
    return _ok(f"attested by builder {builder_id} (key {keys[0].name or keys[0].keyid[:16]})")


def _dsse_envelope(raw: Any) -> tuple[bytes, list[tuple[str, bytes]]] | _Verdict:
    """(payload, signatures) of a DSSE envelope of an in-toto statement, or why it is not one."""
    if not isinstance(raw, (bytes, bytearray)):
        return _reject("attestation_malformed", f"attestation must be bytes, not {type(raw).__name__}")
    if len(raw) > ATTESTATION_MAX_BYTES:
        return _reject(
            "attestation_malformed", f"attestation is {len(raw)} bytes, over the {ATTESTATION_MAX_BYTES}-byte cap"
        )
    try:  # DSSE forbids no float (kxr's own reader of the envelope takes them too: actions/producer.py)
        doc = loads_strict(bytes(raw), allow_floats=True)
    except StrictJSONError as exc:
        return _reject("attestation_malformed", f"attestation is not strict JSON: {exc}")
    shape = f'{{"payloadType": "{PAYLOAD_TYPE}", "payload": base64, "signatures": [{{"keyid", "sig"}}]}}'
    if (
        not isinstance(doc, dict)
        or doc.get("payloadType") != PAYLOAD_TYPE
        or not isinstance(doc.get("payload"), str)
        or not isinstance(doc.get("signatures"), list)
    ):
        return _reject("attestation_malformed", f"attestation must be a DSSE envelope {shape}")
    if len(doc["signatures"]) > MAX_SIGNATURES:
        return _reject(
            "attestation_malformed", f"{len(doc['signatures'])} signatures, at most {MAX_SIGNATURES} are accepted"
        )
    signatures: list[tuple[str, bytes]] = []
    try:
        payload = b64decode_strict(doc["payload"])
        for index, entry in enumerate(doc["signatures"]):
            if not isinstance(entry, dict) or not isinstance(entry.get("sig"), str):
                return _reject(
                    "attestation_malformed", f'signatures[{index}] must be {{"keyid": str, "sig": base64 str}}'
                )
            # DSSE keyid is optional and only a hint: every signature is tried against every builder key.
            signatures.append((str(entry.get("keyid", "")), b64decode_strict(entry["sig"])))
    except ValueError as exc:
        return _reject("attestation_malformed", f"attestation envelope: {exc}")
    return payload, signatures


def _statement_rule(stmt: Any, m: SignedManifest) -> str | _Verdict:
    """The attested builder id, if the statement is SLSA provenance v1 about this pack."""
    if not isinstance(stmt, dict) or stmt.get("_type") != IN_TOTO_STATEMENT_V1:
        return _reject("attestation_invalid", f"the payload must be an in-toto Statement ({IN_TOTO_STATEMENT_V1})")
    if stmt.get("predicateType") != SLSA_PROVENANCE_V1:
        return _reject("attestation_invalid", f"the statement's predicateType must be {SLSA_PROVENANCE_V1}")
    subjects = stmt.get("subject")
    if not isinstance(subjects, list) or not subjects:
        return _reject("attestation_invalid", "the statement has no subject")
    digests = [
        s.get("digest", {}).get("sha256") if isinstance(s, dict) and isinstance(s.get("digest"), dict) else None
        for s in subjects
    ]
    wanted = m.digest.removeprefix("sha256:")
    if wanted not in digests:  # exact lowercase hex, as the manifest's digest pattern has it
        return _reject("attestation_subject_mismatch", f"no statement subject has sha256 {wanted}")
    predicate = stmt.get("predicate")
    run = predicate.get("runDetails") if isinstance(predicate, dict) else None
    builder = run.get("builder") if isinstance(run, dict) else None
    builder_id = builder.get("id") if isinstance(builder, dict) else None
    if not isinstance(builder_id, str) or not builder_id:
        return _reject("attestation_invalid", "the statement's predicate.runDetails.builder.id is missing")
    return builder_id


PHASE_POLICY: tuple[_Step, ...] = (
    _Step("compatibility", _gate_compatibility),
    _Step("policy", _gate_policy),
    _Step("evidence", _gate_evidence),
)
# The gates a channel's configuration decides: a pack can come to fail them later without changing.
CHANNEL_GATES = frozenset(step.gate for step in PHASE_POLICY)


# ---- public entry points ---------------------------------------------------------------------


def check_manifest(manifest_bytes: bytes | None, ctx: VerifyContext) -> Verification:
    """Phase 1: trust_root, manifest, signature, expiry, identity - before any pack byte is read."""
    return _run(Verification(), PHASE_MANIFEST, _Work(manifest_bytes=manifest_bytes), ctx)


def check_pack(
    v: Verification, observed: tuple[str, int] | None, ctx: VerifyContext, oversized: bool = False
) -> Verification:
    """Phase 2: integrity. `observed` is PackDigester.result(); None means the pack was not found;
    `oversized` means the digester aborted."""
    w = _Work(manifest=v.manifest, signers=list(v.signers), observed=observed, oversized=oversized)
    return _run(v, PHASE_PACK, w, ctx, requires=GATES[:5])


def check_policy(v: Verification, ctx: VerifyContext) -> Verification:
    """Phase 3: compatibility, policy, evidence."""
    w = _Work(manifest=v.manifest, signers=list(v.signers))
    return _run(v, PHASE_POLICY, w, ctx, requires=GATES[:6])


def recheck_channel(v: Verification, ctx: VerifyContext) -> Verification:
    """Phase 3 again (compatibility, policy, evidence) on a manifest that passed phase 1 just now, for a
    pack whose bytes were hashed when it was verified: before a release exposes more cohorts, the
    channel's configuration may have changed since (the activator, before each expansion)."""
    w = _Work(manifest=v.manifest, signers=list(v.signers))
    return _run(v, PHASE_POLICY, w, ctx, requires=GATES[:5])


_CHUNK = 64 * 1024


def verify_bytes(manifest_bytes: bytes | None, pack_bytes: bytes | None, ctx: VerifyContext) -> Verification:
    """All three phases over bytes in memory, stopping at the first failure."""
    v = check_manifest(manifest_bytes, ctx)
    if v.failure is not None or v.manifest is None:
        return v
    observed: tuple[str, int] | None = None
    oversized = False
    if pack_bytes is not None:
        try:
            digester = PackDigester(v.manifest.size)
            view = memoryview(pack_bytes)
            try:
                for start in range(0, len(view), _CHUNK):
                    digester.update(view[start : start + _CHUNK])
                observed = digester.result()
            except PackOversized:
                oversized = True
        except Exception as exc:  # fail closed, reported where it happened
            return _fail(
                Verification(list(v.outcomes), None, v.manifest, list(v.signers)),
                "integrity",
                INTERNAL_ERROR,
                f"{type(exc).__name__}: {exc}",
            )
    v = check_pack(v, observed, ctx, oversized=oversized)
    return check_policy(v, ctx)


def _pydantic_problems(exc: ValidationError, limit: int = 20) -> str:
    problems = [f"{'.'.join(str(p) for p in e['loc']) or '$'}: {e['msg']}" for e in exc.errors()[:limit]]
    more = exc.error_count() - len(problems)
    return "; ".join(problems) + (f"; and {more} more" if more > 0 else "")
