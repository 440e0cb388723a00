"""Time to activate: `release.requested` for a 64 KiB pack -> a runtime sees the new pointer.

    .venv/bin/python -m bench.time_to_activate --releases 200

The service runs as `kxr serve` (every consumer, durable consumers, every gate, signed
events) in its own process against a file-backed nats-server. This process is the producer
(pushes the pack, then publishes the request: the clock starts at the request) and the
runtime (an ordered consumer on the scopes' pointer subjects: the clock stops when the
pointer arrives). Monitoring is excluded: each release targets its own channel so none
waits for another's window. Each turn configures its channels first and waits until the service
has taken them in (its read models reflect the log's end) before it times a request.

Baselines, same run, same server, in TURNS turns alternating with ours (a quarter of the
releases, then a quarter of each baseline's rounds, and so on): HOPS raw hops with bare nats-py, each a JetStream
publish (acknowledged) consumed by an ordered push consumer that publishes the next hop.
Step by step (`--fast-path off`) our path has that shape: request -> preparer -> distributor
-> verifier -> activator -> runtime = five acknowledged publishes and five consumer
deliveries. One of ours is an atomic batch (the pointer switch), which nats-server syncs to
disk before answering on a file-backed R1 stream; a raw two-message atomic batch is timed
too, so the report shows the ratio to "raw hops + one synced batch" (issue 18's floor).

On the fast path (the default: services/consumers/fast_path.py) the preparer's delivery is
the only hop before the pointer: it decides every step and stores them in one five-message
atomic batch. Its own raw floor is timed too, the same shape with bare nats-py: a publish,
an ordered consumer that commits a five-message atomic batch, a subscriber that sees its
last message ("same shape").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from nats.js.api import DeliverPolicy, StreamConfig

from events.subjects import Subjects
from services.actions.producer import configure_channel, push_pack, request_event
from services.jetstream.client import connect
from services.jetstream.log import EventLog

from .common import (
    OPERATOR,
    PRODUCER,
    Progress,
    channel_config,
    latency_summary,
    model_written,
    profile_tables,
    raw_connect,
    report,
    rig,
    signed_pack,
)

HOPS = 5
PACK_BYTES = 64 * 1024
TURNS = 4  # ours and the baselines measured in this many alternating turns


def shares(total: int, turns: int) -> list[int]:
    """`total` split into `turns` near-equal parts (the first ones larger by one)."""
    return [total // turns + (1 if k < total % turns else 0) for k in range(turns)]


async def _drop(nc, js, subs: list, stream: str) -> None:
    """A baseline's clean-up: its subscriptions, its stream, its connection."""
    for sub in subs:
        await sub.unsubscribe()
    await js.delete_stream(stream)
    await nc.close()


async def raw_hops(url: str, rounds: int, hops: int = HOPS, size: int = 1024) -> list[float]:
    """Per round: the time for `hops` publish->consume->publish hops with bare nats-py."""
    nc = await raw_connect(url, name="bench-baseline")
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="BASELINE_HOPS", subjects=["baseline.hop.>"]))
    done: asyncio.Queue = asyncio.Queue()
    subs = []

    def relay(k: int):
        async def cb(msg) -> None:
            if k == hops:
                done.put_nowait(time.perf_counter())
            else:
                await js.publish(f"baseline.hop.{k + 1}", msg.data)

        return cb

    for k in range(2, hops + 1):  # hop 1 is the producer's publish; consumers 2..hops relay; the last one observes
        subs.append(
            await js.subscribe(
                f"baseline.hop.{k}", cb=relay(k), ordered_consumer=True, deliver_policy=DeliverPolicy.NEW
            )
        )
    subs.append(
        await js.subscribe("baseline.hop.1", cb=relay(1), ordered_consumer=True, deliver_policy=DeliverPolicy.NEW)
    )
    payload = os.urandom(size)
    out = []
    try:
        for _ in range(rounds):
            t0 = time.perf_counter()
            await js.publish("baseline.hop.1", payload)
            t1 = await asyncio.wait_for(done.get(), 10)
            out.append(t1 - t0)
    finally:
        await _drop(nc, js, subs, "BASELINE_HOPS")
    return out


