"""The envelope, strict decoding, tokens, canonical bytes and version ordering (pure)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events.canonical import StrictJSONError, canonical_bytes, compact_bytes, loads_strict
from events.codec import EVENT_MAX_BYTES, DecodeError, decode_event, encode_event, make_event
from events.model import PAYLOADS, SCHEMA_VERSION, Actor, Event, Scope
from events.subjects import Subjects
from events.tokens import InvalidToken, check_token, is_token
from events.versions import parse_version

# ---- builders --------------------------------------------------------------------------------

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
LATER = "2030-01-02T12:00:00Z"
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
SERVICE = Actor(kind="service", id="test")
PACK = {"name": "kb", "version": "1.0.0", "digest": D1}
TARGET = {"env": "prod", "channel": "canary"}
MON = {"window_s": 60}
SCOPE = Scope(env="prod", channel="canary", cohort="internal")
CHANNEL_SCOPE = Scope(env="prod", channel="canary", cohort="all")
VERDICT = {"stage": 0}
NOTE: dict[str, Any] = {}

# The smallest valid payload of every event type (release events carry release_id r1).
MINIMAL: dict[str, dict[str, Any]] = {
    "release.requested": {"pack": PACK, "target": TARGET, "owner": "kb-team", "escalation": "pager:kb"},
    "release.prepared": {
        "pack": PACK,
        "target": TARGET,
        "stages": [["internal"]],
        "monitoring": MON,
        "rollback_strategy": "none",
        "rollback_targets": {"internal": None},
        "checklist": [{"item": "target_exists", "ok": True}],
        "owner": "kb-team",
        "escalation": "pager:kb",
    },
    "release.rejected": {"reasons": [{"code": "target_exists", "message": "no such channel"}]},
    "release.distributed": {"pack": PACK, "manifest": "sha256-" + "1" * 64 + ".manifest"},
    "release.verified": {
        "pack": PACK,
        "manifest": "m",
        "reference_time": LATER,
        "gates": [{"gate": "signature", "ok": True, "code": "ok"}],
    },
    "release.verification_failed": {
        "gate": "signature",
        "code": "bad_signature",
        "message": "no",
        "reference_time": LATER,
    },
    "release.activated": {"stage": 0, "cohorts": ["internal"], "pack": PACK, "batch_id": "b1"},
    "release.activation_failed": {"stage": 0, "code": "superseded", "message": "no"},
    "release.monitoring_started": {
        "stage": 0,
        "cohorts": ["internal"],
        "digest": D1,
        "starts_at": LATER,
        "ends_at": LATER,
        "monitoring": MON,
    },
    "release.monitoring_passed": VERDICT,
    "release.monitoring_failed": VERDICT,
    "release.monitoring_inconclusive": VERDICT,
    "release.expanded": {"from_stage": 0, "to_stage": 1, "cohorts": ["rest"]},
    "release.promoted": {"to_channel": "stable", "promoted_to": "r1-stable"},
    "release.rollback_started": {"trigger": "operator", "reason": "why", "targets": {"internal": PACK}},
    "release.rolled_back": {"cohorts": ["internal"], "targets": {"internal": PACK}},
    "release.paused": NOTE,
    "release.resumed": NOTE,
    "release.aborted": NOTE,
    "release.annotated": NOTE,
    "release.escalated": {"code": "rollback_target_unusable", "message": "none", "escalation": "pager:kb"},
    "release.closed": {"outcome": "success"},
    "scope.activated": {"pack": PACK, "manifest": "m", "release_id": "r1", "kind": "rollout"},
    "scope.pinned": {"pack": PACK, "until": LATER, "rationale": "freeze", "by": "ops"},
    "scope.unpinned": {},
    "scope.flagged": {
        "pack": PACK,
        "code": "signature/threshold_not_met",
        "message": "no trusted signer",
        "detected_at": LATER,
    },
    "channel.configured": {},
    "trust.rotated": {"root": {"signed": {"version": 2, "threshold": 1, "keys": {}}, "signatures": []}, "version": 2},
    "notification.sent": {
        "sink": "ops",
        "kind": "rolled_back",
        "trigger": "ev-0",
        "trigger_type": "release.rolled_back",
        "attempts": 1,
        "status": 200,
    },
    "notification.failed": {
        "sink": "ops",
        "kind": "held",
        "trigger": "ev-0",
        "trigger_type": "release.monitoring_inconclusive",
        "attempts": 3,
        "error": "HTTP 503",
    },
}


def identity_of(event_type: str) -> dict[str, Any]:
    family = event_type.split(".")[0]
    if family in ("release", "notification"):
        return {"release_id": "r1"}
    if family == "scope":
        return {"release_id": "r1", "scope": SCOPE}
    if family == "trust":
        return {}
    return {"scope": CHANNEL_SCOPE}


def event_of(event_type: str, data: dict[str, Any] | None = None, **extra: Any) -> Event:
    fields = {**identity_of(event_type), **extra}
    return make_event(
        event_type,
        MINIMAL[event_type] if data is None else data,
        actor=SERVICE,
        event_id="ev-1",
        occurred_at=NOW,
        **fields,
    )


def subject_of(event: Event) -> str:
    scope = (event.scope.env, event.scope.channel, event.scope.cohort) if event.scope else None
    return Subjects().expected_subject(event.type, event.release_id, scope)


def envelope(event_type: str = "release.requested") -> dict[str, Any]:
    """A valid encoded event as a mutable dict (to break in one place)."""
    return json.loads(encode_event(event_of(event_type)))


def raw(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def decode_error(data: bytes, subject: str | None = None) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode_event(data, subject)
    return info.value


# ---- round trip ------------------------------------------------------------------------------


def test_minimal_payloads_cover_every_event_type() -> None:
    assert set(MINIMAL) == set(PAYLOADS)


@pytest.mark.parametrize("event_type", sorted(PAYLOADS), ids=sorted(PAYLOADS))
def test_round_trip_every_event_type(event_type: str) -> None:
    event = event_of(event_type)
    encoded = encode_event(event)
    decoded = decode_event(encoded, subject_of(event))
    assert decoded == event
    assert type(decoded.data) is PAYLOADS[event_type]
    assert encode_event(decoded) == encoded  # encoding is stable across a round trip


def test_envelope_fields_on_the_wire() -> None:
    doc = json.loads(encode_event(event_of("release.requested")))
    assert set(doc) == {
        "event_id",
        "type",
        "schema_version",
        "occurred_at",
        "actor",
        "causation_id",
        "correlation_id",
        "release_id",
        "scope",
        "data",
    }
    assert doc["schema_version"] == SCHEMA_VERSION == 1
    assert doc["occurred_at"] == "2030-01-01T12:00:00Z"
    assert doc["correlation_id"] == "r1"  # defaults to the release id
    assert doc["actor"] == {"kind": "service", "id": "test"}


def test_encoding_is_compact_json() -> None:
    encoded = encode_event(event_of("release.requested"))
    assert b": " not in encoded and b", " not in encoded


def test_occurred_at_is_normalised_to_utc() -> None:
    doc = envelope()
    doc["occurred_at"] = "2030-01-01T14:00:00+02:00"
    assert decode_event(raw(doc)).occurred_at == NOW


@pytest.mark.parametrize(
    "when",
    ["2030-01-01T12:00:00.000000000Z", "2030-01-01t12:00:00z", "2030-01-01T12:00:00-00:00"],
)
def test_occurred_at_in_every_form_rfc3339_allows(when: str) -> None:
    doc = envelope()
    doc["occurred_at"] = when
    assert decode_event(raw(doc)).occurred_at == NOW


@pytest.mark.parametrize(
    "when",
    [1893499200, "1893499200", "2030-01-01T12:00Z", "2030-01-01T12:00:00+0000", "2030-01-01 12:00:00Z", "2030-001"],
)
def test_occurred_at_in_another_form_is_refused_naming_it(when: Any) -> None:
    """RFC 3339 only (CONTRACT §3): pydantic's lax datetime read these, a contract-built auditor refuses them."""
    doc = envelope()
    doc["occurred_at"] = when
    error = decode_error(raw(doc))
    assert "occurred_at" in str(error) and "RFC 3339" in str(error), error


