"""Strict JSON in, canonical JSON out (CONTRACT §6).

Signed documents are parsed strictly: a duplicate key or a float is an error, not
something to guess about, because two parsers that disagree on such input are how
signature-bypass bugs happen.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

import jiter


class StrictJSONError(ValueError):
    """The bytes are not the strict JSON we accept."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)  # in C; only a document with a duplicate pays the search for its name
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise StrictJSONError(f"duplicate key {key!r}")
            seen.add(key)
    return out


# Below this many brackets a document cannot nest deep enough to trouble the encoder.
_SHALLOW = 200


def _needs_round_trip(text: str) -> bool:
    """Whether writing the parsed document back out could fail: only a \\u escape can make a
    lone surrogate (the text itself is valid UTF-8), and only deep nesting a RecursionError."""
    # ("\\" first: one memchr over the text, where the two-character search costs ~30x more)
    return ("\\" in text and "\\u" in text) or text.count("[") + text.count("{") >= _SHALLOW


def _no_float(text: str) -> Any:
    raise StrictJSONError(f"floats are not allowed ({text})")


def _no_constant(text: str) -> Any:
    raise StrictJSONError(f"{text} is not JSON")


def loads_strict(raw: bytes | str, *, allow_floats: bool = False, max_bytes: int | None = None) -> Any:
    """Parse JSON rejecting duplicate keys, NaN/Infinity and (unless allowed) floats."""
    if max_bytes is not None and len(raw) > max_bytes:
        raise StrictJSONError(f"document is {len(raw)} bytes, over the {max_bytes}-byte cap")
    if isinstance(raw, bytes):
        doc = _fast_parse(raw, allow_floats)
        if doc is not _UNSURE:
            return doc
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StrictJSONError(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        doc = _parse(raw, allow_floats)
        # Everything we accept must survive being written back out: no lone surrogates
        # ("\ud800"), and a nesting depth that the rest of the code can walk.
        if _needs_round_trip(raw):
            json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except StrictJSONError:
        raise
    except UnicodeEncodeError:
        raise StrictJSONError("a string holds a lone surrogate (not valid Unicode)") from None
    except RecursionError:
        raise StrictJSONError("nested too deeply") from None
    except ValueError as exc:  # also covers ints over the 4300-digit limit
        raise StrictJSONError(f"malformed JSON: {exc}") from None
    return doc


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise StrictJSONError(f"{text} is out of range for a number")
    return value


def reference_parse(text: str, allow_floats: bool) -> Any:
    """The plain way to write `_parse` (slow reference; tests/unit/test_decode_differential.py)."""
    return json.loads(
        text,
        object_pairs_hook=_no_duplicates,
        parse_constant=_no_constant,
        parse_float=_finite_float if allow_floats else _no_float,
    )


# Built once: json.loads(text, **hooks) builds a JSONDecoder (and its scanner) on every call,
# a tenth of the parse of a log event. Same hooks, so the same results and errors.
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constant, parse_float=_no_float)
_DECODER_FLOATS = json.JSONDecoder(
    object_pairs_hook=_no_duplicates, parse_constant=_no_constant, parse_float=_finite_float
)


# The fast path (events are parsed on every read of the log: a third of a replay was decoding).
# jiter (pydantic's Rust JSON parser) reads the bytes without a Python call per object, and
# refuses on its own everything the reference refuses but two things: an overflowing number
# (`1e400` becomes inf) and, where floats are forbidden, any float. `_unfit` looks for those in
# what it returns. Everything else it refuses (bad UTF-8, duplicate keys after unescaping, NaN,
# lone surrogates, deep nesting, big numbers, a BOM...) goes to the reference parser below, which
# gives the verdict and its message: what jiter accepts, the reference accepts with an equal
# value, and the rest is the reference's own answer (tests/unit/test_decode_differential.py).
_UNSURE = object()


def _unfit(container: dict[str, Any] | list[Any], allow_floats: bool) -> bool:
    """A float the reference would refuse in `container`: any, without `allow_floats`; else one not
    finite. (Scalars are looked at here, not in a call each: a call per value was most of the walk.)"""
    items: Iterable[Any] = container.values() if type(container) is dict else container
    for item in items:
        kind = type(item)
        if kind is dict or kind is list:
            if _unfit(item, allow_floats):
                return True
        elif kind is float and (not allow_floats or item - item != 0.0):  # inf - inf is nan
            return True
    return False


def _fast_parse(raw: bytes, allow_floats: bool) -> Any:
    """The document, or `_UNSURE`: then only the reference parser may judge it."""
    try:
        doc = jiter.from_json(raw, allow_inf_nan=False, catch_duplicate_keys=True, cache_mode="keys")
    except Exception:  # its refusals are ValueErrors; anything else it raises is for the reference to judge too
        return _UNSURE
    return _UNSURE if _unfit([doc], allow_floats) else doc


def _parse(text: str, allow_floats: bool) -> Any:
    """`reference_parse` with the decoders built once."""
    if text.startswith("\ufeff"):  # what json.loads checks before decoding, with its message
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    return (_DECODER_FLOATS if allow_floats else _DECODER).decode(text)


def _reject_floats(value: Any, path: str = "$") -> None:
    if isinstance(value, float):
        raise StrictJSONError(f"float at {path} is not allowed in a signed document")
    if isinstance(value, dict):
        for key, item in value.items():
            _reject_floats(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _reject_floats(item, f"{path}[{index}]")


def canonical_bytes(signed: Any) -> bytes:
    """The exact bytes signatures cover: sorted keys, no spaces, UTF-8, no floats."""
    _reject_floats(signed)
    text = json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError as exc:  # a lone surrogate such as "\ud800" parses but has no UTF-8 form
        raise StrictJSONError(f"not encodable as UTF-8: {exc.reason}") from None


def compact_bytes(value: Any) -> bytes:
    """Compact JSON for messages on the wire (not a signing format).

    NaN and infinities have no JSON form: Python would write `NaN`/`Infinity`, which no
    strict reader (ours included) accepts, so a message holding one could be stored and
    then never read. Refuse it here, with the reason, before anything is written.
    """
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError as exc:
        raise StrictJSONError(f"not writable as JSON: {exc} (NaN or an infinity)") from None
    return text.encode()
