"""The signed pack manifest (CONTRACT §6).

`SignedManifest` is the typed view of `signed`; it is only built after the
signature check has passed (see services/verification/gates.py). Extra fields are
kept: they are covered by the signature, as in TUF.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from .canonical import canonical_bytes
from .nulls import empty_if_null
from .signing import SigningKey, b64encode
from .timestamps import Rfc3339
from .versions import parse_version

DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
MANIFEST_MAX_BYTES = 256 * 1024
MAX_SIGNATURES = 32


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow", strict=True)


class Compatibility(_Strict):
    schema_: StrictStr = Field(alias="schema", min_length=1)
    profile: StrictStr = Field(min_length=1)
    runtime: StrictStr = Field(min_length=1)


class BuildIdentity(_Strict):
    id: StrictStr = Field(min_length=1)
    builder: StrictStr = Field(min_length=1)
    validation: StrictStr
    run: StrictStr = Field(min_length=1)


class Provenance(_Strict):
    source: StrictStr = Field(min_length=1)
    revision: StrictStr = Field(min_length=1)
    refs: Annotated[list[StrictStr], empty_if_null(list)] = Field(default_factory=list)


class ManifestScopes(_Strict):
    envs: list[StrictStr] | None = None
    channels: list[StrictStr] | None = None


class SignedManifest(_Strict):
    name: StrictStr = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    version: StrictStr = Field(
        min_length=1,
        max_length=64,
        description=(
            "PEP 440 where it parses (`1.0`, `v1.0`, `1.0.0-1`, `1.0.0-rc.1`), else SemVer 2.0.0 "
            "(`1.0.0-alpha.beta`); a version that is neither is refused at the manifest gate (events/versions.py)"
        ),
    )
    digest: StrictStr = Field(pattern=DIGEST_PATTERN)
    size: StrictInt = Field(ge=0)
    expires: Rfc3339 = Field(  # one rule for every timestamp: events/timestamps.py
        description=(
            "RFC 3339 date-time with an offset, e.g. `2030-01-01T00:00:00Z` (`t`/`z` in lower case, a fraction "
            "of a second and a `+hh:mm` offset allowed); no other ISO 8601 form (week dates, the basic format, "
            "an hours-only offset) is accepted"
        )
    )
    compatibility: Compatibility
    build: BuildIdentity
    provenance: Provenance
    scopes: ManifestScopes | None = None

    @field_validator("version")
    @classmethod
    def _version_parses(cls, value: str) -> str:
        parse_version(value)
        return value


def sign_manifest(signed: dict[str, Any], keys: list[SigningKey]) -> dict[str, Any]:
    """Producer side: wrap `signed` with one Ed25519 signature per key."""
    message = canonical_bytes(signed)
    return {
        "signed": signed,
        "signatures": [{"keyid": key.keyid, "sig": b64encode(key.sign(message))} for key in keys],
    }


def manifest_object_name(digest: str) -> str:
    return pack_object_name(digest) + ".manifest"


def attestation_object_name(digest: str) -> str:
    """The in-toto/SLSA provenance (a DSSE envelope) beside the pack; read when a channel requires it."""
    return pack_object_name(digest) + ".attestation"


def pack_object_name(digest: str) -> str:
    """`sha256:<hex>` -> `sha256-<hex>` (object names cannot hold a colon portably)."""
    algo, _, hexdigest = digest.partition(":")
    return f"{algo}-{hexdigest}"
