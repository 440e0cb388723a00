"""`kxr pack sign|attest|push|verify`: Runtime Packs, their signed manifests and provenance attestations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import typer

from . import checks
from .common import (
    JsonOpt,
    NatsUrl,
    console,
    fail,
    output,
    read_key_file,
    run_async,
    session,
    settings_from,
)

app = typer.Typer(no_args_is_help=True, help="Sign, push and verify Runtime Packs.")


@app.command("sign")
def pack_sign(
    pack: Path = typer.Argument(..., exists=True, dir_okay=False, help="the pack file"),
    key: list[Path] = typer.Option(..., "--key", help="private key file(s); repeat for several signatures"),
    name: str = typer.Option(..., "--name"),
    version: str = typer.Option(..., "--version", callback=checks.pack_version),
    schema: str = typer.Option(..., "--schema"),
    profile: str = typer.Option(..., "--profile"),
    runtime: str = typer.Option(
        ..., "--runtime", callback=checks.runtime_specifier, help="runtime version specifier, e.g. '>=2.3,<3'"
    ),
    build_id: str = typer.Option(..., "--build-id"),
    builder: str = typer.Option(..., "--builder"),
    run: str = typer.Option(..., "--run", help="pipeline run id"),
    source: str = typer.Option(..., "--source", callback=checks.uri, help="provenance source URI"),
    revision: str = typer.Option(..., "--revision"),
    ref: list[str] = typer.Option([], "--ref", callback=checks.uris, help="provenance reference URI(s)"),
    expires_days: int = typer.Option(90, "--expires-days", min=1, help="the manifest expires this many days from now"),
    out: Path | None = typer.Option(None, "--out", help="manifest path (default: PACK.manifest.json)"),
) -> None:
    """Write a signed manifest for a pack (CONTRACT §6)."""
    from events.tokens import check_token as _tok
    from services.actions.producer import build_signed, manifest_bytes

    _tok(name, "pack name")  # the version: checked by its option's callback (checks.pack_version)
    keys = [read_key_file(k) for k in key]
    data = pack.read_bytes()
    signed = build_signed(
        data,
        name=name,
        version=version,
        schema=schema,
        profile=profile,
        runtime=runtime,
        build_id=build_id,
        builder=builder,
        run=run,
        source=source,
        revision=revision,
        refs=ref,
        expires=datetime.now(UTC) + timedelta(days=expires_days),
    )
    target = out or pack.with_name(pack.name + ".manifest.json")
    target.write_bytes(manifest_bytes(signed, keys))
    console.print(f"manifest for {name}@{version} {signed['digest']} written to {target}")


@app.command("attest")
def pack_attest(
    pack: Path = typer.Argument(..., exists=True, dir_okay=False, help="the pack file"),
    key: Path = typer.Option(
        ..., "--key", exists=True, dir_okay=False, help="the builder's private key (trust root 'builders')"
    ),
    builder_id: str = typer.Option(
        ...,
        "--builder-id",
        help="SLSA runDetails.builder.id, e.g. https://ci.example/builders/release",
    ),
    build_type: str = typer.Option(
        "https://konnaxion.dev/releases/pack-build/v1",
        "--build-type",
        callback=checks.uri,
        help="SLSA buildDefinition.buildType",
    ),
    invocation: str | None = typer.Option(
        None, "--invocation", help="the pipeline run id (runDetails.metadata.invocationId)"
    ),
    source: str | None = typer.Option(None, "--source", help="recorded in externalParameters"),
    revision: str | None = typer.Option(None, "--revision", help="recorded in externalParameters"),
    out: Path | None = typer.Option(None, "--out", help="attestation path (default: PACK.attestation.json)"),
) -> None:
    """Write an in-toto/SLSA provenance attestation of a pack (a DSSE envelope signed by a builder key)."""
    from services.actions.producer import dsse_envelope, provenance_statement, sha256_digest

    signer = read_key_file(key)
    digest = sha256_digest(pack.read_bytes())
    params = {k: v for k, v in (("source", source), ("revision", revision)) if v is not None}
    statement = provenance_statement(
        digest,
        name=pack.name,
        builder_id=builder_id,
        build_type=build_type,
        external_parameters=params,
        invocation_id=invocation,
    )
    target = out or pack.with_name(pack.name + ".attestation.json")
    target.write_bytes(dsse_envelope(statement, [signer]))
    console.print(f"attestation of {digest} by builder {builder_id} (key {signer.keyid[:16]}) written to {target}")


def attestation_bytes(path: Path | None, digest: str) -> bytes | None:
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


AttestationOpt = typer.Option(
    None,
    "--attestation",
    exists=True,
    dir_okay=False,
    help="also upload this attestation (kxr pack attest) beside the pack",
)


@app.command("push")
def pack_push(
    pack: Path = typer.Argument(..., exists=True, dir_okay=False),
    manifest: Path = typer.Argument(..., exists=True, dir_okay=False),
    attestation: Path | None = AttestationOpt,
    nats_url: str | None = NatsUrl,
) -> None:
    """Put a pack and its manifest (and attestation) into kx_packs, named by digest."""
    from services.actions.producer import push_pack, sha256_digest

    data, manifest_data = pack.read_bytes(), manifest.read_bytes()
    digest = sha256_digest(data)
    attested = attestation_bytes(attestation, digest)

    async def go() -> str:
        async with session(nats_url) as (_, js, log):
            return await push_pack(js, log.subjects, data, manifest_data, digest, attestation=attested)

    digest = run_async(go())
    console.print(f"pushed {pack.name} as {digest}" + (" with its attestation" if attested is not None else ""))


@app.command("verify")
def pack_verify(
    pack: Path = typer.Argument(..., exists=True, dir_okay=False),
    manifest: Path = typer.Argument(..., exists=True, dir_okay=False),
    trust_root: Path | None = typer.Option(None, "--trust-root", help="default: $KX_TRUST_ROOT"),
    as_json: bool = JsonOpt,
) -> None:
    """Offline: the gates that need no service state (signature, expiry, integrity, evidence)."""
    from rich.text import Text

    from services.actions.offline import verify_offline
    from services.actions.producer import sha256_digest
    from services.reads.shapes import Gate, Pack, PackVerify, dump
    from services.settings import load_trust_root

    settings = settings_from(trust_root=trust_root)
    data, manifest_data = pack.read_bytes(), manifest.read_bytes()
    v = verify_offline(data, manifest_data, load_trust_root(settings.trust_root_path), datetime.now(UTC))
    signed = _signed_part(manifest_data)
    shown = dump(
        PackVerify(
            ok=v.failure is None,
            pack=Pack(name=_text(signed.get("name")), version=_text(signed.get("version")), digest=sha256_digest(data)),
            gates=[Gate(**o.model_dump(mode="json")) for o in v.outcomes],
        )
    )
    output(
        as_json,
        shown,
        lambda: [Text(f"{'pass' if o.ok else 'FAIL'}  {o.gate:<10} {o.code}  {o.message}") for o in v.outcomes],
    )
    if v.failure is not None:
        fail(f"gate {v.failure.gate} failed: {v.failure.code}: {v.failure.message}")


def _signed_part(manifest: bytes) -> dict:
    """The manifest's `signed` object as far as it parses (for naming the pack; the gates judge it)."""
    import json

    try:
        doc = json.loads(manifest)
    except ValueError:
        return {}
    signed = doc.get("signed") if isinstance(doc, dict) else None
    return signed if isinstance(signed, dict) else {}


def _text(value) -> str | None:
    return value if isinstance(value, str) else None
