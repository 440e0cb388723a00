"""Throughput: releases to activation per second with 1,000 scopes in flight.

    .venv/bin/python -m bench.throughput                      # 200 channels x 5 cohorts = 1,000 scopes
    .venv/bin/python -m bench.throughput --channels 20 --cohorts 2

Two measurements, each against a file-backed nats-server and `kxr serve` processes:

- per consumer: the requests are all stored first, then each consumer of the activation
  path runs alone (`kxr serve --only ROLE`) and drains its backlog. Its rate is taken from
  the server timestamps of the events it appended (first to last), so start-up is not
  counted. Baseline: a raw nats-py consume -> publish -> ack loop over the same number of
  messages (durable pull consumer, one acknowledged publish per message), same run.
  Target: each consumer >= 50% of the raw loop. The activator's process also keeps the
  operator's read models; their first fold of the backlog is start-up, so that process is
  run once before the verifier (nothing to activate yet) and the activator measured resumes
  them, as a restarted service does (before session 14 its figure included that fold). The
  activator commits each switch as an atomic batch, which the server syncs to disk: it is
  also compared with a raw loop of synced two-message batches, one at a time. Two more raw
  figures show the disk's side:
  16 such batches side by side (not synced together by nats-server 2.15.1: about the same
  rate) and 16 switches in one batch (what the service's group commit does when switches
  wait behind a commit: services/jetstream/log.py).
- end to end: every consumer in one `kxr serve`, all requests published at once; releases
  (and scope pointers) per second from the first request to the last pointer stored.
  `--processes 1,2` also runs it with two `kxr serve` processes sharing the durable consumers
  (a report, no target: on a 2-core machine the two share the cores the server also needs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from events.subjects import Subjects
from services.actions.producer import configure_channel, push_pack, request_event
from services.jetstream.client import connect
from services.jetstream.log import EventLog
from services.jetstream.log_reads import log_entries
from services.reads.read_models import POSITION

from .common import OPERATOR, PRODUCER, Progress, channel_config, profile_tables, raw_connect, report, rig, signed_pack
from .time_to_activate import CpuMeter, wait_for_layout

STEPS = (
    ("preparer", "release.prepared"),
    ("distributor", "release.distributed"),
    ("verifier", "release.verified"),
    ("activator", "release.activated"),
)
PACK_BYTES = 64 * 1024
RAW_RUNS = 3  # runs of the raw loop per bench run: its median is the ratios' baseline


async def raw_loop(url: str, messages: int, size: int = 1024, server: CpuMeter | None = None) -> float:
    """Messages per second through a serial consume -> publish (acknowledged) -> ack loop
    (`server`: metered over the loop, for the server's CPU per message)."""
    nc = await raw_connect(url, name="bench-raw-loop")
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="BASELINE_LOOP", subjects=["baseline.loop.>"]))
    payload = os.urandom(size)
    acks = [await js.publish_async("baseline.loop.in", payload) for _ in range(messages)]
    await asyncio.gather(*acks)
    sub = await js.pull_subscribe(
        "baseline.loop.in", durable="raw", config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT)
    )
    done = 0
    if server is not None:
        server.start()
    t0 = time.perf_counter()
    while done < messages:
        for msg in await sub.fetch(min(256, messages - done), timeout=5):
            await js.publish("baseline.loop.out", msg.data)
            await msg.ack()
            done += 1
    rate = messages / (time.perf_counter() - t0)
    if server is not None:
        server.stop()
    await js.delete_stream("BASELINE_LOOP")
    await nc.close()
    return rate