def test_a_requests_optional_containers_may_be_null() -> None:
    """What Go writes for a nil struct pointer or map: read as the field left out (events/nulls.py)."""
    doc = envelope()
    doc["data"].update(rollback=None, monitoring={"window_s": 600, "thresholds": None})
    data = decode_event(raw(doc)).data
    assert data.rollback.strategy == "lkg" and data.monitoring.thresholds.model_fields_set == set(), data


def test_unknown_extra_payload_fields_survive_a_round_trip() -> None:
    """Producers may add optional fields (CONTRACT intro): an older consumer keeps them."""
    doc = envelope()
    doc["data"]["ticket"] = "CHG-1"
    assert json.loads(encode_event(decode_event(raw(doc))))["data"]["ticket"] == "CHG-1"


def test_make_event_rejects_an_unknown_type() -> None:
    with pytest.raises(ValueError, match="unknown event type 'release.bogus'"):
        make_event("release.bogus", {}, actor=SERVICE, release_id="r1")


# ---- strict decoding: every error names the problem ----------------------------------------


def test_unknown_type() -> None:
    doc = envelope()
    doc["type"] = "release.bogus"
    err = decode_error(raw(doc))
    assert "unknown event type 'release.bogus'" in str(err)
    assert err.reasons[0]["code"] == "unknown_type"


