"""In-toto/SLSA attestations end to end, as a producer and a build system use them.

Real nats-server, every consumer in-process, and the real `kxr` console script:
`kxr keys generate` (a manifest key, and a builder key into the trust root's `builders`),
`kxr pack sign`, `kxr pack attest`, `kxr release request --pack --attestation`. The channel
requires an attestation: the attested pack activates; the same pack's release without its
attestation fails at distribution and moves no pointer (the negative vectors per failure mode
are in test_gate_conformance.py, bench "attest").
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from events.manifest import attestation_object_name
from services.jetstream.log_reads import load_evidence
from services.jetstream.packstore import PackStore
from services.settings import load_trust_root
from tests.harness import running_service, wait_for
from tests.integration.gate_fixtures import BUILDER_ID, CHAN, ENV, REQUIRE_ATTESTATION, TENANTS


def kxr_path() -> str:
    path = Path(sys.executable).parent / "kxr"
    if not path.exists():
        pytest.fail("the kxr console script is not installed beside this Python (pip install -e .)", pytrace=False)
    return str(path)


class Kxr:
    """Runs `kxr` against the test's server and prefix, off the event loop (the service runs on it)."""

    def __init__(self, nats_url: str, prefix: str, workdir: Path) -> None:
        self.workdir = workdir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("KX_")}
        self.env.update({"KX_PREFIX": prefix, "KX_NATS_URL": nats_url, "COLUMNS": "200"})

    async def __call__(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
        done = await asyncio.to_thread(
            subprocess.run,
            [kxr_path(), *args],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert (done.returncode == 0) == ok, (args, done.returncode, done.stdout, done.stderr)
        return done


async def sign(kxr: Kxr, pack: Path, version: str) -> None:
    await kxr(
        "pack",
        "sign",
        str(pack),
        "--key",
        "release.key.json",
        "--name",
        "kb",
        "--version",
        version,
        "--schema",
        "kx-pack/1",
        "--profile",
        "standard",
        "--runtime",
        ">=2.3,<3",
        "--build-id",
        f"b-{version}",
        "--builder",
        BUILDER_ID,
        "--run",
        f"r-{version}",
        "--source",
        "https://git.example/kb/core",
        "--revision",
        f"rev-{version}",
    )


def request_args(release_id: str, pack: Path, *extra: str, rollback: str = "lkg") -> list[str]:
    return [
        "release",
        "request",
        release_id,
        "--target",
        f"{ENV}/{CHAN}",
        "--manifest",
        f"{pack.name}.manifest.json",
        "--pack",
        pack.name,
        "--owner",
        "kb-team",
        "--escalation",
        "pager:kb",
        "--rollback",
        rollback,
        "--acknowledge-no-health",
        *extra,
    ]


async def test_attested_pack_activates_and_unattested_one_fails_closed(nats_url, prefix, tmp_path):
    kxr = Kxr(nats_url, prefix, tmp_path)
    await kxr("keys", "generate", "release.key.json", "--name", "release", "--trust-root", "root.json")
    await kxr("keys", "generate", "ci.key.json", "--name", "ci", "--builder", BUILDER_ID, "--trust-root", "root.json")
    root_doc = json.loads((tmp_path / "root.json").read_text())
    ci = json.loads((tmp_path / "ci.key.json").read_text())
    assert list(root_doc["builders"]) == [ci["keyid"]] and ci["keyid"] not in root_doc["keys"]
    trust_root = load_trust_root(tmp_path / "root.json")  # what KX_TRUST_ROOT would give `kxr serve`

    attested, bare = tmp_path / "kb-1.1.0.pack", tmp_path / "kb-1.2.0.pack"
    attested.write_bytes(b"knowledge pack 1.1.0 " * 4000)
    bare.write_bytes(b"knowledge pack 1.2.0 " * 4000)
    await sign(kxr, attested, "1.1.0")
    await sign(kxr, bare, "1.2.0")
    await kxr(
        "pack", "attest", attested.name, "--key", "ci.key.json", "--builder-id", BUILDER_ID, "--invocation", "r-1.1.0"
    )
    # an attestation of another pack is refused before anything is uploaded
    refused = await kxr(
        "pack",
        "push",
        bare.name,
        f"{bare.name}.manifest.json",
        "--attestation",
        f"{attested.name}.attestation.json",
        ok=False,
    )
    assert "not the pack" in refused.stdout + refused.stderr

    async with running_service(nats_url, prefix, trust_root=trust_root) as svc:
        app = svc.app
        await svc.configure(ENV, CHAN, REQUIRE_ATTESTATION)
        runtimes = [await svc.runtime(tenant) for tenant in TENANTS.values()]
        store = PackStore(app.js, app.subjects)
        bare_digest = json.loads((tmp_path / f"{bare.name}.manifest.json").read_text())["signed"]["digest"]
        assert not await store.exists(attestation_object_name(bare_digest))

        # -- attested: every gate passes, the evidence gate names the attested builder, pointers move
        await kxr(
            *request_args("attested", attested, "--attestation", f"{attested.name}.attestation.json", rollback="none")
        )
        release = await svc.wait_release("attested", timeout=30)
        assert release.outcome == "success", release.failure
        evidence = await load_evidence(app.js, app.subjects, "attested")
        assert evidence.verification["result"] == "verified"
        last = evidence.gates[-1]
        assert (last["gate"], last["ok"]) == ("evidence", True) and f"attested by builder {BUILDER_ID}" in last[
            "message"
        ]
        digest = release.prepared.pack.digest
        assert await store.exists(attestation_object_name(digest))
        for cohort in ("internal", "rest"):
            assert svc.world.scope(ENV, CHAN, cohort).active_pack.digest == digest
        await wait_for(
            lambda: all(rt.active and rt.active.digest == digest for rt in runtimes),
            10,
            "runtimes on the attested pack",
        )
        pointers = {c: svc.world.scope(ENV, CHAN, c).active_seq for c in ("internal", "rest")}

        # -- the same channel, a newer pack without attestation: refused at distribution, nothing moves
        await kxr(*request_args("bare", bare))
        release = await svc.wait_release("bare", timeout=30)
        assert release.outcome == "failed" and release.activated == (), release.failure
        assert (release.failure or "").startswith("verification_failed: distribution/attestation_missing:"), (
            release.failure
        )
        assert {c: svc.world.scope(ENV, CHAN, c).active_seq for c in ("internal", "rest")} == pointers
        assert all(rt.active.digest == digest for rt in runtimes)
