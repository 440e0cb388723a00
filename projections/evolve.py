"""A copy of a frozen, slotted dataclass with some fields changed: `dataclasses.replace`, cheaper.

`replace` goes through `__init__` (keyword matching, one `object.__setattr__` per field);
the fold copies a release or the world for every log entry, so a replay of a long log
spends much of its time there. Only for the projections' plain state classes: no
`__post_init__`, no `InitVar`, no `init=False` fields (checked once per class).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")
_FIELDS: dict[type, tuple[tuple[str, ...], frozenset[str]]] = {}
_set = object.__setattr__


def _fields(cls: type) -> tuple[tuple[str, ...], frozenset[str]]:
    known = _FIELDS.get(cls)
    if known is None:
        fields = dataclasses.fields(cls)
        if hasattr(cls, "__post_init__") or any(not f.init for f in fields) or not hasattr(cls, "__slots__"):
            raise TypeError(f"evolve() needs a plain slotted dataclass, not {cls.__name__}")
        names = tuple(f.name for f in fields)
        known = _FIELDS[cls] = (names, frozenset(names))
    return known


def evolve(obj: T, changes: dict[str, Any]) -> T:
    cls = type(obj)
    names, known = _fields(cls)
    if not changes.keys() <= known:
        raise TypeError(f"{cls.__name__} has no field(s) {sorted(changes.keys() - known)}")
    new = object.__new__(cls)
    for name in names:
        _set(new, name, changes[name] if name in changes else getattr(obj, name))
    return new