@pytest.mark.parametrize("value", [None, 7, ["release.requested"]], ids=["null", "int", "list"])
def test_type_missing_or_not_a_string(value: Any) -> None:
    doc = envelope()
    doc["type"] = value
    err = decode_error(raw(doc))
    assert "type" in str(err)
    assert err.reasons[0]["field"] == "type"


@pytest.mark.parametrize(
    ("path", "field"),
    [
        (("data", "pack", "digest"), "data.pack.digest"),
        (("data", "target", "env"), "data.target.env"),
        (("data", "owner"), "data.owner"),
        (("actor",), "actor"),
        (("event_id",), "event_id"),
        (("occurred_at",), "occurred_at"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_missing_field_names_its_path(path: tuple[str, ...], field: str) -> None:
    doc = envelope()
    node = doc
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    err = decode_error(raw(doc))
    assert any(r["code"] == "missing_field" and r["field"] == field for r in err.reasons), err.reasons
    assert f"{field}: Field required" in str(err)


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("data", "owner"), 5, "data.owner"),
        (("data", "pack", "size"), "big", "data.pack.size"),
        (("data", "acknowledge_no_health"), "yes", "data.acknowledge_no_health"),
        (("actor", "id"), 12, "actor.id"),
        (("causation_id",), 1, "causation_id"),
    ],
    ids=["owner-int", "size-str", "ack-str", "actor-id-int", "causation-int"],
)
def test_wrong_type_names_its_path(path: tuple[str, ...], value: Any, field: str) -> None:
    doc = envelope()
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    err = decode_error(raw(doc))
    assert any(r["code"] == "wrong_type" and r["field"] == field for r in err.reasons), err.reasons
    assert field in str(err)


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("data", "pack", "digest"), "sha256:XYZ", "data.pack.digest"),
        (("data", "rollback", "strategy"), "yolo", "data.rollback.strategy"),
        (("actor", "kind"), "robot", "actor.kind"),
        (("release_id",), "r1.evil", "release_id"),
        (("occurred_at",), "2030-01-01T12:00:00", "occurred_at"),
    ],
    ids=["digest", "strategy", "actor-kind", "release-id-token", "naive-time"],
)
def test_invalid_value_names_its_path(path: tuple[str, ...], value: Any, field: str) -> None:
    doc = envelope()
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    err = decode_error(raw(doc))
    assert any(r["field"] == field for r in err.reasons), err.reasons
    assert field in str(err)


def test_every_payload_problem_is_listed() -> None:
    doc = envelope()
    del doc["data"]["owner"]
    doc["data"]["escalation"] = 3
    err = decode_error(raw(doc))
    fields = {r["field"] for r in err.reasons}
    assert {"data.owner", "data.escalation"} <= fields


def test_oversized_payload() -> None:
    doc = envelope()
    doc["data"]["reason"] = "x" * EVENT_MAX_BYTES
    data = raw(doc)
    assert len(data) > EVENT_MAX_BYTES
    err = decode_error(data)
    assert err.reasons[0]["code"] == "oversized"
    assert f"over the {EVENT_MAX_BYTES}-byte cap" in str(err)


