"""The leaf package: event models, subjects, ids, strict codecs and signing helpers.

It imports neither NATS nor services/. Its names are imported when first used (PEP 562), so
importing one light module (`events.subjects`, `events.tokens`) does not load the pydantic event
model: `kxr status` reads the read models without it (services/reads/model_reads.py).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .codec import DecodeError, decode_event, encode_event, make_event
    from .model import Actor, Event, PackRef, Scope
    from .subjects import Subjects

_WHERE = {
    "DecodeError": "codec",
    "decode_event": "codec",
    "encode_event": "codec",
    "make_event": "codec",
    "Actor": "model",
    "Event": "model",
    "PackRef": "model",
    "Scope": "model",
    "Subjects": "subjects",
}

__all__ = [
    "Actor",
    "DecodeError",
    "Event",
    "PackRef",
    "Scope",
    "Subjects",
    "decode_event",
    "encode_event",
    "make_event",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'events' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
