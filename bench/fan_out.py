"""Fan-out: 1,000 runtime connections follow one channel; how long until all have seen an activation.

    .venv/bin/python -m bench.fan_out                       # 1,000 runtimes in 4 processes
    .venv/bin/python -m bench.fan_out --runtimes 20 --workers 1 --no-verify

`kxr serve` runs in its own process against a file-backed nats-server. Each runtime is
its own nats-py connection running the runtime SDK's follower (`RuntimeClient.follow`:
an ephemeral last-per-subject consumer on its scope's `activated` subject read with
pull requests kept open), spread over `--workers` processes. Next to it, on the same
connection, the baseline: the same kind of subscription (`OrderedReader` follow, as the
SDK opens it) on a test subject of a test stream.

Sequence: connect and subscribe everything (start-up figure: until the server lists every
follower's consumer with a pull request waiting), then one raw JetStream publish on the
test subject (baseline), then one release requested and activated by the real service
(ours: pointer seen; the SDK's re-verification is skipped), then, unless `--no-verify`,
the runtimes re-subscribe on a second channel with the SDK's full path and one release
goes there (each runtime re-verifies the pack: signature, digest, size; switches and
reports health). A second channel because a scope that has run a pack needs a
known-good pack to roll back to before it takes another release.

Per runtime: the wall-clock time from the message's stored time (server timestamp;
same host, same clock) until the runtime has it, and for ours also from the request's
publish. p50/p99/max; target p99 <= 250 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from nats.js.api import StorageType, StreamConfig

from events.subjects import Subjects
from services.actions.producer import configure_channel, push_pack, request_event
from services.jetstream.client import connect
from services.jetstream.direct import last_per_subject
from services.jetstream.janitor import all_consumers
from services.jetstream.layout import LOG_MAX_CONSUMERS
from services.jetstream.log import EventLog

from .common import OPERATOR, PRODUCER, Progress, channel_config, latency_summary, report, rig, signed_pack
from .time_to_activate import wait_for_layout

ENV, CHANNEL, VERIFY_CHANNEL = "prod", "fan", "fan-verify"
BASE_STREAM, BASE_SUBJECT = "FANOUT_BASE", "fanbase.ping"
PACK_BYTES = 64 * 1024
P99_TARGET_MS = 250.0
ROOT = Path(__file__).resolve().parents[1]


def raise_fd_limit(needed: int) -> None:
    """One socket per connection: lift the soft limit to the hard one if it is short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = hard if hard == resource.RLIM_INFINITY else min(hard, max(needed, soft))
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < needed:
            raise RuntimeError(f"need {needed} file descriptors, the hard limit is {hard}")


