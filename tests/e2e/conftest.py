"""End-to-end fixtures: a per-test installation (`kx`) and a nats-py connection (`nc`)."""

from __future__ import annotations

import nats
import pytest

from events.signing import SigningKey
from .support import Kx, kxr_binary, write_trust_root


@pytest.fixture
def kx(nats_url, prefix, tmp_path):
    key = SigningKey.generate()
    inst = Kx(nats_url=nats_url, prefix=prefix, workdir=tmp_path, key=key,
              trust_root_path=write_trust_root(tmp_path / "trust-root.json", key), binary=kxr_binary())
    try:
        yield inst
    finally:
        inst.cleanup()


@pytest.fixture
async def nc(nats_url):
    conn = await nats.connect(nats_url, name="e2e-test", max_reconnect_attempts=3, connect_timeout=3)
    try:
        yield conn
    finally:
        await conn.close()