def test_payload_at_the_cap_is_accepted() -> None:
    doc = envelope()
    doc["data"]["reason"] = ""
    padding = EVENT_MAX_BYTES - len(raw(doc))
    doc["data"]["reason"] = "x" * padding
    data = raw(doc)
    assert len(data) == EVENT_MAX_BYTES
    assert decode_event(data).data.reason == "x" * padding


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b'{"type": ', "malformed JSON"),
        (b"", "malformed JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"type": "release.requested", "x": NaN}', "NaN is not JSON"),
        (b'{"type": "release.requested", "x": Infinity}', "Infinity is not JSON"),
    ],
    ids=["truncated", "empty", "not-utf8", "nan", "infinity"],
)
def test_malformed_json(data: bytes, needle: str) -> None:
    err = decode_error(data)
    assert needle in str(err)
    assert err.reasons[0]["code"] == "malformed_json"


@pytest.mark.parametrize("doc", [[], "event", 1, None], ids=["list", "string", "int", "null"])
def test_not_a_json_object(doc: Any) -> None:
    err = decode_error(raw(doc))
    assert "must be a JSON object" in str(err)


@pytest.mark.parametrize(
    "data",
    [
        b'{"type": "release.requested", "type": "release.closed"}',
        b'{"data": {"owner": "a", "owner": "b"}}',
    ],
    ids=["top-level", "nested"],
)
def test_duplicate_keys_are_rejected(data: bytes) -> None:
    err = decode_error(data)
    assert "duplicate key" in str(err)
    assert err.reasons[0]["code"] == "malformed_json"


@pytest.mark.parametrize("version", [0, 2, "1", None, 1.5], ids=["0", "2", "str", "null", "float"])
def test_wrong_schema_version(version: Any) -> None:
    doc = envelope()
    doc["schema_version"] = version
    err = decode_error(raw(doc))
    assert err.reasons[0]["code"] == "unsupported_schema_version"
    assert "schema_version" in str(err) and repr(version) in str(err)


def test_boolean_schema_version_is_rejected() -> None:
    """`true == 1` in Python; the strict envelope still refuses it, naming the field."""
    doc = envelope()
    doc["schema_version"] = True
    err = decode_error(raw(doc))
    assert any(r["field"] == "schema_version" for r in err.reasons), err.reasons


def test_missing_schema_version() -> None:
    doc = envelope()
    del doc["schema_version"]
    assert decode_error(raw(doc)).reasons[0]["code"] == "unsupported_schema_version"


@pytest.mark.parametrize(
    ("event_type", "subject"),
    [
        ("release.requested", "kx.release.r2.requested"),  # another release
        ("release.requested", "kx.release.r1.prepared"),  # another suffix
        ("release.requested", "other.release.r1.requested"),  # another prefix
        ("scope.activated", "kx.scope.prod.canary.rest.activated"),  # another cohort
        ("scope.activated", "kx.release.r1.activated"),  # a scope event on a release subject
        ("channel.configured", "kx.channel.prod.stable.configured"),  # another channel
    ],
    ids=["release-id", "suffix", "prefix", "cohort", "family", "channel"],
)
def test_wrong_subject_for_the_type(event_type: str, subject: str) -> None:
    event = event_of(event_type)
    err = decode_error(encode_event(event), subject)
    assert err.reasons[0]["code"] == "wrong_subject"
    assert f"belongs on {subject_of(event)}, not {subject}" in str(err)


def test_release_event_without_release_id_on_a_subject_is_rejected() -> None:
    doc = envelope()
    doc["release_id"] = None
    err = decode_error(raw(doc), "kx.release.r1.requested")
    assert err.reasons[0]["code"] == "missing_field"
    assert "need a release_id" in str(err)


def test_subject_check_honours_the_prefix() -> None:
    event = event_of("release.requested")
    assert decode_event(encode_event(event), "foo.release.r1.requested", Subjects("foo")) == event


# ---- null scope: the subject names it (CONTRACT §3) -------------------------------------------


@pytest.mark.parametrize(
    "subject, scope",
    [
        ("kx.channel.prod.canary.configured", {"env": "prod", "channel": "canary", "cohort": "all"}),
        ("kx.channel.staging.eu-1.configured", {"env": "staging", "channel": "eu-1", "cohort": "all"}),
    ],
    ids=["prod-canary", "staging-eu"],
)
def test_channel_configured_with_null_scope_takes_env_and_channel_from_its_subject(subject: str, scope: dict) -> None:
    doc = envelope("channel.configured")
    doc["scope"] = None
    event = decode_event(raw(doc), subject)
    assert event.scope == Scope(**scope)
    assert event.data == event_of("channel.configured").data


