"""Contract edges (issue 13 items 7 and 8, issue 14's runtime read path), against real JetStream.

- `channel.configured` with `"scope": null` (CONTRACT §3) configures the channel its subject names.
- A channel configuration that does not decode is never "no configuration": requests are rejected
  naming it, it is dead-lettered once, and `kxr channel show` shows it.
- A host whose switch raises: the runtime keeps its old pack, reports `ok: false`, keeps following.
- `kxr runtime simulate` with the runtime user's credentials reads (inbox prefix), and a channel
  config the runtime cannot read is an error, never the default cohort.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path

import nats
import pytest

from events.channel import ChannelConfig
from events.signing import SigningKey
from events.subjects import Subjects
from services.actions.producer import configure_channel
from services.app import App
from services.jetstream.deadletter import UNDECODABLE
from services.jetstream.log import EventLog
from services.jetstream.log_reads import load_world
from services.runtime.sdk import ChannelConfigUnavailable, Identity, RuntimeClient
from services.settings import Settings
from tests.e2e.support import (
    ServeProcess,
    assert_one_line_error,
    base_env,
    kxr_binary,
    read_log,
    wait_until,
    write_trust_root,
)
from tests.harness import CHANNEL, OPERATOR, make_pack, running_service, trust_root_for, wait_for
from tests.security.conftest import start_authed, stop_authed


def channel_envelope(config: object, scope: object = None) -> bytes:
    """A `channel.configured` as another team's tool may write it: scope null, as the contract allows."""
    return json.dumps(
        {
            "event_id": uuid.uuid4().hex,
            "type": "channel.configured",
            "schema_version": 1,
            "occurred_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "actor": {"kind": "operator", "id": "other-team"},
            "causation_id": None,
            "correlation_id": None,
            "release_id": None,
            "scope": scope,
            "data": config,
        }
    ).encode()


async def publish_channel(svc, config: object, env: str = "prod", channel: str = "canary") -> int:
    ack = await svc.app.js.publish(svc.app.subjects.channel(env, channel), channel_envelope(config))
    await svc.wait_for(ack.seq)
    return ack.seq


async def decided(svc, release_id: str):
    """The release once the preparer has answered it (prepared or rejected)."""
    return await wait_for(
        lambda: (r := svc.world.release(release_id)) and (r.prepared or r.phase in ("rejected", "closed")) and r,
        30,
        f"release {release_id} to be prepared or rejected",
        lambda: svc.world.release(release_id),
    )


def reasons_of(release) -> str:
    return release.failure or ""


def cli(prefix: str, nats_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**base_env(), "KX_NATS_URL": nats_url, "KX_PREFIX": prefix}
    return subprocess.run(
        [kxr_binary(), *args], env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )


async def undecodable_letters(svc) -> list[dict]:
    js, s = svc.app.js, svc.app.subjects
    return [
        body
        for _, _, body, _ in await read_log(js, s.deadletter_stream, [s.deadletter_all()])
        if body["consumer"] == UNDECODABLE
    ]


# ---- item 7: a contract-valid channel config is configuration ---------------------------------------
async def test_a_channel_configured_with_null_scope_configures_the_channel_its_subject_names(nats_url, prefix):
    async with running_service(nats_url, prefix) as svc:
        seq = await publish_channel(svc, CHANNEL)
        world = await load_world(svc.app.js, svc.app.subjects)  # what kxr status / channel show / operators fold
        state = world.channel_state("prod", "canary")
        assert state is not None and state.seq == seq and state.config.cohort_names == ["internal", "rest"]
        await svc.request("r-null-scope", make_pack("1.0.0", svc.key), rollback={"strategy": "none"})
        release = await decided(svc, "r-null-scope")
        assert release.prepared is not None, reasons_of(release)
        assert release.prepared.stages == [["internal"], ["rest"]]  # the channel's plan, not the default `all`


