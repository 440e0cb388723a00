"""The published contracts (docs/schemas, docs/asyncapi) equal what the code generates and
describe what the code really writes and accepts."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import jsonschema
import pytest
from referencing import Registry, Resource

from events.canonical import compact_bytes
from events.channel import ChannelConfig
from events.codec import DecodeError, decode_event, encode_event
from events.model import PAYLOADS, Actor, Scope
from events.signing import SigningKey
from events.subjects import Subjects
from projections.position import Position
from projections.world import apply, fold
from services.actions import operator, pins
from services.actions.producer import build_signed, manifest_bytes
from services.consumers.notifier.consumer import consumer_config
from services.contracts.catalog import channels, subject_matches
from services.contracts.envelopes import envelope_model
from services.contracts.export import drift, write
from services.contracts.schemas import EVENT_ANY, schema_files
from services.jetstream.deadletter import MaxDeliveriesWatcher
from tests.harness import CHANNEL, manifest_gate
from tests.unit.test_replay_decisions import HISTORIES, load

ROOT = Path(__file__).parent.parent.parent
SCHEMAS = ROOT / "docs" / "schemas"
ASYNCAPI = ROOT / "docs" / "asyncapi"
FILES = schema_files()
OPERATOR = Actor(kind="operator", id="contract-test")


def validator(path: str) -> jsonschema.protocols.Validator:
    """A validator for one generated schema; $refs between the files resolve by their $id."""
    docs = [json.loads(text) for p, text in FILES.items() if p.endswith(".schema.json")]
    registry = Registry().with_resources((d["$id"], Resource.from_contents(d)) for d in docs)
    schema = json.loads(FILES[path])
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, registry=registry, format_checker=cls.FORMAT_CHECKER)  # date-time checked (rfc3339-validator)


EVENTS = validator(EVENT_ANY)


def test_the_validators_check_date_time_formats() -> None:
    assert "date-time" in EVENTS.format_checker.checkers, "install the test extra: rfc3339-validator is missing"


# ---- the committed copies -------------------------------------------------------------------------
def test_committed_schemas_are_the_generated_ones() -> None:
    found = drift(SCHEMAS, FILES)
    assert not found.changed and not found.stale, (
        f"docs/schemas is out of date (differs: {list(found.changed)}, stale: {list(found.stale)}); "
        "regenerate with: kxr schema export docs/schemas"
    )


@pytest.mark.parametrize("name,flags", [("asyncapi.json", []), ("asyncapi.yaml", ["--yaml"])])
def test_committed_asyncapi_is_what_faststream_generates(tmp_path: Path, name: str, flags: list[str]) -> None:
    out = tmp_path / name
    command = [
        "faststream",
        "docs",
        "gen",
        "services.contracts.asyncapi_app:app",
        *flags,
        "--out",
        f"docs/asyncapi/{name}",
    ]
    run = subprocess.run(
        [sys.executable, "-m", *command[:-1], str(out)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, f"faststream docs gen failed: {run.stderr[-2000:]}"
    assert (ASYNCAPI / name).read_text() == out.read_text(), (
        f"docs/asyncapi/{name} is out of date; regenerate with: {' '.join(command)}"
    )


def test_export_writes_exactly_the_generated_files_and_removes_stale_ones(tmp_path: Path) -> None:
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "release.retired.schema.json").write_text("{}")
    (tmp_path / "README.md").write_text("hand-written, kept")
    first = write(tmp_path, FILES)
    assert set(first.changed) == set(FILES) and first.stale == ("events/release.retired.schema.json",)
    assert drift(tmp_path, FILES) == type(first)((), ()) and (tmp_path / "README.md").exists()


# ---- what the schemas cover -------------------------------------------------------------------------
def test_every_event_type_and_the_health_sample_have_a_schema_and_a_channel() -> None:
    index = json.loads(FILES["index.json"])
    named = {e["name"]: e for e in index["schemas"]}
    assert set(PAYLOADS) | {"health.sample", "event", "manifest", "channel-config", "evidence-record"} == set(named)
    assert all(e["path"] in FILES for e in index["schemas"])
    asyncapi = json.loads((ASYNCAPI / "asyncapi.json").read_text())
    addresses = {c["address"] for c in asyncapi["channels"].values()}
    # the service's FastStream subscribers, as they run: the notifier's filter subjects, the watcher's advisories
    notifier = set(consumer_config(Subjects("kx")).filter_subjects or ())
    watcher = set(MaxDeliveriesWatcher(None, Subjects("kx"), None).advisory_subjects())  # type: ignore[arg-type]
    assert len(notifier) == 4 and len(watcher) == 2
    handlers = {c["address"] for k, c in asyncapi["channels"].items() if k.startswith(("kxr-notifier", "kxr-max-"))}
    assert handlers == notifier | watcher
    assert addresses - handlers == {c.subject for c in channels()}
    # who writes what follows the NATS permissions of each role
    writers = {c.name: c.writers for c in channels()}
    assert writers["scope.activated"] == ("service",)
    assert writers["release.requested"] == ("service", "producer")  # the promoter requests linked releases
    assert writers["release.paused"] == ("operator",) and writers["health.sample"] == ("runtime",)
    assert named["health.sample"]["stream"] == "KX_HEALTH" and named["release.closed"]["stream"] == "KX_RELEASES"


def test_subject_matching_follows_nats_wildcards() -> None:
    assert subject_matches("kx.release.*.*", "kx.release.r1.paused")
    assert not subject_matches("kx.release.*.*", "kx.release.r1")
    assert subject_matches("kx.health.>", "kx.health.a.b.c.d") and not subject_matches("kx.health.>", "kx.health")
    assert not subject_matches("kx.scope.*.*.*.activated", "kx.scope.a.b.c.pinned")


# ---- real events validate -----------------------------------------------------------------------------
def _made_by_operators(entries) -> list:
    """Operator and pin decisions the code makes on a recorded world (types the recording lacks)."""
    in_flight = next(
        i for i, (_, e) in enumerate(entries) if e.release_id == "regressed" and e.type == "release.monitoring_started"
    )
    world = fold(entries[: in_flight + 1])
    now = entries[in_flight][1].occurred_at
    paused = operator.pause(world, "regressed", "looking at a graph", OPERATOR, now).event
    made = [
        paused,
        operator.annotate(world, "regressed", "", "https://status.example/1", OPERATOR, now).event,
        operator.abort(world, "regressed", "wrong pack", OPERATOR, now).event,
        operator.rollback(world, "regressed", "tenant_impact", "tickets", OPERATOR, now).event,
    ]
    made.append(
        operator.resume(
            apply(world, Position(10_000, "kx.release.regressed.paused"), paused), "regressed", "ok", OPERATOR, now
        ).event
    )
    end = fold(entries)
    scope = Scope(env="prod", channel="canary", cohort="internal")
    pinned, _ = pins.pin(end, scope, "1.0.0", now + timedelta(days=1), "audit baseline", OPERATOR, now)
    made += [
        pinned,
        pins.unpin(
            apply(end, Position(10_001, "kx.scope.prod.canary.internal.pinned"), pinned), scope, "done", OPERATOR, now
        )[0],
    ]
    return made


def _recorded():
    return [e for path in HISTORIES for _, e in load(path)]


def test_every_event_of_a_recorded_run_and_of_operator_decisions_fits_its_schema() -> None:
    events = _recorded() + _made_by_operators([entry for path in HISTORIES for entry in load(path)])
    for event in events:
        doc = json.loads(encode_event(event))
        EVENTS.validate(doc)
        validator(f"events/{event.type}.schema.json").validate(doc)
    assert {e.type for e in events} >= {
        "release.paused",
        "release.resumed",
        "scope.pinned",
        "scope.unpinned",
        "release.closed",
    }


def _mutations(doc: dict) -> dict[str, dict]:
    data = doc["data"]
    return {
        "unsupported schema_version": {**doc, "schema_version": 2},
        "schema_version missing": {k: v for k, v in doc.items() if k != "schema_version"},
        "release_id missing": {**doc, "release_id": None},
        "release_id with a dot": {**doc, "release_id": "a.b"},
        "unknown actor kind": {**doc, "actor": {"kind": "robot", "id": "x"}},
        "occurred_at not a time": {**doc, "occurred_at": "yesterday"},
        "unknown outcome": {**doc, "data": {**data, "outcome": "maybe"}},
        "outcome missing": {**doc, "data": {k: v for k, v in data.items() if k != "outcome"}},
        "summary not a string": {**doc, "data": {**data, "summary": 3}},
        "unknown type": {**doc, "type": "release.teleported"},
    }


def test_schemas_reject_what_the_decoder_rejects() -> None:
    closed = next(e for e in _recorded() if e.type == "release.closed")
    doc = json.loads(encode_event(closed))
    for why, bad in _mutations(doc).items():
        with pytest.raises(DecodeError):
            decode_event(compact_bytes(bad))
        assert not EVENTS.is_valid(bad), f"the schema accepts an event the decoder rejects: {why}"
    activated = json.loads(encode_event(next(e for e in _recorded() if e.type == "scope.activated")))
    for bad in (
        {**activated, "data": {**activated["data"], "pack": {**activated["data"]["pack"], "digest": "sha256:abc"}}},
        {**activated, "data": {**activated["data"], "kind": "teleport"}},
    ):
        with pytest.raises(DecodeError):
            decode_event(compact_bytes(bad))
        assert not EVENTS.is_valid(bad)


def test_a_null_scope_is_valid_in_the_schema_and_read_from_the_subject_by_the_decoder() -> None:
    """CONTRACT §3: `scope` may be null on every event whose subject names its scope."""
    activated = json.loads(encode_event(next(e for e in _recorded() if e.type == "scope.activated")))
    scope = activated["scope"]
    subject = Subjects("kx").scope(scope["env"], scope["channel"], scope["cohort"], "activated")
    nulled = {**activated, "scope": None}
    assert EVENTS.is_valid(nulled)
    assert decode_event(compact_bytes(nulled), subject, Subjects("kx")).scope.model_dump() == scope


def test_every_type_schema_requires_what_the_decoder_requires() -> None:
    for event_type in PAYLOADS:
        required = set(envelope_model(event_type).model_json_schema()["required"])
        assert {"event_id", "type", "schema_version", "occurred_at", "actor", "data"} <= required
        family = event_type.partition(".")[0]
        assert ("release_id" in required) == (family in ("release", "notification"))  # as events/codec.py decides
        assert ("scope" in required) == (family in ("scope", "channel"))


# ---- manifest, channel config: hand-stated rules agree with the validators ----------------------------
KEY = SigningKey.from_raw(bytes(range(32)))


def _signed() -> dict:
    return build_signed(
        b"pack",
        name="kb",
        version="1.0.0",
        schema="kx-pack/1",
        profile="standard",
        runtime=">=2.3,<3",
        build_id="b1",
        builder="kx-pipeline",
        run="r1",
        source="https://git.example/kb",
        revision="abc",
    )


def _verifier_accepts(doc: dict) -> bool:
    """The verifier's verdict on shape and schema alone (signatures made valid, later gates ignored)."""
    signed = doc.get("signed") if isinstance(doc, dict) else None
    failure = manifest_gate(compact_bytes(doc), KEY)
    assert failure is None or failure.gate in ("manifest", "identity"), (signed, failure)
    return failure is None or failure.gate != "manifest"


