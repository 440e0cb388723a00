"""Structured logs: one JSON object per line, each naming the release and event it concerns.

The release id and event id travel in context variables, set where a consumer takes a
message (`message_context`) or settles a release (`log_context`), so every line logged
while handling it — by any module, in any task started from there — carries them.
A JSON line also keeps whatever a call passes as `extra=` (made JSON-safe: a value JSON has no
form for is written as its `str`), so `log.info("...", extra={"durable": d})` can be searched on.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO

from events.subjects import Subjects
from services.settings import ConfigError

release_id_var: ContextVar[str | None] = ContextVar("kx_release_id", default=None)
event_id_var: ContextVar[str | None] = ContextVar("kx_event_id", default=None)
FORMATS = ("json", "text")


@contextmanager
def log_context(release_id: str | None = None, event_id: str | None = None) -> Iterator[None]:
    tokens = (release_id_var.set(release_id), event_id_var.set(event_id))
    try:
        yield
    finally:
        event_id_var.reset(tokens[1])
        release_id_var.reset(tokens[0])


def message_ids(subject: str, headers: dict[str, str] | None) -> tuple[str | None, str | None]:
    """(release id, event id) of a log message: `<p>.release.<id>.…` and its `Nats-Msg-Id` (= event_id)."""
    return Subjects.release_id_of(subject), (headers or {}).get("Nats-Msg-Id")


def message_context(msg):
    """The log context of a JetStream message a consumer is about to handle."""
    return log_context(*message_ids(msg.subject, msg.headers))


def _context(record: logging.LogRecord) -> tuple[str | None, str | None]:
    # an explicit `extra={"release_id": …}` wins over the ambient context
    return (
        getattr(record, "release_id", None) or release_id_var.get(),
        getattr(record, "event_id", None) or event_id_var.get(),
    )


# what every LogRecord has of its own (and what Formatter.format adds): anything else came from `extra=`
_RECORD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_CONTEXT_FIELDS = frozenset({"release_id", "event_id"})  # extras too, but already written as themselves


def json_safe(value: object, depth: int = 0) -> object:
    """`value` as JSON can hold it: containers walked (keys as strings), anything else as its `str`."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # NaN and Infinity are not JSON
    if depth >= 8:  # deep or self-containing structures stop here, as text
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return [json_safe(v, depth + 1) for v in items]
    return str(value)


def extra_fields(record: logging.LogRecord) -> dict[str, object]:
    """The fields a log call passed as `extra=`, JSON-safe (private `_names` left out)."""
    return {
        key: json_safe(value)
        for key, value in record.__dict__.items()
        if key not in _RECORD_FIELDS and key not in _CONTEXT_FIELDS and not key.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        release_id, event_id = _context(record)
        doc: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "release_id": release_id,
            "event_id": event_id,
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        for key, value in extra_fields(record).items():
            doc[key if key not in doc else f"extra_{key}"] = value  # never overwrites the line's own fields
        return json.dumps(doc, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        release_id, event_id = _context(record)
        if release_id or event_id:
            line += f" [release={release_id or '-'} event={event_id or '-'}]"
        return line


def log_format(value: str | None, stream: IO = sys.stderr) -> str:
    """KX_LOG_FORMAT, or json when the stream is not a terminal (a collector reads it) and text when it is."""
    if value:
        if value not in FORMATS:
            raise ConfigError(f"KX_LOG_FORMAT must be one of {', '.join(FORMATS)}, not {value!r}")
        return value
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


def configure_logging(fmt: str, level: int, stream: IO = sys.stderr) -> logging.Handler:
    """Route every logger through one handler on the root logger, in the chosen format."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