async def test_an_unreadable_channel_config_is_a_named_rejection_a_dead_letter_and_shown(nats_url, prefix):
    async with running_service(nats_url, prefix) as svc:
        await svc.configure()  # a good configuration first: the unreadable one must not hide behind it
        bad = await publish_channel(svc, {**CHANNEL, "cohorts": "everyone"})
        await svc.request("r-bad-config", make_pack("1.0.0", svc.key), rollback={"strategy": "none"})
        release = await decided(svc, "r-bad-config")
        assert release.prepared is None and release.failure.startswith("rejected"), release.failure
        assert (
            f"channel config at seq {bad} could not be decoded" in release.failure and "cohorts" in release.failure
        ), release.failure
        assert "has no configuration" not in release.failure

        letters = await wait_until(lambda: undecodable_letters(svc), 10, "the unreadable config to be dead-lettered")
        assert [(d["seq"], d["subject"]) for d in letters] == [(bad, svc.app.subjects.channel("prod", "canary"))]
        assert "cohorts" in letters[0]["reason"]

        shown = await asyncio.to_thread(cli, prefix, nats_url, "channel", "show", "prod/canary", "--json")
        assert shown.returncode != 0, shown.stdout  # a script sees it in the exit status
        doc = json.loads(shown.stdout)
        assert doc["problem"]["seq"] == bad and "could not be decoded" in doc["problem"]["message"]
        assert doc["config"]["plan"] == CHANNEL["plan"]  # the older, readable one, marked as older
        assert f"seq {bad} could not be decoded" in " ".join(shown.stderr.split())
        people = await asyncio.to_thread(cli, prefix, nats_url, "channel", "show", "prod/canary")
        assert "UNREADABLE CONFIGURATION" in people.stdout and "Traceback" not in people.stdout + people.stderr

        # a valid configuration settles it: requests go through again
        await svc.configure()
        await svc.request("r-fixed", make_pack("1.0.0", svc.key), rollback={"strategy": "none"})
        assert (await decided(svc, "r-fixed")).prepared is not None
    # a restart folds the log again (no snapshot): the entry is not dead-lettered a second time
    async with running_service(nats_url, prefix, roles=()) as again:
        await again.app.follower.catch_up()
        await asyncio.sleep(0.5)  # give a (wrong) second record the time to land before counting
        assert len(await undecodable_letters(again)) == 1


# ---- item 8: a host whose switch raises -----------------------------------------------------------------
async def test_a_switch_that_raises_keeps_the_old_pack_reports_it_and_keeps_following(nats_url, prefix):
    async with running_service(nats_url, prefix) as svc:
        await svc.configure(config={**CHANNEL, "cohorts": [{"name": "all"}], "plan": [["all"]]})
        good, broken, later = (make_pack(v, svc.key) for v in ("1.0.0", "1.1.0", "1.2.0"))
        rt = await svc.runtime("t-1")

        async def host_switch(pack) -> None:
            if pack.digest == broken.digest:
                raise OSError("disk full while unpacking")

        rt.on_switch = host_switch
        await svc.request("r-good", good, rollback={"strategy": "none"})
        await wait_for(lambda: rt.active and rt.active.digest == good.digest, 30, "the first switch")
        assert (await svc.wait_release("r-good")).outcome == "success"
        await svc.request("r-broken", broken)
        await wait_for(
            lambda: any(d == broken.digest for d, _ in rt.history),
            30,
            "the runtime to try the broken switch",
            lambda: (rt.history, svc.world.release("r-broken")),
        )
        assert rt.active.digest == good.digest, "a switch that raised must not be recorded as active"
        tried = [why for d, why in rt.history if d == broken.digest]
        assert tried and "disk full while unpacking" in tried[0], rt.history
        health = await read_log(
            svc.app.js, svc.app.subjects.health_stream, [svc.app.subjects.health_cohort("prod", "canary", "all")]
        )
        refusals = [b for _, _, b, _ in health if b["kind"] == "activation" and b["digest"] == broken.digest]
        assert refusals and refusals[0]["ok"] is False and "disk full while unpacking" in refusals[0]["error"], refusals
        await svc.wait_release("r-broken", "closed")  # whatever the monitor makes of it, it ends
        await svc.request("r-later", later)
        await wait_for(
            lambda: rt.active and rt.active.digest == later.digest,
            30,
            "the follow loop to apply a later good pointer",
            lambda: rt.history,
        )