async def raw_batch_loop(
    url: str, messages: int, size: int = 1024, *, in_flight: int = 1, switches_per_batch: int = 1
) -> float:
    """Two-message switches per second, as atomic batches, with bare nats-py.

    What the activator must do per release (pointer + release event, all or nothing); on a
    file-backed R1 stream the server syncs each committed batch to disk, so one batch at a time
    is the disk-bound floor the activator was compared with. `in_flight`: batches sent side by
    side (on nats-server 2.15.1 they are not synced together: about the same rate);
    `switches_per_batch`: several switches in one batch (what the service's group commit does).
    """
    nc = await raw_connect(url, name="bench-raw-batches")
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="BASELINE_BATCHES", subjects=["baseline.batches.>"], allow_atomic=True))
    payload = os.urandom(size)
    slots = asyncio.Semaphore(in_flight)
    batches = max(1, messages // switches_per_batch)

    async def one(b: int) -> None:
        async with slots:
            subjects = [f"baseline.batches.{b}.{k}.{part}" for k in range(switches_per_batch) for part in "ab"]
            for n, subject in enumerate(subjects, 1):
                headers = {"Nats-Batch-Id": f"b{b}", "Nats-Batch-Sequence": str(n)}
                if n < len(subjects):
                    await nc.publish(subject, payload, headers=headers)
                else:
                    reply = await nc.request(
                        subject, payload, timeout=10, headers={**headers, "Nats-Batch-Commit": "1"}
                    )
                    if b'"error"' in reply.data:
                        raise RuntimeError(f"raw batch refused: {reply.data!r}")

    t0 = time.perf_counter()
    await asyncio.gather(*(one(b) for b in range(batches)))
    rate = batches * switches_per_batch / (time.perf_counter() - t0)
    await js.delete_stream("BASELINE_BATCHES")
    await nc.close()
    return rate


class Driver:
    """The producer's side: channels, health, packs and requests for one prefix."""

    def __init__(self, url: str, prefix: str, key, channels: int, cohorts: int) -> None:
        self.url, self.prefix, self.key = url, prefix, key
        self.channels, self.cohorts = channels, cohorts
        self.subjects = Subjects(prefix)

    async def __aenter__(self) -> Driver:
        self.nc = await connect(self.url, name="bench-throughput")
        self.js = self.nc.jetstream(timeout=30)
        self.log = EventLog(self.nc, self.js, self.subjects)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.nc.close()

    async def prepare(self) -> list:
        """Configure every channel, report health in every cohort, push every pack; return the requests."""
        await wait_for_layout(self.js, self.subjects)
        cohorts = [f"c{k}" for k in range(self.cohorts)]
        config = channel_config(cohorts)
        now = datetime.now(UTC).isoformat()
        progress = Progress(f"{self.prefix}: channels, health and packs", self.channels)
        requests = []
        for i in range(self.channels):
            await configure_channel(self.log, self.js, "prod", f"ch{i}", config, OPERATOR)
            for c in cohorts:
                await self.js.publish(
                    self.subjects.health("prod", f"ch{i}", c, f"rt{i}-{c}"),
                    json.dumps({"runtime_id": f"rt{i}-{c}", "at": now, "kind": "sample", "requests": 10}).encode(),
                )
            body = os.urandom(PACK_BYTES)
            manifest, digest = signed_pack(self.key, f"1.0.{i}", body)
            await push_pack(self.js, self.subjects, body, manifest, digest)
            requests.append(
                request_event(
                    f"tp{i}",
                    {
                        "pack": {"name": "kb", "version": f"1.0.{i}", "digest": digest},
                        "target": {"env": "prod", "channel": f"ch{i}"},
                        "owner": "bench",
                        "escalation": "pager:bench",
                        "rollback": {"strategy": "none"},
                    },
                    PRODUCER,
                )
            )
            progress.update(i + 1)
        return requests

    async def publish_all(self, requests: list) -> float:
        """Publish every request (acknowledged, concurrently); returns when the first was sent."""
        t0 = time.time()
        await asyncio.gather(*(self.log.append(self.log.release_entry(e, 0)) for e in requests))
        return t0

    async def stored_times(self, event_type: str) -> list[float]:
        """Server timestamps (epoch seconds) of every stored event of this type."""
        out = []
        async for entry, _, event in log_entries(self.js, self.subjects):
            if event is not None and event.type == event_type and entry.stored_at is not None:
                out.append(entry.stored_at.timestamp())
        return sorted(out)

    async def stored_count(self, event_type: str) -> int:
        """How many events of this type are stored, from the stream's per-subject counts (no read of the log)."""
        family, _, suffix = event_type.partition(".")
        assert family == "release", event_type
        info = await self.js.stream_info(
            self.subjects.releases_stream, subjects_filter=f"{self.prefix}.release.*.{suffix}"
        )
        return sum((info.state.subjects or {}).values())

    async def read_models_at(self) -> int:
        """The log sequence the operator's read models reflect (0: none written yet)."""
        try:
            kv = await self.js.key_value(self.subjects.read_bucket)
            entry = await kv.get(POSITION)
        except Exception:  # no bucket or no position yet
            return 0
        return int(json.loads(entry.value or b"{}").get("seq", 0))

    async def warm_read_models(self, r, timeout: float = 300.0) -> int:
        """Start the activator's process with nothing to activate until its projector has folded the
        log so far into the read models, then stop it.

        The process that activates also keeps the operator's read models (services/bootstrap.py). On
        its first start the projector folds the whole backlog into them (every event decoded, every
        service signature checked: 24% of that process's samples in session 13's profile), which is
        start-up, not activation. Run once here, before anything is verified, it lets the activator
        measured later resume them as a restarted service does, as every other step's process does.
        """
        last = (await self.js.stream_info(self.subjects.releases_stream)).state.last_seq
        proc = r.serve("--only", "activator", name="activator-warm-up", KX_PREFIX=self.prefix)
        progress = Progress("activator's read models folding the backlog", last)
        deadline = time.monotonic() + timeout
        try:
            while (at := await self.read_models_at()) < last:
                progress.update(at)
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"read models at {at} of {last} (see the activator-warm-up log)")
                await asyncio.sleep(0.2)
            progress.update(last)
        finally:
            proc.terminate()
            proc.wait(10)
        return at

    async def wait_count(
        self, event_type: str, want: int, what: str, timeout: float = 600.0, meters: tuple[CpuMeter, ...] = ()
    ) -> list[float]:
        """Wait for `want` events of this type, then return their server timestamps.

        `meters` run from the first such event seen to the last (so a process's start-up is not
        counted); each one's `counted` is how many events it saw appended meanwhile.

        While the consumers work, only the stream's per-subject counts are asked for (one small
        request every 0.1 s): decoding the whole log every half second, as this did before, took
        a share of the two cores from the very consumers being measured. The log is read once, at the end.
        """
        progress = Progress(what, want)
        deadline = time.monotonic() + timeout
        first: int | None = None
        while True:
            count = await self.stored_count(event_type)
            progress.update(min(count, want))
            if first is None and count > 0:
                first = count
                for meter in meters:
                    meter.start()
            if count >= want:
                for meter in meters:
                    meter.stop()
                    meter.counted = count - (first or 0)
                return await self.stored_times(event_type)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: only {count}/{want} after {timeout:.0f}s (see the serve logs)")
            await asyncio.sleep(0.1)