def test_scope_event_with_null_scope_takes_its_scope_from_its_subject() -> None:
    doc = envelope("scope.unpinned")
    doc["scope"] = None
    event = decode_event(raw(doc), "kx.scope.prod.canary.eu-early.unpinned")
    assert event.scope == Scope(env="prod", channel="canary", cohort="eu-early")


def test_null_scope_on_a_foreign_prefix_uses_that_prefix() -> None:
    doc = envelope("channel.configured")
    doc["scope"] = None
    assert decode_event(raw(doc), "foo.channel.prod.canary.configured", Subjects("foo")).scope == CHANNEL_SCOPE


@pytest.mark.parametrize(
    "event_type, subject",
    [
        ("channel.configured", None),  # no subject to read it from
        ("channel.configured", "kx.release.r1.requested"),  # a subject that names no channel
        ("scope.unpinned", "kx.scope.prod.canary.internal.pinned"),  # a scope subject of another type
    ],
    ids=["no-subject", "release-subject", "other-suffix"],
)
def test_null_scope_without_a_subject_naming_it_is_refused(event_type: str, subject: str | None) -> None:
    doc = envelope(event_type)
    doc["scope"] = None
    err = decode_error(raw(doc), subject)
    assert err.reasons[0]["code"] in ("missing_field", "wrong_subject"), err.reasons


def test_a_given_scope_still_has_to_match_the_subject() -> None:
    doc = envelope("channel.configured")  # scope prod/canary
    err = decode_error(raw(doc), "kx.channel.prod.stable.configured")
    assert err.reasons[0]["code"] == "wrong_subject"


# ---- hostile tokens ------------------------------------------------------------------------

HOSTILE: list[tuple[str, Any]] = [
    ("dot", "a.b"),
    ("gt", ">"),
    ("star", "*"),
    ("trailing-gt", "r1.>"),
    ("space", "a b"),
    ("tab", "a\tb"),
    ("newline", "a\n"),
    ("len-65", "a" * 65),
    ("len-200", "x" * 200),
    ("empty", ""),
    ("non-ascii", "caf\u00e9"),
    ("slash", "a/b"),
    ("none", None),
    ("int", 42),
    ("bytes", b"abc"),
    ("list", ["a"]),
]
GOOD = ["a", "A-z_09", "a" * 64, "rel-812", "0"]


@pytest.mark.parametrize("value", [v for _, v in HOSTILE], ids=[n for n, _ in HOSTILE])
def test_check_token_rejects(value: Any) -> None:
    assert not is_token(value)
    with pytest.raises(InvalidToken) as info:
        check_token(value, "release_id")
    message = str(info.value)
    assert message.startswith("release_id ")
    assert "^[A-Za-z0-9_-]{1,64}$" in message
    assert len(message) < 200  # long values are shortened in the message


@pytest.mark.parametrize("value", GOOD)
def test_check_token_accepts(value: str) -> None:
    assert check_token(value) == value


BUILDERS = [
    ("release", lambda s, t: s.release(t, "requested")),
    ("release-suffix", lambda s, t: s.release("r1", t)),
    ("release-filter", lambda s, t: s.release_filter(t)),
    ("scope-env", lambda s, t: s.scope(t, "canary", "all", "activated")),
    ("scope-channel", lambda s, t: s.scope("prod", t, "all", "activated")),
    ("scope-cohort", lambda s, t: s.scope("prod", "canary", t, "activated")),
    ("channel-env", lambda s, t: s.channel(t, "canary")),
    ("channel", lambda s, t: s.channel("prod", t)),
    ("health-runtime", lambda s, t: s.health("prod", "canary", "all", t)),
    ("health-cohort", lambda s, t: s.health_cohort("prod", "canary", t)),
    ("deadletter", lambda s, t: s.deadletter(t)),
]


@pytest.mark.parametrize("build", [b for _, b in BUILDERS], ids=[n for n, _ in BUILDERS])
@pytest.mark.parametrize(
    "value", ["a.b", ">", "*", "a b", "a" * 65, "", None], ids=["dot", "gt", "star", "space", "len-65", "empty", "none"]
)
def test_subject_builders_reject_hostile_tokens(build, value: Any) -> None:
    with pytest.raises(InvalidToken):
        build(Subjects(), value)


