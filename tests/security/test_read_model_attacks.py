"""The read models' bucket (issue 18): the service writes it, the operator and auditor read it, and
no other role's user may put, delete or purge a key of it (services/permissions.py `read_models`)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from services.reads import model_reads
from tests.security.conftest import Conns

pytestmark = pytest.mark.security

API = "$JS.API"
OTHER_ROLES = ("producer", "runtime", "runtime-rt-a", "operator", "auditor")
READERS = ("operator", "auditor")


async def _written(service_app, timeout: float = 30.0) -> bytes:
    """The model's `position` once the service's projector has written it."""
    kv = await service_app.conn.js.key_value(service_app.app.subjects.read_bucket)
    deadline = time.monotonic() + timeout
    while True:
        try:
            entry = await kv.get("position")
            if entry.value:
                return entry.value
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("the service wrote no read model")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("role", READERS)
async def test_the_operator_and_auditor_read_the_model(authed, service_app, role):
    await _written(service_app)
    conns = Conns(authed)
    try:
        reader = await conns(role)
        s = authed.subjects
        view = await model_reads.read_view(
            reader.nc, s.releases_stream, s.read_bucket, model_reads.keys_id(service_app.service_keys),
            lambda v: model_reads.status(v, True), wait_s=10,
        )  # fmt: skip
        assert view["log_seq"] >= 0 and isinstance(view["scopes"], list)
        assert not reader.permission_errors(), reader.errors
    finally:
        await conns.close()


@pytest.mark.parametrize("role", OTHER_ROLES)
async def test_no_role_but_the_service_may_write_the_model(authed, service_app, role):
    before = await _written(service_app)
    s = authed.subjects
    bucket, stream = s.read_bucket, f"KV_{s.read_bucket}"
    conns = Conns(authed)
    try:
        attacker = await conns(role)
        forged = json.dumps({"seq": 10**9, "keys": None, "ignored": [], "in_flight": []}).encode()
        await attacker.publish_denied(f"$KV.{bucket}.position", forged)  # a put
        await attacker.publish_denied(f"$KV.{bucket}.scope.prod.canary.all", forged)
        await attacker.publish_denied(f"$KV.{bucket}.position", b"", headers={"KV-Operation": "DEL"})  # a delete
        await attacker.publish_denied(
            f"$KV.{bucket}.position", b"", headers={"KV-Operation": "PURGE", "Nats-Rollup": "sub"}
        )  # a purge of the key
        await attacker.publish_denied(f"{API}.STREAM.PURGE.{stream}")
        await attacker.publish_denied(
            f"{API}.STREAM.PURGE.{stream}", json.dumps({"filter": f"$KV.{bucket}.>"}).encode()
        )
        await attacker.publish_denied(f"{API}.STREAM.MSG.DELETE.{stream}", json.dumps({"seq": 1}).encode())
        await attacker.publish_denied(f"{API}.STREAM.DELETE.{stream}")
        await attacker.publish_denied(f"{API}.STREAM.UPDATE.{stream}")
        await attacker.publish_denied(f"{API}.CONSUMER.CREATE.{stream}.spy")  # no consumer on it either
        if role not in READERS:  # producers and runtimes do not read it at all
            await attacker.publish_denied(f"{API}.DIRECT.GET.{stream}.$KV.{bucket}.position")
    finally:
        await conns.close()
    after = json.loads(await _written(service_app))
    assert after["seq"] >= json.loads(before)["seq"] and after["seq"] < 10**9  # only the service's writes