def rate_of(times: list[float]) -> float:
    """Events per second between the first and the last (n-1 intervals)."""
    if len(times) < 2 or times[-1] <= times[0]:
        return float("nan")
    return (len(times) - 1) / (times[-1] - times[0])


async def per_consumer(
    r, channels: int, cohorts: int, profile: Path | None = None, cpu: dict | None = None, warmed: list | None = None
) -> dict[str, float]:
    """Each consumer's rate alone; with `cpu`, also the CPU per release its process and the
    nats-server spent while it drained (`<role>`: {"service_ms", "server_ms"}); `warmed` gets the
    log sequence the activator's read models were folded to before it ran."""
    async with Driver(r.url, "tpc", r.key, channels, cohorts) as d:
        layout = r.serve("--only", "preparer", name="layout", KX_PREFIX="tpc")  # creates the streams
        requests = await d.prepare()
        layout.terminate()
        # its stop is not measured: a SIGTERM during its start-up on a loaded host (CI) may wait out the start's
        # steps being cancelled (services/tasks.py cancel_and_wait): more than 10 s once, session 25
        layout.wait(60)
        await d.publish_all(requests)
        rates = {}
        for role, event_type in STEPS:
            if role == "verifier":  # the last step with nothing yet for the activator to do
                at = await d.warm_read_models(r)
                if warmed is not None:
                    warmed.append(at)
            proc = r.serve("--only", role, name=role, profile=profile, KX_PREFIX="tpc")
            meters = (CpuMeter([proc.pid]), CpuMeter([r.server.proc.pid]))
            times = await d.wait_count(
                event_type, len(requests), f"{role} draining {len(requests)} releases", meters=meters
            )
            proc.terminate()
            proc.wait(10)
            rates[role] = rate_of(times)
            if cpu is not None:
                cpu[role] = {name: m.ms_per(m.counted) for name, m in zip(("service_ms", "server_ms"), meters)}
        return rates


