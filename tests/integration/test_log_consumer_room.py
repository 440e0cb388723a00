"""The log has room for a consumer per runtime (nats-server 2.15 caps streams at 1000 by default)."""

from __future__ import annotations

from dataclasses import replace

from events.subjects import Subjects
from services.jetstream.client import connect
from services.jetstream.layout import LOG_MAX_CONSUMERS, ensure_layout, release_log_config


async def test_a_log_created_under_the_server_default_is_given_room_for_every_runtime(nats_url, prefix):
    nc = await connect(nats_url)
    try:
        js = nc.jetstream()
        subjects = Subjects(prefix)
        old = replace(release_log_config(subjects, 1), max_consumers=None)  # as logs were created before
        await js.add_stream(old)
        # the server reports -1 here yet enforces its default of 1000
        await ensure_layout(js, subjects)
        assert (await js.stream_info(subjects.releases_stream)).config.max_consumers == LOG_MAX_CONSUMERS
    finally:
        await nc.close()


async def test_a_new_log_has_room_for_every_runtime(nats_url, prefix):
    nc = await connect(nats_url)
    try:
        js = nc.jetstream()
        subjects = Subjects(prefix)
        await ensure_layout(js, subjects)
        assert (await js.stream_info(subjects.releases_stream)).config.max_consumers == LOG_MAX_CONSUMERS
    finally:
        await nc.close()
