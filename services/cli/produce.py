"""`kxr` for producers: signing keys, packs, release requests."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

import typer

from events.model import Actor
from events.signing import SigningKey, TrustRoot, b64encode
from events.tokens import check_token
from rich.text import Text

from .common import (
    JsonOpt, NatsUrl, console, fail, output, keys_app, pack_app, read_json_file, release_app, run_async, scope_arg, session, settings_from,
)


# ---- keys ---------------------------------------------------------------------------------------
@keys_app.command("generate")
def keys_generate(
    out: Path = typer.Argument(..., help="where to write the private key (JSON, mode 0600)"),
    name: str = typer.Option("producer", "--name"),
    trust_root: Optional[Path] = typer.Option(None, "--trust-root", help="also add the public key to this trust root file (created if absent)"),
    threshold: Optional[int] = typer.Option(None, "--threshold", help="set the trust root's threshold"),
    builder: list[str] = typer.Option([], "--builder", help="a build system's attestation key: with --trust-root, add it to the "
                                      "'builders' section, trusted for this builder id (repeat for several), not as a manifest key"),
) -> None:
    """Generate an Ed25519 signing key (a manifest key, or with --builder a builder's attestation key)."""
    from services.keyfiles import write_secret

    if builder and trust_root is None:
        fail("--builder says which trust-root section the key goes into: give --trust-root too")
    key = SigningKey.generate()
    try:
        write_secret(out, json.dumps(key.to_file_dict(name), indent=2) + "\n")
    except FileExistsError:
        fail(f"{out} exists; refusing to overwrite a key")
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror}")
    if trust_root is not None:
        doc = read_json_file(trust_root, "trust root") if trust_root.exists() else {"version": 1, "threshold": 1, "keys": {}}
        if builder:
            doc.setdefault("builders", {})[key.keyid] = {"public": b64encode(key.public_raw), "name": name, "ids": builder}
        else:
            doc.setdefault("keys", {})[key.keyid] = {"public": b64encode(key.public_raw), "name": name}
        if threshold is not None:
            doc["threshold"] = threshold
        try:
            TrustRoot.from_document(doc)
        except ValueError as exc:
            fail(f"the trust root would be invalid: {exc}")
        trust_root.write_text(json.dumps(doc, indent=2) + "\n")
    section = f"builders (for {', '.join(builder)})" if builder else "keys"
    console.print(f"key {key.keyid} ({name}) written to {out}" + (f"; added to {trust_root} {section}" if trust_root else ""))


# ---- packs --------------------------------------------------------------------------------------
@pack_app.command("sign")
def pack_sign(
    pack: Path = typer.Argument(..., exists=True, dir_okay=False, help="the pack file"),
    key: list[Path] = typer.Option(..., "--key", help="private key file(s); repeat for several signatures"),
    name: str = typer.Option(..., "--name"),
    version: str = typer.Option(..., "--version"),
    schema: str = typer.Option(..., "--schema"),
    profile: str = typer.Option(..., "--profile"),
    runtime: str = typer.Option(..., "--runtime", help="runtime version specifier, e.g. '>=2.3,<3'"),
    build_id: str = typer.Option(..., "--build-id"),
    builder: str = typer.Option(..., "--builder"),
    run: str = typer.Option(..., "--run", help="pipeline run id"),
    source: str = typer.Option(..., "--source", help="provenance source URI"),
    revision: str = typer.Option(..., "--revision"),
    ref: list[str] = typer.Option([], "--ref", help="provenance reference URI(s)"),
    expires_days: int = typer.Option(90, "--expires-days"),
    out: Optional[Path] = typer.Option(None, "--out", help="manifest path (default: PACK.manifest.json)"),
) -> None:
    """Write a signed manifest for a pack (CONTRACT §6)."""
    from events.tokens import check_token as _tok
    from events.versions import parse_version
    from services.actions.producer import build_signed, manifest_bytes

    _tok(name, "pack name")
    try:
        parse_version(version)
    except ValueError as exc:
        fail(str(exc))
    keys = [SigningKey.from_file_dict(read_json_file(k, "key")) for k in key]
    data = pack.read_bytes()
    signed = build_signed(data, name=name, version=version, schema=schema, profile=profile, runtime=runtime,
                          build_id=build_id, builder=builder, run=run, source=source, revision=revision, refs=ref,
                          expires=datetime.now(timezone.utc) + timedelta(days=expires_days))
    target = out or pack.with_name(pack.name + ".manifest.json")
    target.write_bytes(manifest_bytes(signed, keys))
    console.print(f"manifest for {name}@{version} {signed['digest']} written to {target}")


