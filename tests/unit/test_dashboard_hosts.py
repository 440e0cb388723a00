"""The dashboard's Host and Origin rules as pure functions (services/dashboard/server.py), and the
guard's answer to an error no handler expected (web.py): still with the security headers."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from services.dashboard.server import parse_origin
from services.dashboard.web import LOOPBACK_HOSTS, SECURITY_HEADERS, _guard
from services.settings import ConfigError
from services.web_hosts import allowed_hosts


@pytest.mark.parametrize(
    ("given", "origin"),
    [
        ("https://dash.example", "https://dash.example"),
        ("https://Dash.Example/", "https://dash.example"),  # as a browser's Origin: lower case, no path
        ("https://dash.example:443", "https://dash.example"),  # no default port
        ("http://dash.example:80", "http://dash.example"),
        ("https://dash.example:8443", "https://dash.example:8443"),
        ("https://[2001:DB8::1]:8443", "https://[2001:db8::1]:8443"),
        ("https://xn--bcher-kva.example", "https://xn--bcher-kva.example"),
    ],
)
def test_a_public_origin_is_kept_as_browsers_send_it(given, origin):
    assert parse_origin(given) == origin


@pytest.mark.parametrize(
    "bad",
    [
        "dash.example",
        "ftp://dash.example",
        "https://",
        "https://dash.example/app",
        "https://dash.example?x=1",
        "https://dash.example#top",
        "https://user:pw@dash.example",
        "https://dash.example:99999",
        "https://bücher.example",  # browsers send the xn-- form: it must be written so
        "https://*.example",
    ],
)
def test_anything_but_an_origin_is_refused_in_one_line(bad):
    with pytest.raises(ConfigError, match=r"^--ui-origin .*: expected the dashboard's public origin"):
        parse_origin(bad)


def test_a_loopback_bind_answers_its_own_address_and_its_public_host_only():
    assert allowed_hosts("127.0.0.1") == LOOPBACK_HOSTS
    assert allowed_hosts("127.0.0.2") == LOOPBACK_HOSTS | {"127.0.0.2"}
    assert allowed_hosts("0:0:0:0:0:0:0:1") == LOOPBACK_HOSTS | {"[0:0:0:0:0:0:0:1]"}
    assert allowed_hosts("127.0.0.1", "https://dash.example:8443") == LOOPBACK_HOSTS | {"dash.example"}
    assert allowed_hosts("0.0.0.0") is None and allowed_hosts("0.0.0.0", "https://dash.example") is None


async def test_an_unexpected_error_is_a_500_of_one_line_with_the_security_headers():
    async def broken(request: web.Request) -> web.Response:
        raise OverflowError("date value out of range")

    app = web.Application(middlewares=[_guard(None)])
    app.router.add_get("/", broken)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/") as response:
            body = await response.text()
            assert response.status == 500 and body == "500: the dashboard failed on this request (see its log)\n"
            for name, value in SECURITY_HEADERS.items():
                assert response.headers.get(name) == value, name
    finally:
        await runner.cleanup()
