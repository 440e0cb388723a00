"""Gate conformance, end to end: hostile packs and manifests never activate (CONTRACT §5, §6).

Shaped like tuf-conformance: a table of vectors, one section per gate, each naming the gate
and the reason code it must fail with. Every vector runs against real JetStream through
every consumer: a bench (gate_fixtures.open_bench) has a one-stage channel, a simulated
runtime in each cohort and a valid v1.0.0 already released to success; then the vector's
objects go into the packs bucket, a release is requested, and once it closes:

  * it closed `failed`, with no `release.activated` (nor `verified`) in its own log;
  * its `verification_failed` names the expected gate and code (evidence record and the
    projection's failure text agree), the gates before it passed in contract order, and the
    code is one GATE_CODES lists for that gate;
  * every scope pointer of the channel (digest and active_seq, in the projection and as
    JetStream stores it) is exactly what it was just before the vector, and the baseline;
  * no runtime saw anything new: its history is unchanged and it still runs v1.0.0.

Attestation vectors run on a bench whose channel requires an attestation (its baseline carried
a valid one). Vectors share one bench per trust root (threshold 1, and threshold 2 with two keys); each
uses its own release id and pack bytes. Positive controls run on fresh benches and must
succeed and move the pointers, so the negative results are not an artefact of the bench.
"""

from __future__ import annotations

from contextlib import AsyncExitStack, nullcontext
from dataclasses import dataclass

import pytest
import pytest_asyncio

from events.manifest import MANIFEST_MAX_BYTES
from services.actions.producer import request_release
from services.jetstream.log_reads import load_evidence
from services.verification.gates import GATE_CODES, GATES, INTERNAL_ERROR
from tests.harness import PRODUCER, make_pack, request_data, wait_for
from tests.integration import gate_fixtures as gf
from tests.integration.gate_fixtures import AppPatch, Bench, Builder, open_bench


@dataclass(frozen=True)
class Vector:
    id: str
    build: Builder
    gate: str
    code: str
    threshold: int = 1  # which bench: trust root threshold 1 (one key) or 2 (two keys)
    patch: AppPatch | None = None  # a temporary change to the running service (deadline, trust root)
    bench: str = "shared"  # "shared" per threshold, or a name for a bench of its own
    repeat: int = 1  # independent releases (own id and bytes), each must fail the same way


V = Vector
WS = " \t "

