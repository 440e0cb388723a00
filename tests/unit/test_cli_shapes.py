"""docs/schemas/cli/ is generated from services/reads/shapes.py (the models `--json` serialises
through): a stale file fails here. Also: the shapes' own rules (digests, times)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import jsonschema
import pytest
from pydantic import ValidationError

from services.reads.shapes import Pack, rfc3339, schema_files

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas" / "cli"


def test_the_published_schemas_are_the_models_schemas() -> None:
    files = schema_files()
    stale = [
        name for name, text in files.items() if not (SCHEMAS / name).exists() or (SCHEMAS / name).read_text() != text
    ]
    extra = sorted({p.name for p in SCHEMAS.glob("*.json")} - set(files))
    assert not stale and not extra, (
        f"stale {stale}, unknown {extra}: run `python -m services.reads.shapes docs/schemas/cli`"
    )
    for text in files.values():
        jsonschema.Draft202012Validator.check_schema(json.loads(text))


def test_times_are_rfc3339_utc_with_z() -> None:
    at = datetime(2026, 11, 27, 11, 0, 0, 5, tzinfo=timezone(timedelta(hours=1)))
    assert rfc3339(at) == "2026-11-27T10:00:00.000005Z"
    assert rfc3339("2026-11-27T10:00:00+00:00") == "2026-11-27T10:00:00.000000Z"
    assert rfc3339(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01T00:00:00.000000Z" and rfc3339(None) is None


@pytest.mark.parametrize("digest", ["ab" * 32, "sha256:" + "AB" * 32, "sha256:" + "ab" * 31, "sha512:" + "ab" * 32])
def test_a_pack_digest_is_sha256_and_64_lowercase_hex(digest: str) -> None:
    with pytest.raises(ValidationError):
        Pack(name="kb", version="1.0.0", digest=digest)
    assert Pack(name="kb", version="1.0.0", digest="sha256:" + "ab" * 32).digest.startswith("sha256:")