def test_subject_builders_with_good_tokens() -> None:
    s = Subjects()
    assert s.release("r1", "requested") == "kx.release.r1.requested"
    assert s.release_filter("r1") == "kx.release.r1.*"
    assert s.scope("prod", "canary", "eu-early", "activated") == "kx.scope.prod.canary.eu-early.activated"
    assert s.channel("prod", "canary") == "kx.channel.prod.canary.configured"
    assert s.health("prod", "canary", "all", "rt-1") == "kx.health.prod.canary.all.rt-1"
    assert (s.releases_stream, s.health_stream, s.packs_bucket) == ("KX_RELEASES", "KX_HEALTH", "kx_packs")
    assert s.log_subjects() == ["kx.release.>", "kx.scope.>", "kx.channel.>", "kx.trust.rotated"]


@pytest.mark.parametrize("prefix", ["kx.evil", ">", "", "a b"], ids=["dot", "gt", "empty", "space"])
def test_subject_prefix_is_a_token(prefix: str) -> None:
    with pytest.raises(InvalidToken, match="subject prefix"):
        Subjects(prefix)


@pytest.mark.parametrize(
    "value", ["a.b", ">", "*", "a b", "a" * 65, ""], ids=["dot", "gt", "star", "space", "len-65", "empty"]
)
@pytest.mark.parametrize("where", ["release_id", "env", "channel", "cohort"])
def test_hostile_tokens_cannot_enter_an_event(where: str, value: str) -> None:
    scope = {"env": "prod", "channel": "canary", "cohort": "internal"}
    release_id = "r1"
    if where == "release_id":
        release_id = value
    else:
        scope[where] = value
    with pytest.raises(ValueError):
        make_event("scope.unpinned", {}, actor=SERVICE, release_id=release_id, scope=Scope(**scope))


@pytest.mark.parametrize("value", ["a.b", ">", "a" * 65], ids=["dot", "gt", "len-65"])
def test_hostile_pack_name_and_target_are_rejected_in_a_request(value: str) -> None:
    for path in (("pack", "name"), ("target", "env"), ("target", "channel")):
        doc = envelope()
        doc["data"][path[0]][path[1]] = value
        err = decode_error(raw(doc))
        assert any(r["field"] == f"data.{path[0]}.{path[1]}" for r in err.reasons), err.reasons


# ---- canonical bytes -----------------------------------------------------------------------


def test_canonical_bytes_are_sorted_and_compact() -> None:
    assert canonical_bytes({"b": 1, "a": {"d": [1, 2], "c": None}}) == b'{"a":{"c":null,"d":[1,2]},"b":1}'


def test_canonical_bytes_keep_unicode_as_utf8() -> None:
    assert canonical_bytes({"name": "caf\u00e9"}) == '{"name":"caf\u00e9"}'.encode("utf-8")


def test_canonical_bytes_do_not_depend_on_insertion_order() -> None:
    assert canonical_bytes({"x": 1, "y": {"b": 2, "a": 1}}) == canonical_bytes({"y": {"a": 1, "b": 2}, "x": 1})


@pytest.mark.parametrize(
    ("value", "path"),
    [({"size": 1.0}, "$.size"), ({"a": [1, {"b": 0.5}]}, "$.a[1].b"), (1.5, "$")],
    ids=["top", "nested", "bare"],
)
def test_canonical_bytes_reject_floats_naming_where(value: Any, path: str) -> None:
    with pytest.raises(StrictJSONError, match=re.escape(f"float at {path} is not allowed")):
        canonical_bytes(value)


def test_canonical_bytes_reject_lone_surrogates() -> None:
    with pytest.raises(StrictJSONError, match="UTF-8"):
        canonical_bytes({"a": "\ud800"})


def test_compact_bytes_keep_order_and_allow_floats() -> None:
    assert compact_bytes({"b": 0.5, "a": 1}) == b'{"b":0.5,"a":1}'