# ---- worker process: n runtimes ---------------------------------------------------------------------
class _Seen:
    """Arrival times per key; a line on stdout once all n runtimes of this process have one."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.times: dict[str, list[float]] = {}

    def mark(self, key: str) -> None:
        now = time.time()
        got = self.times.setdefault(key, [])
        got.append(now)
        if len(got) == self.n:
            _say({"key": key, "times": got})


def _say(doc: dict) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def _runtime_class():
    from services.runtime.sdk import RuntimeClient

    class BenchRuntime(RuntimeClient):
        """The SDK's follower, timing arrivals; with `verify`, the SDK's whole path after it."""

        def __init__(self, *a, seen: _Seen, verify: bool, **kw) -> None:
            super().__init__(*a, **kw)
            self._seen, self._verify = seen, verify

        async def consider(self, pointer, failed_before: int = 0):
            key = pointer.release_id or pointer.pack.digest
            self._seen.mark(f"seen:{key}")
            if not self._verify:
                return None
            # re-verify (signature, digest, size), switch, report health
            refusal = await super().consider(pointer, failed_before)
            if self.active is not None and self.active.digest == pointer.pack.digest:
                self._seen.mark(f"switched:{key}")
            else:
                _say({"error": f"{self.id.runtime_id} refused {key}: {self.history[-1:]}"})
            return refusal

    return BenchRuntime


async def _baseline_follower(js, seen: _Seen) -> None:
    from services.jetstream.reader import OrderedReader

    reader = OrderedReader(js, BASE_STREAM, [BASE_SUBJECT], deliver_last_per_subject=True)
    try:
        async for entry in reader.read(follow=True):
            seen.mark(f"base:{json.loads(entry.data)['key']}")
    finally:
        await reader.close()


async def _worker(spec: dict) -> None:
    """n connections, each with a baseline follower and a runtime following `channel`; on stdin
    `follow <channel> <verify>` replaces the runtimes' followers, `stop` ends."""
    from events.signing import TrustRoot
    from services.runtime.sdk import Identity

    raise_fd_limit(spec["n"] * 2 + 64)
    BenchRuntime = _runtime_class()
    trust = TrustRoot.from_document(spec["trust"])
    seen = _Seen(spec["n"])
    conns, baseline, followers = [], [], []

    async def follow(channel: str, verify: bool) -> None:
        for t in followers:
            t.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
        followers.clear()
        for i, nc in enumerate(conns):
            rt = BenchRuntime(
                nc,
                Identity(ENV, channel, f"tenant-{spec['index']}-{i}", f"rt-{spec['index']}-{i}"),
                trust,
                prefix=spec["prefix"],
                seen=seen,
                verify=verify,
            )
            await rt.resolve_cohort()
            followers.append(asyncio.create_task(rt.follow()))
        _say({"following": channel})

    loop = asyncio.get_running_loop()
    try:
        for i in range(spec["n"]):
            nc = await connect(spec["url"], name=f"bench-rt-{spec['index']}-{i}")
            conns.append(nc)
            baseline.append(asyncio.create_task(_baseline_follower(nc.jetstream(timeout=10), seen)))
            _say({"connected": i + 1})
        await follow(spec["channel"], False)
        while True:
            command = (await loop.run_in_executor(None, sys.stdin.readline)).split()
            if not command or command[0] == "stop":
                return
            if command[0] == "follow":
                await follow(command[1], command[2] == "1")
    finally:
        for t in baseline + followers:
            t.cancel()
        await asyncio.gather(*baseline, *followers, return_exceptions=True)
        for nc in conns:
            await nc.close()


# ---- parent -------------------------------------------------------------------------------------------
class Workers:
    """The worker processes and what they report, read line by line."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []
        self.connected: dict[int, int] = {}
        self.following: dict[int, str] = {}
        self.done: dict[str, list[list[float]]] = {}
        self.errors: list[str] = []
        self._readers: list[asyncio.Task] = []
        self._changed = asyncio.Event()

    async def until_following(self, workers: int, runtimes: int, timeout: float) -> None:
        """Until every worker process's runtimes follow their scope, with a progress bar of connections."""
        bar = Progress("runtimes connected", runtimes)
        await self.until(
            lambda: len(self.following) == workers,
            "connecting runtimes",
            timeout + runtimes * 0.2,
            lambda: bar.update(min(sum(self.connected.values()), runtimes - 1)),
        )
        bar.update(runtimes)

    async def start(self, specs: list[dict]) -> None:
        for spec in specs:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.fan_out",
                "--worker",
                json.dumps(spec),
                cwd=ROOT,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=64 * 1024 * 1024,
            )
            self.procs.append(proc)
            self._readers.append(asyncio.create_task(self._read(spec["index"], proc)))

    async def _read(self, index: int, proc) -> None:
        async for line in proc.stdout:
            doc = json.loads(line)
            if "connected" in doc:
                self.connected[index] = doc["connected"]
            elif "following" in doc:
                self.following[index] = doc["following"]
            elif "key" in doc:
                self.done.setdefault(doc["key"], []).append(doc["times"])
            elif "error" in doc:
                self.errors.append(doc["error"])
            self._changed.set()
        code = await proc.wait()
        if code:
            self.errors.append(f"worker {index} exited with {code}")
        self._changed.set()

    async def send(self, line: str) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                try:
                    proc.stdin.write(line.encode() + b"\n")
                    await proc.stdin.drain()
                except (BrokenPipeError, ConnectionResetError):
                    pass

    async def until(self, ready, what: str, timeout: float, progress=None) -> None:
        """Wait for `ready()` (async or not); fail on a worker's error or after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            done = ready()
            if asyncio.iscoroutine(done):
                done = await done
            if done:
                return
            if self.errors:
                raise RuntimeError(f"{what}: {self.errors[0]}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{what}: not done within {timeout:.0f}s")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
            except TimeoutError:
                pass
            if progress:
                progress()

    def times(self, key: str) -> list[float]:
        return [t for chunk in self.done.get(key, []) for t in chunk]

    async def stop(self) -> None:
        await self.send("stop")
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for t in self._readers:
            t.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


async def live_followers(js, stream: str, subject: str) -> int:
    """Consumers on `subject` with a pull request open: followers that will get the next message."""
    live = 0
    for info in await all_consumers(js, stream):
        filters = info.config.filter_subjects or ([info.config.filter_subject] if info.config.filter_subject else [])
        # a runtime's reader filters on its scope's pointers (and the log's trust rotations)
        if subject in filters and (info.num_waiting or 0) > 0:
            live += 1
    return live


async def _stored_time(nc, stream: str, subject: str) -> float:
    async for stored in last_per_subject(nc, stream, [subject]):
        if stored.stored_at is not None:
            return stored.stored_at.timestamp()
    raise RuntimeError(f"no stored message on {subject}")


async def _activate(log: EventLog, js, subjects: Subjects, key, channel: str, release_id: str, version: str) -> float:
    """Push a pack and request its release; the request's publish time (wall clock)."""
    body = os.urandom(PACK_BYTES)
    manifest, digest = signed_pack(key, version, body)
    await push_pack(js, subjects, body, manifest, digest)
    event = request_event(
        release_id,
        {
            "pack": {"name": "kb", "version": version, "digest": digest},
            "target": {"env": ENV, "channel": channel},
            "owner": "bench",
            "escalation": "pager:bench",
            "rollback": {"strategy": "none"},
        },
        PRODUCER,
    )
    t0 = time.time()
    await log.append(log.release_entry(event, 0))
    return t0


