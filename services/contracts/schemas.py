"""JSON Schemas of everything another language reads or writes, from the models that validate it.

`schema_files()` maps a path (relative to the output directory) to its text: one schema per
event type (the envelope with that type's payload), a `oneOf` over all of them, the signed
manifest, the channel configuration, the health sample, the evidence record, and an index
naming each file's subject, stream and writers. Output is sorted and stable, so the copy
committed under docs/schemas/ can be compared byte for byte (`kxr schema export docs/schemas`).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from events.channel import ChannelConfig
from events.codec import EVENT_MAX_BYTES
from events.health import HEALTH_MAX_BYTES, HealthSample
from events.manifest import MANIFEST_MAX_BYTES, MAX_SIGNATURES, SignedManifest
from events.model import PAYLOADS
from projections.evidence_schema import schema_text as evidence_schema_text

from .catalog import channels
from .envelopes import envelope_model

BASE = "https://konnaxion.dev/releases/schemas/"  # the evidence record's $id uses the same base
DIALECT = "https://json-schema.org/draft/2020-12/schema"
EVIDENCE = "evidence-record.schema.json"
EVENT_ANY = "event.schema.json"
INDEX = "index.json"


# What `base64.b64decode(..., validate=True)` accepts: the verifier's reading of `sig`.
BASE64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


class ManifestSignature(BaseModel):
    model_config = ConfigDict(extra="allow")

    keyid: StrictStr = Field(description="hex SHA-256 of the signer's raw public key: only a hint")
    sig: StrictStr = Field(pattern=BASE64, description="base64 Ed25519 signature over the canonical bytes of `signed`")


class ManifestDocument(BaseModel):
    """The manifest object `sha256-<hex>.manifest` in the pack store (CONTRACT §6).

    The verifier checks this shape itself (gate `manifest`) and only types `signed` after
    the signatures verified; this model states both in one place for the schema.
    """

    model_config = ConfigDict(extra="allow")

    signed: SignedManifest
    signatures: list[ManifestSignature] = Field(max_length=MAX_SIGNATURES)


def event_path(event_type: str) -> str:
    return f"events/{event_type}.schema.json"


def _visible(text: str) -> str:
    """JSON text with every invisible character past ASCII (Unicode spaces, U+0085, U+FEFF: the
    whitespace classes of events/schema_patterns.py) written as a \\u escape, which a JSON reader
    turns back into the same character: the file stays readable and means the same."""
    return "".join(f"\\u{ord(c):04x}" if ord(c) > 0x7E and (c.isspace() or not c.isprintable()) else c for c in text)


def _published(schema: dict[str, Any], path: str, description: str | None = None) -> str:
    schema = {**schema, "$id": BASE + path, "$schema": DIALECT}
    if description:
        schema["description"] = description
    return _visible(json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False)) + "\n"


def _event_description(event_type: str) -> str:
    doc = envelope_model(event_type).__doc__ or ""
    return (
        f"{doc} One JSON object of at most {EVENT_MAX_BYTES} bytes in the release log; "
        "strict JSON (a duplicate key is refused); fields not named here are allowed and kept."
    )


MANIFEST_NOTE = (
    f"The signed pack manifest (CONTRACT §6), at most {MANIFEST_MAX_BYTES} bytes, strict JSON: no duplicate keys "
    "and no floats in `signed` (finite ones beside it are read). `signatures` are Ed25519 over the canonical bytes "
    "of `signed` (sorted keys, no whitespace, UTF-8); extra fields inside `signed` are covered by the signature and "
    "kept."
)
CHANNEL_NOTE = (
    f"A channel configuration (CONTRACT §7), the `data` of `channel.configured`. {ChannelConfig.__doc__} "
    "`kxr channel set` also refuses unknown fields."
)
HEALTH_NOTE = (
    f"A runtime's health message (CONTRACT §8), at most {HEALTH_MAX_BYTES} bytes; `errors` may not exceed `requests` "
    "nor `correctness.mismatches` exceed `correctness.checked`."
)


def schema_files() -> dict[str, str]:
    files: dict[str, str] = {}
    entries: list[dict[str, Any]] = []
    for channel in channels():
        where = {"subject": channel.subject, "stream": channel.stream, "writers": list(channel.writers)}
        if channel.name in PAYLOADS:
            path = event_path(channel.name)
            files[path] = _published(
                envelope_model(channel.name).model_json_schema(), path, _event_description(channel.name)
            )
            entries.append({"name": channel.name, "kind": "event", "path": path, **where})
        else:
            files["health-sample.schema.json"] = _published(
                HealthSample.model_json_schema(), "health-sample.schema.json", HEALTH_NOTE
            )
            entries.append({"name": channel.name, "kind": "message", "path": "health-sample.schema.json", **where})
    any_event = {"title": "Event", "oneOf": [{"$ref": event_path(t)} for t in sorted(PAYLOADS)]}
    files[EVENT_ANY] = _published(
        any_event,
        EVENT_ANY,
        "Any message of the release log (KX_RELEASES): exactly one event type's schema applies, chosen by `type`.",
    )
    files["manifest.schema.json"] = _published(
        ManifestDocument.model_json_schema(), "manifest.schema.json", MANIFEST_NOTE
    )
    files["channel-config.schema.json"] = _published(
        ChannelConfig.model_json_schema(), "channel-config.schema.json", CHANNEL_NOTE
    )
    files[EVIDENCE] = evidence_schema_text()
    entries += [
        {"name": "event", "kind": "union", "path": EVENT_ANY},
        {
            "name": "manifest",
            "kind": "object",
            "path": "manifest.schema.json",
            "where": "pack store object sha256-<hex>.manifest (bucket kx_packs)",
        },
        {
            "name": "channel-config",
            "kind": "document",
            "path": "channel-config.schema.json",
            "where": "data of channel.configured; the file `kxr channel set` reads",
        },
        {
            "name": "evidence-record",
            "kind": "document",
            "path": EVIDENCE,
            "where": "output of `kxr audit release ID --json`",
        },
    ]
    index = {
        "base": BASE,
        "dialect": DIALECT,
        "schemas": sorted(entries, key=lambda e: e["path"]),
        "note": "Generated by `kxr schema export DIR` from the code's models; "
        "subjects use the default prefix kx (KX_PREFIX changes it).",
    }
    files[INDEX] = json.dumps(index, indent=2, sort_keys=True) + "\n"
    return dict(sorted(files.items()))
