"""The JSON form of an evidence record (`kxr audit release ID --json`), as a schema.

`docs/schemas/evidence-record.schema.json` is generated from this model and checked
against it by the test suite, so the published schema cannot drift from the output.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Identity(_Open):
    release_id: str
    requested_by: str
    requested_at: str
    owner: str
    escalation: str
    reason: str = ""
    promoted_from: str | None = None


class GateRow(_Open):
    gate: str
    ok: bool
    code: str
    message: str = ""


class ChecklistRow(_Open):
    item: str
    ok: bool
    detail: str = ""


class Window(_Open):
    stage: int
    started: dict[str, Any] | None = None
    verdict: dict[str, Any] | None = None


class TimelineRow(_Open):
    seq: int
    at: str
    type: str
    actor: str
    event_id: str
    summary: str


class NotificationRow(_Open):
    seq: int
    at: str
    result: str  # sent | failed
    sink: str
    kind: str
    trigger: str
    attempts: int
    status: int | None = None
    error: str = ""


class EvidenceDocument(_Open):
    """What was released, where, why, and with which results (seed: Evidence and audit trail)."""

    release_id: str
    identity: Identity | dict[str, Any]
    target: dict[str, Any]
    pack: dict[str, Any]
    plan: dict[str, Any]
    checklist: list[ChecklistRow]
    gates: list[GateRow]
    verification: dict[str, Any]
    activations: list[dict[str, Any]]
    windows: list[Window]
    decisions: list[dict[str, Any]]
    incidents: list[str]
    outcome: dict[str, Any]
    timeline: list[TimelineRow]
    notifications: list[NotificationRow] = []


def schema_text() -> str:
    schema = EvidenceDocument.model_json_schema()
    schema["$id"] = "https://konnaxion.dev/releases/schemas/evidence-record.schema.json"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
