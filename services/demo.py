"""`kxr demo`: a whole release story on an embedded NATS, printed as it happens.

1. a healthy pack rolls out in two stages and closes `success` (it becomes last-known-good)
2. a tampered pack (bytes changed after signing) is held closed by the integrity gate
3. a regression fails its canary window and is rolled back to last-known-good
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from rich.console import Console

from events.channel import ChannelConfig
from events.model import Actor
from events.signing import SigningKey, TrustRoot, b64encode
from projections.evidence import summary
from projections.world import World
from services.actions.producer import (
    build_signed,
    configure_channel,
    manifest_bytes,
    push_pack,
    request_release,
    sha256_digest,
)
from services.jetstream.client import connect
from services.jetstream.embedded import EmbeddedServer, authorized_config, free_port
from services.jetstream.log import EventLog
from services.permissions import creds_path
from services.runtime.sdk import Identity
from services.runtime.simulation import Behaviour, simulated_runtime

from .app import App
from .bootstrap import start_service
from .settings import Settings
from .tasks import cancel_and_wait

console = Console()
StatusTables = Callable[[World], list[Any]]
ENV, CHANNEL = "prod", "canary"
DEMO_CHANNEL: dict[str, Any] = {
    "cohorts": [{"name": "internal", "tenants": ["acme-internal", "qa"]}, {"name": "rest"}],
    "plan": [["internal"], ["rest"]],
    "monitoring": {
        "window_s": 1,
        "min_samples": 2,
        "thresholds": {"error_rate_max": 0.05, "latency_p95_ms_max": 250, "new_error_classes": "fail"},
    },
    "compatibility": {"schema": "kx-pack/1", "profiles": ["standard"], "runtime_version": "2.4.0"},
    "policy": {
        "allowed_sources": ["https://git.konnaxion.example/knowledge"],
        "allowed_builders": ["kx-pipeline"],
        "forbid_downgrade": True,
    },
}
TENANTS = ["acme-internal", "qa", "globex", "initech", "umbrella"]
EXPECTED = {"demo-healthy": "success", "demo-tampered": "failed", "demo-regression": "rolled_back"}


def make_pack(version: str, key: SigningKey, body: bytes) -> tuple[bytes, bytes, str]:
    signed = build_signed(
        body,
        name="kb-core",
        version=version,
        schema="kx-pack/1",
        profile="standard",
        runtime=">=2.3,<3",
        build_id=f"build-{version}",
        builder="kx-pipeline",
        run=f"run-{version}",
        source="https://git.konnaxion.example/knowledge/kb-core",
        revision=f"rev-{version}",
    )
    return body, manifest_bytes(signed, [key]), sha256_digest(body)


async def _print_events(app: App, done: dict[str, str]) -> None:
    queue = app.follower.listen()
    while True:
        position, event = await queue.get()
        if event is None or event.family != "release":
            continue
        style = {
            "closed": "bold",
            "verification_failed": "red",
            "monitoring_failed": "red",
            "rolled_back": "yellow",
            "rollback_started": "yellow",
            "monitoring_passed": "green",
            "verified": "green",
        }.get(event.suffix, "")
        line = f"{position.seq:>4}  {event.release_id:<16} {event.suffix:<24} {summary(event)}"
        console.print(line, style=style, highlight=False, markup=False)
        if event.suffix == "closed":
            done[event.release_id] = event.data.outcome


async def _wait_closed(done: dict[str, str], release_id: str, timeout: float) -> str:
    deadline = asyncio.get_running_loop().time() + timeout
    while release_id not in done:
        if asyncio.get_running_loop().time() > deadline:
            return "timeout"
        await asyncio.sleep(0.05)
    return done[release_id]


async def _runtimes_on(runtimes, digest: str, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if all(rt.active and rt.active.digest == digest for rt in runtimes):
            return
        await asyncio.sleep(0.05)


async def run_demo(
    window_s: float = 3.0,
    keep: bool = False,
    ui: tuple[str, int] | None = None,
    status: StatusTables = lambda world: [],
) -> int:
    """With `ui` (host, port), the dashboard follows the demo and stays up after it until Ctrl-C.
    `status`: how the CLI draws `kxr status` for a world (printed at the end; handed in, the CLI sits above)."""
    from .dashboard.server import dashboard_for

    data_dir = Path(tempfile.mkdtemp(prefix="kxr-demo-"))
    server = EmbeddedServer(store_dir=data_dir / "nats", log_file=data_dir / "nats-server.log", port=free_port())
    server.config_file, creds = authorized_config(data_dir, "kx", server.url)  # one least-privilege user per role
    server.start()
    console.print(f"[bold]Konnaxion Releases demo[/bold] — embedded NATS at {server.url}, data in {data_dir}")
    key = SigningKey.generate()
    trust_root = TrustRoot.from_document(
        {"threshold": 1, "keys": {key.keyid: {"public": b64encode(key.public_raw), "name": "demo-producer"}}}
    )
    nc = await connect(server.url, name="kxr-demo", **creds["service"].connect_options())
    # each party on its own user: runtimes, the producer and the operator
    rt_nc, producer_nc, operator_nc = [
        await connect(server.url, name=f"kxr-demo-{role}", **creds[role].connect_options())
        for role in ("runtime", "producer", "operator")
    ]
    producer_js, operator_js = producer_nc.jetstream(timeout=10), operator_nc.jetstream(timeout=10)
    app = App(nc, Settings(nats_url=server.url, data_dir=data_dir), trust_root)
    producer_log, operator_log = (
        EventLog(producer_nc, producer_js, app.subjects),
        EventLog(operator_nc, operator_js, app.subjects),
    )
    tasks: list[asyncio.Task] = []
    done: dict[str, str] = {}
    stack = AsyncExitStack()
    try:
        await start_service(app, app.settings.roles)
        await stack.enter_async_context(
            dashboard_for(
                app, ui, lambda url: console.print(f"[bold]dashboard[/bold] at {url} (read-only)", highlight=False)
            )
        )
        tasks.append(asyncio.create_task(_print_events(app, done)))
        cfg = ChannelConfig.model_validate(
            {**DEMO_CHANNEL, "monitoring": {**DEMO_CHANNEL["monitoring"], "window_s": max(1, int(window_s))}}
        )
        operator = Actor(kind="operator", id="demo-operator")
        await configure_channel(operator_log, operator_js, ENV, CHANNEL, cfg, operator)

        healthy = make_pack("1.0.0", key, b"kb-core 1.0.0 " * 4096)
        regression = make_pack("1.2.0", key, b"kb-core 1.2.0 (slow joins) " * 4096)
        behaviours = {regression[2]: Behaviour(error_rate=0.2, p95_ms=400, error_classes={"QueryTimeout": 7})}
        runtimes = [
            simulated_runtime(rt_nc, Identity(ENV, CHANNEL, tenant, f"rt-{tenant}"), trust_root, behaviours, seed=i)
            for i, tenant in enumerate(TENANTS)
        ]
        for rt in runtimes:
            await rt.resolve_cohort()
            tasks.append(asyncio.create_task(rt.run()))
        console.print("runtimes: " + ", ".join(f"{rt.id.runtime_id}->{rt.cohort}" for rt in runtimes))
        # the operator's credentials file, never its password: the file holds the server, user and password
        operator_creds = creds_path(data_dir, "operator")
        console.print(
            f"watch a release from another terminal (releases demo-healthy, demo-tampered, demo-regression):\n"
            f"  .venv/bin/kxr --creds {operator_creds} watch demo-healthy",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        await asyncio.sleep(0.6)  # a first health sample from every runtime, for pre-flight
        producer = Actor(kind="producer", id="kb-pipeline")

        def request(pack_version: str, digest: str, rollback: str) -> dict:
            return {
                "pack": {"name": "kb-core", "version": pack_version, "digest": digest},
                "target": {"env": ENV, "channel": CHANNEL},
                "owner": "knowledge-team",
                "escalation": "pager:knowledge-oncall",
                "rollback": {"strategy": rollback},
                "reason": f"demo release of {pack_version}",
            }

        console.rule("1. a healthy pack, two stages (first release of this scope: rollback strategy 'none')")
        await push_pack(producer_js, app.subjects, healthy[0], healthy[1])
        await request_release(producer_log, "demo-healthy", request("1.0.0", healthy[2], "none"), producer)
        await _wait_closed(done, "demo-healthy", 30 + 4 * window_s)

        console.rule("2. a tampered pack: signed, then its bytes changed")
        tampered_body, tampered_manifest, tampered_digest = make_pack("1.1.0", key, b"kb-core 1.1.0 " * 4096)
        await push_pack(
            producer_js, app.subjects, tampered_body.replace(b"1.1.0", b"6.6.6", 1), tampered_manifest, tampered_digest
        )
        await request_release(producer_log, "demo-tampered", request("1.1.0", tampered_digest, "lkg"), producer)
        await _wait_closed(done, "demo-tampered", 30)

        console.rule("3. a regression: canary window fails, rolled back to last-known-good")
        await push_pack(producer_js, app.subjects, regression[0], regression[1])
        await request_release(producer_log, "demo-regression", request("1.2.0", regression[2], "lkg"), producer)
        await _wait_closed(done, "demo-regression", 30 + 4 * window_s)
        await _runtimes_on(runtimes, healthy[2], timeout=15)  # each re-verifies the LKG pack before switching back

        from services.jetstream.log_reads import load_world

        # the log folded whole: the service's own world keeps closed releases as tombstones
        for t in status(await load_world(app.js, app.subjects)):
            console.print(t)
        on = {rt.id.runtime_id: (rt.active.version if rt.active else None) for rt in runtimes}
        console.print("runtimes now run: " + ", ".join(f"{k}={v}" for k, v in on.items()))
        ok = all(done.get(r) == o for r, o in EXPECTED.items()) and all(v == "1.0.0" for v in on.values())
        console.print(
            "[bold green]demo finished as expected[/bold green]"
            if ok
            else f"[bold red]unexpected outcomes[/bold red]: {done}, runtimes {on}"
        )
        if ui is not None:
            console.print("the dashboard stays up: Ctrl-C to stop")
            await asyncio.Event().wait()
        return 0 if ok else 1
    finally:
        await stack.aclose()
        await cancel_and_wait(tasks)
        await app.stop()
        for conn in (nc, rt_nc, producer_nc, operator_nc):
            await conn.close()
        server.stop()
        if not keep:
            shutil.rmtree(data_dir, ignore_errors=True)
