"""docs/asyncapi is a valid AsyncAPI 3.0.0 document: it validates against the official JSON Schema
(vendored in tests/fixtures/asyncapi/, see its README) and keeps the specification's rules that
schema cannot check: component keys match `^[A-Za-z0-9.\\-_]+$`, every `{parameter}` of a channel
address is declared, and every `$ref` points at something. FastStream's own output breaks the
first two, so the check is shown to fail on it before `conform` fixes it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from faststream.specification import AsyncAPI

from services.contracts import asyncapi_app
from services.contracts.asyncapi_doc import KEY_PATTERN, ConformError, address_parameters, conform

ROOT = Path(__file__).parent.parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "asyncapi" / "asyncapi-3.0.0.schema.json"
OFFICIAL = jsonschema.Draft7Validator(json.loads(FIXTURE.read_text()))
COMMITTED = json.loads((ROOT / "docs" / "asyncapi" / "asyncapi.json").read_text())


def specification_problems(doc: dict[str, Any]) -> list[str]:
    """What the AsyncAPI 3.0.0 specification forbids in `doc`: its JSON Schema first, then its prose rules."""
    problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in OFFICIAL.iter_errors(doc)]
    for kind, entries in (doc.get("components") or {}).items():
        problems += [f"components/{kind} key {k!r}" for k in entries if not KEY_PATTERN.match(k)]
    for section in ("channels", "operations"):
        problems += [f"{section} id {k!r}" for k in doc.get(section) or {} if not KEY_PATTERN.match(k)]
    for channel_id, channel in (doc.get("channels") or {}).items():
        declared = set(channel.get("parameters") or {})
        for name in address_parameters(channel.get("address") or ""):
            if name not in declared:
                problems.append(f"channels/{channel_id}: address parameter {{{name}}} not declared")
        problems += [
            f"channels/{channel_id}: parameter {n} not in the address"
            for n in declared - set(address_parameters(channel.get("address") or ""))
        ]
    for ref in re.findall(r'"\$ref": "([^"]+)"', json.dumps(doc)):
        if not _resolves(doc, ref):
            problems.append(f"$ref {ref} points at nothing")
    return problems


def _resolves(doc: dict[str, Any], ref: str) -> bool:
    if not ref.startswith("#/"):
        return False  # the document is self-contained
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_the_committed_document_is_valid_asyncapi_3() -> None:
    assert COMMITTED["asyncapi"] == "3.0.0"
    assert specification_problems(COMMITTED) == []


def test_the_yaml_copy_is_the_same_document() -> None:
    assert yaml.safe_load((ROOT / "docs" / "asyncapi" / "asyncapi.yaml").read_text()) == COMMITTED


def test_the_check_fails_on_what_faststream_writes_by_itself() -> None:
    raw = AsyncAPI(
        asyncapi_app.broker, title=asyncapi_app.TITLE, version=asyncapi_app.VERSION, description="raw"
    ).to_specification()
    problems = specification_problems(raw.to_jsonable())
    assert any("key 'release.requested:Message'" in p or ":Message'" in p for p in problems), problems[:5]
    assert any("{release_id} not declared" in p for p in problems), problems[:5]
    assert specification_problems(conform(raw.to_jsonable())) == []


def test_the_official_schema_itself_rejects_a_broken_document() -> None:
    broken = json.loads(json.dumps(COMMITTED))
    broken["channels"]["release.aborted"]["parameters"]["release_id"]["schema"] = {"type": "string"}  # 2.x style
    del broken["info"]["title"]
    problems = specification_problems(broken)
    assert any("title" in p for p in problems) and any("schema" in p for p in problems), problems


def test_conform_declares_parameters_and_renames_keys_with_their_refs() -> None:
    doc = {
        "asyncapi": "3.0.0",
        "info": {"title": "t", "version": "1"},
        "channels": {
            "c": {
                "address": "kx.scope.{env}.{channel}.{cohort}.activated",
                "messages": {"M": {"$ref": "#/components/messages/c:Message"}},
            }
        },
        "operations": {"c": {"action": "send", "channel": {"$ref": "#/channels/c"}}},
        "components": {
            "messages": {"c:Message": {"payload": {"$ref": "#/components/schemas/P"}}},
            "schemas": {"P": {}},
        },
    }
    out = conform(doc)
    assert list(out["channels"]["c"]) == ["address", "parameters", "messages"]
    assert set(out["channels"]["c"]["parameters"]) == {"env", "channel", "cohort"}
    assert out["channels"]["c"]["messages"]["M"]["$ref"] == "#/components/messages/c.Message"
    assert "c.Message" in out["components"]["messages"] and doc["components"]["messages"].keys() == {"c:Message"}
    assert specification_problems(out) == []


def test_conform_refuses_what_it_cannot_fix() -> None:
    undescribed = {"channels": {"c": {"address": "kx.{tenant}.x"}}}
    with pytest.raises(ConformError, match="tenant"):
        conform(undescribed)
    colliding = {"components": {"messages": {"a:b": {}, "a.b": {}}}}
    with pytest.raises(ConformError, match="both become"):
        conform(colliding)
