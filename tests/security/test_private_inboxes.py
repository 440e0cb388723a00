"""Every role receives its replies on an inbox prefix of its own, and may subscribe to no other.

JetStream answers a read on the reader's reply subject, so whoever may listen there reads the
answer. The producer, operator and auditor once shared `_INBOX` (docs/permissions.md said it
"reveals nothing any of them could not read"), but the operator reads more than the log: stored
health (`kxr watch`) and dead letters (`kxr deadletter`), which the producer and the auditor may
not read. They read both through the shared inbox. `kxr` finds each role's prefix by itself,
whatever names the user (a credentials file, written before or after, a bare URL, a context).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest

from events.subjects import Subjects
from services.jetstream import client
from services.jetstream.deadletter import deadletter_record
from services.permissions import (
    DEFAULT_INBOX,
    KXR_ROLES,
    ROLES,
    Credentials,
    inbox_for,
    inbox_for_user,
    role_permissions,
    runtime_permissions,
)
from services.settings import Connection, ConnectionFlags, connection_from

pytestmark = pytest.mark.security


@pytest.mark.parametrize("eavesdropper", ["producer", "auditor", "runtime", "runtime-rt-a"])
async def test_no_role_receives_the_answers_to_the_operators_reads(authed, as_role, eavesdropper):
    s = authed.subjects
    runtime, service = await as_role("runtime"), await as_role("service", "kxr-serve")
    operator, spy = await as_role("operator"), await as_role(eavesdropper)
    secret = f"tenant-secret-{eavesdropper}"
    health = s.health("prod", "canary", "internal", secret)
    sample = {"runtime_id": secret, "digest": None, "at": datetime.now(UTC).isoformat(), "kind": "sample",
              "requests": 10, "errors": 3}  # fmt: skip
    await runtime.js.publish(health, json.dumps(sample).encode())
    letter = deadletter_record("kxr-monitor", s.releases_stream, 7, health, secret.encode(), "test", 1)
    dead = f"{s.deadletter('kxr-monitor')}.{eavesdropper}"
    await service.js.publish(dead, json.dumps(letter).encode())
    seen: list[bytes] = []

    async def on_msg(msg) -> None:
        seen.append(msg.data)

    # the shared inbox of old, the operator's own, and everything: none is the spy's to receive on
    for pattern in (f"{DEFAULT_INBOX}.>", f"{authed.creds['operator'].inbox_prefix}.>", ">"):
        await spy.nc.subscribe(pattern, cb=on_msg)
        await spy.violation("subscription", pattern)
    # the operator reads stored health and a dead letter, as `kxr watch` and `kxr deadletter` do
    assert secret.encode() in (await operator.js.get_last_msg(s.health_stream, health)).data
    assert secret in (await operator.js.get_last_msg(s.deadletter_stream, dead)).data.decode()
    await asyncio.sleep(0.5)  # the spy's copy, however late its callback runs
    leaked = [d for d in seen if secret.encode() in d]
    assert not leaked, f"the {eavesdropper} read the operator's answers: {leaked[0][:120]!r}"
    assert not operator.permission_errors(), operator.permission_errors()


def test_each_role_may_subscribe_to_its_own_inbox_prefix_only():
    s = Subjects("kx")
    every = {role: role_permissions(s, role) for role in ROLES}
    every |= {f"runtime-{rid}": runtime_permissions(s, runtime_id=rid) for rid in ("rt-1", "rt-2")}
    for name, perms in every.items():
        own = perms.inbox_prefix
        assert own != DEFAULT_INBOX and own.startswith(f"_INBOX_{s.prefix}_"), name
        inboxes = [x for x in perms.subscribe if x.startswith("_INBOX")]
        assert inboxes == [f"{own}.>"], (name, perms.subscribe)
        assert not any(x in (">", "_INBOX.>") or x.startswith("_INBOX.") for x in perms.subscribe), name
    prefixes = [perms.inbox_prefix for perms in every.values()]
    assert len(set(prefixes)) == len(prefixes), prefixes
    # what the credentials and the rendered users say is the same prefix
    assert {role: inbox_for(s, role) for role in ROLES} == {role: every[role].inbox_prefix for role in ROLES}


@pytest.mark.parametrize("role", KXR_ROLES)
async def test_kxr_connects_a_role_on_its_own_inbox_however_its_user_is_named(tmp_path, monkeypatch, role):
    """A bare URL (`KX_NATS_URL=$(kxr creds show operator)`), a nats context naming the user, a
    credentials file written after this change and one written before (`"inbox_prefix": "_INBOX"`):
    each connects `kx-<role>` on `_INBOX_kx_<role>`, the one its user may receive on."""
    captured: dict = {}

    async def fake_connect(self, servers, **kwargs):
        captured.update(kwargs)

    monkeypatch.setattr(client.KxClient, "connect", fake_connect)
    own = inbox_for(Subjects("kx"), role)
    assert own == f"_INBOX_kx_{role}" and inbox_for_user(f"kx-{role}") == own

    async def inbox_of(connection: Connection, **kwargs) -> str:
        captured.clear()
        await client.connect_with(connection, reconnect_forever=False, **kwargs)
        return captured["inbox_prefix"]

    bare = connection_from(ConnectionFlags(url=f"nats://kx-{role}:pw@nats.example:4222"), {})
    assert await inbox_of(bare) == own
    ctx = tmp_path / "config" / "nats" / "context"
    ctx.mkdir(parents=True)
    (ctx / "kx.json").write_text(json.dumps({"url": "nats://nats.example:4222", "user": f"kx-{role}", "password": "p"}))
    context = connection_from(ConnectionFlags(context="kx"), {"XDG_CONFIG_HOME": str(tmp_path / "config")})
    assert await inbox_of(context) == own
    for written in (own, DEFAULT_INBOX, None):  # after; before (the shared inbox); before that (none)
        doc = {"role": role, "prefix": "kx", "user": f"kx-{role}", "password": "pw", "url": "nats://kx:pw@h:4222"}
        doc |= {"inbox_prefix": written} if written is not None else {}
        path = tmp_path / f"{role}-{written}.json"
        path.write_text(json.dumps(doc))
        assert Credentials.from_document(doc).inbox_prefix == own, written
        assert await inbox_of(connection_from(ConnectionFlags(creds=path), {})) == own, written
    # a prefix the connection names itself wins; a user of no kxr role keeps the default
    named = connection_from(ConnectionFlags(url=f"nats://kx-{role}:pw@h:4222"), {})
    assert await inbox_of(named, inbox_prefix="_INBOX_mine") == "_INBOX_mine"
    assert await inbox_of(connection_from(ConnectionFlags(url="nats://alice:pw@h:4222"), {})) == DEFAULT_INBOX
    assert inbox_for_user(None) is None and inbox_for_user(f"-{role}") is None and inbox_for_user(role) is None


async def test_a_runtime_url_keeps_the_runtimes_inbox(monkeypatch):
    """`kxr runtime simulate` passes the runtime's inbox as the default: a runtime's own user whose id
    happens to end like a kxr role (`rt-operator`) is not taken for that role."""
    captured: dict = {}

    async def fake_connect(self, servers, **kwargs):
        captured.update(kwargs)

    monkeypatch.setattr(client.KxClient, "connect", fake_connect)
    own = inbox_for(Subjects("kx"), "runtime", "rt-operator")
    connection = connection_from(ConnectionFlags(url="nats://kx-runtime-rt-operator:pw@h:4222"), {})
    await client.connect_with(connection, reconnect_forever=False, default_inbox=own)
    assert captured["inbox_prefix"] == own


async def test_an_operator_credentials_file_written_before_its_own_inbox_still_reads_health(authed, as_role, tmp_path):
    """A copy of `creds/operator.json` from before this change (`"inbox_prefix": "_INBOX"`), against a
    server with the new users: `kxr` connects it on the operator's own prefix and its reads come back."""
    s = authed.subjects
    await as_role("service")  # the layout
    doc = authed.creds["operator"].to_document() | {"inbox_prefix": DEFAULT_INBOX}
    path = tmp_path / "operator-before.json"
    path.write_text(json.dumps(doc))
    name = f"operator-before-{s.prefix}"
    nc = await client.connect_with(connection_from(ConnectionFlags(creds=path), {}), name, reconnect_forever=False)
    try:
        assert nc._inbox_prefix.decode() == f"_INBOX_{s.prefix}_operator"
        info = await nc.jetstream(timeout=5).stream_info(s.health_stream)  # a denied inbox fails this at once
        assert info.config.name == s.health_stream
    finally:
        await nc.close()
    assert not [v for v in authed.violations() if name in v], authed.violations()


def test_a_kxr_role_refused_its_own_inbox_is_told_the_servers_users_predate_it():
    """kxr connects the operator on `_INBOX_kx_operator`; a server still on a users block from before
    (its operator received on `_INBOX`) refuses it: the line says what to do."""
    from types import SimpleNamespace

    from services.cli.common import denied_line
    from services.jetstream.client import PermissionDenied
    from services.settings import Identity

    def settings_as(user: str):
        connection = Connection(url="nats://h:4222", identity=Identity("KX_NATS_URL", user=user, password="pw"))
        return SimpleNamespace(prefix="kx", nats_connection=lambda: connection)

    own = PermissionDenied("subscribe to", "_INBOX_kx_operator.> (its replies)")
    line = denied_line(own, settings_as("kx-operator"))  # type: ignore[arg-type]
    assert "user kx-operator may not subscribe to _INBOX_kx_operator.>" in line and "kxr creds init again" in line
    other = PermissionDenied("subscribe to", "_INBOX.> (its replies)")
    assert "kxr --creds FILE" in denied_line(other, settings_as("kx-runtime"))  # type: ignore[arg-type]