def test_manifest_schema_agrees_with_the_verifier() -> None:
    schema = validator("manifest.schema.json")
    good = json.loads(manifest_bytes(_signed(), [KEY]))
    resign = lambda signed: json.loads(manifest_bytes(signed, [KEY]))  # noqa: E731
    cases = {
        "as produced": good,
        "extra top-level field": {**good, "note": "kept"},
        "extra signed field": resign({**_signed(), "labels": ["x"]}),
        "signed not an object": {**good, "signed": []},
        "signatures not a list": {**good, "signatures": {}},
        "too many signatures": {**good, "signatures": good["signatures"] * 33},
        "sig not base64": {**good, "signatures": [{"keyid": "k", "sig": "***"}, *good["signatures"]]},
        "keyid not a string": {**good, "signatures": [{"keyid": 1, "sig": "AA=="}, *good["signatures"]]},
        "size negative": resign({**_signed(), "size": -1}),
        "name with a dot": resign({**_signed(), "name": "k.b"}),
        "digest not sha256": resign({**_signed(), "digest": "md5:00"}),
        "build missing": resign({k: v for k, v in _signed().items() if k != "build"}),
        "expires a number": resign({**_signed(), "expires": 17}),
    }
    for why, doc in cases.items():
        assert schema.is_valid(doc) == _verifier_accepts(doc), f"schema and verifier disagree on: {why}"
    assert schema.is_valid(good) and not schema.is_valid(cases["too many signatures"])


def test_channel_config_schema_agrees_with_the_model_on_shape() -> None:
    schema = validator("channel-config.schema.json")
    good = ChannelConfig.model_validate(CHANNEL).model_dump(mode="json", by_alias=True)
    cases = {
        "as configured": good,
        "the default": {},
        "window_s zero": {**good, "monitoring": {**good["monitoring"], "window_s": 0}},
        "cohort name with a space": {**good, "cohorts": [{"name": "a b"}]},
        "percent of three": {**good, "cohorts": [{"name": "a", "percent": [0, 1, 2]}, {"name": "rest"}], "plan": None},
        "forbid_downgrade a string": {**good, "policy": {**good["policy"], "forbid_downgrade": "yes"}},
        "statistical unknown": {**good, "monitoring": {**good["monitoring"], "thresholds": {"statistical": "maybe"}}},
    }
    for why, doc in cases.items():
        try:
            ChannelConfig.model_validate(doc)
            accepted = True
        except ValueError:
            accepted = False
        assert schema.is_valid(doc) == accepted, f"schema and model disagree on: {why}"
