"""Chaos run: many concurrent releases while processes and the server are killed.

    .venv/bin/python -m bench.chaos --releases 50 --seconds 30 --seed 7

Two `kxr serve` instances (every consumer twice) run against a file-backed nats-server.
While the releases run, at seeded random moments: a serve process is SIGKILLed and
restarted, a serve process is frozen past the ack deadline (its messages are redelivered
to the other) and thawed, and the nats-server itself is killed and restarted on the same
store. Then it checks: no event lost, no duplicate activation, no partial activation,
every release closed or held with a recorded reason, the live projections (the snapshot a
serve process saves on shutdown) equal a replay of the log. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from events.channel import ChannelConfig
from events.model import Actor
from events.signing import SigningKey, b64encode
from events.subjects import Subjects
from projections.world import archive_all, fold
from services.actions.producer import (
    build_signed,
    configure_channel,
    manifest_bytes,
    push_pack,
    request_event,
    sha256_digest,
)
from services.jetstream.client import connect
from services.jetstream.embedded import EmbeddedServer, free_port
from services.jetstream.log import EventLog
from services.jetstream.log_reads import log_entries
from services.reads.audit import replay
from services.reads.snapshots import Snapshots
from services.runtime.sdk import Identity
from services.runtime.simulation import simulated_runtime
from services.tasks import cancel_and_wait

from .common import kxr_binary

PREFIX = "chaos"
OPERATOR = Actor(kind="operator", id="chaos")
CHANNEL = {
    "cohorts": [{"name": "all"}],
    "plan": [["all"]],
    "monitoring": {"window_s": 4, "min_samples": 1, "thresholds": {"error_rate_max": 0.05}},
    "compatibility": {"schema": "kx-pack/1", "profiles": ["standard"], "runtime_version": "2.4.0"},
    "policy": {},
}


@dataclass
class Serve:
    env: dict
    workdir: Path
    name: str
    proc: subprocess.Popen | None = None
    starts: int = 0

    def start(self) -> None:
        log = open(self.workdir / f"{self.name}.log", "ab")
        self.proc = subprocess.Popen(
            [kxr_binary(), "serve", "--verbose"],
            env=self.env,
            cwd=self.workdir,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        self.starts += 1

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def term(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Counts:
    releases: int = 0
    kills: int = 0
    freezes: int = 0
    server_restarts: int = 0
    redeliveries: int = 0
    events: int = 0
    outcomes: dict = field(default_factory=dict)
    held: int = 0
    problems: list = field(default_factory=list)


def pack_for(i: int, key: SigningKey) -> tuple[bytes, bytes, str]:
    body = f"chaos pack {i} ".encode() * 2000
    signed = build_signed(
        body,
        name="kb",
        version=f"1.0.{i}",
        schema="kx-pack/1",
        profile="standard",
        runtime=">=2,<3",
        build_id=f"b{i}",
        builder="ci",
        run=f"r{i}",
        source="https://git.example/kb",
        revision=f"rev{i}",
    )
    return body, manifest_bytes(signed, [key]), sha256_digest(body)


async def run_chaos(
    releases: int = 50, seconds: float = 25.0, seed: int = 7, workdir: Path | None = None, ack_wait: float = 2.0
) -> Counts:
    rng = random.Random(seed)
    counts = Counts(releases=releases)
    tmp = tempfile.TemporaryDirectory(prefix="kx-chaos-") if workdir is None else None
    work = Path(tmp.name) if tmp else workdir
    assert work is not None
    server = EmbeddedServer(store_dir=work / "js", port=free_port(), log_file=work / "nats.log").start()
    key = SigningKey.generate()
    trust = work / "trust.json"
    trust.write_text(
        json.dumps({"threshold": 1, "keys": {key.keyid: {"public": b64encode(key.public_raw), "name": "chaos"}}})
    )
    env = {
        **os.environ,
        "KX_NATS_URL": server.url,
        "KX_PREFIX": PREFIX,
        "KX_TRUST_ROOT": str(trust),
        "KX_DATA_DIR": str(work / "data"),
        "KX_ACK_WAIT": str(ack_wait),
    }
    serves = [Serve(env, work, f"serve{i}") for i in range(2)]
    for s in serves:
        s.start()
    nc = await connect(server.url, name="chaos-driver")
    js = nc.jetstream(timeout=10)
    subjects = Subjects(PREFIX)
    log = EventLog(nc, js, subjects)
    runtime_tasks: list[asyncio.Task] = []
    try:
        await _wait_for_layout(js, subjects)
        trust_root_doc = json.loads(trust.read_text())
        from events.signing import TrustRoot

        trust_root = TrustRoot.from_document(trust_root_doc)
        for i in range(releases):
            channel = f"c{i}"
            await configure_channel(log, js, "prod", channel, ChannelConfig.model_validate(CHANNEL), OPERATOR)
            rt = simulated_runtime(
                nc,
                Identity("prod", channel, f"tenant{i}", f"rt{i}"),
                trust_root,
                {},
                prefix=PREFIX,
                interval=0.5,
                seed=i,
            )
            await rt.resolve_cohort()
            runtime_tasks.append(asyncio.create_task(rt.run()))

        async def request_all() -> None:
            # spread over the first two thirds of the run, so kills land mid-release
            for i in range(releases):
                body, manifest, digest = pack_for(i, key)
                # each retry's closure runs within this iteration, so binding the loop variables late is right
                await _retrying(lambda: push_pack(js, subjects, body, manifest, digest))  # noqa: B023
                event = request_event(
                    f"rel{i}",
                    {
                        "pack": {"name": "kb", "version": f"1.0.{i}", "digest": digest},
                        "target": {"env": "prod", "channel": f"c{i}"},
                        "owner": "chaos",
                        "escalation": "pager:chaos",
                        "rollback": {"strategy": "none"},
                        "acknowledge_no_health": True,
                    },
                    Actor(kind="producer", id="chaos"),
                )
                # same event id on a retry: stored once
                await _retrying(lambda: log.append(log.release_entry(event, 0)))  # noqa: B023
                await asyncio.sleep(rng.uniform(0, 2 * seconds / 3 / releases * 2))

        requester = asyncio.create_task(request_all())
        deadline = time.monotonic() + seconds
        restarted_server = False
        while time.monotonic() < deadline:
            await asyncio.sleep(rng.uniform(0.5, 2.0))
            action = rng.choice(
                ["kill", "kill", "freeze", "server"] if not restarted_server else ["kill", "kill", "freeze"]
            )
            if not restarted_server and deadline - time.monotonic() < seconds / 2:
                action = "server"  # once per run, whatever the draw: a slow machine fits fewer rounds in

            victim = rng.choice(serves)
            if action == "kill":
                victim.kill()
                counts.kills += 1
                await asyncio.sleep(rng.uniform(0.0, 0.5))
                victim.start()
            elif action == "freeze" and victim.proc and victim.proc.poll() is None:
                os.kill(victim.proc.pid, signal.SIGSTOP)
                await asyncio.sleep(ack_wait + 1.0)  # past the ack deadline: its in-flight messages go to the other one
                os.kill(victim.proc.pid, signal.SIGCONT)
                counts.freezes += 1
            elif action == "server":
                server.stop(kill=True)
                await asyncio.sleep(0.5)
                server.start()
                counts.server_restarts += 1
                restarted_server = True

        await requester
        for s in serves:  # both instances up for the finish
            if s.proc is None or s.proc.poll() is not None:
                s.start()
        await _wait_settled(js, subjects, releases, timeout=120)
        for s in serves:
            s.term()  # a clean stop saves the live projections as a snapshot
        counts.redeliveries = sum(
            (work / f"{s.name}.log").read_text(errors="replace").count("redelivery:") for s in serves
        )
        await _check(js, subjects, counts)
    finally:
        await cancel_and_wait(runtime_tasks)
        for s in serves:
            s.kill()
        await nc.close()
        server.stop()
        if tmp:
            tmp.cleanup()
    return counts


async def _retrying(make, attempts: int = 40):
    """A producer's publish, retried while the server restarts (the same event id: no duplicate)."""
    for attempt in range(attempts):
        try:
            return await make()
        except Exception:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.25)


