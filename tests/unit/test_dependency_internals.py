"""Every private internal of a library the service relies on, checked on the installed version.

pyproject.toml bounds these libraries (nats-py <2.17) and requirements/ pins them; when a bound is
raised on purpose, these tests say which piece of our code an upgrade broke, instead of a hang or a
wrong answer somewhere in the suite. One test per internal, each naming the code that needs it.
"""

from __future__ import annotations

import inspect

from nats.aio.client import Client
from nats.js import JetStreamContext

from services.jetstream.client import KxClient, parse_header_lines
from services.jetstream.direct import connection_of


def source(fn) -> str:
    return inspect.getsource(fn)


def test_jetstream_context_keeps_its_connection_as__nc():
    """services/jetstream/direct.py connection_of(js) returns `js._nc` (direct gets and batch
    publishes go on the connection a JetStream context publishes on)."""
    nc = Client()
    js = nc.jetstream()
    assert isinstance(js, JetStreamContext)
    assert getattr(js, "_nc", None) is nc, (
        "nats-py's JetStreamContext no longer keeps its connection as `_nc`: "
        "fix services/jetstream/direct.py connection_of"
    )
    assert connection_of(js) is nc


def test_reconnect_loop_reads_options_max_reconnect_attempts():
    """services/jetstream/client.py connect() sets `nc.options["max_reconnect_attempts"] = -1` after the
    first connection (reconnect forever); that works only while the reconnect loop reads the option there."""
    code = source(Client._select_next_server) + source(Client._attempt_reconnect)
    assert 'self.options["max_reconnect_attempts"]' in code, (
        "nats-py's reconnect loop no longer reads options['max_reconnect_attempts']: services/jetstream/client.py "
        "connect() cannot make a connected service reconnect forever that way"
    )
    assert isinstance(Client().options, dict), "nats-py's Client has no options dict"
    assert 'self.options["max_reconnect_attempts"] = max_reconnect_attempts' in source(Client.connect)


def test_messages_are_parsed_through_client__parse_header_lines():
    """services/jetstream/client.py KxClient replaces `_parse_header_lines` (the C-speed header parser):
    nats-py must still parse message headers through `self._parse_header_lines(raw) -> dict`."""
    assert isinstance(inspect.getattr_static(Client, "_parse_header_lines"), staticmethod), (
        "nats-py's Client._parse_header_lines is no longer a staticmethod: see services/jetstream/client.py KxClient"
    )
    assert list(inspect.signature(Client._parse_header_lines).parameters) == ["raw"]
    assert "self._parse_header_lines(" in source(Client._process_headers), (
        "nats-py no longer parses message headers with self._parse_header_lines: KxClient's parser is unused"
    )
    assert KxClient._parse_header_lines is parse_header_lines
    raw = b"Nats-Msg-Id: a\r\nKx-Sig: b\r\n\r\n"
    assert Client._parse_header_lines(raw) == parse_header_lines(raw) == {"Nats-Msg-Id": "a", "Kx-Sig": "b"}


def test_requests_wait_in__resp_map_under_the_token_after__resp_sub_prefix():
    """services/jetstream/client.py KxClient.fail_denied/_forget_answered match a denied publish to the
    requests waiting for it: `_resp_map` maps the token after `_resp_sub_prefix` to the request's future."""
    nc = Client()
    assert nc._resp_map == {} and isinstance(nc._resp_map, dict), "nats-py's Client has no _resp_map dict"
    assert nc._resp_sub_prefix is None, "nats-py's Client has no _resp_sub_prefix (None before the first request)"
    code = source(Client._request_new_style)
    assert "inbox = self._resp_sub_prefix[:]" in code and "inbox.extend(token)" in code, (
        "nats-py's request inbox is no longer _resp_sub_prefix + token: fix KxClient._forget_answered/fail_denied"
    )
    assert "self._resp_map[token.decode()] = future" in code, (
        "nats-py no longer keeps a request's future in _resp_map under its token: fix KxClient.fail_denied"
    )


def test_the_reply_inbox_prefix_is__inbox_prefix_as_bytes():
    """services/jetstream/client.py KxClient.fail_denied recognises a denied subscription to our reply
    inbox by `_inbox_prefix` (bytes), which nats-py sets from connect(inbox_prefix=...)."""
    nc = Client()
    assert isinstance(nc._inbox_prefix, bytearray | bytes), "nats-py's Client has no _inbox_prefix bytes"
    assert bytes(nc._inbox_prefix) == b"_INBOX"
    assert "self._inbox_prefix = bytearray(inbox_prefix)" in source(Client.connect), (
        "nats-py no longer sets _inbox_prefix from connect(inbox_prefix=...): fix KxClient.fail_denied"
    )


def test_publish_keeps_the_signature_kxclient_overrides():
    """services/jetstream/client.py KxClient.publish(subject, payload, reply, headers) wraps nats-py's publish
    (requests and JetStream pulls publish through it)."""
    assert list(inspect.signature(Client.publish).parameters) == ["self", "subject", "payload", "reply", "headers"]
    assert list(inspect.signature(KxClient.publish).parameters) == list(inspect.signature(Client.publish).parameters)
