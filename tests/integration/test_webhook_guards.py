"""What a channel's sink cannot make the notifier do, against real local HTTP servers.

Whoever may configure a channel (the operator role) chooses each sink's URL; every outcome is recorded
in the log they read. So a URL cannot carry the service's own environment to its host, cannot aim the
post into the service's network, and cannot crash or stall the notifier: a URL httpx cannot send, an
internal address, a receiver that drips or floods its answer each end as one recorded failure (or a
bounded success), and the channel's other sinks are still posted.
"""

from __future__ import annotations

import asyncio
import re
import time
from types import SimpleNamespace

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from events.notifications import NotificationSink
from events.schema_patterns import WEBHOOK_URL
from events.subjects import Subjects
from services.actions.producer import parse_channel_config
from services.consumers.notifier import destination
from services.consumers.notifier.consumer import Notifier
from services.consumers.notifier.delivery import ATTEMPT_TIMEOUT_S, Delivery, deliver
from services.consumers.notifier.webhook import Backoff, Webhook
from tests.integration.webhook_server import WebhookServer
from tests.unit.test_notifications import HOOK, _rolled_back_release, channel

QUICK = Backoff(first_s=0.01, cap_s=0.02)
SERVICE_PASSWORD = "Zm9vYmFyU2VydmljZVBhc3N3b3Jk"
# accepted by the channel's schema (docs/schemas, WEBHOOK_URL) and by url_problem, refused by httpx
UNSENDABLE = ["https://xn--/kx", "https://hooks.example/kx?\x7f", "https://hooks.example/k\x01x"]


def hook(url: str) -> Webhook:
    return Webhook(url, b'{"kind":"held"}', {"Content-Type": "application/json"})


def notifier(allow_private: bool) -> Notifier:
    return Notifier(None, QUICK, allow_private)  # type: ignore[arg-type]  # send() uses no port


# ---- ${VAR}: only the deployment's KX_HOOK_* variables ----------------------------------------
@pytest.mark.parametrize(
    "var, value",
    [
        ("KX_NATS_URL", f"nats://kx-service:{SERVICE_PASSWORD}@nats:4222"),  # docs/permissions.md runs it so
        ("OTEL_EXPORTER_OTLP_HEADERS", f"authorization=Bearer%20{SERVICE_PASSWORD}"),
    ],
)
async def test_a_url_cannot_carry_the_services_own_environment_to_its_host(monkeypatch, var, value) -> None:
    release, rolled = _rolled_back_release()
    monkeypatch.setenv(var, value)
    with WebhookServer() as server:
        # what an operator may write with `kxr channel set` (a valid channel.configured per the schema)
        sink = parse_channel_config(
            channel({**HOOK, "url": server.url("/collect?c=${" + var + "}")}), "canary"
        ).notifications[0]
        async with httpx.AsyncClient() as client:
            result = await notifier(allow_private=True).send(client, sink, "rolled_back", rolled, release, None)
        received = list(server.received)
    assert received == [], f"the notifier posted the service's {var} to the configured host: {received[0].path}"
    assert (result.ok, result.attempts, result.status) == (False, 0, None)
    assert "${" + var + "}" in result.error and "KX_HOOK_*" in result.error and SERVICE_PASSWORD not in result.error


# ---- a URL httpx cannot send: a recorded failure, never an exception ----------------------------
@pytest.mark.parametrize("url", UNSENDABLE)
async def test_a_url_httpx_cannot_send_fails_as_a_delivery_not_an_exception(url) -> None:
    assert re.fullmatch(WEBHOOK_URL, url)  # valid per the published schema
    sink = parse_channel_config(channel({**HOOK, "url": url}), "canary").notifications[0]  # and decoded
    release, rolled = _rolled_back_release()
    async with httpx.AsyncClient() as client:
        result = await notifier(allow_private=False).send(client, sink, "rolled_back", rolled, release, None)
        direct = await deliver(client, hook(url), 3, QUICK, allow_private=True)
    for outcome in (result, direct):  # not retried either: nothing a retry changes
        assert (outcome.ok, outcome.attempts, outcome.status) == (False, 0, None) and outcome.error


class _Recording(Notifier):
    """`notify` with the channel configuration and release it is given, its records kept in memory."""

    def __init__(self, cfg, release) -> None:
        port = SimpleNamespace(
            subjects=Subjects("kx"),
            follower=SimpleNamespace(world=SimpleNamespace(channel_config=lambda env, name: cfg)),
            release_whole=self._release,
        )
        super().__init__(port, QUICK, allow_private=True)  # type: ignore[arg-type]
        self.release = release
        self.outcomes: list[tuple[str, bool, str]] = []

    async def _release(self, release_id):
        return self.release

    async def recorded(self, release_id):
        return set(), 0

    async def record(self, sink, kind, trigger, delivery) -> None:
        self.outcomes.append((sink.name, delivery.ok, delivery.error))


