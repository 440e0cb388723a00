"""Attacks on packs and on the service's consumers, with the real per-role users (issue 14).

- Packs: no role but the service may delete or purge anything in the packs bucket; a
  producer's put never replaces a pack's bytes.
- Consumers: no other role may create, update (re-point, throttle) or pull from the
  service's durable consumers; and the account's JetStream limits bound how many consumers
  any user can make the server hold.
"""

from __future__ import annotations

import json

import pytest

from events.manifest import pack_object_name
from events.signing import SigningKey
from services.actions.producer import push_pack
from services.jetstream.layout import ensure_layout
from services.jetstream.packstore import PackStore
from services.permissions import SERVICE_DURABLES, AccountLimits
from tests.harness import make_pack, running_service, sha256_digest
from tests.security.conftest import (
    Conns,
    durables_bound,
    fill_consumer_limit,
    service_durables,
    start_authed,
    stop_authed,
)

pytestmark = pytest.mark.security

API = "$JS.API"
OTHER_ROLES = ("producer", "runtime", "runtime-rt-a", "operator", "auditor")


# ---- packs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("role", OTHER_ROLES)
async def test_no_role_but_the_service_may_purge_or_delete_in_the_packs_bucket(authed, as_role, role):
    s = authed.subjects
    packs = f"OBJ_{s.packs_bucket}"
    producer, attacker, service = await as_role("producer"), await as_role(role), await as_role("service")
    pack = make_pack(f"1.0.{OTHER_ROLES.index(role)}", SigningKey.generate())
    await push_pack(producer.js, s, pack.body, pack.manifest, pack.digest)
    before = (await service.js.stream_info(packs)).state.messages
    await attacker.publish_denied(f"{API}.STREAM.PURGE.{packs}")  # the whole bucket
    await attacker.publish_denied(
        f"{API}.STREAM.PURGE.{packs}", json.dumps({"filter": f"$O.{s.packs_bucket}.C.>"}).encode()
    )
    await attacker.publish_denied(f"{API}.STREAM.MSG.DELETE.{packs}", json.dumps({"seq": 1}).encode())
    await attacker.publish_denied(f"{API}.STREAM.DELETE.{packs}")
    await attacker.publish_denied(f"{API}.STREAM.UPDATE.{packs}")
    assert (await service.js.stream_info(packs)).state.messages == before  # every chunk and metadata still there


async def test_a_producer_can_remove_no_packs_bytes(authed, as_role):
    """nats.py's object delete ends with a purge, which producers may not send; kxr's own put
    never purges. What a producer can still do (re-point a pack's metadata) leaves the bytes
    in the stream, and whoever reads the pack hashes it against the digest that names it."""
    s = authed.subjects
    chunks = f"$O.{s.packs_bucket}.C.>"
    producer, attacker, service = (
        await as_role("producer"),
        await as_role("producer", "another-team"),
        await as_role("service"),
    )
    pack = make_pack("2.0.0", SigningKey.generate())
    await push_pack(producer.js, s, pack.body, pack.manifest, pack.digest)
    await push_pack(producer.js, s, pack.body, pack.manifest, pack.digest)  # again: nothing to do, nothing purged
    assert not producer.permission_errors(), producer.errors
    name = pack_object_name(pack.digest)
    before = (await service.js.stream_info(f"OBJ_{s.packs_bucket}", subjects_filter=chunks)).state.messages
    bucket = await attacker.js.object_store(s.packs_bucket)
    with pytest.raises(Exception):
        await bucket.delete(name)  # marks it deleted, then its purge is refused
    await attacker.violation("publish", f"{API}.STREAM.PURGE.OBJ_{s.packs_bucket}")
    await PackStore(attacker.js, s).put(name, b"other bytes under the pack's name")  # no purge needed, none sent
    assert not [e for e in attacker.permission_errors() if "purge" not in e], attacker.errors
    after = (await service.js.stream_info(f"OBJ_{s.packs_bucket}", subjects_filter=chunks)).state.messages
    assert after > before  # every chunk still there: the pack's bytes can be restored
    fetched = await PackStore(service.js, s).read(name, 10**7)
    assert sha256_digest(fetched) != pack.digest  # what a reader gets no longer matches its name: refused
    # the repair: the owner pushes its pack again, which points the name back at the right bytes
    await push_pack(producer.js, s, pack.body, pack.manifest, pack.digest)
    assert await PackStore(service.js, s).read(name, 10**7) == pack.body
    assert not producer.permission_errors(), producer.errors


async def test_a_pack_marked_deleted_is_restored_by_pushing_it_again(authed, as_role):
    s = authed.subjects
    producer, attacker, service = (
        await as_role("producer"),
        await as_role("producer", "another-team"),
        await as_role("service"),
    )
    pack = make_pack("2.1.0", SigningKey.generate())
    await push_pack(producer.js, s, pack.body, pack.manifest, pack.digest)
    name = pack_object_name(pack.digest)
    with pytest.raises(Exception):
        await (await attacker.js.object_store(s.packs_bucket)).delete(name)
    assert await PackStore(service.js, s).read(name, 10**7) is None  # missing: whoever needs it fails closed
    await push_pack(producer.js, s, pack.body, pack.manifest, pack.digest)
    assert await PackStore(service.js, s).read(name, 10**7) == pack.body
    assert not producer.permission_errors(), producer.errors


