"""The leaf package: event models, subjects, ids, strict codecs and signing helpers.

It imports neither NATS nor services/.
"""

from .codec import DecodeError, decode_event, encode_event, make_event
from .model import Actor, Event, PackRef, Scope
from .subjects import Subjects

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