async def _measure_activation(
    pool: Workers,
    nc,
    js,
    log,
    subjects: Subjects,
    key,
    channel: str,
    release_id: str,
    runtimes: int,
    timeout: float,
    verify: bool,
) -> dict:
    pointer = subjects.scope(ENV, channel, "all", "activated")
    await pool.until(
        lambda: _all_live(js, subjects.releases_stream, pointer, runtimes), f"followers of {channel}", timeout
    )
    t_req = await _activate(log, js, subjects, key, channel, release_id, "1.0.1" if verify else "1.0.0")
    mark = f"switched:{release_id}" if verify else f"seen:{release_id}"
    await pool.until(
        lambda: len(pool.times(mark)) == runtimes,
        f"activation on {channel}",
        timeout + (runtimes * 0.05 if verify else 0),
    )
    stored = await _stored_time(nc, subjects.releases_stream, pointer)
    out = {
        "seen_from_stored": latency_summary([t - stored for t in pool.times(f"seen:{release_id}")]),
        "seen_from_request": latency_summary([t - t_req for t in pool.times(f"seen:{release_id}")]),
    }
    if verify:
        out["switched_from_stored"] = latency_summary([t - stored for t in pool.times(mark)])
        out["switched_from_request"] = latency_summary([t - t_req for t in pool.times(mark)])
    return out


async def _all_live(js, stream: str, subject: str, n: int) -> bool:
    return await live_followers(js, stream, subject) >= n