async def end_to_end(
    r, channels: int, cohorts: int, processes: int = 1, profile: Path | None = None
) -> dict[str, float]:
    prefix = f"tpe{processes}"
    async with Driver(r.url, prefix, r.key, channels, cohorts) as d:
        procs = [  # several processes share every durable consumer
            r.serve(name=f"serve-all-{processes}-{n}", profile=profile, KX_PREFIX=prefix) for n in range(processes)
        ]
        requests = await d.prepare()
        cpu = CpuMeter([proc.pid for proc in procs])
        cpu.start()
        t0 = await d.publish_all(requests)
        times = await d.wait_count(
            "release.activated", len(requests), f"all consumers: {len(requests)} releases to activation"
        )
        await asyncio.sleep(0.3)  # what the last activations set off counts too
        cpu.stop()
        span = times[-1] - t0
        return {
            "releases_per_s": len(requests) / span,
            "scopes_per_s": len(requests) * cohorts / span,
            "seconds": span,
            # the `kxr serve` processes' user+system CPU per release, start to the last activation's tail
            "service_cpu_ms_per_release": cpu.ms_per(len(requests)) or float("nan"),
        }


async def run(channels: int, cohorts: int, processes: tuple[int, ...] = (1,), profile: Path | None = None) -> dict:
    cpu: dict[str, dict] = {}
    warmed: list[int] = []
    with rig(prefix="tpc") as r:
        consumers = await per_consumer(r, channels, cohorts, profile, cpu, warmed)
        e2e_by = {n: await end_to_end(r, channels, cohorts, n, profile) for n in processes}
        if profile is not None:  # each `kxr serve` writes its stats when it stops (SIGTERM is a clean return)
            for proc in r.procs:
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(30)
            profile_tables(profile)
        e2e = e2e_by[processes[0]]
        raw_server = CpuMeter([r.server.proc.pid])
        # the loop drains in a quarter of a second: one run moved 3,100-4,800/s within an hour on this
        # machine, so the ratios take the median of RAW_RUNS (all listed), the server metered on the first
        raw_runs = [
            await raw_loop(r.url, max(channels, 1000), server=raw_server if i == 0 else None) for i in range(RAW_RUNS)
        ]
        raw = statistics.median(raw_runs)
        raw_batches = await raw_batch_loop(r.url, max(channels, 200))
        raw_side_by_side = await raw_batch_loop(r.url, max(channels, 200), in_flight=16)
        raw_grouped = await raw_batch_loop(r.url, max(channels, 1000), switches_per_batch=16)
    ratios = {role: round(rate / raw, 3) for role, rate in consumers.items()}
    return {
        "channels": channels,
        "cohorts": cohorts,
        "scopes": channels * cohorts,
        "releases": channels,
        "consumers_per_s": {k: round(v, 1) for k, v in consumers.items()},
        "raw_loop_per_s": round(raw, 1),
        "raw_loop_runs_per_s": [round(x, 1) for x in raw_runs],
        "raw_atomic_batches_per_s": round(raw_batches, 1),
        "activator_to_raw_batches": round(consumers["activator"] / raw_batches, 3),
        "raw_atomic_batches_16_in_flight_per_s": round(raw_side_by_side, 1),
        "raw_switches_16_per_batch_per_s": round(raw_grouped, 1),
        "ratio_to_raw": ratios,
        # where each consumer's time went while it drained alone: its process's and the nats-server's
        # CPU per release (the raw loop: the server's per message); a rate held down by the server,
        # not by Python, shows here
        "cpu_ms_per_release": cpu,
        # the log sequence the activator's read models were folded to before it ran (its start-up)
        "activator_read_models_warmed_to": warmed[0] if warmed else None,
        "raw_loop_server_cpu_ms_per_message": raw_server.ms_per(max(channels, 1000)),
        "end_to_end": {k: round(v, 2) for k, v in e2e.items()},
        "profiled": profile is not None,  # under cProfile: slower than a plain run's figures
        "end_to_end_by_processes": {str(n): {k: round(v, 2) for k, v in e.items()} for n, e in e2e_by.items()},
        "targets": {"ratio_min": 0.5},
        "met": {role: ratio >= 0.5 for role, ratio in ratios.items()},
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--channels", type=int, default=200)
    ap.add_argument("--cohorts", type=int, default=5)
    ap.add_argument(
        "--processes",
        default="1",
        help="end to end with these numbers of `kxr serve` processes, e.g. 1,2 (the first gives the figure)",
    )
    ap.add_argument(
        "--profile", type=Path, help="a directory: run each `kxr serve` under cProfile (.prof and .txt there)"
    )
    args = ap.parse_args(argv)
    try:
        processes = tuple(int(n) for n in args.processes.split(","))
    except ValueError:
        processes = ()
    if not processes or min(processes) < 1:
        ap.error("--processes: positive numbers, comma-separated")
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    res = asyncio.run(run(args.channels, args.cohorts, processes, args.profile))
    raw = res["raw_loop_per_s"]
    rows = [
        (f"{role} alone", f"{rate}/s", f"{raw}/s / {res['ratio_to_raw'][role]}x", ">= 0.5x")
        for role, rate in res["consumers_per_s"].items()
    ]
    rows.append(
        ("raw loop, each run", " / ".join(f"{x}/s" for x in res["raw_loop_runs_per_s"]), "median is the baseline", "")
    )
    for role, spent in res["cpu_ms_per_release"].items():
        rows.append(
            (
                f"  {role}: CPU per release",
                f"{spent['service_ms']} ms its process",
                f"{spent['server_ms']} ms nats-server (raw loop: {res['raw_loop_server_cpu_ms_per_message']} ms/msg)",
                "(context)",
            )
        )
    rows.append(
        (
            "activator vs raw synced batches",
            f"{res['consumers_per_s']['activator']}/s",
            f"{res['raw_atomic_batches_per_s']}/s / {res['activator_to_raw_batches']}x",
            "(context)",
        )
    )
    rows.append(
        (
            "raw synced batches: 16 in flight",
            f"{res['raw_atomic_batches_16_in_flight_per_s']}/s",
            f"16 switches per batch: {res['raw_switches_16_per_batch_per_s']}/s",
            "(context)",
        )
    )
    for n, e in res["end_to_end_by_processes"].items():
        what = "end to end (all consumers)" + ("" if n == "1" else f", {n} serve processes")
        rows.append((what, f"{e['releases_per_s']} releases/s", f"{e['scopes_per_s']} scopes/s", "-"))
        rows.append(
            (
                f"  service CPU per release ({n} process{'es' if n != '1' else ''})",
                f"{e['service_cpu_ms_per_release']} ms",
                "-",
                "(context)",
            )
        )
    report("throughput", res, rows)


if __name__ == "__main__":
    main()
