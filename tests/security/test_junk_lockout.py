"""Attack (issue 14): one junk message on a release subject must not lock the operator out.

Against the embedded server with its real per-role users (`authorized_config`, as `kxr serve`
starts it): the producer user may publish `<p>.release.*.requested` (services/permissions.py),
so it can put bytes that are no event on the subject of a release in flight. Before the fix,
`kxr release pause|abort|rollback` folded the log without that entry, appended with a stale
expected sequence and failed forever with "the log moved". Now the operator's verbs work, the
service carries on, and the junk is a dead letter `kxr deadletter list` shows.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest

from events.channel import ChannelConfig
from events.service_signing import ServiceKeys
from events.signing import SigningKey
from events.subjects import Subjects
from services.actions.producer import configure_channel, push_pack, request_release
from services.app import App
from services.bootstrap import start_service
from services.jetstream.log import EventLog
from services.runtime.sdk import Identity
from services.runtime.simulation import simulated_runtime
from services.settings import ROLES as CONSUMERS
from services.settings import Settings
from services.tasks import cancel_and_wait
from tests.e2e.support import base_env, kxr_binary, wait_until
from tests.harness import CHANNEL, OPERATOR, PRODUCER, make_pack, request_data, trust_root_for, wait_for

pytestmark = pytest.mark.security

LONG_WINDOW = {"window_s": 600, "min_samples": 1}  # a release that stays in flight while the operator acts
JUNK = b"\x00 not an event {"


@dataclass
class Rig:
    url: str
    prefix: str
    creds: dict
    app: App
    producer: nats.NATS
    producer_key: SigningKey
    data_dir: Path

    def service_violations(self) -> list[str]:
        """Permission violations of the service's own connection (its dead letters need none)."""
        log = (self.data_dir / "nats-server.log").read_text(errors="replace")
        return [line for line in log.splitlines() if "Violation" in line and "junk-service" in line]

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.prefix)

    def kxr(self, role: str, *args: str) -> subprocess.CompletedProcess:
        """`kxr` as that role's user, with nothing but its URL (as `kxr creds show <role>` prints it)."""
        env = {**base_env(), "KX_NATS_URL": self.creds[role].url, "KX_PREFIX": self.prefix, "KX_ACTOR": "oncall"}
        return subprocess.run(
            [kxr_binary(), *args], env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )

    async def operator(self, *args: str) -> str:
        result = await asyncio.to_thread(self.kxr, "operator", *args)
        assert result.returncode == 0, f"kxr {' '.join(args)} failed: {result.stderr.strip()}"
        return result.stdout

    async def request(self, release_id: str, version: str, **extra) -> str:
        pack = make_pack(version, self.producer_key)
        await push_pack(self.producer.jetstream(), self.subjects, pack.body, pack.manifest, pack.digest)
        await request_release(
            EventLog(self.producer, self.producer.jetstream(), self.subjects),
            release_id,
            request_data(pack, **extra),
            PRODUCER,
        )
        return pack.digest

    async def junk(self, release_id: str) -> int:
        """What a producer may do: any bytes on a release's `requested` subject, no expected sequence."""
        ack = await self.producer.jetstream().publish(self.subjects.release(release_id, "requested"), JUNK)
        await self.app.follower.wait_for(ack.seq)
        return ack.seq

    def phase(self, release_id: str) -> str | None:
        world = self.app.follower.world
        if release_id in world.tombstones:
            return "closed"
        release = world.release(release_id)
        return release.phase if release else None

    async def reach(self, release_id: str, *phases: str, timeout: float = 60) -> None:
        await wait_for(
            lambda: self.phase(release_id) in phases,
            timeout,
            f"{release_id} to reach {phases}",
            lambda: self.app.follower.world.release(release_id),
        )


