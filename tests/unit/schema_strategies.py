"""Hypothesis strategies for documents valid under our published JSON Schemas (docs/schemas/).

A producer, runtime or auditor written in another language builds from those schemas alone, so
whatever they call valid must decode here. This generates such documents from the schema files
themselves, not from our pydantic models (which would only test the models against themselves).

Written by hand for the subset of JSON Schema 2020-12 the generated schemas use ($ref into
$defs, anyOf, allOf, const, enum, type, properties/required/additionalProperties/propertyNames,
pattern, lengths, minimum/maximum, items/prefixItems/uniqueItems, format date-time):
hypothesis-jsonschema, the library for this, fails on object schemas with the hypothesis this
project pins ('many' object has no attribute 'more', 0.23.1). Anything outside the subset raises,
so a new schema keyword is noticed instead of being ignored.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st
from jsonschema import Draft202012Validator

# Keywords that only annotate: they constrain nothing a generator must respect.
ANNOTATIONS = frozenset({"title", "description", "default", "$id", "$schema", "$defs", "examples"})
HANDLED = ANNOTATIONS | {
    "$ref",
    "anyOf",
    "const",
    "enum",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "items",
    "prefixItems",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "propertyNames",
    "uniqueItems",
    "allOf",
    "format",
}
# Numbers another language writes without thinking twice: a 64-bit integer's range, any finite double.
INT64 = 2**63


class UnsupportedSchema(ValueError):
    """A keyword this generator does not know: extend it rather than generate what the schema forbids."""


def rfc3339() -> st.SearchStrategy[str]:
    """RFC 3339 date-times as other languages write them: `T`, `Z` or a numeric offset, and
    fractional seconds of any length (Go writes up to 9 digits, JavaScript 3, Python 6); `t` and
    `z` in lower case too (RFC 3339 §5.6 allows them)."""

    def render(moment: datetime, offset_min: int, digits: int, zulu: bool, lower: bool) -> str:
        text = _render(moment, offset_min, digits, zulu)
        return text.lower() if lower else text

    def _render(moment: datetime, offset_min: int, digits: int, zulu: bool) -> str:
        tz = timezone(timedelta(minutes=offset_min))
        local = moment.astimezone(tz)
        text = local.strftime("%Y-%m-%dT%H:%M:%S")
        if digits:
            text += "." + f"{local.microsecond:06d}{local.microsecond % 1000:03d}"[:digits]
        if zulu and offset_min == 0:
            return text + "Z"
        sign = "+" if offset_min >= 0 else "-"
        hours, minutes = divmod(abs(offset_min), 60)
        return f"{text}{sign}{hours:02d}:{minutes:02d}"

    return st.builds(
        render,
        st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)),
        st.sampled_from([0, 0, 60, -300, 330, 345, -720, 840]),
        st.sampled_from([0, 3, 6, 9]),
        st.booleans(),
        st.booleans(),
    )


def _ref(root: dict[str, Any], ref: str) -> dict[str, Any]:
    if not ref.startswith("#/"):
        raise UnsupportedSchema(f"$ref {ref!r}: only local references are generated")
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _number(schema: dict[str, Any], integer: bool) -> st.SearchStrategy[Any]:
    low, high = schema.get("minimum"), schema.get("maximum")
    above = schema.get("exclusiveMinimum")  # (the only exclusive bound the schemas use)
    if above is not None:
        low = above
    int_low = -INT64 if low is None else max(-INT64, math.floor(low) + 1 if above is not None else math.ceil(low))
    int_high = INT64 - 1 if high is None else min(INT64 - 1, math.floor(high))
    ints = st.integers(min_value=int_low, max_value=int_high)
    if integer:
        # JSON Schema's integer is any number without a fraction: `600.0` too (exact as a double up to 2**53)
        exact = st.integers(min_value=max(int_low, -(2**53)), max_value=min(int_high, 2**53)).map(float)
        return st.one_of(ints, exact) if max(int_low, -(2**53)) <= min(int_high, 2**53) else ints
    floats = st.floats(
        min_value=low, max_value=high, exclude_min=above is not None, allow_nan=False, allow_infinity=False
    )
    return st.one_of(ints, floats) if int_low <= int_high else floats


def _string(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    low, high = schema.get("minLength", 0), schema.get("maxLength")
    if "pattern" in schema:
        text = st.from_regex(re.compile(schema["pattern"]), fullmatch=True)
    elif schema.get("format") == "date-time":
        text = rfc3339()
    elif "format" in schema:
        raise UnsupportedSchema(f"format {schema['format']!r}")
    else:
        return st.text(min_size=low, max_size=high if high is not None else 40)
    return text.filter(lambda s: low <= len(s) and (high is None or len(s) <= high))


def _object(schema: dict[str, Any], root: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    properties: dict[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", []))
    fixed = {name: from_schema(sub, root) for name, sub in properties.items() if name in required}
    optional = {name: from_schema(sub, root) for name, sub in properties.items() if name not in required}
    extra = schema.get("additionalProperties", True)
    if extra is False:
        extras: st.SearchStrategy[dict[str, Any]] = st.just({})
    else:
        # fields a newer writer added: allowed and kept, the schemas say
        values = from_schema(extra, root) if isinstance(extra, dict) else JSON_VALUES
        named = schema.get("propertyNames")
        names = (from_schema({"type": "string", **named}, root) if named else st.text(min_size=1, max_size=12)).filter(
            lambda n: n not in properties
        )
        extras = st.dictionaries(names, values, max_size=2)
    low, high = schema.get("minProperties", 0), schema.get("maxProperties")

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        doc = {name: draw(strategy) for name, strategy in fixed.items()}
        for name, strategy in optional.items():
            if draw(st.booleans()):
                doc[name] = draw(strategy)
        for name, value in draw(extras).items():
            doc.setdefault(name, value)
        return doc

    return build().filter(lambda d: low <= len(d) and (high is None or len(d) <= high))


# Any JSON value (what `{}` or `additionalProperties: true` allows; the fuzzers' junk too): integers
# past 64 bits as well, since JSON itself sets no bound.
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)


def from_schema(schema: dict[str, Any] | bool, root: dict[str, Any] | None = None) -> st.SearchStrategy[Any]:
    """Documents valid under `schema` (`root`: the document its `$ref`s point into)."""
    if schema is True or schema == {}:
        return JSON_VALUES
    if schema is False:
        return st.nothing()
    assert isinstance(schema, dict)
    root = schema if root is None else root
    unknown = set(schema) - HANDLED
    if unknown:
        raise UnsupportedSchema(f"keywords {sorted(unknown)} are not generated")
    if "$ref" in schema:
        return from_schema(_ref(root, schema["$ref"]), root)
    if "allOf" in schema:
        # generated from the rest, kept when each part holds (the schemas use it for a second pattern)
        parts = [Draft202012Validator(sub) for sub in schema["allOf"]]
        rest = {k: v for k, v in schema.items() if k != "allOf"}
        return from_schema(rest, root).filter(lambda doc: all(part.is_valid(doc) for part in parts))
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "anyOf" in schema:
        # what sits beside anyOf (a pattern on an optional string) holds in every branch
        beside = {k: v for k, v in schema.items() if k != "anyOf" and k not in ANNOTATIONS}
        return st.one_of([from_schema({**beside, **sub}, root) for sub in schema["anyOf"]])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": k}, root) for k in kind])
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind in ("integer", "number"):
        return _number(schema, kind == "integer")
    if kind == "string":
        return _string(schema)
    if kind == "array":
        prefix = [from_schema(sub, root) for sub in schema.get("prefixItems", [])]
        if prefix:
            if "items" in schema and schema["items"] is not False:
                raise UnsupportedSchema("prefixItems followed by more items")
            return st.tuples(*prefix).map(list)
        return st.lists(
            from_schema(schema.get("items", True), root),
            min_size=schema.get("minItems", 0),
            max_size=schema.get("maxItems", 4),
            unique_by=(lambda item: json.dumps(item, sort_keys=True)) if schema.get("uniqueItems") else None,
        )
    if kind == "object" or "properties" in schema:
        return _object(schema, root)
    if kind is None:
        return JSON_VALUES
    raise UnsupportedSchema(f"type {kind!r}")