async def raw_atomic_commits(url: str, rounds: int, size: int = 1024) -> list[float]:
    """Per round: one two-message atomic batch (what an activation commits) with bare nats-py.

    On a file-backed R1 stream the server syncs an atomic batch to disk before it answers
    (plain publishes are synced on an interval), so this is the disk's share of the floor.
    """
    nc = await raw_connect(url, name="bench-baseline-batch")
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="BASELINE_BATCH", subjects=["baseline.batch.>"], allow_atomic=True))
    payload = os.urandom(size)
    out = []
    try:
        for i in range(rounds):
            t0 = time.perf_counter()
            await nc.publish(
                f"baseline.batch.{i}.a", payload, headers={"Nats-Batch-Id": f"b{i}", "Nats-Batch-Sequence": "1"}
            )
            reply = await nc.request(
                f"baseline.batch.{i}.b",
                payload,
                timeout=10,
                headers={"Nats-Batch-Id": f"b{i}", "Nats-Batch-Sequence": "2", "Nats-Batch-Commit": "1"},
            )
            out.append(time.perf_counter() - t0)
            if b'"error"' in reply.data:
                raise RuntimeError(f"atomic batch baseline failed: {reply.data[:200]!r}")
    finally:
        await js.delete_stream("BASELINE_BATCH")
        await nc.close()
    return out


async def raw_fast_shape(url: str, rounds: int, messages: int = 5, size: int = 1024) -> list[float]:
    """Per round, with bare nats-py: a publish, delivered to a consumer that commits a `messages`-message
    atomic batch, whose last message a subscriber sees (the fast path's shape: one hop, one synced batch)."""
    nc = await raw_connect(url, name="bench-baseline-fast")
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="BASELINE_FAST", subjects=["baseline.fast.>"], allow_atomic=True))
    payload = os.urandom(size)
    done: asyncio.Queue = asyncio.Queue()

    async def commit(msg) -> None:
        batch = msg.subject.rsplit(".", 1)[1]
        for k in range(1, messages + 1):
            headers = {"Nats-Batch-Id": f"f{batch}", "Nats-Batch-Sequence": str(k)}
            if k < messages:
                await nc.publish(f"baseline.fast.out.{batch}.{k}", payload, headers=headers)
            else:
                headers["Nats-Batch-Commit"] = "1"
                await nc.request(f"baseline.fast.out.{batch}.last", payload, timeout=10, headers=headers)

    async def seen(msg) -> None:
        done.put_nowait(time.perf_counter())

    new = DeliverPolicy.NEW
    subs = [
        await js.subscribe("baseline.fast.out.*.last", cb=seen, ordered_consumer=True, deliver_policy=new),
        await js.subscribe("baseline.fast.in.*", cb=commit, ordered_consumer=True, deliver_policy=new),
    ]
    out = []
    try:
        for i in range(rounds):
            t0 = time.perf_counter()
            await js.publish(f"baseline.fast.in.{i}", payload)
            out.append(await asyncio.wait_for(done.get(), 10) - t0)
    finally:
        await _drop(nc, js, subs, "BASELINE_FAST")
    return out