@pytest.fixture
async def rig(authed):
    """The whole service as the service user, runtimes as the runtime user, a producer, a configured channel."""
    url, prefix, creds, data_dir = (
        authed.url,
        authed.prefix,
        authed.creds,
        authed.data_dir,
    )  # tests/security/conftest.py
    subjects = Subjects(prefix)
    producer_key, service_key = SigningKey.generate(), SigningKey.generate()
    trust_root = trust_root_for(producer_key)
    conns = {
        role: await nats.connect(url, name=f"junk-{role}", **creds[role].connect_options())
        for role in ("service", "producer", "runtime", "operator")
    }
    app = App(conns["service"], Settings(nats_url=url, prefix=prefix), trust_root, signer=service_key)
    tasks: list[asyncio.Task] = []
    try:
        await start_service(app, Settings(prefix=prefix).roles)
        operator = conns["operator"]
        await configure_channel(
            EventLog(operator, operator.jetstream(), subjects),
            operator.jetstream(),
            "prod",
            "canary",
            ChannelConfig.model_validate(CHANNEL),
            OPERATOR,
        )
        for i, tenant in enumerate(("t-int-1", "tenant-42")):  # one runtime per cohort: windows get their samples
            rt = simulated_runtime(
                conns["runtime"],
                Identity("prod", "canary", tenant, f"rt-{tenant}"),
                trust_root,
                {},
                prefix=prefix,
                interval=0.1,
                seed=i,
                service_keys=ServiceKeys.of(service_key, list(CONSUMERS)),
            )
            await rt.resolve_cohort()
            tasks.append(asyncio.create_task(rt.run()))
        yield Rig(url, prefix, creds, app, conns["producer"], producer_key, data_dir)
    finally:
        await cancel_and_wait(tasks)
        await app.stop()
        for nc in conns.values():
            await nc.close()


async def test_junk_on_a_release_subject_never_locks_the_operator_out(rig: Rig):
    base = "base-" + uuid.uuid4().hex[:6]
    await rig.request(base, "1.0.0", rollback={"strategy": "none"})
    await rig.reach(base, "closed")
    base_digest = (await rig.app.release_whole(base)).verified.pack.digest

    # pause, resume and roll back a release with junk in its history
    victim = "victim-" + uuid.uuid4().hex[:6]
    await rig.request(victim, "1.1.0", monitoring=LONG_WINDOW)
    await rig.reach(victim, "monitoring")
    junk_seqs = [await rig.junk(victim)]
    await rig.operator("release", "pause", victim, "-m", "checking a report")
    await wait_for(lambda: rig.app.follower.world.release(victim).paused, 30, "the pause to be folded")
    junk_seqs.append(await rig.junk(victim))
    await rig.operator("release", "resume", victim, "-m", "report was noise")
    junk_seqs.append(await rig.junk(victim))
    await rig.operator("release", "rollback", victim, "--reason", "tenant reports")
    await rig.reach(victim, "closed", "rolled_back")
    assert rig.app.follower.world.scope("prod", "canary", "internal").active.pack.digest == base_digest

    # abort another one the same way
    aborted = "abort-" + uuid.uuid4().hex[:6]
    await rig.request(aborted, "1.2.0", monitoring=LONG_WINDOW)
    await rig.reach(aborted, "monitoring")
    junk_seqs.append(await rig.junk(aborted))
    await rig.operator("release", "abort", aborted, "-m", "wrong pack")
    await rig.reach(aborted, "closed", "rolled_back")
    assert rig.app.follower.world.scope("prod", "canary", "internal").active.pack.digest == base_digest

    # junk on a pin subject (the operator user may publish there) does not stop pin and unpin
    operator = await nats.connect(rig.url, **rig.creds["operator"].connect_options())
    try:
        ack = await operator.jetstream().publish(rig.subjects.scope("prod", "canary", "internal", "pinned"), JUNK)
    finally:
        await operator.close()
    await rig.app.follower.wait_for(ack.seq)
    junk_seqs.append(ack.seq)
    await rig.operator(
        "pin", "prod/canary/internal", "--version", "1.0.0", "--until", "1h", "-m", "freeze for the incident"
    )
    await rig.operator("unpin", "prod/canary/internal", "-m", "incident over")
    await wait_for(
        lambda: (
            rig.app.follower.world.scope("prod", "canary", "internal").pin is None
            and rig.app.follower.world.scope("prod", "canary", "internal").last_pin is not None
        ),
        30,
        "pin then unpin",
    )

    # the junk is visible, never an obstacle: each entry a dead letter the operator can list
    async def listed():
        rows = json.loads(await rig.operator("deadletter", "list", "--json"))
        kept = {r["stream seq"] for r in rows if r["consumer"] == "undecodable"}
        return kept if set(junk_seqs) <= kept else None

    await wait_until(listed, 20, "every junk entry to be dead-lettered", interval=0.2)
    assert not rig.service_violations(), rig.service_violations()