VECTORS: list[Vector] = [
    # -- trust_root: the verifier's own configuration ------------------------------------------
    V("trust-root-missing", gf.valid, "trust_root", "trust_root_missing", patch=gf.no_trust_root()),
    V(
        "trust-root-threshold-unreachable",
        gf.valid,
        "trust_root",
        "trust_root_invalid",
        patch=gf.unreachable_threshold(),
    ),
    # -- distribution: objects absent from the packs bucket ------------------------------------
    V("manifest-missing", gf.manifest_absent, "distribution", "manifest_missing"),
    V("pack-missing", gf.pack_absent, "distribution", "pack_missing"),
    V("nothing-uploaded", gf.nothing_uploaded, "distribution", "manifest_missing"),
    # -- manifest: envelope, before anything inside `signed` is trusted ------------------------
    V("manifest-garbage", gf.raw_manifest(b"this is not a manifest {"), "manifest", "malformed_json"),
    V(
        "manifest-not-utf8",
        gf.raw_manifest(b'{"signed":{"name":"\xff\xfe"},"signatures":[]}'),
        "manifest",
        "malformed_json",
    ),
    V("manifest-nan", gf.raw_manifest(b'{"signed":{"size":NaN},"signatures":[]}'), "manifest", "malformed_json"),
    V("manifest-empty-bytes", gf.raw_manifest(b""), "manifest", "malformed_json"),
    V("manifest-oversized", gf.manifest_oversized, "manifest", "manifest_oversized"),
    V("manifest-duplicate-key", gf.duplicate_key, "manifest", "duplicate_key"),
    V("manifest-float-in-signed", gf.float_in_signed, "manifest", "float_forbidden"),
    V("manifest-signed-not-object", gf.signed_not_object, "manifest", "bad_shape"),
    V("manifest-sig-not-base64", gf.sig_not_base64, "manifest", "bad_shape"),
    V("manifest-too-many-signatures", gf.too_many_signatures, "manifest", "too_many_signatures"),
    # `signed` is typed only after the signature gate: a validly signed but ill-typed document
    # fails gate manifest / schema_invalid (min_length=1 on every evidence string).
    V("empty-build-id", gf.signed_variant(build_id=""), "manifest", "schema_invalid"),
    V("empty-builder", gf.signed_variant(builder=""), "manifest", "schema_invalid"),
    V("empty-run", gf.signed_variant(run=""), "manifest", "schema_invalid"),
    V("empty-provenance-source", gf.signed_variant(source=""), "manifest", "schema_invalid"),
    V("empty-provenance-revision", gf.signed_variant(revision=""), "manifest", "schema_invalid"),
    V("absent-build-block", gf.mutated(gf._del("build")), "manifest", "schema_invalid"),
    V("size-not-integer", gf.mutated(gf._set("size", "2400")), "manifest", "schema_invalid"),
    # -- signature: threshold of distinct trusted keys over the canonical bytes ----------------
    V("no-signatures", gf.no_signatures, "signature", "no_signatures"),
    V("untrusted-key", gf.untrusted_key, "signature", "threshold_not_met"),
    V("keyid-spoof", gf.keyid_spoof, "signature", "threshold_not_met"),
    V("signature-over-other-content", gf.signature_over_other_content, "signature", "threshold_not_met"),
    V("t2-same-key-twice", gf.same_key_twice, "signature", "threshold_not_met", threshold=2),
    V("t2-one-of-two", gf.one_of_two, "signature", "threshold_not_met", threshold=2),
    V("t2-trusted-plus-outsider", gf.trusted_plus_outsider, "signature", "threshold_not_met", threshold=2),
    # -- expiry ---------------------------------------------------------------------------------
    V("expired", gf.expired, "expiry", "expired"),
    # -- identity: the manifest describes the pack that was requested --------------------------
    V("request-name-mismatch", gf.request_names(name="kb-other"), "identity", "name_mismatch"),
    V("request-version-mismatch", gf.request_names(version="1.1.1"), "identity", "version_mismatch"),
    V("manifest-of-other-pack", gf.manifest_of_other_pack, "identity", "digest_mismatch"),
    # -- integrity: the exact bytes, capped at the signed size ---------------------------------
    V("tampered-bytes", gf.stored_pack(gf.flip_last_byte), "integrity", "digest_mismatch"),
    V("truncated-pack", gf.stored_pack(lambda b: b[:-100]), "integrity", "size_mismatch"),
    V("oversized-pack", gf.stored_pack(lambda b: b + b"\0" * 1000), "integrity", "pack_oversized"),
    V("declared-size-larger", gf.declared_size(+10), "integrity", "size_mismatch"),
    V("declared-size-smaller", gf.declared_size(-1), "integrity", "pack_oversized"),
    # -- compatibility with the channel --------------------------------------------------------
    V("schema-mismatch", gf.signed_variant(schema="kx-pack/2"), "compatibility", "schema_mismatch"),
    V("profile-mismatch", gf.signed_variant(profile="exotic"), "compatibility", "profile_mismatch"),
    V("runtime-mismatch", gf.signed_variant(runtime=">=3,<4"), "compatibility", "runtime_mismatch"),
    V("runtime-specifier-invalid", gf.signed_variant(runtime="banana"), "compatibility", "runtime_specifier_invalid"),
    # -- policy: versions against the active pack, source, builder, scopes ---------------------
    V("downgrade", gf.signed_variant(version="0.9.0"), "policy", "downgrade"),
    V(
        "same-version-other-bytes",
        gf.signed_variant(version=gf.BASELINE_VERSION),
        "policy",
        "same_version_other_digest",
    ),
    V("source-forbidden", gf.signed_variant(source="https://evil.example/kb/core"), "policy", "source_forbidden"),
    V(
        "source-prefix-lookalike",
        gf.signed_variant(source="https://git.example/kb-evil/core"),
        "policy",
        "source_forbidden",
    ),
    V("builder-forbidden", gf.signed_variant(builder="laptop"), "policy", "builder_forbidden"),
    V("scope-env-forbidden", gf.signed_variant(scopes={"envs": ["staging"]}), "policy", "scope_forbidden"),
    V("scope-channel-forbidden", gf.signed_variant(scopes={"channels": ["stable"]}), "policy", "scope_forbidden"),
    # Whitespace passes the schema; builder and source are then judged by policy first.
    V("whitespace-builder", gf.signed_variant(builder=WS), "policy", "builder_forbidden"),
    V("whitespace-provenance-source", gf.signed_variant(source=WS), "policy", "source_forbidden"),
    # -- evidence: build identity, provenance, validation --------------------------------------
    V("whitespace-build-id", gf.signed_variant(build_id=WS), "evidence", "evidence_missing"),
    V("whitespace-run", gf.signed_variant(run=WS), "evidence", "evidence_missing"),
    V("whitespace-provenance-revision", gf.signed_variant(revision=WS), "evidence", "evidence_missing"),
    V("validation-failed", gf.mutated(gf._set("build.validation", "failed")), "evidence", "validation_not_passed"),
    V("validation-absent", gf.mutated(gf._set("build.validation", "")), "evidence", "validation_not_passed"),
    # -- attestation: on a bench whose channel requires one (policy.require_attestation) ----------
    # The baseline of that bench carried a valid attestation; each vector breaks one thing.
    V("attestation-missing", gf.attested(lambda k, d: None), "distribution", "attestation_missing", bench="attest"),
    V(
        "attestation-malformed-dsse",
        gf.attested(gf.attestation_not_dsse),
        "evidence",
        "attestation_malformed",
        bench="attest",
    ),
    V("attestation-unsigned", gf.attested(gf.unsigned_attestation), "evidence", "attestation_unsigned", bench="attest"),
    V(
        "attestation-wrong-key",
        gf.attested(gf.attestation_by_outsider),
        "evidence",
        "attestation_untrusted",
        bench="attest",
    ),
    V(
        "attestation-by-manifest-key",
        gf.attested(lambda k, d: gf.attestation_for(d, k.signers)),
        "evidence",
        "attestation_untrusted",
        bench="attest",
    ),
    V(
        "attestation-wrong-subject-digest",
        gf.attested(gf.attestation_of_other_pack),
        "evidence",
        "attestation_subject_mismatch",
        bench="attest",
    ),
    V(
        "attestation-wrong-builder",
        gf.attested(gf.attestation_by_other_builder),
        "evidence",
        "attestation_builder_forbidden",
        bench="attest",
    ),
    # -- deadline: one verification deadline, enforced by the adapter ----------------------------
    # A pack that passes every gate, under a 1 ms deadline: the verdict must be deadline/timeout,
    # never `verified`. Repeated because a deadline that is only sometimes enforced is a bug too;
    # on a bench of its own because a deadline that fails open activates the pack.
    V(
        "verification-times-out",
        gf.valid,
        "deadline",
        "timeout",
        patch=gf.verify_deadline(0.001),
        bench="deadline",
        repeat=6,
    ),
]


