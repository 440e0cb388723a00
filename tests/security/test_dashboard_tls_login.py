"""The dashboard's operator login over mutual TLS (issue 16): `kxr ui --actions` signs operators in
with the TLS options kxr connects with (KX_TLS_*, or the root options --tls-ca/--tls-cert/--tls-key,
resolved by services/settings.connection_from), against the nats-server of test_tls_connect.py
that requires TLS and a client certificate: a login that succeeds there presented kxr's client
certificate (before, the login connected to the bare URL and could not)."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

import aiohttp
import pytest

from events.subjects import Subjects
from services.dashboard.server import run_ui
from services.jetstream.client import connect_with
from services.jetstream.layout import ensure_layout
from services.settings import ConnectionFlags, Settings
from services.tasks import cancel_and_wait
from tests.integration.test_dashboard_actions import Browser
from tests.security.test_tls_connect import tls_server  # noqa: F401  (a fixture)

PREFIX = "tlsui"


@asynccontextmanager
async def kxr_ui(settings: Settings):
    """`kxr ui --actions` in this process (run_ui), until the block ends; yields a Browser factory."""
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_ui(settings, "127.0.0.1", 0, on_ready=lambda url, _: ready.set_result(url), actions=True)
    )
    try:
        done, _ = await asyncio.wait({task, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # its reason
        assert ready.done(), "kxr ui did not come up within 30 s"
        async with aiohttp.ClientSession() as http:
            yield lambda: Browser(http, ready.result())
    finally:
        await cancel_and_wait([task])


async def test_dashboard_login_uses_kxrs_tls_options(tls_server, monkeypatch):  # noqa: F811
    server, pki = tls_server
    url = f"tls://127.0.0.1:{server.port}"
    tls = {"KX_TLS_CA": str(pki.ca), "KX_TLS_CERT": str(pki.client_cert), "KX_TLS_KEY": str(pki.client_key)}
    for name in ("KX_CREDS", "KX_CONTEXT", "KX_NATS_CREDS", *tls):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KX_NATS_URL", url)
    monkeypatch.setenv("KX_PREFIX", PREFIX)
    monkeypatch.setenv("XDG_CONFIG_HOME", "/nonexistent")  # no nats CLI context of this machine

    by_flags = Settings.from_env(
        ConnectionFlags(tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.client_key), use_selected_context=True
    )
    nc = await connect_with(by_flags.nats_connection(), reconnect_forever=False)
    try:
        await ensure_layout(nc.jetstream(timeout=10), Subjects(PREFIX))  # what `kxr serve` creates
    finally:
        await nc.close()

    # the root options (kxr --tls-ca … ui --actions); then the environment (KX_TLS_* ui --actions)
    for name, value in tls.items():
        monkeypatch.setenv(name, value)
    by_env = Settings.from_env(use_selected_context=True)
    for name in tls:
        monkeypatch.delenv(name)
    for settings in (by_flags, by_env):
        async with kxr_ui(settings) as browser:
            b = browser()
            # this server has no users: any user and password pass, the TLS handshake is what is tested
            assert await b.login("kx-operator", "any password") == "/"
            page = await b.get("/")
            assert "kx-operator" in page and "log out" in page, page[:2000]


@pytest.fixture(autouse=True)
def _quiet_nats_logs(caplog):
    caplog.set_level("ERROR", logger="nats")
