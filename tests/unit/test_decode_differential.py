"""The fast decoder against its slow reference: same verdict, same reasons, equal events.

`decode_event` parses with JSON decoders built once (`events.canonical._parse`) and calls
pydantic's validators directly, filling the parsed document in place. The reference is
the plain way to write each of those three steps: `json.loads` with the same hooks on every
call, `Model.model_validate`, and a copy of the document. Swapping them in (`reference()`)
must change nothing on any input: real recorded events, mutated ones, and hostile JSON
(duplicate keys at any depth, floats, huge numbers, lone surrogates, deep nesting, BOMs).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from events import canonical, codec
from events.canonical import StrictJSONError, loads_strict
from events.codec import DecodeError, decode_event, encode_event
from events.model import Event

from .test_fuzz import EVENT_DOCS, JSON_VALUES, SUBJECT_CHOICES, VALID_BYTES, byte_mutated, dumps, fuzz, mutated

HISTORIES = Path(__file__).resolve().parent.parent / "fixtures" / "histories"
RECORDED = [
    json.loads(line)
    for path in sorted(HISTORIES.glob("*.jsonl"))
    for line in path.read_text().splitlines()
    if line.strip()
]
RECORDED_BYTES = [(json.dumps(r["event"], separators=(",", ":")).encode(), r["subject"]) for r in RECORDED]


@contextmanager
def reference() -> Iterator[None]:
    saved = canonical._fast_parse, canonical._parse, codec._validate_payload, codec._validate_envelope
    canonical._fast_parse = lambda raw, allow_floats: canonical._UNSURE
    canonical._parse = canonical.reference_parse
    codec._validate_payload = lambda model, data: model.model_validate(data)
    codec._validate_envelope = lambda doc: Event.model_validate({**doc})
    try:
        yield
    finally:
        canonical._fast_parse, canonical._parse, codec._validate_payload, codec._validate_envelope = saved


def _outcome(call) -> tuple[str, Any]:
    try:
        return "ok", call()
    except (DecodeError, StrictJSONError) as exc:
        return type(exc).__name__, (str(exc), getattr(exc, "reasons", None))


def assert_same_decode(raw: bytes, subject: str | None) -> None:
    fast = _outcome(lambda: decode_event(raw, subject))
    with reference():
        slow = _outcome(lambda: decode_event(raw, subject))
    assert fast[0] == slow[0], (fast, slow)
    if fast[0] == "ok":
        assert fast[1] == slow[1]
        assert type(fast[1].data) is type(slow[1].data)
        assert encode_event(fast[1]) == encode_event(slow[1])
        assert fast[1].model_fields_set == slow[1].model_fields_set
    else:
        assert fast[1] == slow[1]  # same message, same reasons (codes, fields)


def assert_same_parse(raw: bytes | str, allow_floats: bool) -> None:
    fast = _outcome(lambda: loads_strict(raw, allow_floats=allow_floats))
    with reference():
        slow = _outcome(lambda: loads_strict(raw, allow_floats=allow_floats))
    assert fast[0] == slow[0], (fast, slow)
    assert repr(fast[1]) == repr(slow[1])  # repr: -0.0 and 0.0, 1 and 1.0 and True differ


def _hostile() -> list[bytes]:
    base = json.dumps(RECORDED[0]["event"]).encode()
    deep = lambda n: b"[" * n + b"]" * n  # noqa: E731
    return [
        b'{"a":1,"a":2}',
        b'{"x":{"y":{"a":1,"a":1}}}',
        b'[{"k":[{"d":0,"d":0}]}]',
        base[:-1] + b', "type": "release.closed"}',
        base.replace(b'"data": {', b'"data": {"pack": null, ', 1),  # a duplicate inside data
        b'{"a":1.5}',
        b'{"a":-0.0}',
        b'{"a":1e400}',
        b'{"a":-1e400}',
        b'{"a":NaN}',
        b'{"a":Infinity}',
        b'{"a":-Infinity}',
        b'{"a":' + b"9" * 4300 + b"}",
        b'{"a":' + b"9" * 4301 + b"}",
        b'{"a":1' + b"0" * 400 + b".0}",
        b'{"a":"\\ud800"}',
        b'{"\\udfff":1}',
        b'{"a":"\\ud83d\\ude00"}',
        b'{"a":"\xed\xa0\x80"}',
        b'{"a":"\xff"}',
        deep(150),
        deep(199),
        deep(200),
        deep(5000),
        deep(100_000),
        b'{"a":' + b'{"b":' * 300 + b"1" + b"}" * 301,
        b"\xef\xbb\xbf" + base,
        b" " + base + b" \n",
        base + b" x",
        b"",
        b"null",
        b"[]",
        b'"x"',
        b"1",
        b"{}",
        b'{"type": 1}',
        b'{"type": "release.requested", "schema_version": true}',
        b'{"type": "nope.x", "schema_version": 1}',
        # where the fast parser (jiter) and the reference could part ways
        b'{"a":1,"\\u0061":2}',  # a duplicate only once unescaped
        b'{"\\u00e9":1,"\xc3\xa9":2}',
        b'{"":1,"":2}',
        b'{"a":1E400}',
        b'{"a":[1,2,-1e400]}',
        b'{"a":' + b"1" * 400 + b"}",  # a big int, not a float
        b'{"a":-' + b"9" * 4300 + b"}",
        b'{"a":1e-400}',  # underflows to 0.0 in both
        b'{"a":5e-324}',
        b'{"a":1.7976931348623157e308}',
        b'{"a":1.7976931348623159e308}',  # rounds past the largest double: inf
        base[:-1] + b', "extra": {"x": [1e999]}}',  # an overflow in a field no model reads
        base[:-1] + b', "extra": 0.5}',
        deep(253),
        deep(254),
        deep(255),
        deep(256),
        b'{"a":"\\u0000"}',
        b"\t\r\n " + base,
        b"\x0c" + base,
        # numbers past a double (or floats) however they are written: whitespace, exponents, top level
        b'{"a":\n\t -1.8E+308}',
        b'{"a": [0 ,\r 9999999999.5e300]}',
        b'{"a":' + b"1" * 21 + b"e299}",  # a two-digit exponent, but 21 digits before it: inf
        b'{"a":' + b"9" * 300 + b"e9}",
        b'{"a":123456789e99}',  # under both bounds: finite
        b'{"a":1e0400}',
        b"1e400",
        b"1.5",
        b" \n2E3",
        b"[1, 2.0]",
        b'{"a":"x:1e400","b":[1,"2.5"]}',  # lookalikes inside strings: the walk, then the same verdict
    ]


def test_the_fast_parser_takes_real_events_and_leaves_the_rest_to_the_reference() -> None:
    """Without this, a fast path that never answered would pass every differential test above."""
    raw = RECORDED_BYTES[0][0]
    assert canonical._fast_parse(raw, True) == json.loads(raw)
    assert canonical._fast_parse(b'{"a":1.5}', False) is canonical._UNSURE  # a float where none may be
    assert canonical._fast_parse(b'{"a":[1e400]}', True) is canonical._UNSURE  # jiter reads it as inf
    assert canonical._fast_parse(b'{"a":1,"a":1}', True) is canonical._UNSURE
    # a number past a double is found however it is written
    for raw in (b'{"a":\n\t 1' + b"0" * 300 + b"e10}", b'{"a" :[0,\t-2E+308]}', b'{"a":' + b"7" * 310 + b".0}"):
        assert canonical._fast_parse(raw, True) is canonical._UNSURE, raw[:40]
    assert canonical._fast_parse(b'{"a": [1,\n 2e1]}', False) is canonical._UNSURE


@pytest.mark.parametrize("index", range(len(RECORDED_BYTES)))
def test_recorded_events_decode_the_same(index: int) -> None:
    raw, subject = RECORDED_BYTES[index]
    assert_same_decode(raw, subject)
    assert_same_decode(raw, None)


@pytest.mark.parametrize("raw", _hostile(), ids=lambda r: repr(r[:40]))
def test_hostile_json_is_judged_the_same(raw: bytes) -> None:
    for subject in (None, RECORDED_BYTES[0][1]):
        assert_same_decode(raw, subject)
    for allow_floats in (False, True):
        assert_same_parse(raw, allow_floats)
        if b"\xff" not in raw and b"\xed" not in raw:
            assert_same_parse(raw.decode("utf-8"), allow_floats)


@fuzz("differential_mutated_events", 1500)
@given(data=st.data())
def test_mutated_events_decode_the_same(data) -> None:
    event_type = data.draw(st.sampled_from(sorted(EVENT_DOCS)), label="type")
    doc = data.draw(mutated(EVENT_DOCS[event_type], max_edits=3), label="doc")
    raw = dumps(doc, data.draw(st.booleans(), label="ascii"))
    if data.draw(st.booleans(), label="duplicate"):  # a key repeated in a random object of the text
        at = [i for i, c in enumerate(raw) if c == ord("{")]
        if at:
            i = data.draw(st.sampled_from(at), label="where")
            key = data.draw(st.sampled_from([b'"type"', b'"data"', b'"pack"', b'"name"', b'"x"']), label="key")
            raw = raw[: i + 1] + key + b":0," + raw[i + 1 :]
    assert_same_decode(raw, data.draw(SUBJECT_CHOICES, label="subject"))


@fuzz("differential_recorded_bytes", 1000)
@given(raw=byte_mutated([r for r, _ in RECORDED_BYTES] + VALID_BYTES), subject=SUBJECT_CHOICES)
def test_byte_mutated_events_decode_the_same(raw: bytes, subject: str | None) -> None:
    assert_same_decode(raw, subject)


@fuzz("differential_json_values", 1000)
@given(doc=JSON_VALUES, ascii_only=st.booleans(), allow_floats=st.booleans())
def test_any_json_parses_the_same(doc: Any, ascii_only: bool, allow_floats: bool) -> None:
    raw = dumps(doc, ascii_only)
    assert_same_parse(raw, allow_floats)
    assert_same_decode(raw, None)


@fuzz("differential_text", 1000)
@given(
    text=st.text(st.sampled_from('{}[]":,.-+eE0123456789 \t\n\\u\ufeffabdNInfinity'), max_size=40),
    allow_floats=st.booleans(),
)
def test_json_shaped_text_parses_the_same(text: str, allow_floats: bool) -> None:
    assert_same_parse(text, allow_floats)


def test_anything_the_fast_parser_raises_leaves_the_verdict_to_the_reference(monkeypatch) -> None:
    """jiter refuses with ValueError; should it raise anything else, `decode_event` must still raise
    nothing but DecodeError (and accept what the reference accepts): the reference judges."""

    def broken(*args, **kwargs):
        raise RuntimeError("not a ValueError")

    monkeypatch.setattr(canonical.jiter, "from_json", broken)
    raw, subject = RECORDED_BYTES[0]
    assert canonical._fast_parse(raw, True) is canonical._UNSURE
    assert decode_event(raw, subject) == decode_event(raw, None)
    with pytest.raises(DecodeError):
        decode_event(b'{"a":1,"a":2}', subject)
