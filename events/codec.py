"""Encoding and strict decoding of log messages.

Decoding never raises anything but `DecodeError`, and its message names what is
wrong: oversized, not JSON, unknown type, a missing or mistyped field (with its
path), or a subject that does not match the event.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from .canonical import StrictJSONError, compact_bytes, loads_strict
from .ids import new_event_id
from .model import FAMILIES, PAYLOADS, RELEASE_FAMILIES, SCHEMA_VERSION, SCOPE_FAMILIES, Actor, Event, Scope, utcnow
from .subjects import Subjects

EVENT_MAX_BYTES = 64 * 1024


def _validate_payload(model: type[BaseModel], data: Any) -> BaseModel:
    payload: BaseModel = model.__pydantic_validator__.validate_python(data)  # model_validate, minus its wrapper
    return payload


def _validate_envelope(doc: dict[str, Any]) -> Event:
    """`doc` (with `data` already a payload model) as an Event; it may keep parts of `doc`."""
    event: Event = Event.__pydantic_validator__.validate_python(doc)  # Event.model_validate, minus its wrapper
    return event


class DecodeError(ValueError):
    """A message that is not a valid event; `reasons` lists every problem found. `subject`: where the
    entry was stored, when the reader noted it (services/reads/follower.py)."""

    subject: str | None = None

    def __init__(self, message: str, reasons: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.reasons = reasons or [{"code": "invalid", "message": message, "field": None}]


def _pydantic_reasons(exc: ValidationError, prefix: str) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        code = {"missing": "missing_field"}.get(
            err["type"], "wrong_type" if err["type"].endswith("_type") else "invalid_value"
        )
        out.append({"code": code, "field": where, "message": f"{where}: {err['msg']}"})
    return out


def _describe(reasons: list[dict[str, Any]]) -> str:
    return "; ".join(r["message"] for r in reasons)


def decode_json_object(raw: bytes, max_bytes: int = EVENT_MAX_BYTES) -> dict[str, Any]:
    if len(raw) > max_bytes:
        raise DecodeError(
            f"payload is {len(raw)} bytes, over the {max_bytes}-byte cap",
            [{"code": "oversized", "field": None, "message": f"payload over {max_bytes} bytes"}],
        )
    try:
        doc = loads_strict(raw, allow_floats=True)
    except StrictJSONError as exc:
        raise DecodeError(str(exc), [{"code": "malformed_json", "field": None, "message": str(exc)}]) from None
    if not isinstance(doc, dict):
        raise DecodeError(
            "an event must be a JSON object",
            [{"code": "wrong_type", "field": "$", "message": "an event must be a JSON object"}],
        )
    return doc


def _unvalidated(exc: BaseException, field: str | None) -> DecodeError:
    message = f"could not be validated: {exc.__class__.__name__}: {exc}"[:500]
    return DecodeError(message, [{"code": "invalid", "field": field, "message": message}])


def decode_payload(event_type: str, data: Any) -> BaseModel:
    model = PAYLOADS.get(event_type)
    if model is None:
        raise DecodeError(
            f"unknown event type {event_type!r}",
            [{"code": "unknown_type", "field": "type", "message": f"unknown event type {event_type!r}"}],
        )
    try:
        return _validate_payload(model, data)
    except ValidationError as exc:
        reasons = _pydantic_reasons(exc, "data")
        raise DecodeError(_describe(reasons), reasons) from None
    except (ValueError, ArithmeticError, RecursionError, TypeError) as exc:
        # a validator that raised instead of refusing (an OverflowError on a number past a double's range
        # did): still a refusal of this payload, never an exception that stops whoever reads the log
        raise _unvalidated(exc, "data") from None


def decode_event(raw: bytes, subject: str | None = None, subjects: Subjects | None = None) -> Event:
    """bytes (+ the subject they arrived on) -> Event, or DecodeError naming every problem."""
    doc = decode_json_object(raw)
    event_type = doc.get("type")
    if not isinstance(event_type, str):
        raise DecodeError(
            "type: missing or not a string",
            [{"code": "missing_field", "field": "type", "message": "type: missing or not a string"}],
        )
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DecodeError(
            f"schema_version {version!r} is not supported (expected {SCHEMA_VERSION})",
            [
                {
                    "code": "unsupported_schema_version",
                    "field": "schema_version",
                    "message": f"schema_version {version!r} is not supported",
                }
            ],
        )
    data = decode_payload(event_type, doc.get("data"))
    doc["data"] = data  # the document is ours (just parsed): no copy
    if subject is not None and doc.get("scope") is None and event_type.startswith(_SCOPE_FAMILY_PREFIXES):
        scope = scope_from_subject(event_type, subject, subjects or Subjects())
        if scope is not None:
            doc["scope"] = scope
    try:
        event = _validate_envelope(doc)
    except ValidationError as exc:
        reasons = [r for r in _pydantic_reasons(exc, "") if r["field"] != "data"]
        raise DecodeError(_describe(reasons), reasons) from None
    except (ValueError, ArithmeticError, RecursionError, TypeError) as exc:
        raise _unvalidated(exc, None) from None
    family = event.family  # (a property that splits the type: once here, not per check)
    if family in RELEASE_FAMILIES and event.release_id is None:
        raise DecodeError(
            f"{family} events need a release_id",
            [{"code": "missing_field", "field": "release_id", "message": f"{family} events need a release_id"}],
        )
    if family not in FAMILIES:
        raise DecodeError(
            f"unknown event family in {event.type!r}",
            [{"code": "unknown_type", "field": "type", "message": f"unknown event family in {event.type!r}"}],
        )
    if family in SCOPE_FAMILIES and event.scope is None:
        msg = f"{family} events need a scope (or the subject that names it)"
        raise DecodeError(msg, [{"code": "missing_field", "field": "scope", "message": msg}])
    if subject is not None and subject != _plain_subject(event, family, subjects or _DEFAULT_SUBJECTS):
        check_subject(event, subject, subjects or Subjects())  # (raises: it names what is wrong)
    return event


_DEFAULT_SUBJECTS = Subjects()
_SCOPE_FAMILY_PREFIXES = tuple(f"{family}." for family in SCOPE_FAMILIES)  # where scope_from_subject looks


def _plain_subject(event: Event, family: str, subjects: Subjects) -> str | None:
    """`subjects.expected_subject` for a decoded event, without checking its tokens again: the
    envelope's validation already matched release_id and the scope's tokens against TOKEN_PATTERN,
    the prefix was checked when `subjects` was made, and every known type's suffix is a token
    (tests/unit/test_replay_equivalence.py). Equal to the entry's subject: the check passes as
    `check_subject` would; anything else (None: no fast form) is judged by `check_subject`."""
    suffix = event.type[len(family) + 1 :]
    if family == "release":
        return f"{subjects.prefix}.release.{event.release_id}.{suffix}"
    scope = event.scope
    if family == "scope" and scope is not None:
        return f"{subjects.prefix}.scope.{scope.env}.{scope.channel}.{scope.cohort}.{suffix}"
    if family == "channel" and scope is not None:
        return f"{subjects.prefix}.channel.{scope.env}.{scope.channel}.configured"
    return None


# A channel event's scope names no cohort: what the service itself writes there
CHANNEL_EVENT_COHORT = "all"


def scope_from_subject(event_type: str, subject: str, subjects: Subjects) -> dict[str, str] | None:
    """The scope a scope or channel subject names, for an event that leaves `scope` null.

    CONTRACT §3: `scope` may be null on every event whose subject names its scope, and a
    consumer reads env/channel/cohort from the subject. None if the subject names none
    (then the event is judged as it is: a scope event without a scope does not decode).
    A subject whose tokens do not fit the event is refused later by `check_subject`.
    """
    family, _, suffix = event_type.partition(".")
    if family not in SCOPE_FAMILIES:
        return None  # (most events: a release's; its subject names no scope)
    parsed, tokens = subjects.parse(subject)
    if family == "scope" and parsed == "scope" and len(tokens) == 4 and tokens[3] == suffix:
        return {"env": tokens[0], "channel": tokens[1], "cohort": tokens[2]}
    if family == "channel" and parsed == "channel" and len(tokens) == 3 and tokens[2] == suffix:
        return {"env": tokens[0], "channel": tokens[1], "cohort": CHANNEL_EVENT_COHORT}
    return None


def scope_tuple(event: Event) -> tuple[str, str, str] | None:
    return (event.scope.env, event.scope.channel, event.scope.cohort) if event.scope else None


def check_subject(event: Event, subject: str, subjects: Subjects) -> None:
    try:
        expected = subjects.expected_subject(event.type, event.release_id, scope_tuple(event))
    except ValueError as exc:
        raise DecodeError(str(exc), [{"code": "wrong_subject", "field": None, "message": str(exc)}]) from None
    if expected != subject:
        msg = f"event of type {event.type} belongs on {expected}, not {subject}"
        raise DecodeError(msg, [{"code": "wrong_subject", "field": None, "message": msg}])


def encode_event(event: Event) -> bytes:
    """The bytes stored for `event`; StrictJSONError for an event no reader could decode again.

    The guard of "every event written is valid contract JSON": a non-finite number (which
    would be written as `Infinity`) or more than EVENT_MAX_BYTES (which every decoder
    refuses) raises here, so the writer fails closed with a reason instead of storing an
    entry every consumer dead-letters.
    """
    try:
        raw = compact_bytes(event.model_dump(mode="json", by_alias=True))
    except StrictJSONError as exc:
        raise StrictJSONError(f"event {event.type} {event.event_id}: {exc}") from None
    if len(raw) > EVENT_MAX_BYTES:
        raise StrictJSONError(
            f"event {event.type} {event.event_id} is {len(raw)} bytes, over the {EVENT_MAX_BYTES}-byte cap"
        )
    return raw


def make_event(
    event_type: str,
    data: BaseModel | dict[str, Any],
    *,
    actor: Actor,
    release_id: str | None = None,
    scope: Scope | None = None,
    causation_id: str | None = None,
    correlation_id: str | None = None,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
) -> Event:
    """Build a validated event; a dict payload is validated against its type's model."""
    payload = data if isinstance(data, BaseModel) else decode_payload(event_type, data)
    if event_type not in PAYLOADS:
        raise ValueError(f"unknown event type {event_type!r}")
    return Event(
        event_id=event_id or new_event_id(),
        type=event_type,
        schema_version=SCHEMA_VERSION,
        occurred_at=occurred_at or utcnow(),
        actor=actor,
        causation_id=causation_id,
        correlation_id=correlation_id if correlation_id is not None else release_id,
        release_id=release_id,
        scope=scope,
        data=payload,
    )