async def _wait_for_layout(js, subjects: Subjects, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            await js.stream_info(subjects.releases_stream)
            await js.object_store(subjects.packs_bucket)
            return
        except Exception:
            await asyncio.sleep(0.2)
    raise RuntimeError("kxr serve did not create the layout")


async def _wait_settled(js, subjects: Subjects, releases: int, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        audit = await replay(js, subjects)  # (a closed release is a tombstone in the replay's world)
        settled = [r for r in audit.world.releases.values() if r.phase in ("closed", "held")]
        if len(settled) + len(audit.world.tombstones) >= releases:
            return
        await asyncio.sleep(1.0)
    raise RuntimeError(f"releases not settled after {timeout}s")


async def _check(js, subjects: Subjects, counts: Counts) -> None:
    entries = [(entry, position, event) async for entry, position, event in log_entries(js, subjects)]
    counts.events = len(entries)
    ids = Counter(e.event_id for _, _, e in entries if e is not None)
    dupes = {k: v for k, v in ids.items() if v > 1}
    if dupes:
        counts.problems.append(f"duplicate event ids: {dupes}")
    seqs = [p.seq for _, p, _ in entries]
    if seqs != list(range(1, len(seqs) + 1)):
        counts.problems.append("the log has gaps")
    rollouts = Counter()
    batches: dict[str, list] = {}
    for _, position, event in entries:
        if event is None:
            counts.problems.append(f"undecodable entry at {position.seq}")
            continue
        if position.batch_id:
            batches.setdefault(position.batch_id, []).append(event)
        if event.type == "scope.activated" and event.data.kind == "rollout":
            rollouts[(event.release_id, event.scope.cohort)] += 1
    for key, n in rollouts.items():
        if n > 1:
            counts.problems.append(f"duplicate activation {key}: {n}")
    for batch_id, events in batches.items():
        release_events = [e for e in events if e.family == "release"]
        pointers = [e for e in events if e.type == "scope.activated"]
        for r in release_events:  # a batch may hold several releases' switches (the log writer's group commit)
            mine = [p.scope.cohort for p in pointers if p.release_id == r.release_id]
            if r.type == "release.activated" and sorted(r.data.cohorts) != sorted(mine):
                counts.problems.append(f"partial activation in batch {batch_id}")
    audit = await replay(js, subjects)
    counts.problems += [v.line() for v in audit.violations]
    for r in audit.world.releases.values():
        if r.phase == "held":
            counts.held += 1
            if not r.failure:
                counts.problems.append(f"{r.release_id} held without a recorded reason")
        elif r.phase != "closed":
            counts.problems.append(f"{r.release_id} neither closed nor held: {r.phase}")
        counts.outcomes[r.outcome or r.phase] = counts.outcomes.get(r.outcome or r.phase, 0) + 1
    for stone in audit.world.tombstones.values():  # closed, with an outcome (audit_archive.bury)
        counts.outcomes[stone.outcome] = counts.outcomes.get(stone.outcome, 0) + 1
    live = await Snapshots(js, subjects).load()
    if live is None:
        counts.problems.append("no snapshot of the live projections was saved")
    else:
        replayed = archive_all(fold(((p, e) for _, p, e in entries if e is not None and p.seq <= live.applied_seq)))
        if replayed != live:  # a service keeps closed releases archived
            counts.problems.append("live projections differ from a replay of the same log prefix")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--releases", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    started = time.monotonic()
    counts = asyncio.run(run_chaos(args.releases, args.seconds, args.seed))
    report = {**counts.__dict__, "seed": args.seed, "wall_s": round(time.monotonic() - started, 1)}
    print(json.dumps(report, indent=2, sort_keys=True))
    sys.exit(1 if counts.problems else 0)


if __name__ == "__main__":
    main()