async def test_one_sinks_unsendable_url_does_not_starve_the_channels_other_sinks() -> None:
    release, rolled = _rolled_back_release()
    with WebhookServer() as server:
        cfg = parse_channel_config(
            channel(
                {"name": "broken", "url": "https://hooks.example/kx?\x7f", "on": ["rolled_back"]},
                {"name": "pager", "url": server.url("/page"), "on": ["rolled_back"]},
            ),
            "canary",
        )
        notifier = _Recording(cfg, release)
        await notifier.notify(rolled)  # raising here would have JetStream redeliver it, then dead-letter it
        pages = server.posts("/page")
    (broken, pager) = notifier.outcomes
    assert broken[:2] == ("broken", False) and "InvalidURL" in broken[2]  # recorded, saying why
    assert pager == ("pager", True, "") and len(pages) == 1


# ---- one attempt: one deadline, and the answer's body unread ------------------------------------
async def _serve(path: str, handler) -> TestServer:
    app = web.Application()
    app.router.add_post(path, handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def test_one_attempt_is_bounded_by_its_deadline_even_when_the_body_drips() -> None:
    drip_s = 12  # a byte a second: each read is quick, the whole answer is not

    async def drip(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(status=503)
        response.content_length = drip_s
        await response.prepare(request)
        for _ in range(drip_s):
            await response.write(b"x")
            await asyncio.sleep(1.0)
        return response

    server = await _serve("/drip", drip)
    try:
        started = time.monotonic()
        async with httpx.AsyncClient() as client:
            result = await asyncio.wait_for(
                deliver(client, hook(str(server.make_url("/drip"))), 1, QUICK, allow_private=True), drip_s + 15
            )
        took = time.monotonic() - started
    finally:
        await server.close()
    assert took < ATTEMPT_TIMEOUT_S + 2, f"one attempt took {took:.1f} s (README: 5 s per try)"
    assert (result.ok, result.status) == (False, 503)  # the status counts; the body is never waited for


async def test_a_huge_response_body_is_not_read_into_memory() -> None:
    total, chunk, sent = 96 * 1024 * 1024, b"\0" * (1024 * 1024), 0

    async def huge(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        await request.read()
        response = web.StreamResponse(status=200)
        response.content_length = total
        await response.prepare(request)
        try:
            while sent < total:
                await response.write(chunk)
                sent += len(chunk)
        except (ConnectionError, RuntimeError):
            pass
        return response

    server = await _serve("/huge", huge)
    try:
        async with httpx.AsyncClient() as client:
            result = await deliver(client, hook(str(server.make_url("/huge"))), 1, QUICK, allow_private=True)
        await asyncio.sleep(0.5)
    finally:
        await server.close()
    assert result.ok
    assert sent < 16 * 1024 * 1024, f"the notifier read {sent // 2**20} MiB of a receiver's response body"


# ---- where a post may go: public addresses, unless KX_WEBHOOK_ALLOW_PRIVATE ----------------------
@pytest.mark.parametrize("host", ["127.0.0.1", "2130706433", "0x7f000001", "127.1", "localhost", "[::ffff:7f00:1]"])
async def test_the_notifier_does_not_post_into_its_own_host(host) -> None:
    release, rolled = _rolled_back_release()
    with WebhookServer() as server:
        url = server.url("/internal").replace("127.0.0.1", host)
        sink = NotificationSink(name="x", url=url, on=["rolled_back"], attempts=3)
        async with httpx.AsyncClient() as client:
            refused = await notifier(allow_private=False).send(client, sink, "rolled_back", rolled, release, None)
        posted = server.posts("/internal")
    assert not posted, f"posted to the service's own loopback via {host!r} (recorded status {refused.status})"
    assert (refused.ok, refused.attempts, refused.status) == (False, 0, None)  # not retried: nothing was sent
    assert "loopback address" in refused.error and "KX_WEBHOOK_ALLOW_PRIVATE=1" in refused.error


async def test_an_internal_receiver_is_posted_to_when_the_deployment_allows_it() -> None:
    release, rolled = _rolled_back_release()
    with WebhookServer() as server:
        sink = NotificationSink(name="x", url=server.url("/internal"), on=["rolled_back"])
        async with httpx.AsyncClient() as client:
            sent = await notifier(allow_private=True).send(client, sink, "rolled_back", rolled, release, None)
        posted = server.posts("/internal")
    assert (sent.ok, sent.status, len(posted)) == (True, 200, 1)


def resolving(monkeypatch, *addresses: str) -> list[str]:
    """The resolver gives `addresses` for any name (each taken as public here: 127.0.0.1 stands in for a
    public address); the names it was asked for are listed in what this returns."""
    looked_up: list[str] = []

    async def resolve(host, port):
        looked_up.append(host)
        return [destination.ipaddress.ip_address(a) for a in addresses]

    monkeypatch.setattr(destination, "resolved", resolve)
    monkeypatch.setattr(destination, "address_problem", lambda address: None)
    return looked_up


async def post_as(name: str, path: str) -> tuple[str, Delivery, list]:
    """A post to the test receiver at `path`, its URL naming `name` (which resolves nowhere for real)."""
    with WebhookServer() as server:
        url = server.url(path).replace("127.0.0.1", name)
        async with httpx.AsyncClient(trust_env=False) as client:  # as the notifier's: proxies are per post
            result = await deliver(client, hook(url), 1, QUICK)
        return url, result, server.posts(path)


async def test_the_post_goes_to_the_address_that_was_checked(monkeypatch) -> None:
    """Pinned: the name is resolved once, for the check, and the connection goes to that address (a name
    resolving elsewhere at connect time, DNS rebinding, changes nothing). `hooks.rebind.test` resolves
    nowhere for real, so the post arrives only if the connection used the checked address; Host stays
    the name's."""
    looked_up = resolving(monkeypatch, "127.0.0.1")
    url, result, (post,) = await post_as("hooks.rebind.test", "/pinned")
    assert result.ok and looked_up == ["hooks.rebind.test"]
    assert post.headers["host"] == url.split("/")[2]


async def test_an_address_that_cannot_be_reached_hands_the_post_to_the_next_one_checked(monkeypatch) -> None:
    """A name with several addresses (an IPv6 one first on a host without an IPv6 route, a dead replica) is
    posted to the first one that takes the connection, in the resolver's order, within the one attempt;
    every address is checked before any is tried, and each receives at most the one post (nothing is sent
    where no connection was made). (An outside review: "only the first address is tried".)"""
    resolving(monkeypatch, "::1", "127.0.0.2", "::1", "127.0.0.1")  # nothing listens on ::1 nor 127.0.0.2
    url, result, (post,) = await post_as("hooks.several.test", "/next")
    assert (result.ok, result.attempts) == (True, 1)
    assert post.headers["host"] == url.split("/")[2]
    # every address refusing: one failed attempt, saying so, never an exception
    resolving(monkeypatch, "::1", "127.0.0.2")
    _, failed, posts = await post_as("hooks.several.test", "/next")
    assert (failed.ok, failed.attempts, failed.status, posts) == (False, 1, None, [])
    assert "ConnectError" in failed.error


# ---- behind a proxy: judged and named by the URL's own host -----------------------------------------
class RecordingProxy:
    """A forward proxy that records each request's first line and answers 200 itself (a CONNECT is
    recorded, then closed: no tunnel)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> RecordingProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            self.lines.append(head.split("\r\n", 1)[0])
            length = re.search(r"(?im)^content-length:\s*(\d+)", head)
            if length:
                await reader.readexactly(int(length.group(1)))
            if not head.startswith("CONNECT"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_a_post_behind_a_proxy_names_its_host_and_no_proxy_names_are_honoured(monkeypatch) -> None:
    """HTTP_PROXY set: the post goes through the proxy, which is asked for the sink's host by name (not the
    checked address); with that name in NO_PROXY it goes straight to the checked address. An HTTPS sink
    asks the proxy for a tunnel to the name, so TLS can check the name's certificate. Before, every post
    went to the proxy by address, and a NO_PROXY name never matched."""
    resolving(monkeypatch, "127.0.0.1")
    async with RecordingProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        url, result, posts = await post_as("hooks.proxied.test", "/via")
        assert (result.ok, posts) == (True, [])  # the proxy answered; nothing came straight here
        assert proxy.lines == [f"POST {url} HTTP/1.1"]
        async with httpx.AsyncClient(trust_env=False) as client:
            tunnelled = await deliver(client, hook("https://hooks.proxied.test/tls"), 1, QUICK)
        assert not tunnelled.ok and proxy.lines[1] == "CONNECT hooks.proxied.test:443 HTTP/1.1"
        monkeypatch.setenv("NO_PROXY", ".proxied.test")
        url, result, (post,) = await post_as("hooks.proxied.test", "/direct")
        assert result.ok and len(proxy.lines) == 2 and post.headers["host"] == url.split("/")[2]
