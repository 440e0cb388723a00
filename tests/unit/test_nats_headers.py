"""Our header parser (services/jetstream/client.py) gives exactly what nats-py's own gives, on any input."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from services.jetstream.client import RELAYED, KxClient, parse_header_lines, relayed_answer, relayed_delivery

# bytes that matter to the parser: separators, every ASCII whitespace (with \x1c-\x1f,
# which str.isspace counts and bytes.strip does not), non-ASCII and invalid UTF-8
_INTERESTING = st.sampled_from(
    [
        b"\r\n",
        b"\r",
        b"\n",
        b":",
        b": ",
        b" ",
        b"\t",
        b"\x0b",
        b"\x0c",
        b"\x1c",
        b"\x1d",
        b"\x1e",
        b"\x1f",
        b"\x85",
        b"\xa0",
        b"\xc2\xa0",
        b"\xe2\x80\x83",
        b"\xff",
        b"\xc3",
        b"\xe9",
        b"\x00",
        b"Nats-Msg-Id",
        b"Nats-Stream",
        b"Kx-Signature",
        b"value",
        b"\xc3\xa9",
    ]
)
_LINE = st.lists(st.one_of(_INTERESTING, st.binary(max_size=6)), max_size=8).map(b"".join)


def _same(raw: bytes) -> None:
    """nats-py's dict, plus RELAYED where `Nats-Stream` came twice (what a dict keeping the last hides)."""
    ours, theirs = parse_header_lines(raw), Client._parse_header_lines(raw)
    if RELAYED not in theirs:
        ours.pop(RELAYED, None)
    assert ours == theirs


@given(st.lists(_LINE, max_size=8).map(b"\r\n".join))
@settings(max_examples=3000, deadline=None)
def test_header_blocks_parse_as_nats_py_parses_them(raw: bytes) -> None:
    _same(raw)


# all-ASCII blocks take the parser's str path: every control character, both line-break halves
_ASCII_LINE = st.lists(
    st.one_of(
        st.sampled_from([b"\r\n", b":", b" ", b"Nats-Msg-Id", b"v"]),
        st.binary(max_size=4).map(lambda b: bytes(c & 0x7F for c in b)),
    ),
    max_size=10,
).map(b"".join)


@given(st.lists(_ASCII_LINE, max_size=8).map(b"\r\n".join))
@settings(max_examples=3000, deadline=None)
def test_ascii_header_blocks_parse_as_nats_py_parses_them(raw: bytes) -> None:
    assert raw.isascii()
    _same(raw)


@given(st.binary(max_size=200))
@settings(max_examples=1000, deadline=None)
def test_any_bytes_parse_as_nats_py_parses_them(raw: bytes) -> None:
    _same(raw)


def test_log_headers_and_edge_cases() -> None:
    for raw in [
        b"Nats-Msg-Id: abc\r\nNats-Batch-Id: b1\r\nKx-Signer: activator\r\n\r\n",
        b"Name:Value\r\nName:\tother\r\n",
        b"Bad Name: x\r\n\x1cName: y\r\nName\x1f: z\r\n",
        b": empty name\r\n",
        b"Caf\xc3\xa9: x\r\nok: caf\xc3\xa9 \xff\r\n",
        b"no colon\r\n\r\n",
        b"",
    ]:
        _same(raw)


def test_the_client_uses_it() -> None:
    assert KxClient._parse_header_lines is parse_header_lines
    assert issubclass(KxClient, Client)


def test_a_message_stored_with_jetstreams_answer_headers_is_marked_relayed() -> None:
    """A direct get of a message that JetStream relayed into a stream (an API answer on a captured reply
    subject) holds `Nats-Stream` twice: the stored one first (where it was relayed from), the server's last."""
    answer = (
        b"NATS/1.0\r\nFoo: bar\r\nNats-Stream: OBJ_kx_packs\r\nNats-Subject: $O.kx_packs.C.x\r\n"
        b"Nats-Sequence: 1\r\nNats-Stream: KX_HEALTH\r\nNats-Subject: kx.health.prod.canary.all.rt-1\r\n"
        b"Nats-Sequence: 9\r\n\r\n"
    )
    for raw in (answer, answer.replace(b"Foo: bar", "Foo: b\u00e4r".encode())):  # both parser paths
        headers = parse_header_lines(raw)
        assert headers["Nats-Stream"] == "KX_HEALTH" and headers[RELAYED] == "OBJ_kx_packs"
        assert relayed_answer(headers) == "OBJ_kx_packs"
    plain_answer = parse_header_lines(b"NATS/1.0\r\nNats-Stream: KX_HEALTH\r\nNats-Sequence: 9\r\n\r\n")
    assert relayed_answer(plain_answer) is None  # a runtime's own report, read back
    assert relayed_delivery({"Nats-Msg-Id": "e1"}) is None and relayed_delivery(None) is None
    assert relayed_delivery({"Nats-Stream": "OBJ_kx_packs"}) == "OBJ_kx_packs"  # delivered as stored: relayed