def test_vector_table_is_well_formed():
    ids = [v.id for v in VECTORS]
    assert len(ids) == len(set(ids)) and len(ids) >= 30
    for v in VECTORS:
        if v.gate in GATES:
            assert v.code in GATE_CODES[v.gate] + (INTERNAL_ERROR,), v
        else:
            assert (v.gate, v.code) in {
                ("distribution", "manifest_missing"),
                ("distribution", "pack_missing"),
                ("distribution", "attestation_missing"),
                ("deadline", "timeout"),
            }, v
    # every gate of the contract order is exercised by at least one vector
    assert set(GATES) <= {v.gate for v in VECTORS}


# ---- benches -----------------------------------------------------------------------------------


class Benches:
    """One bench per trust-root threshold, opened on first use, closed with the module."""

    def __init__(self, nats_url: str, stack: AsyncExitStack) -> None:
        self._url, self._stack, self._open = nats_url, stack, {}

    async def get(self, threshold: int, name: str = "shared") -> Bench:
        key = (threshold, name)
        if key not in self._open:
            bench = open_bench(self._url, threshold, require_attestation=name == "attest")
            self._open[key] = await self._stack.enter_async_context(bench)
        return self._open[key]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def benches(nats_url):
    async with AsyncExitStack() as stack:
        yield Benches(nats_url, stack)


def history(bench: Bench) -> dict[str, list]:
    return {cohort: list(rt.history) for cohort, rt in bench.runtimes.items()}


# ---- the negative suite ------------------------------------------------------------------------


async def test_the_active_pack_requested_again_is_refused_before_any_gate(benches: Benches):
    """The pack every cohort runs (its last-known-good), requested again: a rollback would have nowhere to
    land but on it, so pre-flight refuses it (`rollback_target`) before any gate runs. The policy gate's
    `not_newer` is the second line for the same request (tests/unit/test_gates.py)."""
    bench = await benches.get(1, "shared")
    again = gf.baseline_again(bench.keys, bench.baseline, "again")
    before = await bench.pointers()
    await bench.put(again.objects)
    await request_release(bench.svc.app.log, "v-again", request_data(again.request), PRODUCER)
    release = await bench.svc.wait_release("v-again", timeout=15)
    assert release.outcome == "rejected", (release.outcome, release.failure)
    assert "is the pack being released" in (release.failure or "")
    assert await bench.pointers() == before == bench.baseline_pointers


@pytest.mark.parametrize("vector", VECTORS, ids=[v.id for v in VECTORS])
async def test_hostile_input_fails_closed(vector: Vector, benches: Benches):
    bench = await benches.get(vector.threshold, vector.bench)
    for attempt in range(vector.repeat):
        tag = vector.id if vector.repeat == 1 else f"{vector.id}-{attempt}"
        await run_vector(bench, vector, tag)