@pack_app.command("attest")
def pack_attest(
    pack: Path = typer.Argument(..., exists=True, dir_okay=False, help="the pack file"),
    key: Path = typer.Option(..., "--key", exists=True, dir_okay=False, help="the builder's private key (trust root 'builders')"),
    builder_id: str = typer.Option(..., "--builder-id", help="SLSA runDetails.builder.id, e.g. https://ci.example/builders/release"),
    build_type: str = typer.Option("https://konnaxion.dev/releases/pack-build/v1", "--build-type", help="SLSA buildDefinition.buildType"),
    invocation: Optional[str] = typer.Option(None, "--invocation", help="the pipeline run id (runDetails.metadata.invocationId)"),
    source: Optional[str] = typer.Option(None, "--source", help="recorded in externalParameters"),
    revision: Optional[str] = typer.Option(None, "--revision", help="recorded in externalParameters"),
    out: Optional[Path] = typer.Option(None, "--out", help="attestation path (default: PACK.attestation.json)"),
) -> None:
    """Write an in-toto/SLSA provenance attestation of a pack (a DSSE envelope signed by a builder key)."""
    from services.actions.producer import dsse_envelope, provenance_statement, sha256_digest

    signer = SigningKey.from_file_dict(read_json_file(key, "key"))
    digest = sha256_digest(pack.read_bytes())
    params = {k: v for k, v in (("source", source), ("revision", revision)) if v is not None}
    statement = provenance_statement(digest, name=pack.name, builder_id=builder_id, build_type=build_type,
                                     external_parameters=params, invocation_id=invocation)
    target = out or pack.with_name(pack.name + ".attestation.json")
    target.write_bytes(dsse_envelope(statement, [signer]))
    console.print(f"attestation of {digest} by builder {builder_id} (key {signer.keyid[:16]}) written to {target}")


def _attestation_bytes(path: Optional[Path], digest: str) -> Optional[bytes]:
    """The attestation file's bytes, refused here (nothing uploaded) if it names another pack."""
    if path is None:
        return None
    from services.actions.producer import attested_digests

    data = path.read_bytes()
    try:
        subjects = attested_digests(data)
    except ValueError as exc:
        fail(f"{path}: {exc}")
    if digest not in subjects:
        fail(f"{path} attests {', '.join(subjects) or 'nothing'}, not the pack {digest}")
    return data


AttestationOpt = typer.Option(None, "--attestation", exists=True, dir_okay=False,
                              help="also upload this attestation (kxr pack attest) beside the pack")


@pack_app.command("push")
def pack_push(
    pack: Path = typer.Argument(..., exists=True, dir_okay=False),
    manifest: Path = typer.Argument(..., exists=True, dir_okay=False),
    attestation: Optional[Path] = AttestationOpt,
    nats_url: Optional[str] = NatsUrl,
) -> None:
    """Put a pack and its manifest (and attestation) into kx_packs, named by digest."""
    from services.actions.producer import push_pack, sha256_digest

    data = pack.read_bytes()
    digest = sha256_digest(data)
    attested = _attestation_bytes(attestation, digest)

    async def go() -> str:
        async with session(nats_url) as (_, js, log):
            return await push_pack(js, log.subjects, data, manifest.read_bytes(), digest, attestation=attested)

    digest = run_async(go())
    console.print(f"pushed {pack.name} as {digest}" + (" with its attestation" if attested is not None else ""))


@pack_app.command("verify")
def pack_verify(
    pack: Path = typer.Argument(..., exists=True, dir_okay=False),
    manifest: Path = typer.Argument(..., exists=True, dir_okay=False),
    trust_root: Optional[Path] = typer.Option(None, "--trust-root", help="default: $KX_TRUST_ROOT"),
    as_json: bool = JsonOpt,
) -> None:
    """Offline: the gates that need no service state (signature, expiry, integrity, evidence)."""
    from services.actions.offline import verify_offline

    settings = settings_from(trust_root=trust_root)
    from services.settings import load_trust_root

    v = verify_offline(pack.read_bytes(), manifest.read_bytes(), load_trust_root(settings.trust_root_path), datetime.now(timezone.utc))
    output(as_json, {"ok": v.failure is None, "gates": [o.model_dump(mode="json") for o in v.outcomes]},
           lambda: [Text(f"{'pass' if o.ok else 'FAIL'}  {o.gate:<10} {o.code}  {o.message}") for o in v.outcomes])
    if v.failure is not None:
        fail(f"gate {v.failure.gate} failed: {v.failure.code}: {v.failure.message}")


