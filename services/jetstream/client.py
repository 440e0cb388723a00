"""Our NATS client and how every process connects with it (`connect_with`: the servers, identity
and TLS that services/settings.py `connection_from` resolved; `connect`: a URL and options; both
with a cluster's servers, the user's own reply prefix, reconnecting forever once connected).

A request whose publish the server denies fails at once with `PermissionDenied` (naming the
subject), instead of waiting for a reply that cannot come: NATS only reports the violation
asynchronously, so the client matches it to the requests waiting on that subject.

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

import asyncio
import contextlib
import logging
import re
from typing import TYPE_CHECKING, Any

from nats import errors as nats_errors
from nats.aio.client import Client

from services.permissions import DEFAULT_INBOX, inbox_for_url, inbox_for_user

if TYPE_CHECKING:
    from services.settings import Connection

log = logging.getLogger(__name__)

FIRST_CONNECT_S = 6.0  # what a first connection may take before it fails with its last error
FIRST_CONNECT_PER_SERVER_S = 4.0  # and this much per server of a cluster's list

_CRLF = b"\r\n"
# The ASCII characters `str.isspace` counts as whitespace: \t \n \v \f \r, the
# separators \x1c-\x1f and space. A name that decodes as ASCII has no others.
_NAME_WHITESPACE = re.compile(rb"[\t\n\x0b\x0c\r\x1c-\x1f ]")
_NAME_WHITESPACE_STR = re.compile(r"[\t\n\x0b\x0c\r\x1c-\x1f ]")
_BYTES_WHITESPACE = " \t\n\r\x0b\x0c"  # what bytes.strip() strips


# JetStream's answers carry where the message is stored (`Nats-Stream`, `Nats-Subject`, `Nats-Sequence`,
# `Nats-Time-Stamp`). Any role can have JetStream publish an answer on a subject a stream captures (the
# reply subject of its request: docs/permissions.md "JetStream's answers"), so a stored message may carry
# them itself: a direct get of it then holds `Nats-Stream` twice, the stored one first, the server's last.
# A dict keeps the last only, so the parser says so under RELAYED (the first value: where it was relayed
# from). No client writes `Nats-Stream` on a publish of its own: a delivery carrying it was relayed.
JS_STREAM = "Nats-Stream"
RELAYED = "Kx-Relayed-From"


def relayed_delivery(headers: dict[str, str] | None) -> str | None:
    """The stream a message delivered by a consumer or a subscription was relayed from (None: written by a
    client). Not for direct-get answers, which always carry `Nats-Stream`: see `relayed_answer`."""
    if not headers:
        return None
    return headers.get(RELAYED) or headers.get(JS_STREAM)


def relayed_answer(headers: dict[str, str] | None) -> str | None:
    """The stream a message read by a direct get was relayed from (None: written by a client)."""
    return headers.get(RELAYED) if headers else None


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """`Name: Value` lines -> dict; lines without a colon, non-ASCII names and names
    holding whitespace are skipped; values stripped and decoded as UTF-8 ('replace').
    A second `Nats-Stream` keeps the first under RELAYED."""
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
        key = name.decode("ascii")
        if key == JS_STREAM and key in out:
            out.setdefault(RELAYED, out[key])
        out[key] = value.strip().decode("utf-8", "replace")
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
                if name == JS_STREAM and name in out:
                    out.setdefault(RELAYED, out[name])
                out[name] = value.strip(strip)
    return out


class PermissionDenied(nats_errors.Error):
    """The server refused this user a publish or a subscription a request needed."""

    def __init__(self, action: str, subject: str) -> None:
        super().__init__(action, subject)
        self.action, self.subject = action, subject

    def __str__(self) -> str:
        return f"permission denied: this NATS user may not {self.action} {self.subject}"


_VIOLATION = re.compile(r"permissions violation for (publish|subscription) to \"?([^\"\s']+)", re.IGNORECASE)


class KxClient(Client):
    _parse_header_lines = staticmethod(parse_header_lines)

    def __init__(self) -> None:
        super().__init__()
        self._request_subjects: dict[str, str] = {}  # reply inbox -> subject, while a reply may come
        self.inbox_denied: PermissionDenied | None = None  # our inbox prefix is not this user's: no reply comes

    async def publish(self, subject: str, payload: bytes = b"", reply: str = "", headers: Any = None) -> None:
        if reply:
            if self.inbox_denied is not None:
                raise self.inbox_denied  # a request, or a pull, whose reply could never arrive
            requests = self._request_subjects
            requests[reply] = subject
            if len(requests) > 2 * len(self._resp_map) + 256:
                self._forget_answered()
        await super().publish(subject, payload, reply, headers)

    def _forget_answered(self) -> None:
        prefix = self._resp_sub_prefix.decode() if self._resp_sub_prefix else None
        if prefix is None:
            self._request_subjects.clear()
            return
        n = len(prefix)
        self._request_subjects = {
            r: s for r, s in self._request_subjects.items() if r.startswith(prefix) and r[n:] in self._resp_map
        }

    def fail_denied(self, message: str) -> bool:
        """For a permissions violation the server reported: fail the requests it leaves without a
        reply (those published to the denied subject; every one if our reply inbox is denied) with
        `PermissionDenied`. True if it was a violation that failed at least one request."""
        m = _VIOLATION.search(message)
        if m is None:
            return False
        kind, denied = m.group(1).lower(), m.group(2).lower()  # nats-py lower-cases the server's -ERR
        prefix = self._resp_sub_prefix.decode() if self._resp_sub_prefix else None
        failed = False
        inbox = self._inbox_prefix.decode().lower() + "."
        if kind == "subscription" and denied.startswith(inbox):
            # every reply, of requests and pulls alike, comes to this prefix: none can arrive
            self.inbox_denied = PermissionDenied("subscribe to", f"{self._inbox_prefix.decode()}.> (its replies)")
            for future in self._resp_map.values():
                if not future.done():
                    future.set_exception(self.inbox_denied)
            return True
        for token, future in list(self._resp_map.items()):
            if future.done():
                continue
            subject = self._request_subjects.get(f"{prefix}{token}") if prefix else None
            if kind == "publish" and subject is not None and subject.lower() == denied:
                future.set_exception(PermissionDenied("publish to", subject))
                failed = True
        return failed


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
    nc = KxClient()  # what nats.connect builds, with the faster header parser
    errors: list[Exception] = []

    async def _error(exc: Exception) -> None:
        if nc.fail_denied(str(exc)):
            log.debug("nats: %s", exc)  # the request it denied fails with it: the caller says so
            return
        # before the first connection the caller reports the failure in one line (the last error kept
        # here); after it, say why in the log: a service reconnecting for days keeps no list of them
        if connected:
            log.warning("nats: %s", exc)
            return
        errors.append(exc)
        log.debug("nats: %s", exc)

    if "inbox_prefix" not in kwargs:  # the KX_NATS_CREDS user may receive replies on its own prefix only
        inbox = inbox_for_url(url)
        if inbox:
            kwargs["inbox_prefix"] = inbox
    servers = nats_servers(url)
    # the first connection's attempts and timeouts: a caller may bound them tighter (kxr health)
    options = {"max_reconnect_attempts": 3, "reconnect_time_wait": 0.5, "allow_reconnect": True, "connect_timeout": 3}
    first = nc.connect(servers, name=name, error_cb=_error, **{**options, **kwargs})
    # nats-py 2.16 can wait forever after a failed TLS handshake (a server certificate no CA here
    # signs): the first connection gets a bound, and the last error it saw as its reason
    bound = FIRST_CONNECT_S + FIRST_CONNECT_PER_SERVER_S * (len(servers) if isinstance(servers, list) else 1)
    try:
        await asyncio.wait_for(first, bound)
    except TimeoutError:
        with contextlib.suppress(Exception):
            await nc.close()
        reason = f": {errors[-1]}" if errors else ""
        raise ConnectionError(f"no connection within {bound:.0f} s{reason}") from None
    except nats_errors.NoServersError:
        if not errors:
            raise
        raise ConnectionError(f"no server accepted the connection: {errors[-1]}") from None  # say why
    connected = True
    if reconnect_forever:
        nc.options["max_reconnect_attempts"] = -1  # read by nats.py's reconnect loop
    return nc


async def connect_with(
    connection: Connection, name: str = "kxr", *, reconnect_forever: bool = True, **kwargs
) -> Client:
    """Connect as `connection` says (servers, identity, inbox prefix, TLS); `kwargs` add to or
    override its options (e.g. a default inbox prefix: pass `default_inbox`). Raises ConfigError
    for an unusable file (credentials, CA, certificate), else what `connect` raises.

    The inbox prefix: the connection's own (its credentials or context name one), else
    `default_inbox`, else, for a `kxr` role's user (`<prefix>-operator`, …), that role's private
    one, which is the only one its user may receive on (services/permissions.py `inbox_for_user`:
    a bare URL, a nats context with a user, or a credentials file written when the role still
    received on the default), else the default `_INBOX`."""
    from services.settings import ConfigError

    if not connection.url:
        raise ConfigError("no NATS server named")
    default_inbox = kwargs.pop("default_inbox", None)
    options = connection.connect_options()
    if default_inbox and "inbox_prefix" not in options:
        options["inbox_prefix"] = default_inbox
    if options.get("inbox_prefix", DEFAULT_INBOX) == DEFAULT_INBOX:
        own = inbox_for_user(connection.user)
        if own:
            options["inbox_prefix"] = own
    options.update(kwargs)
    options.setdefault("inbox_prefix", DEFAULT_INBOX)  # never guessed from KX_NATS_CREDS: the connection says
    return await connect(connection.url, name, reconnect_forever=reconnect_forever, **options)
