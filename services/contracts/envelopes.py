"""One envelope model per event type: `events.model.Event` with its `type` and `data` fixed.

`Event` itself carries any payload (`data: BaseModel`) and leaves the per-family rules to
the decoder (`events.codec.decode_event`): a supported `schema_version`, a `release_id` on
release events, a `scope` key on scope and channel events — null allowed there (CONTRACT §3:
the subject names the scope, and the decoder reads it from the subject). Those rules are
restated here as required fields so a schema says what the decoder enforces; tests/unit/test_contracts.py
checks that schema and decoder agree on accepted and rejected messages.
"""

from __future__ import annotations

from functools import cache
from typing import Literal

from pydantic import create_model

from events.model import PAYLOADS, RELEASE_FAMILIES, SCHEMA_VERSION, SCOPE_FAMILIES, Event, Scope, Token

from .catalog import DESCRIPTIONS


def model_name(event_type: str) -> str:
    """`release.monitoring_passed` -> `ReleaseMonitoringPassedEvent`."""
    words = event_type.replace(".", "_").split("_")
    return "".join(w.capitalize() for w in words) + "Event"


@cache
def envelope_model(event_type: str) -> type[Event]:
    family = event_type.partition(".")[0]
    fields: dict = {
        "type": (Literal[event_type], ...),
        "schema_version": (Literal[SCHEMA_VERSION], ...),
        "data": (PAYLOADS[event_type], ...),
    }
    if family in RELEASE_FAMILIES:
        fields["release_id"] = (Token, ...)
    if family in SCOPE_FAMILIES:
        fields["scope"] = (Scope | None, ...)  # null: read from the subject (CONTRACT §3)
    return create_model(model_name(event_type), __base__=Event, __doc__=DESCRIPTIONS[event_type], **fields)