# ---- issue 14: the runtime user reads, and an unreadable config is an error --------------------------
@pytest.fixture(scope="module")
def authed_server(tmp_path_factory):
    authed, lock = start_authed(tmp_path_factory.mktemp("edges-authed"), runtimes=())
    try:
        yield authed.url, authed.prefix, authed.creds
    finally:
        stop_authed(authed, lock)


async def test_kxr_runtime_simulate_with_the_runtime_login_reads_its_channel_and_picks_its_cohort(
    authed_server, tmp_path: Path
):
    url, prefix, creds = authed_server
    subjects = Subjects(prefix)
    key = SigningKey.generate()
    service = await nats.connect(url, **creds["service"].connect_options())
    operator = await nats.connect(url, **creds["operator"].connect_options())
    runtime_nc = await nats.connect(
        url, user=creds["runtime"].user, password=creds["runtime"].password
    )  # default inbox
    app = App(service, Settings(nats_url=url, prefix=prefix), trust_root_for(key))
    process = None
    try:
        await app.start()  # the layout, created by the service user as `kxr serve` does
        await configure_channel(
            EventLog(operator, operator.jetstream(), subjects),
            operator.jetstream(),
            "prod",
            "canary",
            ChannelConfig.model_validate(CHANNEL),
            OPERATOR,
        )
        # the SDK: a read the server never answers (replies outside the runtime's inbox prefix are denied)
        client = RuntimeClient(
            runtime_nc, Identity("prod", "canary", "t-int-1", "rt-denied"), trust_root_for(key), prefix=prefix
        )
        client.js = runtime_nc.jetstream(timeout=1)  # the denial is a timeout: a short one
        with pytest.raises(ChannelConfigUnavailable, match="could not be read"):
            await client.resolve_cohort()
        assert client.cohort is None  # no cohort picked on a guess

        # the command, with nothing but the runtime user's URL (as `kxr creds show runtime` prints it)
        env = {
            **base_env(),
            "KX_NATS_URL": creds["runtime"].url,
            "KX_PREFIX": prefix,
            "KX_TRUST_ROOT": str(write_trust_root(tmp_path / "trust-root.json", key)),
        }
        argv = [
            kxr_binary(),
            "runtime",
            "simulate",
            "--env",
            "prod",
            "--channel",
            "canary",
            "--tenant",
            "t-int-1",
            "--runtime-id",
            "rt-sim",
            "--interval",
            "0.2",
        ]
        process = ServeProcess(argv, env, tmp_path, "runtime")
        await wait_until(
            lambda: "follows prod/canary/" in process.stderr() or process.proc.poll() is not None,
            30,
            "the runtime to pick its cohort",
            process.stderr,
        )
        assert "follows prod/canary/internal" in " ".join(process.stderr().split()), process.stderr()
        assert "violation" not in process.stderr().lower()
    finally:
        if process is not None:
            process.kill()
        await app.stop()
        for nc in (service, operator, runtime_nc):
            await nc.close()


def test_kxr_runtime_simulate_that_cannot_read_its_channel_follows_no_cohort(nats_url, tmp_path: Path):
    """No release log under this prefix: the channel config cannot be read; one line, no cohort."""
    env = {
        **base_env(),
        "KX_NATS_URL": nats_url,
        "KX_PREFIX": "nolog" + uuid.uuid4().hex[:8],
        "KX_TRUST_ROOT": str(write_trust_root(tmp_path / "trust-root.json", SigningKey.generate())),
    }
    argv = [
        kxr_binary(),
        "runtime",
        "simulate",
        "--env",
        "prod",
        "--channel",
        "canary",
        "--tenant",
        "t",
        "--runtime-id",
        "r",
    ]
    result = subprocess.run(
        argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    line = assert_one_line_error(result, "follows no cohort", "channel config of prod/canary could not be read")
    assert "follows prod/canary" not in line
