"""An event of the log as a CloudEvents 1.0 event, in the structured JSON format, for the edges:
webhook bodies (a sink's `format = "cloudevents"`) and `kxr audit export --format cloudevents`.

The log's own bytes stay the contract: a CloudEvent is a view of an envelope, never written to
the log and never signed. Its `data` is the envelope exactly as logged (as JSON), so a receiver
holds everything the log says; the CloudEvents attributes repeat what routers look at:

| attribute         | from the envelope                                                           |
|-------------------|-----------------------------------------------------------------------------|
| `id`              | `event_id`                                                                  |
| `source`          | `urn:konnaxion:releases:<prefix>`: the log (event ids are unique within it)  |
| `type`            | `io.konnaxion.releases.<type>`, e.g. `io.konnaxion.releases.release.rolled_back` |
| `time`            | `occurred_at`                                                               |
| `subject`         | `release_id`; a scope's event without one: `<env>/<channel>/<cohort>`        |
| `dataschema`      | the JSON Schema of that type's envelope (docs/schemas/events/<type>.schema.json, by its `$id`) |
| `causationid`, `correlationid` | `causation_id`, `correlation_id` (extensions, when set)        |

Extension names are lowercase letters and digits, at most 20 characters (CloudEvents 1.0 §
"Attribute Naming Convention"); values are strings, integers or booleans. Pure: no IO.
"""

from __future__ import annotations

import json
import re
from typing import Any

from events.codec import encode_event
from events.model import Event

SPECVERSION = "1.0"
CONTENT_TYPE = "application/cloudevents+json"  # the structured JSON format's media type
TYPE_PREFIX = "io.konnaxion.releases."
# = services/contracts/schemas.py BASE, the `$id` base of the published schemas (a test keeps them equal)
SCHEMA_BASE = "https://konnaxion.dev/releases/schemas/"
EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")
CONTEXT_ATTRIBUTES = frozenset(
    {"specversion", "id", "source", "type", "time", "subject", "datacontenttype", "dataschema", "data", "data_base64"}
)


def source_of(prefix: str) -> str:
    """The CloudEvents `source` of every event of the log with subject prefix `prefix`."""
    return f"urn:konnaxion:releases:{prefix}"


def type_of(event_type: str) -> str:
    return TYPE_PREFIX + event_type


def dataschema_of(event_type: str) -> str:
    return f"{SCHEMA_BASE}events/{event_type}.schema.json"


def subject_of(event: Event) -> str | None:
    if event.release_id:
        return event.release_id
    if event.scope is not None:
        return f"{event.scope.env}/{event.scope.channel}/{event.scope.cohort}"
    return None


def to_cloudevent(
    event: Event,
    source: str,
    *,
    envelope: dict[str, Any] | None = None,
    extensions: dict[str, str | int | bool] | None = None,
) -> dict[str, Any]:
    """`event` as a structured-mode CloudEvent (a JSON object). `envelope`: the envelope as read from
    the log (default: `event` encoded as the log writes it); `extensions`: more extension attributes."""
    doc: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": event.event_id,
        "source": source,
        "type": type_of(event.type),
        "time": event.occurred_at.isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "dataschema": dataschema_of(event.type),
    }
    subject = subject_of(event)
    if subject:
        doc["subject"] = subject
    extra: dict[str, str | int | bool] = {}
    if event.causation_id:
        extra["causationid"] = event.causation_id
    if event.correlation_id:
        extra["correlationid"] = event.correlation_id
    extra.update(extensions or {})
    for name, value in extra.items():
        if not EXTENSION_NAME.fullmatch(name) or name in CONTEXT_ATTRIBUTES:
            raise ValueError(f"{name!r} is not a CloudEvents extension name (lowercase letters and digits, ≤ 20)")
        if not isinstance(value, (str, int, bool)):
            raise ValueError(f"extension {name}: {type(value).__name__} is not a CloudEvents attribute type")
        doc[name] = value
    doc["data"] = envelope if envelope is not None else json.loads(encode_event(event))
    return doc
