"""Foreign consumers: whoever may read a stream may create consumers on it under names of its
choice (the body is invisible to permissions), and a role that fills the account's cap
locks new readers out. The service's janitor (services/jetstream/janitor.py) removes every consumer
on its streams that is neither one of its durables nor a live reader's, once idle."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from nats.js.api import ConsumerConfig

from services.jetstream.janitor import REMOVED, Janitor, foreign
from services.jetstream.log_reads import load_world
from services.permissions import SERVICE_DURABLES
from services.reads.follower import Follower
from services.tasks import cancel_and_wait

pytestmark = pytest.mark.security


async def consumer_names(js, stream: str) -> set[str]:
    return {info.name for info in await js.consumers_info(stream)}


async def test_the_janitor_removes_other_roles_consumers_and_keeps_readers_reading(authed, service_app, as_role):
    s = authed.subjects
    runtime, auditor, svc = await as_role("runtime"), await as_role("auditor"), service_app.conn
    # a live reader (a runtime or the dashboard following the log) and a `kxr status` before the attack
    reader = Follower(runtime.js, s)
    following = asyncio.create_task(reader.run())
    try:
        await reader.catch_up()
        # the attack: durables under names of the attackers' choice, and an ephemeral that asks never to expire
        planted = [f"evil-{i}" for i in range(24)]
        for i, name in enumerate(planted):
            role = runtime if i % 2 else auditor
            await role.js.add_consumer(s.releases_stream, config=ConsumerConfig(name=name, durable_name=name))
        await auditor.js.add_consumer(
            s.releases_stream, config=ConsumerConfig(name="evil-forever", inactive_threshold=10**7)
        )
        planted.append("evil-forever")
        await runtime.js.add_consumer(
            f"OBJ_{s.packs_bucket}", config=ConsumerConfig(name="evil-packs", durable_name="evil-packs")
        )
        before = await consumer_names(svc.js, s.releases_stream)
        assert set(planted) <= before

        janitor = Janitor(svc.js, s, idle_s=0.0)
        removed_before = REMOVED.labels(s.releases_stream)._value.get()
        # `kxr status` while the janitor sweeps
        removed, world = await asyncio.gather(janitor.sweep(), load_world(auditor.js, s))
        assert world.applied_seq >= 0

        assert {name for _, name in removed} == {*planted, "evil-packs"}
        assert REMOVED.labels(s.releases_stream)._value.get() - removed_before == len(planted)
        after = await consumer_names(svc.js, s.releases_stream)
        assert not after & set(planted)
        assert {d for d in SERVICE_DURABLES if d in before} <= after  # the service's own stay
        assert not await consumer_names(svc.js, f"OBJ_{s.packs_bucket}") & {"evil-packs"}
        # the readers read on: the live reader's consumer was left alone, and a new `kxr status` works
        assert not following.done()
        await reader.catch_up()
        await load_world(auditor.js, s)
        assert not runtime.permission_errors() and not auditor.permission_errors()
    finally:
        await cancel_and_wait([following])


def test_foreign_is_idle_durables_and_lingering_ephemerals_only():
    now = datetime.now(UTC)

    class Info:
        def __init__(self, name, durable=None, threshold=None, waiting=0, age_s=1000.0, deliver=None):
            self.name, self.num_waiting, self.created = name, waiting, now - timedelta(seconds=age_s)
            self.config = ConsumerConfig(
                name=name, durable_name=durable, inactive_threshold=threshold, deliver_subject=deliver
            )
            self.delivered = self.ack_floor = None

    assert foreign(Info("kxr-promoter", durable="kxr-promoter"), now, 60) is None
    assert foreign(Info("r1", threshold=60.0), now, 60) is None  # a reader's ephemeral: the server's to remove
    assert foreign(Info("evil", durable="evil", waiting=1), now, 60) is None  # someone pulls from it now
    assert foreign(Info("evil", durable="evil", age_s=10), now, 60) is None  # not idle long enough yet
    assert foreign(Info("evil", durable="evil"), now, 60)
    assert foreign(Info("evil", threshold=10.0**7), now, 60)
    assert foreign(Info("evil"), now, 60)
    # a push consumer delivering onto a subject (a stream capturing it would store a copy of the log):
    # removed at once, new, busy or a reader's ephemeral; one delivering to an inbox is judged as any other
    onto = "kx.health.prod.canary.internal.rt-1"
    assert "push consumer" in (foreign(Info("evil", threshold=60.0, age_s=0, waiting=1, deliver=onto), now, 60) or "")
    assert foreign(Info("nats-py-get", threshold=60.0, deliver="_INBOX_kx_service.abc"), now, 60) is None
