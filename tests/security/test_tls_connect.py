"""kxr over TLS: a nats-server that requires TLS and a client certificate (mutual TLS), a CA
and certificates made for the test; `kxr serve` and `kxr status` connect through KX_TLS_* and
the root options, and without the CA or the client certificate they fail in one line."""

from __future__ import annotations

import subprocess

import pytest

from services.jetstream.client import connect_with
from services.jetstream.embedded import EmbeddedServer
from services.settings import Connection
from tests.e2e.support import ServeProcess, assert_one_line_error, base_env, kxr_binary, write_trust_root
from tests.tls_pki import make_pki


@pytest.fixture
def tls_server(tmp_path):
    pki = make_pki(tmp_path / "pki")
    args = ["--tls", "--tlscert", str(pki.server_cert), "--tlskey", str(pki.server_key)]
    args += ["--tlsverify", "--tlscacert", str(pki.ca)]
    server = EmbeddedServer(store_dir=tmp_path / "store", extra_args=args, log_file=tmp_path / "nats.log").start(
        timeout=20
    )
    try:
        yield server, pki
    finally:
        server.stop()


async def test_the_client_connects_with_the_ca_and_its_certificate_only(tls_server):
    server, pki = tls_server
    url = f"tls://127.0.0.1:{server.port}"
    nc = await connect_with(
        Connection(url=url, tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.client_key), reconnect_forever=False
    )
    try:
        assert nc.is_connected and nc.connected_url is not None and nc.connected_url.scheme == "tls"
        await nc.flush()
    finally:
        await nc.close()
    # no client certificate; no CA either (nats-py would wait forever there: connect bounds it)
    for without, reason in (
        # TLS 1.3: the server refuses a missing client certificate after the client's side of the
        # handshake is done, so the client reads the alert or finds the pipe closed, by timing
        (Connection(url=url, tls_ca=pki.ca), "CERTIFICATE_REQUIRED|Broken pipe|Connection reset"),
        (Connection(url=url), "CERTIFICATE_VERIFY_FAILED"),
    ):
        with pytest.raises(ConnectionError, match=reason):
            nc = await connect_with(without, reconnect_forever=False)
            await nc.close()


def test_kxr_serve_and_status_over_mutual_tls(tls_server, tmp_path):
    server, pki = tls_server
    url = f"tls://127.0.0.1:{server.port}"
    from events.signing import SigningKey

    env = base_env() | {
        "KX_NATS_URL": url,
        "KX_TLS_CA": str(pki.ca),
        "KX_TLS_CERT": str(pki.client_cert),
        "KX_TLS_KEY": str(pki.client_key),
        "KX_TRUST_ROOT": str(write_trust_root(tmp_path / "trust-root.json", SigningKey.generate())),
        "KX_DATA_DIR": str(tmp_path / "data"),
    }
    serve = ServeProcess([kxr_binary(), "serve", "--log-format", "text"], env, tmp_path, "serve")
    try:
        serve.wait_ready()
        ok = subprocess.run([kxr_binary(), "status", "--json"], env=env, capture_output=True, text=True, timeout=30)
        assert ok.returncode == 0, ok.stderr
        # the same through the root options instead of the environment
        flags = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
        bare = {k: v for k, v in env.items() if not k.startswith("KX_TLS_")}
        ok = subprocess.run(
            [kxr_binary(), *flags, "status", "--json"], env=bare, capture_output=True, text=True, timeout=30
        )
        assert ok.returncode == 0, ok.stderr
        no_cert = subprocess.run(
            [kxr_binary(), "--tls-ca", str(pki.ca), "status"], env=bare, capture_output=True, text=True, timeout=30
        )
        assert_one_line_error(no_cert, "cannot reach NATS at tls://127.0.0.1")
    finally:
        serve.kill()
