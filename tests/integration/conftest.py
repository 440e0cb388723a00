"""Fixtures shared by integration tests."""

from __future__ import annotations

import pytest

from events.subjects import Subjects
from services.jetstream.client import connect
from services.jetstream.layout import ensure_layout
from services.jetstream.log import EventLog


@pytest.fixture
async def log(nats_url, prefix):
    """An EventLog on a fresh layout under the test's prefix (its own connection)."""
    nc = await connect(nats_url)
    js = nc.jetstream()
    subjects = Subjects(prefix)
    await ensure_layout(js, subjects)
    yield EventLog(nc, js, subjects)
    await nc.close()
