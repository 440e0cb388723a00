"""Attacks on the scope pointers, from outside, against the embedded server with its real per-role users.

The attacker holds the service's NATS login (a leaked password; in a compose-like setup
without users any client has as much) but not the service's signing key. It can append to
a scope's pointer subject; what it cannot do is make a runtime downgrade, make the service
(its fold, `kxr status`, its downgrade gate) believe a pointer no service key signed, or
hide a replay from the audit.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest

from events.channel import ChannelConfig
from events.codec import encode_event, make_event
from events.model import Actor, Scope
from events.service_signing import ServiceKeys
from events.signing import SigningKey
from events.subjects import Subjects
from services.actions.producer import configure_channel, push_pack, request_release
from services.app import App
from services.bootstrap import start_service
from services.jetstream.log import EventLog
from services.reads.audit import replay
from services.runtime.sdk import Identity, RuntimeClient
from services.runtime.simulation import simulated_runtime
from services.settings import ROLES as CONSUMERS
from services.settings import Settings
from services.tasks import cancel_and_wait
from tests.harness import CHANNEL, OPERATOR, PRODUCER, Pack, make_pack, request_data, trust_root_for, wait_for
from tests.integration.test_fresh_pointers import chain_violations, replay_pointer, stored_pointers
from tests.security.conftest import Authed

pytestmark = pytest.mark.security
ENV, CHANNEL_NAME = "prod", "canary"
TENANTS = ("t-int-1", "tenant-42")  # one runtime in each cohort of the harness channel


# ---- the authorized embedded server: `authed` of tests/security/conftest.py, as `kxr serve` starts it


@dataclass
class Deployment:
    """The service (service login, its own signing key), a runtime per cohort (runtime login), and the attacker."""

    authed: Authed
    app: App
    service_keys: ServiceKeys
    producer_key: SigningKey
    runtimes: list[RuntimeClient]
    attacker: nats.NATS
    producer: nats.NATS
    tasks: list[asyncio.Task] = field(default_factory=list)

    @property
    def subjects(self) -> Subjects:
        return self.authed.subjects

    async def release(self, pack: Pack, **extra) -> str:
        await push_pack(self.producer.jetstream(), self.subjects, pack.body, pack.manifest, pack.digest)
        release_id = "r" + uuid.uuid4().hex[:8]
        await request_release(
            EventLog(self.producer, self.producer.jetstream(), self.subjects),
            release_id,
            request_data(pack, **extra),
            PRODUCER,
        )
        await wait_for(
            lambda: release_id in self.app.follower.world.tombstones,
            60,
            f"release {release_id} to close",
            lambda: self.app.follower.world.release(release_id),
        )
        return release_id

    def signed_scope(self, cohort: str):
        return self.app.follower.world.scope(ENV, CHANNEL_NAME, cohort)


@pytest.fixture(scope="module")
def keys(authed) -> tuple[SigningKey, SigningKey]:
    """The service's signing key and the producer's: one deployment, so kept across its restarts (each test's)."""
    return SigningKey.generate(), SigningKey.generate()


@pytest.fixture
async def deployment(authed, keys):
    """The service started on the module's server (a restart of the same deployment for each test)."""
    s = authed.subjects
    service_key, producer_key = keys
    trust_root = trust_root_for(producer_key)
    service_keys = ServiceKeys.of(service_key, list(CONSUMERS))

    async def login(role: str, name: str) -> nats.NATS:
        return await nats.connect(
            authed.url, name=name, connect_timeout=3, max_reconnect_attempts=3, **authed.creds[role].connect_options()
        )

    svc, rt, producer, operator, attacker = (
        await login("service", "kxr-serve"),
        await login("runtime", "runtimes"),
        await login("producer", "producer"),
        await login("operator", "operator"),
        await login("service", "attacker"),
    )
    settings = Settings(nats_url=authed.url, prefix=s.prefix)
    app = App(svc, settings, trust_root, signer=service_key)
    deployment = Deployment(authed, app, service_keys, producer_key, [], attacker, producer)
    try:
        await start_service(app, settings.roles)
        await configure_channel(
            EventLog(operator, operator.jetstream(), s),
            operator.jetstream(),
            ENV,
            CHANNEL_NAME,
            ChannelConfig.model_validate(CHANNEL),
            OPERATOR,
        )
        for i, tenant in enumerate(TENANTS):
            runtime = simulated_runtime(
                rt,
                Identity(ENV, CHANNEL_NAME, tenant, f"rt-{tenant}"),
                trust_root,
                {},
                prefix=s.prefix,
                interval=0.1,
                seed=i,
                service_keys=service_keys,
            )
            await runtime.resolve_cohort()
            deployment.runtimes.append(runtime)
            deployment.tasks.append(asyncio.create_task(runtime.run()))
        yield deployment
    finally:
        await cancel_and_wait(deployment.tasks)
        await app.stop()
        for nc in (svc, rt, producer, operator, attacker):
            await nc.close()


# Both tests share one server and prefix: the second one's channel history starts where the first left it,
# so each asserts on what it changed (sequences and generations it reads), never on absolute values.


async def test_a_replayed_signed_pointer_does_not_downgrade_runtimes_and_is_flagged_plain_or_batched(deployment):
    d = deployment
    old_pack, new_pack = make_pack("1.0.0", d.producer_key), make_pack("1.1.0", d.producer_key)
    await d.release(
        old_pack, rollback={"strategy": "none"} if d.signed_scope("internal").active is None else {"strategy": "lkg"}
    )
    old = (await stored_pointers(d.app.js, d.subjects, "internal"))[-1]  # genuinely signed, for 1.0.0
    await d.release(new_pack)
    await wait_for(
        lambda: all(r.active and r.active.digest == new_pack.digest for r in d.runtimes), 10, "runtimes on 1.1.0"
    )
    head = d.signed_scope("internal").generation

    await replay_pointer(d.attacker, old, f"replay-plain-{uuid.uuid4().hex[:6]}", batch=False)
    await replay_pointer(d.attacker, old, f"replay-batch-{uuid.uuid4().hex[:6]}", batch=True)
    internal = d.runtimes[0]
    await wait_for(
        lambda: sum("pointer_not_newer" in why for _, why in internal.history) == 2,
        10,
        "the runtime to refuse both replays",
        lambda: internal.history,
    )
    assert internal.active.digest == new_pack.digest and internal.chain.generation == head
    # the service's own fold ignores both too (signed, but not newer): its state, and so kxr status and the
    # downgrade gate, still say 1.1.0; its CAS value moved with the subject, so the next switch is not blocked
    replays = [e.seq for e in (await stored_pointers(d.app.js, d.subjects, "internal"))[-2:]]
    await d.app.follower.catch_up()
    state = d.signed_scope("internal")
    assert (state.active_pack.digest, state.generation, state.active_seq) == (new_pack.digest, head, replays[-1])
    assert all("pointer_not_newer" in d.app.follower.ignored[seq] for seq in replays)

    audit = await replay(d.app.js, d.subjects, service_keys=d.service_keys)
    assert [v for v in chain_violations(audit) if v[0] in replays] == [
        (replays[0], "pointer_not_newer"),
        (replays[1], "pointer_not_newer"),
    ]

    # no freeze either: the next genuine release chains on the signed head and the runtimes follow it
    newest = make_pack("1.2.0", d.producer_key)
    await d.release(newest)
    await wait_for(
        lambda: all(r.active and r.active.digest == newest.digest for r in d.runtimes), 10, "runtimes on 1.2.0"
    )
    assert internal.chain.generation == head + 1


def kxr() -> str:
    path = Path(sys.executable).parent / "kxr"
    if not path.exists():
        pytest.fail("the kxr console script is not installed beside this Python (pip install -e .)", pytrace=False)
    return str(path)


def kxr_status(authed: Authed, keys_file: Path) -> dict:
    env = {
        **os.environ,
        "KX_NATS_URL": authed.creds["auditor"].with_server(authed.url).url,
        "KX_PREFIX": authed.prefix,
        "KX_SERVICE_KEYS": str(keys_file),
    }
    out = subprocess.run([kxr(), "status", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


async def test_an_unsigned_pointer_moves_neither_the_service_nor_kxr_status_nor_the_downgrade_gate(
    deployment, tmp_path
):
    d = deployment
    current = make_pack("3.0.0", d.producer_key)
    await d.release(
        current, rollback={"strategy": "none"} if d.signed_scope("internal").active is None else {"strategy": "lkg"}
    )
    before = {c: d.signed_scope(c) for c in ("internal", "rest")}

    # the attacker switches both cohorts to an old version in a well-formed, batched, unsigned pointer
    # claiming the activator
    forged_pack = make_pack("0.1.0", d.producer_key)
    await push_pack(d.producer.jetstream(), d.subjects, forged_pack.body, forged_pack.manifest, forged_pack.digest)
    batch = "forged-" + uuid.uuid4().hex[:6]
    for i, cohort in enumerate(("internal", "rest"), start=1):
        state = before[cohort]
        event = make_event(
            "scope.activated",
            {
                "pack": {"name": "kb", "version": "0.1.0", "digest": forged_pack.digest, "size": len(forged_pack.body)},
                "manifest": forged_pack.digest.replace(":", "-") + ".manifest",
                "release_id": None,
                "kind": "pin",
                "generation": state.generation + 1,
                "prev": state.pointer_digest,
            },
            actor=Actor(kind="service", id="activator"),
            scope=Scope(env=ENV, channel=CHANNEL_NAME, cohort=cohort),
        )
        headers = {"Nats-Msg-Id": event.event_id, "Nats-Batch-Id": batch, "Nats-Batch-Sequence": str(i)}
        if i == 2:
            headers["Nats-Batch-Commit"] = "1"
        subject = d.subjects.scope(ENV, CHANNEL_NAME, cohort, "activated")
        if i == 2:
            reply = await d.attacker.request(subject, encode_event(event), headers=headers, timeout=5)
            assert b'"error"' not in reply.data, reply.data
        else:
            await d.attacker.publish(subject, encode_event(event), headers=headers)
    forged_seqs = [e.seq for e in (await stored_pointers(d.app.js, d.subjects, "rest"))[-1:]]
    await d.app.follower.catch_up()
    for cohort in ("internal", "rest"):
        after = d.signed_scope(cohort)
        assert (
            after.active_pack.digest == current.digest and after.generation == before[cohort].generation
        )  # the signed state
        assert after.active_seq > before[cohort].active_seq  # ...whose CAS value follows the subject
    assert forged_seqs[0] in d.app.follower.ignored and "unsigned" in d.app.follower.ignored[forged_seqs[0]]
    # the runtimes ignored it (their own signature check), as before
    assert all(r.active.digest == current.digest for r in d.runtimes)

    # kxr status (auditor login, KX_SERVICE_KEYS) shows the signed pointer and lists what it ignored
    keys_file = tmp_path / "service-keys.json"
    keys_file.write_text(json.dumps(d.service_keys.to_document()))
    status = kxr_status(d.authed, keys_file)
    rows = {row["scope"]: row for row in status["scopes"]}
    assert (
        rows[f"{ENV}/{CHANNEL_NAME}/internal"]["version"] == "3.0.0"
        and rows[f"{ENV}/{CHANNEL_NAME}/rest"]["version"] == "3.0.0"
    )
    assert {i["seq"] for i in status["ignored"]} >= set(forged_seqs) and status["signatures"] == "checked"

    # a real downgrade after it is judged against the signed 3.0.0, not the forged 0.1.0: refused
    downgrade = make_pack("2.0.0", d.producer_key)
    release_id = await d.release(downgrade)
    release = await d.app.release_whole(release_id)
    assert release.outcome != "success" and not release.activated, release.failure
    assert "downgrade" in (release.failure or ""), release.failure
    assert all(d.signed_scope(c).active_pack.digest == current.digest for c in ("internal", "rest"))
    assert all(r.active.digest == current.digest for r in d.runtimes)
