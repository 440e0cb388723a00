"""Our NATS client and how every process connects with it (`connect`: KX_NATS_URL, a cluster's
servers, the user's own reply prefix, reconnecting forever once connected).

The client is nats-py's, with a header parser that does the same work in C.

nats-py 2.16 checks every header name for whitespace one character at a time through
a Python generator (`any(c.isspace() for c in key)`); a log message carries five or
six headers (message id, expected sequences, batch, signature), so a replay of a long
log spent more time there than in decoding its JSON. `parse_header_lines` returns
exactly what nats-py's `Client._parse_header_lines` returns for every input (a
property test compares the two), with the per-character loop replaced by one regex
search over the name's bytes.
"""

from __future__ import annotations

import logging
import re

from nats.aio.client import Client

from services.permissions import inbox_for_url

log = logging.getLogger(__name__)

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


def nats_servers(url: str | list[str]) -> str | list[str]:
    """What `nats.connect` takes for KX_NATS_URL: one URL, or the list a comma-separated value names."""
    servers = [u.strip() for u in url.split(",") if u.strip()] if isinstance(url, str) else list(url)
    if len(servers) > 1:
        return servers
    return servers[0] if servers else url


async def connect(url: str | list[str], name: str = "kxr", *, reconnect_forever: bool = True, **kwargs) -> Client:
    """Connect; a first connection that fails raises with the reason (after a few tries).

    `url` may list a cluster's servers, comma-separated (KX_NATS_URL=nats://a:4222,nats://b:4222):
    the client starts with any of them and fails over to the others. Once connected, a
    service reconnects forever: a NATS restart must not stop it.
    """

    connected = False

    async def _error(exc: Exception) -> None:
        # before the first connection the caller reports the failure in one line; after it, say why
        (log.warning if connected else log.debug)("nats: %s", exc)

    if "inbox_prefix" not in kwargs:  # the KX_NATS_CREDS user may receive replies on its own prefix only
        inbox = inbox_for_url(url)
        if inbox:
            kwargs["inbox_prefix"] = inbox
    nc = KxClient()  # what nats.connect builds, with the faster header parser
    await nc.connect(
        nats_servers(url),
        name=name,
        max_reconnect_attempts=3,
        reconnect_time_wait=0.5,  # type: ignore[arg-type]  # nats-py annotates int; it sleeps this float
        error_cb=_error,
        allow_reconnect=True,
        connect_timeout=3,
        **kwargs,
    )
    connected = True
    if reconnect_forever:
        nc.options["max_reconnect_attempts"] = -1  # read by nats.py's reconnect loop
    return nc