async def run(runtimes: int = 1000, workers: int = 4, verify: bool = True, timeout: float = 120.0) -> dict:
    raise_fd_limit(runtimes * 3 + 256)  # the nats-server child inherits it: one socket per runtime
    workers = max(1, min(workers, runtimes))
    with rig(prefix="fan") as r:
        r.serve(name="serve")
        subjects = Subjects(r.prefix)
        nc = await connect(r.url, name="bench-fanout-producer")
        js = nc.jetstream(timeout=10)
        log = EventLog(nc, js, subjects)
        pool = Workers()
        try:
            await wait_for_layout(js, subjects)
            await js.add_stream(
                StreamConfig(
                    name=BASE_STREAM,
                    subjects=[BASE_SUBJECT],
                    storage=StorageType.FILE,
                    allow_direct=True,
                    max_consumers=LOG_MAX_CONSUMERS,
                )
            )  # like the log: one consumer per runtime
            for channel in (CHANNEL, VERIFY_CHANNEL):
                await configure_channel(log, js, ENV, channel, channel_config(), OPERATOR)
                await js.publish(
                    subjects.health(ENV, channel, "all", "rt-probe"),
                    json.dumps(
                        {
                            "runtime_id": "rt-probe",
                            "at": datetime.now(UTC).isoformat(),
                            "kind": "sample",
                            "requests": 10,
                        }
                    ).encode(),
                )
            trust = json.loads(r.trust_file.read_text())
            share = [runtimes // workers + (1 if i < runtimes % workers else 0) for i in range(workers)]
            t_start = time.monotonic()
            await pool.start(
                [
                    {"index": i, "n": n, "url": r.url, "prefix": r.prefix, "trust": trust, "channel": CHANNEL}
                    for i, n in enumerate(share)
                ]
            )
            await pool.until_following(workers, runtimes, timeout)
            await pool.until(lambda: _all_live(js, BASE_STREAM, BASE_SUBJECT, runtimes), "baseline followers", timeout)
            pointer = subjects.scope(ENV, CHANNEL, "all", "activated")
            await pool.until(
                lambda: _all_live(js, subjects.releases_stream, pointer, runtimes), "runtime followers", timeout
            )
            startup = time.monotonic() - t_start

            t_pub = time.time()
            await js.publish(BASE_SUBJECT, json.dumps({"key": "b1"}).encode())
            await pool.until(lambda: len(pool.times("base:b1")) == runtimes, "baseline publish", timeout)
            base_stored = await _stored_time(nc, BASE_STREAM, BASE_SUBJECT)
            base = latency_summary([t - base_stored for t in pool.times("base:b1")])
            base_from_pub = latency_summary([t - t_pub for t in pool.times("base:b1")])

            ours = await _measure_activation(
                pool, nc, js, log, subjects, r.key, CHANNEL, "ours", runtimes, timeout, False
            )
            verified = None
            if verify:
                pool.following.clear()
                await pool.send(f"follow {VERIFY_CHANNEL} 1")
                await pool.until(
                    lambda: len(pool.following) == workers, "re-subscribing runtimes", timeout + runtimes * 0.2
                )
                verified = await _measure_activation(
                    pool, nc, js, log, subjects, r.key, VERIFY_CHANNEL, "verify", runtimes, timeout, True
                )
        finally:
            await pool.stop()
            await nc.close()
    o = ours["seen_from_stored"]
    return {
        "runtimes": runtimes,
        "workers": workers,
        "startup_s": round(startup, 2),
        "ours": o,
        "ours_from_request": ours["seen_from_request"],
        "baseline": base,
        "baseline_from_publish": base_from_pub,
        "verified": verified,
        "ratio_p50": round(o["p50_ms"] / base["p50_ms"], 2) if base["p50_ms"] > 0 else None,
        "ratio_p99": round(o["p99_ms"] / base["p99_ms"], 2) if base["p99_ms"] > 0 else None,
        "targets": {"p99_ms_max": P99_TARGET_MS},
        "met": {"p99": o["p99_ms"] <= P99_TARGET_MS},
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runtimes", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=4, help="processes the runtimes are spread over")
    ap.add_argument("--no-verify", dest="verify", action="store_false", help="skip the activation with re-verification")
    ap.add_argument("--quick", action="store_true", help="20 runtimes in 1 process")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one worker process, JSON spec
    args = ap.parse_args(argv)
    if args.worker:
        asyncio.run(_worker(json.loads(args.worker)))
        return
    if args.quick:
        args.runtimes, args.workers = 20, 1
    if args.runtimes < 1 or args.workers < 1:
        ap.error("--runtimes and --workers must be at least 1")
    res = asyncio.run(run(args.runtimes, args.workers, args.verify))
    o, b, q = res["ours"], res["baseline"], res["ours_from_request"]
    rows = [
        ("p50 stored -> runtime", f"{o['p50_ms']} ms", f"{b['p50_ms']} ms / {res['ratio_p50']}x", ""),
        (
            "p99 stored -> runtime",
            f"{o['p99_ms']} ms",
            f"{b['p99_ms']} ms / {res['ratio_p99']}x",
            f"<= {P99_TARGET_MS:g} ms",
        ),
        ("max stored -> runtime", f"{o['max_ms']} ms", f"{b['max_ms']} ms", ""),
        ("p99 request -> runtime", f"{q['p99_ms']} ms", "", ""),
        ("start-up (all following)", f"{res['startup_s']} s", "", ""),
    ]
    if res["verified"]:
        v = res["verified"]["switched_from_stored"]
        rows.append(("p99 stored -> re-verified+switched", f"{v['p99_ms']} ms", "", "(info)"))
    report("fan_out", res, rows)


if __name__ == "__main__":
    main()