async def wait_for_layout(js, subjects: Subjects, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await js.stream_info(subjects.releases_stream)
            await js.object_store(subjects.packs_bucket)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise RuntimeError("the service did not create its streams in time (see serve.log)") from None
            await asyncio.sleep(0.1)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a running process has used so far (Linux /proc; clock-tick resolution)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """The CPU the service processes spend between `start()` and `stop()`: on a shared, busy machine
    it moves far less than latency does, so a change's effect shows in it first."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.seconds: float | None = None
        self._at: float | None = None
        self.counted = 0  # what the metered span did (set by whoever stops it), for `ms_per`

    def _now(self) -> float:
        return sum(process_cpu_s(pid) for pid in self.pids)

    def start(self) -> None:
        self._at = self._now()

    def stop(self) -> None:
        """Ends a metered span: its CPU is added to the spans' before it."""
        if self._at is not None:
            self.seconds = (self.seconds or 0.0) + self._now() - self._at
            self._at = None

    def ms_per(self, count: int) -> float | None:
        return None if self.seconds is None or count <= 0 else round(self.seconds / count * 1000, 3)


async def measure(
    url: str, prefix: str, key, releases: int, warmup: int, cpu: CpuMeter | None = None, first: int = 0
) -> list[float]:
    """Activation latency of `releases` sequential releases (after `warmup` unmeasured ones), numbered
    from `first` (each on its own channel); with `cpu`, the service's CPU from the first measured
    request until the last release's tail is done (added to what it metered before)."""
    subjects = Subjects(prefix)
    nc = await connect(url, name="bench-producer-runtime")
    js = nc.jetstream(timeout=10)
    log = EventLog(nc, js, subjects)
    await wait_for_layout(js, subjects)
    total = releases + warmup
    numbers = range(first, first + total)
    config = channel_config()
    for i in numbers:
        await configure_channel(log, js, "prod", f"t{i}", config, OPERATOR)
        # one runtime reports health in every target cohort: the pre-flight reads it for real
        await js.publish(
            subjects.health("prod", f"t{i}", "all", f"rt{i}"),
            json.dumps(
                {"runtime_id": f"rt{i}", "at": datetime.now(UTC).isoformat(), "kind": "sample", "requests": 10}
            ).encode(),
        )
    # the service has taken in the turn's configurations before the first request is timed: a burst of
    # channel configurations (the guard's checks, the read models written) is not a release's time to
    # activate, and it slowed each turn's first 2-4 releases (session 28: p99 17-20 -> 14-15 ms)
    await model_written(js, subjects, timeout=60, poll_s=0.02, progress=False)
    seen: dict[str, asyncio.Future] = {}

    async def on_pointer(msg) -> None:
        release_id = json.loads(msg.data).get("release_id")
        fut = seen.get(release_id)
        if fut is not None and not fut.done():
            fut.set_result(time.perf_counter())

    sub = await js.subscribe(
        f"{prefix}.scope.prod.*.all.activated", cb=on_pointer, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW
    )
    out = []
    progress = Progress("time-to-activate releases", total)
    try:
        for n, i in enumerate(numbers):
            body = os.urandom(PACK_BYTES)
            manifest, digest = signed_pack(key, f"1.0.{i}", body)
            await push_pack(js, subjects, body, manifest, digest)
            event = request_event(
                f"tta{i}",
                {
                    "pack": {"name": "kb", "version": f"1.0.{i}", "digest": digest},
                    "target": {"env": "prod", "channel": f"t{i}"},
                    "owner": "bench",
                    "escalation": "pager:bench",
                    "rollback": {"strategy": "none"},
                },
                PRODUCER,
            )
            fut = seen[f"tta{i}"] = asyncio.get_running_loop().create_future()
            if cpu is not None and n == warmup:
                cpu.start()
            t0 = time.perf_counter()
            await log.append(log.release_entry(event, 0))
            try:
                t1 = await asyncio.wait_for(fut, 30)
            except TimeoutError:
                raise RuntimeError(f"release tta{i} was not activated within 30 s (see serve.log)") from None
            if n >= warmup:
                out.append(t1 - t0)
            progress.update(n + 1)
        if cpu is not None:  # what the last release set off (monitor, guard, read models) counts too
            await asyncio.sleep(0.3)
            cpu.stop()
    finally:
        await sub.unsubscribe()
        await nc.close()
    return out


# `--split`: the lifecycle's path in one process, what follows an activation in another
SPLIT = ("preparer,distributor,verifier,activator", "monitor,promoter,notifier,guard")


async def run(
    releases: int,
    warmup: int,
    processes: int = 1,
    profile: Path | None = None,
    split: bool = False,
    fast_path: bool = True,
) -> dict:
    switch = {"KX_FAST_PATH": "on" if fast_path else "off"}
    with rig(prefix="tta") as r:
        if split:
            procs = [
                r.serve("--only", roles, name=f"serve-{roles.split(',')[0]}", profile=profile, **switch)
                for roles in SPLIT
            ]
        else:
            procs = [  # several `kxr serve` share the durable consumers (issue 18: report)
                r.serve(name=f"serve{n + 1}" if n else "serve", profile=profile, **switch) for n in range(processes)
            ]
        cpu = CpuMeter([proc.pid for proc in procs])
        # ours and each raw baseline take turns, a quarter of each at a time: this host's speed drifts
        # within one run (the synced batch alone took 3.5 ms in one run and 21 ms in the next), and a
        # ratio is only fair when both sides ran at the same time
        ours: list[float] = []
        base: list[float] = []
        batch: list[float] = []
        shape: list[float] = []
        first = 0
        for turn, (n, m) in enumerate(zip(shares(releases, TURNS), shares(max(releases, 200), TURNS), strict=True)):
            if n:
                warm = warmup if turn == 0 else 0
                ours += await measure(r.url, r.prefix, r.key, n, warm, cpu, first=first)
                first += n + warm
            base += await raw_hops(r.url, m)
            batch += await raw_atomic_commits(r.url, m)
            shape += await raw_fast_shape(r.url, m)
        if profile is not None:  # the stats are written when `kxr serve` returns (SIGTERM is a clean stop)
            for proc in procs:
                proc.terminate()
                proc.wait(30)
            profile_tables(profile)
    o, b, a, f = latency_summary(ours), latency_summary(base), latency_summary(batch), latency_summary(shape)
    floor = b["p50_ms"] + a["p50_ms"]
    return {
        "releases": releases,
        "pack_bytes": PACK_BYTES,
        "hops": HOPS,
        "ours": o,
        "baseline": b,
        "raw_atomic_commit": a,
        "floor_p50_ms": round(floor, 3),
        "ratio_to_floor_p50": round(o["p50_ms"] / floor, 2),
        "ratio_p50": round(o["p50_ms"] / b["p50_ms"], 2),
        "ratio_p99": round(o["p99_ms"] / b["p99_ms"], 2),
        "ratio_to_fast_shape_p99": round(o["p99_ms"] / f["p99_ms"], 2),
        "turns": TURNS,
        # the fast path's own shape with bare nats-py: one hop, one synced five-message batch, a delivery
        "raw_fast_shape": f,
        "ratio_to_fast_shape_p50": round(o["p50_ms"] / f["p50_ms"], 2),
        "fast_path": fast_path,
        "processes": len(procs),
        "split": list(SPLIT) if split else None,
        # the `kxr serve` processes' user+system CPU per measured release (its whole tail included)
        "service_cpu_ms_per_release": cpu.ms_per(releases),
        "profiled": profile is not None,  # under cProfile: slower than a plain run's figures
        # issue 18: p50 within 1.5x of raw hops + one synced two-message atomic batch (the same shape as
        # ours: the batch's sync is physics); p99 under 10 ms
        "targets": {"ratio_to_floor_p50_max": 1.5, "p99_ms_max": 10.0},
        "met": {"p50": o["p50_ms"] / floor <= 1.5, "p99": o["p99_ms"] <= 10.0},
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--releases", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--processes", type=int, default=1, help="kxr serve processes sharing the consumers")
    ap.add_argument(
        "--split",
        action="store_true",
        help="two `kxr serve --only` processes: " + " | ".join(SPLIT) + " (the path alone in one)",
    )
    ap.add_argument("--profile", type=Path, help="a directory: run `kxr serve` under cProfile (.prof and .txt there)")
    ap.add_argument(
        "--fast-path",
        choices=("on", "off"),
        default="on",
        help="off: every step from its own consumer's delivery (KX_FAST_PATH=off), issue 18's shape",
    )
    args = ap.parse_args(argv)
    if args.processes < 1:
        ap.error("--processes: at least 1")
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    res = asyncio.run(run(args.releases, args.warmup, args.processes, args.profile, args.split, args.fast_path == "on"))
    o, b = res["ours"], res["baseline"]
    report(
        "time_to_activate",
        res,
        [
            (
                "p50 vs hops + one synced atomic batch",
                f"{o['p50_ms']} ms",
                f"{res['floor_p50_ms']} ms / {res['ratio_to_floor_p50']}x",
                "<= 1.5x",
            ),
            (  # against the raw shape that syncs, as every activation does (raw hops alone do not)
                "p99 request -> pointer",
                f"{o['p99_ms']} ms",
                f"{res['raw_fast_shape']['p99_ms']} ms / {res['ratio_to_fast_shape_p99']}x",
                "<= 10 ms",
            ),
            ("p50 vs raw hops alone", f"{o['p50_ms']} ms", f"{b['p50_ms']} ms / {res['ratio_p50']}x", "(context)"),
            (
                "p50 vs the fast path's shape, raw",
                f"{o['p50_ms']} ms",
                f"{res['raw_fast_shape']['p50_ms']} ms / {res['ratio_to_fast_shape_p50']}x",
                "(context)",
            ),
            ("service CPU per release", f"{res['service_cpu_ms_per_release']} ms", "-", "(context)"),
        ],
    )


if __name__ == "__main__":
    main()