@pytest.mark.parametrize(
    ("data", "kwargs", "needle"),
    [
        (b'{"a":1,"a":2}', {}, "duplicate key 'a'"),
        (b'{"a":1.5}', {}, "floats are not allowed"),
        (b'{"a":NaN}', {"allow_floats": True}, "NaN is not JSON"),
        (b'{"a":-Infinity}', {"allow_floats": True}, "-Infinity is not JSON"),
        (b'{"a":"' + b"x" * 20 + b'"}', {"max_bytes": 10}, "over the 10-byte cap"),
        (b"\xc3\x28", {}, "not UTF-8"),
        (b"[1,", {}, "malformed JSON"),
        (b"1" * 5000, {}, "malformed JSON"),  # over Python's int-digit limit
    ],
    ids=["duplicate", "float", "nan", "neg-infinity", "max-bytes", "utf8", "truncated", "huge-int"],
)
def test_loads_strict_rejects(data: bytes, kwargs: dict, needle: str) -> None:
    with pytest.raises(StrictJSONError, match=needle):
        loads_strict(data, **kwargs)


def test_loads_strict_floats_when_allowed() -> None:
    assert loads_strict(b'{"a":1.5}', allow_floats=True) == {"a": 1.5}


JSON_NO_FLOATS = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.text(st.characters(exclude_categories=("Cs",)), max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(st.characters(exclude_categories=("Cs",)), max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, database=None)
@given(JSON_NO_FLOATS)
def test_canonical_bytes_round_trip_through_strict_parse(value: Any) -> None:
    once = canonical_bytes(value)
    assert loads_strict(once) == value
    assert canonical_bytes(loads_strict(once)) == once


# ---- versions ----------------------------------------------------------------------------

ORDERED = [
    # PEP 440
    ("1.0.dev0", "1.0a1"),
    ("1.0a1", "1.0a2"),
    ("1.0a2", "1.0b1"),
    ("1.0b1", "1.0rc1"),
    ("1.0rc1", "1.0"),
    ("1.0", "1.0.post1"),
    ("1.0.post1", "1.1"),
    ("1.9", "1.10"),
    ("1.10", "2.0"),
    ("1!0.1", "1!0.2"),
    # SemVer 2.0.0 §11 precedence chain
    ("1.0.0-alpha", "1.0.0-alpha.1"),
    ("1.0.0-alpha.1", "1.0.0-alpha.beta"),
    ("1.0.0-alpha.beta", "1.0.0-beta"),
    ("1.0.0-beta", "1.0.0-beta.2"),
    ("1.0.0-beta.2", "1.0.0-beta.11"),
    ("1.0.0-beta.11", "1.0.0-rc.1"),
    ("1.0.0-rc.1", "1.0.0"),
    ("1.0.0-x.7.z.92", "1.0.0"),
    ("1.0.0-alpha.beta", "1.0.0-alpha.beta.1"),
    ("1.0.0-x.2", "1.0.0-x.10"),
    ("1.0.0-x.10", "1.0.0-x.y"),
    ("2.0.0", "2.1.0"),
    ("2.1.0", "2.1.1"),
    ("1.2.3", "1.10.0"),
]


@pytest.mark.parametrize(("lower", "higher"), ORDERED, ids=[f"{a}<{b}" for a, b in ORDERED])
def test_version_ordering(lower: str, higher: str) -> None:
    a, b = parse_version(lower), parse_version(higher)
    assert a < b
    assert b > a
    assert a != b
    assert not b < a


@pytest.mark.parametrize(
    ("a", "b"),
    [("1.0", "1.0.0"), ("1.0.0-rc.1", "1.0.0rc1"), ("1.0.0-alpha.0", "1.0.0a0"), ("1.0.0", "1.0.0+build.7")],
    ids=["padding", "rc", "alpha", "build-metadata"],
)
def test_equal_versions(a: str, b: str) -> None:
    assert parse_version(a) == parse_version(b)
    assert hash(parse_version(a)) == hash(parse_version(b))
    assert not parse_version(a) < parse_version(b)


def test_sorting_a_shuffled_semver_chain() -> None:
    chain = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
    ]
    shuffled = [chain[i] for i in (5, 0, 7, 2, 4, 1, 6, 3)]
    assert [str(v) for v in sorted(map(parse_version, shuffled))] == chain


@pytest.mark.parametrize(
    "text",
    ["", "latest", "1.2.3.4.5-", "v1..2", "1.0.0-", "01.2.3-x.y"],
    ids=["empty", "word", "dash", "dots", "trailing-dash", "leading-zero"],
)
def test_invalid_versions_are_named(text: str) -> None:
    with pytest.raises(ValueError, match="neither PEP 440 nor SemVer"):
        parse_version(text)


