"""`kxr keys generate`: Ed25519 signing keys (manifest keys, builders' attestation keys) and the trust root file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from .common import console, fail, read_json_file

app = typer.Typer(no_args_is_help=True, help="Signing keys and the trust root.")


@app.command("generate")
def keys_generate(
    out: Path = typer.Argument(..., help="where to write the private key (JSON, mode 0600)"),
    name: str = typer.Option("producer", "--name"),
    trust_root: Path | None = typer.Option(
        None, "--trust-root", help="also add the public key to this trust root file (created if absent)"
    ),
    threshold: int | None = typer.Option(None, "--threshold", min=1, help="set the trust root's threshold"),
    builder: list[str] = typer.Option(
        [],
        "--builder",
        help="a build system's attestation key: with --trust-root, add it to the "
        "'builders' section, trusted for this builder id (repeat for several), not as a manifest key",
    ),
) -> None:
    """Generate an Ed25519 signing key (a manifest key, or with --builder a builder's attestation key)."""
    from events.signing import SigningKey, TrustRoot, b64encode
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
        doc: dict[str, Any] = (
            read_json_file(trust_root, "trust root")
            if trust_root.exists()
            else {"version": 1, "threshold": 1, "keys": {}}
        )
        if builder:
            doc.setdefault("builders", {})[key.keyid] = {
                "public": b64encode(key.public_raw),
                "name": name,
                "ids": builder,
            }
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
    console.print(
        f"key {key.keyid} ({name}) written to {out}" + (f"; added to {trust_root} {section}" if trust_root else "")
    )