# ---- releases -----------------------------------------------------------------------------------
def _request_options(rollback: str, window: int | None, min_samples: int | None) -> tuple[dict, dict | None]:
    """The request's rollback plan and monitoring, checked by the contract's own models before
    anything is read or sent: a bad value is one line and exit 2, never a rejection later."""
    from pydantic import ValidationError

    from events.model import Monitoring, RollbackPlan

    if window is None and min_samples is not None:
        fail("--min-samples needs --window (the request then carries its own monitoring)")
    if window is not None and min_samples is None:
        fail("--window needs --min-samples too (at least the channel's minimum; nothing is guessed)")
    try:
        plan = RollbackPlan.model_validate({"strategy": rollback}).model_dump()
        monitoring = Monitoring.model_validate({"window_s": window, "min_samples": min_samples}).model_dump(
            exclude={"thresholds"}) if window is not None else None
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = {"strategy": "--rollback", "window_s": "--window", "min_samples": "--min-samples"}.get(str(problem["loc"][0]), "")
        fail(f"{where} {problem['input']!r}: {problem['msg'].lower()}".strip())
    return plan, monitoring


@release_app.command("request")
def release_request(
    release_id: str = typer.Argument(..., help="the release id (a token you choose)"),
    target: str = typer.Option(..., "--target", help="ENV/CHANNEL"),
    manifest: Path = typer.Option(..., "--manifest", exists=True, dir_okay=False, help="the signed manifest (names the pack)"),
    pack: Optional[Path] = typer.Option(None, "--pack", exists=True, dir_okay=False, help="also push this pack and the manifest first"),
    owner: str = typer.Option(..., "--owner"),
    escalation: str = typer.Option(..., "--escalation"),
    plan: Optional[str] = typer.Option(None, "--plan", help="stages, e.g. 'internal;eu-early,us-early;rest'"),
    window: Optional[int] = typer.Option(None, "--window", help="monitoring window seconds"),
    min_samples: Optional[int] = typer.Option(None, "--min-samples"),
    rollback: str = typer.Option("lkg", "--rollback", help="lkg | pinned | none"),
    reason: str = typer.Option("", "--reason"),
    ack_no_health: bool = typer.Option(False, "--acknowledge-no-health", help="proceed even if no runtime reports health"),
    attestation: Optional[Path] = AttestationOpt,
    nats_url: Optional[str] = NatsUrl,
) -> None:
    """Request a release of the pack a manifest describes (CONTRACT §5)."""
    from services.actions.producer import push_attestation, push_pack, request_release

    check_token(release_id, "release id")
    env, channel = scope_arg(target, allow_cohort=False)
    rollback_plan, monitoring = _request_options(rollback, window, min_samples)
    doc = read_json_file(manifest, "manifest")
    signed = doc.get("signed") if isinstance(doc, dict) else None
    if not isinstance(signed, dict) or not all(isinstance(signed.get(k), str) for k in ("name", "version", "digest")):
        fail(f"{manifest} has no signed name/version/digest")
    data: dict = {
        "pack": {"name": signed["name"], "version": signed["version"], "digest": signed["digest"]},
        "target": {"env": env, "channel": channel}, "owner": owner, "escalation": escalation,
        "rollback": rollback_plan, "reason": reason, "acknowledge_no_health": ack_no_health,
    }
    if plan:
        data["plan"] = [[c.strip() for c in stage.split(",") if c.strip()] for stage in plan.split(";")]
    if monitoring is not None:
        data["monitoring"] = monitoring
    attested = _attestation_bytes(attestation, signed["digest"])

    async def go() -> int:
        async with session(nats_url) as (_, js, log):
            if pack is not None:
                await push_pack(js, log.subjects, pack.read_bytes(), manifest.read_bytes())
            if attested is not None:  # before the request: the distributor looks for it at once
                await push_attestation(js, log.subjects, signed["digest"], attested)
            return await request_release(log, release_id, data, Actor(kind="producer", id=owner))

    seq = run_async(go())
    console.print(f"release {release_id} requested (log seq {seq}); watch it with: kxr watch {release_id}")
