"""Core NATS is bounded too (docs/permissions.md "Limits: no role can exhaust the server").

The account bounded JetStream (consumers, streams) but not core NATS: a runtime's user held
100,000 subscriptions on its own inbox in 6 s (nats-server 19 -> 441 MiB), and any user could
open connections without end. Embedded `kxr serve` now renders the account's `limits`
(connections of the account, subscriptions per connection: settings, sized for the service and
a fleet) and the server's `max_payload`; each flood here uses a runtime's own credentials, and
the service and the other roles carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from nats.errors import ConnectionClosedError, FlushTimeoutError
from nats.js.object_store import OBJ_DEFAULT_CHUNK_SIZE

from events.subjects import Subjects
from services.jetstream.embedded import authorized_config
from services.jetstream.layout import LOG_MAX_MSG_SIZE, LayoutSettings, ensure_layout, internal_configs
from services.nats_accounts import render_server_config
from services.permissions import (
    LIMIT_ENV,
    AccountLimits,
    Credentials,
    inbox_for,
    read_account_limits,
    user_name,
)
from services.tasks import cancel_and_wait
from tests.security.conftest import Conns, kxr, kxr_env, start_authed, stop_authed, until

pytestmark = pytest.mark.security


async def test_a_runtime_cannot_hold_more_subscriptions_than_a_connection_may(authed, as_role):
    """The generated configuration as it is: the subscription past `max_subscriptions` is refused (and
    nats-py closes that connection); the runtime reconnects and reads, the service still serves."""
    limit = AccountLimits().max_subscriptions
    flood = limit + 2000
    rt = await as_role("runtime-rt-a")
    prefix = authed.creds["runtime-rt-a"].inbox_prefix
    made = 0
    # the server refuses the subscription past the limit and closes the connection: a flush waiting for
    # its PONG then ends closed, or (when the close lands mid-flush) waits out its timeout
    with contextlib.suppress(ConnectionClosedError, FlushTimeoutError):
        for i in range(flood):
            await rt.nc.subscribe(f"{prefix}.flood.{i}.with.a.rather.long.subject.name.to.hold")
            made += 1
            if made % 500 == 0:
                await rt.nc.flush(timeout=10)
        await rt.nc.flush(timeout=10)
    # nats-py keeps the server's -ERR as the connection's last error (and closes it), not an error_cb
    await until(lambda: "maximum subscriptions exceeded" in str(rt.nc.last_error), f"no refusal: {rt.nc.last_error}")
    assert made < flood and not rt.nc.is_connected, f"{made} subscriptions, connected: {rt.nc.is_connected}"
    log = (authed.data_dir / "nats-server.log").read_text(errors="replace")
    assert "maximum subscriptions exceeded" in log
    # a runtime still reads what it needs; the service's connection never noticed
    again = await as_role("runtime-rt-a", "rt-a-again")
    s = authed.subjects
    assert (await again.js.stream_info(s.releases_stream)).config.name == s.releases_stream
    service = await as_role("service", "kxr-serve")
    assert (await service.js.stream_info(s.health_stream)).config.name == s.health_stream
    assert not again.errors and not service.errors, (again.errors, service.errors)


async def test_the_account_refuses_connections_past_its_limit(tmp_path):
    """Connections are counted per account: a runtime that opens them up to its account's limit is refused
    the next one; the service, in its own account, carries on and may still connect, and one let go is
    one someone else may open."""
    limits = AccountLimits(max_connections=12)
    authed, lock = start_authed(tmp_path, limits=limits)
    conns = Conns(authed)
    try:
        service = await conns("service", "kxr-serve")
        await ensure_layout(service.js, authed.subjects)
        opened, refused = [], None
        for i in range(limits.max_connections + 5):
            try:
                opened.append(await conns("runtime-rt-a", f"flood-{i}"))
            except Exception as exc:  # nats-py: the server closed the connection it refused
                refused = exc
                break
        assert refused is not None, f"{len(opened) + 1} connections, past the limit of {limits.max_connections}"
        assert len(opened) == limits.max_connections, len(opened)  # the runtimes' account alone
        log = (authed.data_dir / "nats-server.log").read_text(errors="replace")
        assert "maximum account active connections exceeded" in log
        assert (await service.js.stream_info(authed.subjects.releases_stream)).config.name
        another = await conns("service", "kxr-serve-2")  # a flood of runtimes does not lock the service out
        assert (await another.js.stream_info(authed.subjects.releases_stream)).config.name
        await opened.pop().nc.close()
        other = None
        for _ in range(50):  # the server counts the closed one out as it handles the close
            try:
                other = await conns("runtime-rt-b", "after")
                break
            except Exception:
                await asyncio.sleep(0.05)
        assert other is not None and (await other.js.stream_info(authed.subjects.releases_stream)).config.name
    finally:
        await conns.close()
        stop_authed(authed, lock)


def test_the_generated_config_bounds_core_nats_and_its_settings_change_it():
    s = Subjects("kx")
    creds = [Credentials(r, "kx", user_name(s, r), "pw", inbox_for(s, r)) for r in ("service", "runtime")]
    limits = AccountLimits()
    text = render_server_config(creds, s)
    assert f"max_payload: {limits.max_payload}\n" in text.split("accounts {")[0]  # the server's, before the account
    assert "limits: { max_connections: 5120, max_subscriptions: 16384 }" in text.split("accounts {")[1]
    # sized: a fleet as large as the consumer limit lets follow the log, and more; the largest message
    assert limits.max_connections > limits.max_consumers
    largest = max(cfg.max_msg_size or 0 for cfg in internal_configs(s, LayoutSettings()))  # the dead letters'
    assert limits.max_payload >= max(largest, LOG_MAX_MSG_SIZE, OBJ_DEFAULT_CHUNK_SIZE) and largest == 1024 * 1024
    # the settings
    env = {LIMIT_ENV["max_connections"]: "20000", LIMIT_ENV["max_subscriptions"]: " 65536 "}
    assert AccountLimits.from_env(env) == AccountLimits(max_connections=20000, max_subscriptions=65536)
    assert AccountLimits.from_env({LIMIT_ENV["max_connections"]: ""}) == limits
    for variable, value in [
        ("KX_NATS_MAX_CONNECTIONS", "many"),
        ("KX_NATS_MAX_CONNECTIONS", "0"),
        ("KX_NATS_MAX_SUBSCRIPTIONS", "-1"),
        ("KX_NATS_MAX_SUBSCRIPTIONS", "10"),  # below what the service's own connection holds
        ("KX_NATS_MAX_SUBSCRIPTIONS", "1e9"),
    ]:
        with pytest.raises(ValueError, match=variable):
            AccountLimits.from_env({variable: value})
    assert AccountLimits.from_document({"max_connections": 7, "max_mem": "1G"}) == AccountLimits(
        max_connections=7, max_mem="1G"
    )
    for junk in ([], {"max_connections": "7"}, {"max_connections": True}, {"nope": 1}):
        with pytest.raises(ValueError):
            AccountLimits.from_document(junk)


def test_kxr_serve_takes_its_limits_from_the_environment_and_refuses_a_bad_one(tmp_path, monkeypatch):
    monkeypatch.setenv("KX_NATS_MAX_CONNECTIONS", "777")
    monkeypatch.setenv("KX_NATS_MAX_SUBSCRIPTIONS", "4096")
    path, _ = authorized_config(tmp_path / "ok", "lim", "nats://127.0.0.1:4222")
    assert "limits: { max_connections: 777, max_subscriptions: 4096 }" in path.read_text()
    assert read_account_limits(tmp_path / "ok") == AccountLimits(max_connections=777, max_subscriptions=4096)
    monkeypatch.setenv("KX_NATS_MAX_SUBSCRIPTIONS", "lots")
    with pytest.raises(ValueError, match="KX_NATS_MAX_SUBSCRIPTIONS"):
        authorized_config(tmp_path / "bad", "lim", "nats://127.0.0.1:4222")
    assert not (tmp_path / "bad").exists()  # nothing written under a setting it cannot use
    (tmp_path / "ok" / "account-limits.json").write_text('{"max_connections": "lots"}')
    with pytest.raises(ValueError, match="account-limits.json"):
        read_account_limits(tmp_path / "ok")
    assert read_account_limits(tmp_path / "never") == AccountLimits()  # a data dir from before: the defaults


async def test_a_reload_for_a_new_runtime_keeps_the_limits_the_server_started_with(tmp_path, monkeypatch):
    """`kxr serve` started with KX_NATS_MAX_CONNECTIONS; `kxr creds runtime add` from a shell without it
    reloads the server with the same limits, not the defaults."""
    monkeypatch.setenv("KX_NATS_MAX_CONNECTIONS", "9")
    authed, lock = start_authed(tmp_path / "kx-data", runtimes=())
    env = kxr_env(authed.prefix, tmp_path / "kx-data")
    conns = Conns(authed)
    try:
        added = kxr("creds", "runtime", "add", "rt-new", env=env, cwd=tmp_path)
        assert added.returncode == 0, added.stderr
        config = (tmp_path / "kx-data" / "nats-server.conf").read_text()
        assert "rt-new" in config and "max_connections: 9," in config, config[:600]
        service = await conns("service")
        await ensure_layout(service.js, authed.subjects)
        opened, refused = 0, None  # the service's connection is in its own account
        for i in range(12):
            try:
                await conns("runtime", f"fill-{i}")
                opened += 1
            except Exception as exc:
                refused = exc
                break
        assert refused is not None and opened == 9, opened
    finally:
        await conns.close()
        stop_authed(authed, lock)


async def test_a_runtime_flooding_direct_gets_leaves_no_server_state_past_the_response_threshold(tmp_path):
    """A request across a role account's `$JS.API.>` import leaves a response mapping in KX until its answers
    end; a direct get's one answer has no end marker, so the mapping stays the export's response threshold
    after it. With nats-server's default (2 minutes) a runtime flooding direct gets held ~1 KB each that long;
    the embedded config sets `AccountLimits.response_threshold_s` (5 s; 1 s here), and the mappings go."""
    import json
    import urllib.request

    from services.jetstream.embedded import free_port

    http = free_port()
    authed, lock = start_authed(tmp_path / "kx", limits=AccountLimits(response_threshold_s=1.0), monitor_port=http)
    assert 'response_threshold: "1s"' in (tmp_path / "kx" / "nats-server.conf").read_text()
    s = authed.subjects
    conns = Conns(authed)

    def pending() -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/accountz?acc=KX", timeout=5) as answer:
            return len(json.loads(answer.read())["account_detail"].get("responses") or {})

    try:
        service = await conns("service")
        await ensure_layout(service.js, s)
        runtime = await conns("runtime")
        answered = 0

        async def count(_msg) -> None:
            nonlocal answered
            answered += 1

        inbox = runtime.nc.new_inbox()
        await runtime.nc.subscribe(inbox + ".*", cb=count)
        flood = 3000
        ask = json.dumps({"last_by_subj": s.channel("prod", "canary")}).encode()
        for i in range(flood):
            await runtime.nc.publish(f"$JS.API.DIRECT.GET.{s.releases_stream}", ask, reply=f"{inbox}.{i}")
        await until(lambda: answered == flood, f"{answered} of {flood} answered", timeout=30)
        assert pending() >= flood  # each direct get's way back, still held
        # the threshold's sweep runs once a threshold: every mapping is gone within two of them
        await until(lambda: pending() == 0, "mappings still held past the response threshold", timeout=10)
        assert await runtime.js.stream_info(s.releases_stream)  # and the role's requests are answered as before
    finally:
        await conns.close()
        stop_authed(authed, lock)


async def test_a_runtimes_idle_live_read_outlives_the_response_threshold(tmp_path):
    """The response threshold must not cut a runtime's pointer read: its pull, answered by nothing but
    heartbeats while no pointer moves, crosses the runtime account's import, and each heartbeat renews
    the way back. Idle for several thresholds, the next entry still arrives at once (a runtime that
    stopped hearing pointers would keep a pack the service rolled back)."""
    from services.jetstream.reader import OrderedReader
    from services.runtime.sdk import RUNTIME_HEARTBEAT_S

    limits = AccountLimits(response_threshold_s=3.0)  # the default's shape, quicker: heartbeats every 2 s
    assert RUNTIME_HEARTBEAT_S * 2 <= AccountLimits().response_threshold_s  # the default keeps that margin
    authed, lock = start_authed(tmp_path / "kx", limits=limits)
    s = authed.subjects
    conns = Conns(authed)
    try:
        service = await conns("service")
        await ensure_layout(service.js, s)
        runtime = await conns("runtime")
        subject = s.release("r-idle", "verified")
        reader = OrderedReader(runtime.js, s.releases_stream, [subject], heartbeat_s=RUNTIME_HEARTBEAT_S)
        seen: asyncio.Queue = asyncio.Queue()

        async def follow() -> None:
            async for _entry in reader.read(follow=True):
                seen.put_nowait(time.monotonic())

        task = asyncio.create_task(follow())
        try:
            await service.js.publish(subject, b"{}")
            await asyncio.wait_for(seen.get(), 10)  # following
            await asyncio.sleep(3 * limits.response_threshold_s)  # idle: heartbeats only
            sent = time.monotonic()
            await service.js.publish(subject, b"{}")
            arrived = await asyncio.wait_for(seen.get(), 10)
            assert arrived - sent < 1.0, f"the entry came {arrived - sent:.1f} s after it was stored"
        finally:
            await cancel_and_wait([task])  # (a read's request may swallow one cancellation on 3.11)
            await reader.close()
    finally:
        await conns.close()
        stop_authed(authed, lock)


def flood_direct_gets(flooder, s: Subjects, per_flush: int = 200, pause_s: float = 0.0):
    """Direct gets from `flooder` as fast as it can (or `per_flush` every `pause_s`), until the server
    closes the connection. Its answers go nowhere: reading thousands of them a second, a loaded host's
    flooder fell behind and the server closed it as a slow consumer before the watchdog looked (a CI
    rehearsal); what is counted is what it sends, and every request still leaves its mapping."""
    import json

    inbox = flooder.new_inbox()
    ask = json.dumps({"last_by_subj": s.channel("prod", "canary")}).encode()

    async def flood() -> None:
        sent = 0
        with contextlib.suppress(Exception):  # until the server closes the connection
            while not flooder.is_closed:
                for _ in range(per_flush):
                    await flooder.publish(f"$JS.API.DIRECT.GET.{s.releases_stream}", ask, reply=f"{inbox}.{sent}")
                    sent += 1
                await flooder.flush(timeout=5)
                if pause_s:
                    await asyncio.sleep(pause_s)

    return asyncio.create_task(flood())


async def test_the_watchdog_disconnects_a_runtime_flooding_direct_gets_and_leaves_the_others(authed, as_role):
    """A threshold bounds each response mapping's life, not their number: a role flooding requests at its
    connection's speed held its rate times two thresholds (one runtime: +317 MiB). The service's watchdog
    reads each role account's connections through the embedded server's system account and disconnects
    one over its limit; a runtime working normally meanwhile is left alone."""
    from services.jetstream.client import connect
    from services.jetstream.watchdog import KICKED, Watchdog

    s = authed.subjects
    service, quiet = await as_role("service"), await as_role("runtime-rt-b")
    creds = authed.creds["runtime-rt-a"]
    flooder = await connect(authed.url, name="flooder", allow_reconnect=False, **creds.connect_options())
    watchdog = Watchdog(service.nc, limit=2_000, every_s=0.5)
    kicked_before = KICKED.labels("KX_RUNTIME")._value.get()
    flooding_task = flood_direct_gets(flooder, s)
    watching = asyncio.create_task(watchdog.run())
    try:
        # (the server closes the connection as it answers the kick; the watchdog records it on the answer)
        await until(lambda: flooder.is_closed and watchdog.kicked, "the flooding runtime is still connected", 15)
        assert [(account, round(rate) > 2_000) for account, _, rate in watchdog.kicked] == [("KX_RUNTIME", True)]
        assert KICKED.labels("KX_RUNTIME")._value.get() - kicked_before == 1
        assert quiet.nc.is_connected and (await quiet.js.stream_info(s.releases_stream)).config.name
    finally:
        # cancelled again until they end: on 3.11 nats.py's request can swallow one cancellation (a plain
        # cancel-and-await hung here for the whole test timeout once, and the watchdog ran on into later tests)
        await cancel_and_wait([watching, flooding_task])
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await flooder.close()


async def test_the_watchdog_judges_an_accounts_connections_together_and_reads_every_page(authed, as_role, monkeypatch):
    """Four connections, each under the limit a connection has (set out of reach here), flood together
    past the account's: the watchdog disconnects the busiest until the rest are under it, and a quiet
    runtime stays. CONNZ pages of two connections: the flooders are found past the first page (before,
    only the 256 connections with the most messages since they started were ever looked at)."""
    from services.jetstream import watchdog as watchdog_module
    from services.jetstream.client import connect
    from services.jetstream.watchdog import Watchdog

    monkeypatch.setattr(watchdog_module, "PAGE", 2)
    s = authed.subjects
    service, quiet = await as_role("service"), await as_role("runtime-rt-b")
    creds = authed.creds["runtime-rt-a"]
    flooders = [
        await connect(authed.url, name=f"flooder-{n}", allow_reconnect=False, **creds.connect_options())
        for n in range(4)
    ]
    watchdog = Watchdog(service.nc, limit=10**9, every_s=0.5, account_limit=1_000)
    tasks = [flood_direct_gets(f, s, per_flush=100, pause_s=0.02) for f in flooders]
    watching = asyncio.create_task(watchdog.run())
    try:
        await until(
            lambda: all(f.is_closed for f in flooders) and len(watchdog.kicked) >= 4, "a flooder is still connected", 20
        )
        assert {account for account, _, _ in watchdog.kicked} == {"KX_RUNTIME"} and len(watchdog.kicked) == 4
        assert quiet.nc.is_connected and (await quiet.js.stream_info(s.releases_stream)).config.name
    finally:
        await cancel_and_wait([watching, *tasks])
        for f in flooders:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await f.close()