# ---- the service's durable consumers -----------------------------------------------------------------
async def test_every_durable_of_the_service_is_guarded(nats_url, prefix):
    """The deny lists name every durable `kxr serve` creates (listed on a server without users):
    a new one must be added to SERVICE_DURABLES."""
    async with running_service(nats_url, prefix) as svc:
        # each runner binds its durable in its own task after the start returns: listed at once, a loaded host
        # showed none (CI, session 25)
        await durables_bound(svc.app)
        s = svc.app.subjects
        durables = {
            info.name
            for stream in (s.releases_stream, s.timers_stream, s.health_stream, s.deadletter_stream)
            for info in await svc.app.js.consumers_info(stream)
            if info.config.durable_name
        }
    assert durables and durables <= set(SERVICE_DURABLES), sorted(durables - set(SERVICE_DURABLES))


@pytest.mark.parametrize("role", OTHER_ROLES)
async def test_no_other_role_may_create_update_or_pull_from_the_services_durables(authed, service_app, role):
    conns = Conns(authed)
    try:
        attacker = await conns(role)
        before = await service_durables(service_app.app.js, authed.subjects)
        for durable, (stream, _config) in before.items():
            hostile = {
                "durable_name": durable,
                "name": durable,
                "ack_policy": "explicit",
                "max_ack_pending": 1,
                "filter_subject": f"{authed.prefix}.nothing",
            }
            body = json.dumps({"stream_name": stream, "config": hostile}).encode()
            await attacker.publish_denied(f"{API}.CONSUMER.CREATE.{stream}.{durable}", body)
            await attacker.publish_denied(f"{API}.CONSUMER.CREATE.{stream}.{durable}.{authed.prefix}.nothing", body)
            await attacker.publish_denied(f"{API}.CONSUMER.DURABLE.CREATE.{stream}.{durable}", body)
            # the legacy create takes the name from the body, and a body naming a durable updates it
            legacy = json.dumps(
                {"stream_name": stream, "config": {k: v for k, v in hostile.items() if k != "durable_name"}}
            ).encode()
            await attacker.publish_denied(f"{API}.CONSUMER.CREATE.{stream}", legacy)
            # pulling would hold the service's messages un-acked until redelivered or dead-lettered
            await attacker.publish_denied(
                f"{API}.CONSUMER.MSG.NEXT.{stream}.{durable}", json.dumps({"batch": 10}).encode()
            )
            await attacker.publish_denied(f"{API}.CONSUMER.DELETE.{stream}.{durable}")
        after = await service_durables(service_app.app.js, authed.subjects)
        assert {n: (st, c.max_ack_pending, c.filter_subject, c.filter_subjects) for n, (st, c) in after.items()} == {
            n: (st, c.max_ack_pending, c.filter_subject, c.filter_subjects) for n, (st, c) in before.items()
        }
    finally:
        await conns.close()


async def test_readers_still_read_through_their_own_consumers(authed, as_role):
    """What the deny lists leave: a consumer named by the reader (the log for the auditor)."""
    from services.jetstream.log_reads import load_world

    auditor = await as_role("auditor")
    await load_world(auditor.js, authed.subjects)
    assert not auditor.permission_errors(), auditor.errors


async def test_no_role_can_make_the_server_hold_more_consumers_than_the_account_allows(tmp_path):
    """The runtime user created 10,016 durables in 8 s (124 -> 499 MiB, > 10 s to start):
    the account's limit stops it, and the service's own durables are unaffected."""
    limits = AccountLimits(max_consumers=24)
    authed, lock = start_authed(tmp_path, limits=limits)
    conns = Conns(authed)
    try:
        service, runtime = await conns("service"), await conns("runtime")
        await ensure_layout(service.js, authed.subjects)
        s = authed.subjects
        assert (await service.js.stream_info(s.releases_stream)).config.max_consumers == limits.max_consumers
        refused = await fill_consumer_limit(runtime, s, s.releases_stream, limits.max_consumers)
        assert refused[0] <= limits.max_consumers and "maximum consumers" in refused[1]["description"], refused
        assert (await service.js.stream_info(s.releases_stream)).state.consumer_count <= limits.max_consumers
    finally:
        await conns.close()
        stop_authed(authed, lock)


def test_the_generated_server_config_bounds_the_account():
    from events.subjects import Subjects
    from services.nats_accounts import render_server_config
    from services.permissions import new_credentials

    s = Subjects("kx")
    text = render_server_config([new_credentials(s, role) for role in ("service", "runtime")], s)
    limits = AccountLimits()
    assert f"max_consumers: {limits.max_consumers}" in text and f"max_mem: {limits.max_mem}" in text
    assert f"max_file: {limits.max_file}" in text and "accounts {" in text
