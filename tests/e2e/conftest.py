"""End-to-end fixtures: a per-test installation (`kx`) and a nats-py connection (`nc`)."""

from __future__ import annotations

import nats
import pytest

from events.signing import SigningKey
from services.jetstream.client import nats_servers

from .support import Kx, kxr_binary, write_trust_root


@pytest.fixture
def kx_env_extra() -> dict[str, str]:
    """Extra environment for every `kxr` the test starts (the cluster tier sets KX_REPLICAS=3)."""
    return {}


@pytest.fixture
def kx(nats_url, prefix, tmp_path, kx_env_extra):
    key = SigningKey.generate()
    inst = Kx(
        nats_url=nats_url,
        prefix=prefix,
        workdir=tmp_path,
        key=key,
        trust_root_path=write_trust_root(tmp_path / "trust-root.json", key),
        binary=kxr_binary(),
        extra_env=kx_env_extra,
    )
    try:
        yield inst
    finally:
        inst.cleanup()


@pytest.fixture
async def nc(nats_url):
    conn = await nats.connect(nats_servers(nats_url), name="e2e-test", max_reconnect_attempts=3, connect_timeout=3)
    try:
        yield conn
    finally:
        await conn.close()