@settings(max_examples=200, deadline=None, database=None)
@given(
    st.tuples(st.integers(0, 50), st.integers(0, 50), st.integers(0, 50)),
    st.tuples(st.integers(0, 50), st.integers(0, 50), st.integers(0, 50)),
)
def test_release_triples_compare_like_tuples(a: tuple[int, int, int], b: tuple[int, int, int]) -> None:
    va, vb = parse_version(".".join(map(str, a))), parse_version(".".join(map(str, b)))
    assert (va < vb) == (a < b)
    assert (va == vb) == (a == b)


def _configured_with_threshold(value: int) -> bytes:
    data = {
        "cohorts": [{"name": "all"}],
        "plan": [["all"]],
        "monitoring": {
            "window_s": 60,
            "thresholds": {"error_rate_max": 0.1, "queue_depth_max": value},
            "prometheus": {"url": "http://127.0.0.1:9", "queries": {"queue_depth": "max(q)"}},
        },
    }
    doc = {
        "event_id": "e-big",
        "type": "channel.configured",
        "schema_version": SCHEMA_VERSION,
        "occurred_at": "2030-01-01T00:00:00Z",
        "actor": {"kind": "operator", "id": "ops"},
        "data": data,
    }
    return json.dumps(doc).encode()  # json writes a Python int of any size as its digits


def test_a_number_past_a_double_in_a_channel_config_is_a_refusal_not_an_exception() -> None:
    """A 400-digit integer threshold is valid JSON; `decode_event` names it (it raised OverflowError, which
    no reader of the log catches: one such entry stopped the service's follower and `kxr audit replay`)."""
    subject = "kx.channel.prod.canary.configured"
    assert decode_event(_configured_with_threshold(10**300), subject).data.monitoring.prometheus is not None
    with pytest.raises(DecodeError) as refused:
        decode_event(_configured_with_threshold(10**400), subject)
    assert refused.value.reasons[0]["message"].endswith(
        "monitoring.thresholds.queue_depth_max must be a finite number a double holds, not an integer of 401 digits"
    )


def test_a_validator_that_raises_anything_is_still_a_decode_error(monkeypatch) -> None:
    """Whatever a model's validator raises (a bug, a library's edge), the reader gets a DecodeError naming it."""
    from events import channel as channel_module

    def broken(*_args, **_kwargs):
        raise ArithmeticError("a validator's own failure")

    monkeypatch.setattr(channel_module, "is_limit", broken)
    with pytest.raises(DecodeError, match="could not be validated: ArithmeticError: a validator's own failure"):
        decode_event(_configured_with_threshold(5), "kx.channel.prod.canary.configured")


def test_an_integer_written_with_a_zero_fraction_is_an_integer() -> None:
    """JSON Schema's `integer` takes 600.0 (our schemas say `"type": "integer"`): read as the int 600; a
    fraction, a boolean or a string is still refused."""
    doc = {
        "event_id": "e1",
        "type": "release.requested",
        "schema_version": 1.0,
        "occurred_at": "2030-01-01T00:00:00Z",
        "actor": {"kind": "producer", "id": "ci"},
        "release_id": "r1",
        "data": {
            "pack": {"name": "kb", "version": "1.0.0", "digest": "sha256:" + "a" * 64, "size": 1024.0},
            "target": {"env": "prod", "channel": "canary"},
            "owner": "kb-team",
            "escalation": "pager:kb",
            "monitoring": {"window_s": 600.0, "min_samples": 2.0, "thresholds": {"tickets_max": 3.0}},
        },
    }
    event = decode_event(json.dumps(doc).encode(), "kx.release.r1.requested")
    m = event.data.monitoring
    assert (m.window_s, m.min_samples, m.thresholds.tickets_max, event.data.pack.size) == (600, 2, 3, 1024)
    assert type(m.window_s) is int and type(event.data.pack.size) is int
    for bad in (600.5, True, "600", 1e300):  # 1e300 is integral, and over the 30-day bound
        wrong = {**doc, "data": {**doc["data"], "monitoring": {"window_s": bad}}}
        with pytest.raises(DecodeError):
            decode_event(json.dumps(wrong).encode(), "kx.release.r1.requested")
