"""Our NATS client: nats-py's, with a header parser that does the same work in C.

nats-py 2.16 checks every header name for whitespace one character at a time through
a Python generator (`any(c.isspace() for c in key)`); a log message carries five or
six headers (message id, expected sequences, batch, signature), so a replay of a long
log spent more time there than in decoding its JSON. `parse_header_lines` returns
exactly what nats-py's `Client._parse_header_lines` returns for every input (a
property test compares the two), with the per-character loop replaced by one regex
search over the name's bytes.
"""

from __future__ import annotations

import re

from nats.aio.client import Client

_CRLF = b"\r\n"
# The ASCII characters `str.isspace` counts as whitespace: \t \n \v \f \r, the
# separators \x1c-\x1f and space. A name that decodes as ASCII has no others.
_NAME_WHITESPACE = re.compile(rb"[\t\n\x0b\x0c\r\x1c-\x1f ]")
_NAME_WHITESPACE_STR = re.compile(r"[\t\n\x0b\x0c\r\x1c-\x1f ]")
_BYTES_WHITESPACE = " \t\n\r\x0b\x0c"  # what bytes.strip() strips


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """`Name: Value` lines -> dict; lines without a colon, non-ASCII names and names
    holding whitespace are skipped; values stripped and decoded as UTF-8 ('replace')."""
    if raw.isascii():
        return _parse_ascii(raw)
    out: dict[str, str] = {}
    search = _NAME_WHITESPACE.search
    for line in raw.split(_CRLF):
        name, sep, value = line.partition(b":")
        if not sep:
            continue  # also the empty line
        name = name.strip()
        if not name.isascii() or search(name) is not None:
            continue
        out[name.decode("ascii")] = value.strip().decode("utf-8", "replace")
    return out


def _parse_ascii(raw: bytes) -> dict[str, str]:
    """The same on an all-ASCII block (every log message's): decoded once, then str methods,
    which on ASCII split, strip and decode exactly as the bytes ones."""
    out: dict[str, str] = {}
    search = _NAME_WHITESPACE_STR.search
    strip = _BYTES_WHITESPACE
    for line in raw.decode("ascii").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            name = name.strip(strip)
            # printable ASCII without a space has no whitespace at all: most names end here
            if (name.isprintable() and " " not in name) or search(name) is None:
                out[name] = value.strip(strip)
    return out


class KxClient(Client):
    _parse_header_lines = staticmethod(parse_header_lines)
