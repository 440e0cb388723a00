"""The published evidence-record schema matches the code and the records it describes."""

from __future__ import annotations

import json
from pathlib import Path

from projections.evidence import evidence_of
from projections.evidence_schema import EvidenceDocument, schema_text
from tests.unit.test_replay_decisions import HISTORIES, load

SCHEMA = Path(__file__).parent.parent.parent / "docs" / "schemas" / "evidence-record.schema.json"


def test_committed_schema_is_the_generated_one() -> None:
    assert SCHEMA.read_text() == schema_text(), "regenerate docs/schemas/evidence-record.schema.json (kxr audit schema)"


def test_every_recorded_release_record_fits_the_schema() -> None:
    entries = load(HISTORIES[0])
    for release_id in {e.release_id for _, e in entries if e.release_id}:
        doc = evidence_of(release_id, entries).to_json()
        EvidenceDocument.model_validate(json.loads(json.dumps(doc)))
        assert doc["outcome"]["outcome"] in ("success", "rolled_back", "rejected")
