"""A runtime that floods health cannot exhaust the server nor drown another runtime (issue 14).

KX_HEALTH keeps at most `health_max_msgs_per_subject` samples per runtime subject (discarding
its oldest) and `health_max_bytes` in all: a flooding runtime pushes out only its own history.
Tried with the real per-role users of an embedded server, on small limits.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from services.jetstream.layout import LayoutSettings, ensure_layout
from tests.security.conftest import connect_as

pytestmark = pytest.mark.security

PER_SUBJECT = 5


def sample(runtime_id: str, n: int) -> bytes:
    return json.dumps(
        {
            "runtime_id": runtime_id,
            "digest": None,
            "at": datetime.now(UTC).isoformat(),
            "kind": "sample",
            "requests": n,
            "errors": 0,
        }
    ).encode()


async def test_a_flooding_runtime_pushes_out_only_its_own_samples(authed):
    s = authed.subjects
    service = await connect_as(authed, "service")
    try:
        # this module's server is new: the layout is created here, with small limits to reach
        await ensure_layout(
            service.js, s, LayoutSettings(health_max_msgs_per_subject=PER_SUBJECT, health_max_bytes=1024 * 1024)
        )
        cfg = (await service.js.stream_info(s.health_stream)).config
        assert (cfg.max_msgs_per_subject, cfg.max_bytes) == (PER_SUBJECT, 1024 * 1024)

        quiet, loud = await connect_as(authed, "runtime-rt-a"), await connect_as(authed, "runtime-rt-b")
        quiet_subject, loud_subject = (
            s.health("prod", "canary", "internal", "rt-a"),
            s.health("prod", "canary", "internal", "rt-b"),
        )
        for n in range(3):
            await quiet.js.publish(quiet_subject, sample("rt-a", n))
        for n in range(200):  # the flood: far past its own cap
            await loud.js.publish(loud_subject, sample("rt-b", n))

        state = (await service.js.stream_info(s.health_stream, subjects_filter=s.health_all())).state
        per_subject = dict(state.subjects or {})
        assert per_subject[loud_subject] == PER_SUBJECT  # the flooder keeps only its newest few
        assert per_subject[quiet_subject] == 3  # the quiet runtime lost nothing
        newest = await service.js.get_last_msg(s.health_stream, loud_subject)
        assert json.loads(newest.data)["requests"] == 199
        await quiet.nc.close()
        await loud.nc.close()
    finally:
        await service.nc.close()