async def run_vector(bench: Bench, vector: Vector, tag: str) -> None:
    svc, app = bench.svc, bench.svc.app
    release_id = f"v-{tag}"
    hostile = vector.build(bench.keys, bench.baseline, tag)

    before = await bench.pointers()
    assert before == bench.baseline_pointers, f"bench contaminated by an earlier vector: {before}"
    seen_before = history(bench)

    await bench.put(hostile.objects)
    with vector.patch(app) if vector.patch else nullcontext():
        await request_release(app.log, release_id, request_data(hostile.request), PRODUCER)
        release = await svc.wait_release(release_id, timeout=15)

    # -- the release: failed, never activated, and says which gate refused and why
    evidence = await load_evidence(app.js, app.subjects, release_id)
    types = [line["type"] for line in evidence.timeline]
    assert release.outcome == "failed", (tag, release.outcome, release.failure, types)
    assert release.activated == () and "release.activated" not in types and "release.verified" not in types, types
    assert types.count("release.verification_failed") == 1, types
    assert evidence.outcome["outcome"] == "failed"
    got = (evidence.verification.get("gate"), evidence.verification.get("code"))
    assert got == (vector.gate, vector.code), (
        f"{got} != {(vector.gate, vector.code)}: {evidence.verification.get('message')}"
    )
    assert evidence.verification["result"] == "failed"
    assert (release.failure or "").startswith(f"verification_failed: {vector.gate}/{vector.code}:"), release.failure

    # -- gate outcomes: every gate before the refusal passed, in contract order; then the refusal
    gates = list(evidence.gates)
    assert gates and not gates[-1]["ok"] and (gates[-1]["gate"], gates[-1]["code"]) == (vector.gate, vector.code), gates
    passed = [g["gate"] for g in gates[:-1]]
    assert all(g["ok"] for g in gates[:-1]), gates
    assert tuple(passed) == GATES[: len(passed)], passed
    if vector.gate in GATES and not (vector.gate, vector.code) == ("manifest", "schema_invalid"):
        assert tuple(passed) == GATES[: GATES.index(vector.gate)], passed  # no gate skipped, none after

    # -- the pointers: unchanged, in the projection and in JetStream
    after = await bench.pointers()
    assert after == before, f"scope pointers moved: {before} -> {after}"

    # -- the runtimes: nothing new arrived, still on the baseline
    assert history(bench) == seen_before
    for cohort, rt in bench.runtimes.items():
        assert rt.active is not None and rt.active.digest == bench.baseline.digest, (cohort, rt.active)
        if hostile.request.digest != bench.baseline.digest:
            assert hostile.request.digest not in [d for d, _ in rt.history], (cohort, rt.history)


# ---- positive controls -------------------------------------------------------------------------


def extra_signed_fields(bench: Bench):
    return make_pack(
        "1.1.0",
        bench.keys.signers,
        extra={
            "notes": "extra signed fields are kept and covered by the signature",
            "labels": {"team": "kb", "tier": "gold"},
            "sbom": ["pkg:pypi/x@1"],
            "build_number": 812,
        },
    )


def two_distinct_keys(bench: Bench):
    assert bench.keys.threshold == 2 and len(bench.keys.signers) == 2
    return make_pack("1.1.0", bench.keys.signers)


@pytest.mark.parametrize(
    "make, threshold",
    [(extra_signed_fields, 1), (two_distinct_keys, 2)],
    ids=["extra-signed-fields", "t2-two-distinct-keys"],
)
async def test_positive_control_activates_and_moves_pointers(nats_url, make, threshold):
    async with open_bench(nats_url, threshold) as bench:
        svc, app = bench.svc, bench.svc.app
        pack = make(bench)
        before = await bench.pointers()
        await svc.request("control", pack)
        release = await svc.wait_release("control", timeout=20)
        assert release.outcome == "success", release.failure
        assert set(release.activated) == set(gf.COHORTS)

        evidence = await load_evidence(app.js, app.subjects, "control")
        assert evidence.verification["result"] == "verified"
        assert len(evidence.verification["signers"]) == threshold
        assert [g["gate"] for g in evidence.gates] == list(GATES) and all(g["ok"] for g in evidence.gates)

        after = await bench.pointers()
        for cohort in gf.COHORTS:
            assert after[cohort]["digest"] == pack.digest
            assert after[cohort]["active_seq"] > before[cohort]["active_seq"]
            assert after[cohort]["stored"] == (pack.digest, after[cohort]["active_seq"])
        await wait_for(
            lambda: all(rt.active and rt.active.digest == pack.digest for rt in bench.runtimes.values()),
            10,
            "runtimes to switch to the control pack",
        )


def test_oversized_manifest_vector_is_really_oversized():
    keys = gf.new_keys(1)
    h = gf.manifest_oversized(keys, None, "probe")  # type: ignore[arg-type]
    assert max(len(v) for v in h.objects.values()) > MANIFEST_MAX_BYTES
