"""Envelope -> CloudEvents 1.0 (events/cloudevents.py), checked against a CloudEvents 1.0 JSON Schema
written from the specification (tests/fixtures/cloudevents/, see its README): every event of the
recorded runs maps to a valid CloudEvent whose `dataschema` is the published schema its `data` fits,
and the schema refuses what the specification refuses. Also the webhook body in the `cloudevents` format."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from referencing import Registry, Resource

from events.cloudevents import (
    CONTENT_TYPE,
    SCHEMA_BASE,
    dataschema_of,
    source_of,
    to_cloudevent,
    type_of,
)
from events.codec import encode_event, make_event
from events.model import Actor, Scope
from services.actions.producer import parse_channel_config
from services.consumers.notifier.signing import verify
from services.consumers.notifier.webhook import webhook
from services.contracts.schemas import BASE, schema_files
from tests.unit.test_notifications import _rolled_back_release
from tests.unit.test_replay_decisions import HISTORIES, load

ROOT = Path(__file__).parent.parent.parent
SCHEMA = json.loads((ROOT / "tests" / "fixtures" / "cloudevents" / "cloudevents-1.0.schema.json").read_text())
CLOUDEVENT = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
FILES = schema_files()
REGISTRY = Registry().with_resources(
    (d["$id"], Resource.from_contents(d))
    for d in (json.loads(t) for p, t in FILES.items() if p.endswith(".schema.json"))
)
SOURCE = source_of("kx")


def problems(doc: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in CLOUDEVENT.iter_errors(doc)]


def data_validator(dataschema: str) -> jsonschema.protocols.Validator:
    """The published schema a CloudEvent's `dataschema` names, looked up by its `$id`."""
    schema = REGISTRY.contents(dataschema)
    return jsonschema.Draft202012Validator(schema, registry=REGISTRY)  # type: ignore[arg-type]


def test_the_fixture_checks_formats_and_is_a_valid_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert {"uri", "uri-reference", "date-time"} <= set(CLOUDEVENT.format_checker.checkers), (
        "install the test extra: rfc3986-validator / rfc3339-validator are missing"
    )
    assert SCHEMA_BASE == BASE  # dataschema URLs are the published schemas' own $id


def test_a_release_event_maps_attribute_by_attribute_and_carries_its_envelope_as_data() -> None:
    _, rolled = _rolled_back_release()
    rolled = rolled.model_copy(update={"causation_id": "ev-window"})
    doc = to_cloudevent(rolled, SOURCE)
    assert problems(doc) == []
    assert doc == {
        "specversion": "1.0",
        "id": "ev-rb",
        "source": "urn:konnaxion:releases:kx",
        "type": "io.konnaxion.releases.release.rolled_back",
        "time": "2030-01-01T00:00:00Z",
        "datacontenttype": "application/json",
        "dataschema": "https://konnaxion.dev/releases/schemas/events/release.rolled_back.schema.json",
        "subject": "r2",
        "causationid": "ev-window",
        "correlationid": "r2",
        "data": json.loads(encode_event(rolled)),
    }


def test_every_recorded_event_is_a_valid_cloudevent_whose_data_fits_its_dataschema() -> None:
    events = [e for path in HISTORIES for _, e in load(path)]
    assert len({e.type for e in events}) >= 10
    for event in events:
        doc = to_cloudevent(event, SOURCE)
        assert problems(doc) == [], (event.type, problems(doc))
        assert doc["id"] == event.event_id and doc["type"] == type_of(event.type)
        assert doc["dataschema"] == dataschema_of(event.type) and doc["dataschema"] in REGISTRY
        data_validator(doc["dataschema"]).validate(doc["data"])
        assert doc.get("subject") == (
            event.release_id
            or (f"{event.scope.env}/{event.scope.channel}/{event.scope.cohort}" if event.scope else None)
        )


def test_a_scope_event_without_a_release_names_its_scope_as_subject() -> None:
    scope = Scope(env="prod", channel="canary", cohort="internal")
    flag = make_event(
        "scope.unpinned",
        {"reason": "expired"},
        actor=Actor(kind="service", id="pinner"),
        scope=scope,
    )
    doc = to_cloudevent(flag, SOURCE)
    assert doc["subject"] == "prod/canary/internal" and problems(doc) == []


@pytest.mark.parametrize(
    "change, what",
    [
        ({"specversion": "0.3"}, "specversion"),
        ({"id": ""}, "id"),
        ({"dataschema": "events/release.rolled_back.schema.json"}, "dataschema"),  # relative: not a URI
        ({"time": "yesterday"}, "time"),
        ({"causationId": "x"}, "naming"),  # attribute names are lowercase letters and digits
        ({"kx_kind": "x"}, "naming"),
        ({"averyveryverylongextensionname": "x"}, "naming"),  # over 20 characters
        ({"kxkind": {"nested": True}}, "type system"),
        ({"kxcount": 2**40}, "type system"),
        ({"data_base64": "AAAA"}, "data and data_base64"),
    ],
)
def test_the_schema_refuses_what_the_specification_refuses(change: dict, what: str) -> None:
    _, rolled = _rolled_back_release()
    assert problems({**to_cloudevent(rolled, SOURCE), **change}), what
    missing = {k: v for k, v in to_cloudevent(rolled, SOURCE).items() if k != "source"}
    assert problems(missing)


def test_an_extension_outside_the_naming_rule_is_refused_by_the_mapping_too() -> None:
    _, rolled = _rolled_back_release()
    for name in ("kx_kind", "KxKind", "data", "averyveryverylongextensionname"):
        with pytest.raises(ValueError, match="extension"):
            to_cloudevent(rolled, SOURCE, extensions={name: "x"})


def test_a_cloudevents_sink_posts_the_triggering_event_as_a_signed_cloudevent() -> None:
    release, rolled = _rolled_back_release()
    cfg = parse_channel_config(
        {
            "cohorts": [{"name": "all"}],
            "notifications": [{"name": "bus", "url": "https://events.example/in", "on": ["rolled_back"]}],
        },
        "canary",
    )
    sink = cfg.notifications[0].model_copy(update={"format": "cloudevents"})
    assert parse_channel_config(
        {"cohorts": [{"name": "all"}], "notifications": [{**sink.model_dump(exclude_none=True)}]}, "canary"
    ).notifications == [sink]
    hook = webhook("rolled_back", sink, rolled, release, "s3cret", source_of("tq"))
    assert hook.headers["Content-Type"] == CONTENT_TYPE == "application/cloudevents+json"
    doc = json.loads(hook.body)
    assert problems(doc) == []
    assert (doc["id"], doc["source"], doc["subject"], doc["kxkind"], doc["kxsink"]) == (
        "ev-rb",
        "urn:konnaxion:releases:tq",
        "r2",
        "rolled_back",
        "bus",
    )
    assert doc["data"] == json.loads(encode_event(rolled))  # the envelope as logged
    # Standard Webhooks signing covers these bytes as it covers every format's
    assert verify(hook.attempt_headers(1_900_000_000), hook.body, "s3cret", now=1_900_000_000) == "ev-rb"
