"""Fast-track rollback: a breaching health sample -> every runtime of the cohort runs the LKG again.

    .venv/bin/python -m bench.rollback                            # 5 and 1,000 runtimes
    .venv/bin/python -m bench.rollback --runtimes 5 --rounds 50
    .venv/bin/python -m bench.rollback --quick                    # 3 runtimes, 5 rounds
    .venv/bin/python -m bench.rollback --runtimes 5 --profile /tmp/prof   # service + runtimes under cProfile
                                                                           # (runtimes: only on the rollback pointer)

The service runs as `kxr serve` (every consumer, durable consumers, signed events) in its
own process against a file-backed nats-server. One channel, one cohort: a first release
passes a 3 s window on data and becomes the last-known-good (LKG). N runtimes, each its own
connection running the runtime SDK (`RuntimeClient.follow`: re-verify the pack, switch,
report an `activation`), spread over `--workers` processes, follow the scope.

Each round requests a fresh release (rollback strategy `lkg`, a window of an hour, so only
the breach ends it), waits until it is monitored and every runtime runs it, then publishes
ONE health sample that is a hard breach (100 requests, 50 errors: over twice
`error_rate_max`). The clock starts just before that publish and stops at the server's
stored time of the last of the N `kind: activation, ok: true` reports of the LKG digest in
KX_HEALTH. Our path: monitor (live health subscription) -> `monitoring_failed` ->
promoter -> `rollback_started` -> activator (readiness, one synced atomic batch: pointer +
`rolled_back`) -> N runtimes (re-verify, switch, report).

Baseline, same run, same server, bare nats-py: the raw chain of the same shape. The sample
is published to a raw health stream; a "monitor" (core subscription) publishes a JetStream
event; a "promoter" (ordered consumer) publishes the next; an "activator" (ordered
consumer) commits a synced two-message atomic batch (pointer + event); N subscribers, one
connection each, receive the pointer and each publishes an activation report (to the raw
health stream, not waiting for its acknowledgement, as the runtime SDK reports); the clock
stops at the stored time of the last report.

Each hop's stored time (server timestamps, same host clock) is kept per round, and each
runtime times its own switch (trust-chain read, gates over the pack, report), so a miss
shows where the time goes. A runtime ran the LKG before, so its record of the pack answers
(services/runtime/sdk.py `VerifiedPacks`): `switches_read_from_store` counts the switches
back that still read the pack from the store (0 expected), and the trust chain is read
only after a rotation (none here).

Where the 2 cores go: each worker measures its CPU from its first runtime's arrival of the rollback
pointer to its last runtime's acked report (`runtime_cpu`: us per runtime and pointer, with the
garbage collector's part), and `cpu_per_round` is each role's CPU (nats-server, service, runtimes'
workers, this bench) from the breach to the last report stored, from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from nats.js.api import DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from events.codec import decode_event
from events.subjects import Subjects
from services.actions.producer import configure_channel, push_pack, request_event
from services.jetstream.client import connect
from services.jetstream.layout import LOG_MAX_CONSUMERS
from services.jetstream.log import EventLog

from .common import (
    OPERATOR,
    PRODUCER,
    Progress,
    channel_config,
    latency_summary,
    percentile,
    profile_tables,
    raw_connect,
    report,
    rig,
    signed_pack,
)
from .fan_out import Workers, _say, _Seen, live_followers, raise_fd_limit
from .time_to_activate import wait_for_layout

ENV, CHANNEL, COHORT = "prod", "rb", "all"
PROBE = "rt-probe"  # the runtime id the bench reports as (pre-flight's sample, the LKG's data, the breach)
ERROR_RATE_MAX = 0.05
BREACH = {"requests": 100, "errors": 50}  # 0.5 > 2 x 0.05, requests >= HARD_BREACH_MIN_REQUESTS
ROUND_WINDOW_S = 3600  # only the breach ends a round's window
LKG_WINDOW_S = 3  # the first release's window: passed on the probe's data, it makes the LKG
PACK_BYTES = 64 * 1024
RAW_LOG, RAW_HEALTH = "RAWRB_LOG", "RAWRB_HEALTH"
RAW_POINTER, RAW_FAILED, RAW_ROLLBACK, RAW_ROLLED = (
    "rawrb.log.scope.pointer",
    "rawrb.log.failed",
    "rawrb.log.rollback",
    "rawrb.log.rolled_back",
)


def target_ms(runtimes: int) -> float | None:
    """The issue's p99 targets: 25 ms with 5 runtimes, 300 ms with 1,000 connections."""
    if runtimes <= 5:
        return 25.0
    if runtimes <= 1000:
        return 300.0
    return None


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def sample_body(digest: str | None, requests: int, errors: int) -> bytes:
    return json.dumps(
        {
            "runtime_id": PROBE,
            "digest": digest,
            "at": now_rfc3339(),
            "kind": "sample",
            "requests": requests,
            "errors": errors,
        }
    ).encode()


# ---- worker process: n runtimes, then n raw subscribers ------------------------------------------------
PARTS = ("trust_chain", "gates", "report")  # where a runtime's switch spends its time (s each)
_GATES: dict[asyncio.Task | None, float] = {}  # apply task -> seconds in the gates over the pack, this pointer


def _timed_gates(fn):
    """`run_gates`, timing each call for the task that called it (only a switch that reads the store
    calls it: nothing is kept for the others)."""

    async def timed(*a, **kw):
        t0 = time.perf_counter()
        try:
            return await fn(*a, **kw)
        finally:
            _GATES[asyncio.current_task()] = time.perf_counter() - t0

    return timed


def _runtime_class():
    from services.runtime import sdk

    # the two awaits of `RuntimeClient.verify`: the trust root in force (the chain, read again only
    # after a rotation), the gates over the pack
    sdk.run_gates = _timed_gates(sdk.run_gates)

    class BenchRuntime(sdk.RuntimeClient):
        """The SDK's runtime; marks when each pointer arrived and what its switch spent where
        (the report itself is timed by its stored time). What it adds per pointer is kept small:
        250 of them share a process and a core."""

        def __init__(self, *a, seen: _Seen, parts: _Values, window: _Window, **kw) -> None:
            super().__init__(*a, **kw)
            self._seen, self._parts, self._window = seen, parts, window
            self._trust_s = self._report_s = 0.0

        async def trust_root_now(self):
            t0 = time.perf_counter()
            try:
                return await super().trust_root_now()
            finally:
                self._trust_s = time.perf_counter() - t0

        async def report(self, body: dict) -> None:
            t0 = time.perf_counter()
            try:
                await super().report(body)
            finally:
                if body.get("kind") == "activation":
                    self._report_s = time.perf_counter() - t0

        def accept_pointer(self, entry):
            pointer = super().accept_pointer(entry)
            if pointer is not None and pointer.kind == "rollback":
                # the window opens at the first arrival (decoded, signature and chain checked): the
                # reader hands over what arrived together, so runtimes accept before any considers
                self._window.arrived("ours", f"{pointer.release_id}:{pointer.kind}")
            return pointer

        async def consider(self, pointer, failed_before: int = 0):
            key = f"{pointer.release_id}:{pointer.kind}"
            self._seen.mark(f"seen:{key}")
            self._trust_s = self._report_s = 0.0
            refusal = await super().consider(pointer, failed_before)
            gates = _GATES.pop(asyncio.current_task(), None)
            # 1 when the pack was read from the store, 0 when its record answered (a pack it ran before)
            self._parts.add(f"store_read:{key}", 0.0 if gates is None else 1.0)
            self._parts.add(f"trust_chain:{key}", self._trust_s)
            self._parts.add(f"gates:{key}", gates or 0.0)
            self._parts.add(f"report:{key}", self._report_s)
            if self.active is None or self.active.digest != pointer.pack.digest:
                _say({"error": f"{self.id.runtime_id} did not switch to {pointer.pack.short()}: {self.history[-1:]}"})
            self._window.finished(key)
            return refusal

    return BenchRuntime


class _Window:
    """One worker's CPU on one pointer: from its first runtime's arrival to its last runtime's report
    (acked), in CPU time (`time.process_time`), with the part of it the garbage collector took; a line
    on stdout per window (`cpu:<key>`, `gc:<key>`: seconds). With `--profile`, cProfile (CPU time)
    runs only inside these windows, one profile per side (ours, raw): the figure per pointer compares
    like with like, not the set-up, the forward switches or the idle heartbeats."""

    def __init__(self, n: int, path: str | None) -> None:
        self.n, self.path = n, path
        self.profiles: dict[str, cProfile.Profile] = {}
        self._open: cProfile.Profile | None = None
        self._counts: dict[str, int] = {}
        self._cpu0 = self._gc0 = 0.0
        self._gc_s, self._gc_start = 0.0, 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_start = time.process_time()
        else:
            self._gc_s += time.process_time() - self._gc_start

    def arrived(self, side: str, key: str) -> None:
        if key in self._counts:
            return
        self._counts[key] = 0
        self._cpu0, self._gc0 = time.process_time(), self._gc_s
        if self.path is not None and self._open is None:
            # CPU time, not wall time: 4 workers share 2 cores with the server, and a profile in wall
            # time charges whatever call was running when the process was preempted
            self._open = self.profiles.setdefault(side, cProfile.Profile(time.process_time))
            self._open.enable()

    def finished(self, key: str) -> None:
        if key not in self._counts:
            return
        self._counts[key] += 1
        if self._counts[key] == self.n:
            if self._open is not None:
                self._open.disable()
                self._open = None
            _say({"key": f"cpu:{key}", "times": [time.process_time() - self._cpu0]})
            _say({"key": f"gc:{key}", "times": [self._gc_s - self._gc0]})

    def dump(self) -> None:
        if self._open is not None:
            self._open.disable()
        for side, prof in self.profiles.items():
            prof.dump_stats(f"{self.path}-{side}.prof")


class _Values(_Seen):
    """Values per key; a line on stdout once all n runtimes of this process gave one."""

    def add(self, key: str, value: float) -> None:
        got = self.times.setdefault(key, [])
        got.append(value)
        if len(got) == self.n:
            _say({"key": key, "times": got})


async def _worker(spec: dict) -> None:
    """n runtimes following the channel; on stdin `raw` replaces them with n raw subscribers, `stop` ends."""
    from events.service_signing import ServiceKeys
    from events.signing import TrustRoot
    from services.runtime.sdk import Identity

    raise_fd_limit(spec["n"] * 2 + 64)
    if spec.get("gc_scaled", True):
        # n runtimes share this process, as one runtime would not: the collector's young generation
        # holds every runtime's live objects (each one's waiting reads and requests), so each
        # collection walks n runtimes' worth and is paid n times as often per runtime. Scaled by n,
        # a collection comes as often per runtime's allocations as in a process of its own. Ours
        # and the raw subscribers run in this same process: both sides get the same setting.
        gen0, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(gen0 * spec["n"], gen1, gen2)
    BenchRuntime = _runtime_class()
    trust = TrustRoot.from_document(spec["trust"])
    # the service's public keys, as a deployed runtime has them (KX_SERVICE_KEYS): each pointer's
    # activator signature is checked, an unsigned or forged one refused (CONTRACT; tests/security)
    service_keys = ServiceKeys.from_document(spec["service_keys"]) if spec.get("service_keys") else None
    seen, parts = _Seen(spec["n"]), _Values(spec["n"])
    window = _Window(spec["n"], spec.get("profile"))
    conns: list = []
    tasks: list[asyncio.Task] = []
    loop = asyncio.get_running_loop()

    async def close_all() -> None:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        tasks.clear()
        for nc in conns:
            await nc.close()
        conns.clear()

    async def raw_subscribers() -> None:
        for i in range(spec["n"]):
            nc = await raw_connect(spec["url"], name=f"bench-raw-{spec['index']}-{i}")
            conns.append(nc)
            js = nc.jetstream()
            rt = f"raw-{spec['index']}-{i}"

            def on_pointer(nc=nc, rt=rt):
                async def cb(msg) -> None:
                    pointer = json.loads(msg.data)
                    key = f"raw:{pointer['round']}"
                    window.arrived("raw", key)
                    seen.mark(f"seen:{pointer['round']}")
                    body = {"runtime_id": rt, "digest": pointer["digest"], "at": now_rfc3339(), "kind": "activation"}
                    body.update(ok=True, took_ms=0.0, error=None, round=pointer["round"])
                    # not acknowledged, as the runtimes' reports (services/runtime/sdk.py `report`)
                    await nc.publish(f"rawrb.health.{rt}", json.dumps(body).encode())
                    window.finished(key)

                return cb

            await js.subscribe(RAW_POINTER, cb=on_pointer(), ordered_consumer=True, deliver_policy=DeliverPolicy.NEW)
        _say({"following": "raw"})

    try:
        for i in range(spec["n"]):
            nc = await connect(spec["url"], name=f"bench-rt-{spec['index']}-{i}")
            conns.append(nc)
            rt = BenchRuntime(
                nc,
                Identity(ENV, CHANNEL, f"tenant-{spec['index']}-{i}", f"rt-{spec['index']}-{i}"),
                trust,
                prefix=spec["prefix"],
                service_keys=service_keys,
                seen=seen,
                parts=parts,
                window=window,
            )
            await rt.resolve_cohort()
            tasks.append(asyncio.create_task(rt.follow()))
            _say({"connected": i + 1})
        _say({"following": CHANNEL})
        while True:
            command = (await loop.run_in_executor(None, sys.stdin.readline)).split()
            if not command or command[0] == "stop":
                return
            if command[0] == "raw":
                await close_all()
                await raw_subscribers()
    finally:
        await close_all()
        window.dump()


class RollbackWorkers(Workers):
    """fan_out's worker pool, running this module's workers."""

    async def start(self, specs: list[dict]) -> None:
        from .fan_out import ROOT

        for spec in specs:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.rollback",
                "--worker",
                json.dumps(spec),
                cwd=ROOT,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=64 * 1024 * 1024,
            )
            self.procs.append(proc)
            self._readers.append(asyncio.create_task(self._read(spec["index"], proc)))


# ---- parent: what is stored, with its stored time -------------------------------------------------------
class Reports:
    """Activation reports (`ok: true`) as stored, by the key they answer; a future per awaited key."""

    def __init__(self, n: int, key_of: Callable[[dict], str | None]) -> None:
        self.n, self.key_of = n, key_of
        self.stored: dict[str, dict[str, float]] = {}  # key -> runtime id -> stored time (epoch s)
        self.samples: list[tuple[float, dict]] = []  # the probe's samples as stored
        self.took_ms: dict[str, list[float]] = {}  # key -> each runtime's own `took_ms` (verify + switch)
        self._waiting: dict[str, asyncio.Future] = {}

    def expect(self, key: str) -> asyncio.Future:
        self.stored[key], self.took_ms[key] = {}, []
        fut = self._waiting[key] = asyncio.get_running_loop().create_future()
        return fut

    async def on_msg(self, msg) -> None:
        at = msg.metadata.timestamp.timestamp()
        body = json.loads(msg.data)
        if body.get("runtime_id") == PROBE:
            self.samples.append((at, body))
            return
        if body.get("kind") != "activation" or body.get("ok") is not True:
            return
        key = self.key_of(body)
        got = self.stored.get(key) if key is not None else None
        if got is None or body["runtime_id"] in got:
            return
        got[body["runtime_id"]] = at
        if isinstance(body.get("took_ms"), (int, float)):
            self.took_ms[key].append(body["took_ms"])  # type: ignore[index]
        fut = self._waiting.get(key)  # type: ignore[arg-type]
        if len(got) == self.n and fut is not None and not fut.done():
            fut.set_result(max(got.values()))


async def _stored_at(js, stream: str, subject: str) -> float | None:
    try:
        msg = await js.get_last_msg(stream, subject)
    except NotFoundError:
        return None
    return msg.time.timestamp() if msg.time else None


async def _until_stored(js, stream: str, subject: str, what: str, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await js.get_last_msg(stream, subject)
        except NotFoundError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: nothing on {subject} within {timeout:.0f}s (see serve.log)") from None
            await asyncio.sleep(0.02)


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, every thread) a live process has used so far; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


class CpuMeter:
    """CPU spent by each role's processes (the nats-server, the service, the runtimes' workers, this
    bench) over a window: where the 2 cores went between the breach and the last report."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.pids = pids
        self.spent: dict[str, list[float]] = {role: [] for role in pids}  # role -> seconds, per window
        self._start: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        return {role: sum(cpu_s(pid) for pid in pids) for role, pids in self.pids.items()}

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> None:
        for role, now in self._now().items():
            self.spent[role].append(now - self._start[role])

    def summary(self) -> dict[str, float]:
        """Mean CPU ms per round and role (clock ticks are 10 ms: the mean over rounds, not one round)."""
        return {f"{role}_ms": round(sum(v) / len(v) * 1000, 1) for role, v in self.spent.items() if v}


def pointer_cpu(cpu: list[float], gc_s: list[float], runtimes: int) -> dict[str, float]:
    """A runtime's CPU per pointer (us, median over rounds; each round: the workers' windows summed and
    divided by the runtimes), and the garbage collector's part of it."""
    if not cpu:
        return {}
    return {
        "us_per_pointer": round(percentile(cpu, 50) / runtimes * 1e6, 1),
        "gc_us_per_pointer": round(percentile(gc_s, 50) / runtimes * 1e6, 1),
    }


async def _window_cpu(pool: Workers, key: str, timeout: float) -> tuple[float, float]:
    """(CPU s, of it GC s) of every worker's window on pointer `key`, summed over the workers."""
    await pool.until(lambda: len(pool.times(f"gc:{key}")) == len(pool.procs), f"{key} cpu", timeout)
    return sum(pool.times(f"cpu:{key}")), sum(pool.times(f"gc:{key}"))


def _ms(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round((b - a) * 1000, 3)


def hop_summary(rounds: list[dict[str, float | None]]) -> dict[str, dict[str, float]]:
    """Per hop (ms since the sample's publish): p50 and max over the rounds."""
    out = {}
    for hop in rounds[0] if rounds else {}:
        values = [v for r in rounds if (v := r.get(hop)) is not None]
        if values:
            out[hop] = {"p50_ms": round(percentile(values, 50), 3), "max_ms": round(max(values), 3)}
    return out


async def _push(js, subjects: Subjects, key, version: str) -> str:
    """A signed 64 KiB pack in the pack store; its digest."""
    body = os.urandom(PACK_BYTES)
    manifest, digest = signed_pack(key, version, body)
    await push_pack(js, subjects, body, manifest, digest)
    return digest


async def _request(log: EventLog, rid: str, version: str, digest: str, extra: dict) -> None:
    requested = {
        "pack": {"name": "kb", "version": version, "digest": digest},
        "target": {"env": ENV, "channel": CHANNEL},
        "owner": "bench",
        "escalation": "pager:bench",
        **extra,
    }
    await log.append(log.release_entry(request_event(rid, requested, PRODUCER), 0))


async def measure_ours(
    r, pool: Workers, nc, runtimes: int, rounds: int, timeout: float, cpu: CpuMeter
) -> tuple[list, list, dict[str, list[float]]]:
    """(per-round latencies in s, per-round hop times, per runtime and round: its own `took_ms` and
    the time in each of PARTS, in s) of the service's rollback."""
    subjects = Subjects(r.prefix)
    js = nc.jetstream(timeout=10)
    log = EventLog(nc, js, subjects)
    stream = subjects.releases_stream
    # a report answers the pack it names; which round it belongs to is whichever is expected
    reports = Reports(runtimes, lambda body: body.get("digest"))
    sub = await js.subscribe(
        subjects.health_cohort(ENV, CHANNEL, COHORT),
        cb=reports.on_msg,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.NEW,
    )
    health = subjects.health(ENV, CHANNEL, COHORT, PROBE)
    try:
        # the LKG: a first release (nothing to roll back to: strategy none) that passes its short window on data
        lkg_rid = "rb-lkg"
        lkg = await _push(js, subjects, r.key, "1.0.0")
        lkg_done = reports.expect(lkg)
        window = {"window_s": LKG_WINDOW_S, "min_samples": 1, "thresholds": {"error_rate_max": ERROR_RATE_MAX}}
        await _request(log, lkg_rid, "1.0.0", lkg, {"rollback": {"strategy": "none"}, "monitoring": window})
        # the probe's data for the window at once: the window may end before N runtimes have re-verified
        await _until_stored(js, stream, subjects.release(lkg_rid, "monitoring_started"), "LKG window", timeout)
        await js.publish(
            health,
            json.dumps(
                {"runtime_id": PROBE, "digest": lkg, "at": now_rfc3339(), "kind": "activation", "ok": True}
                | {"took_ms": 1.0, "error": None}
            ).encode(),
        )
        await js.publish(health, sample_body(lkg, 100, 0))
        await asyncio.wait_for(lkg_done, timeout + runtimes * 0.05)
        closed = await _until_stored(js, stream, subjects.release(lkg_rid, "closed"), "LKG release", timeout + 10)
        outcome = getattr(decode_event(closed.data or b"", closed.subject or "", subjects).data, "outcome", None)
        if outcome != "success":
            raise RuntimeError(f"the LKG release closed {outcome}, not success (see serve.log)")

        latencies, hops, took = [], [], []
        spent: dict[str, list[float]] = {part: [] for part in (*PARTS, "store_read", "cpu", "gc")}
        quiet = 0.1 + runtimes * 0.001  # a switch ends with N reports the monitor reads one by one: drained first
        progress = Progress(f"rollbacks with {runtimes} runtimes", rounds)
        for i in range(1, rounds + 1):
            rid = f"rb-{i}"
            digest = await _push(js, subjects, r.key, f"1.0.{i}")
            switched = reports.expect(digest)
            await _request(
                log,
                rid,
                f"1.0.{i}",
                digest,
                {
                    "rollback": {"strategy": "lkg"},
                    "monitoring": {
                        "window_s": ROUND_WINDOW_S,
                        "min_samples": 1,
                        "thresholds": {"error_rate_max": ERROR_RATE_MAX},
                    },
                },
            )
            await asyncio.wait_for(switched, timeout + runtimes * 0.05)
            await _until_stored(js, stream, subjects.release(rid, "monitoring_started"), f"round {i} window", timeout)
            await asyncio.sleep(quiet)
            back = reports.expect(lkg)
            cpu.start()
            t0 = time.time()
            await js.publish(health, sample_body(digest, **BREACH))
            try:
                t_end = await asyncio.wait_for(back, timeout + runtimes * 0.05)
            except TimeoutError:
                raise RuntimeError(
                    f"round {i}: {len(reports.stored[lkg])}/{runtimes} runtimes back on the LKG within the timeout"
                ) from None
            cpu.stop()
            latencies.append(t_end - t0)
            stored = sorted(reports.stored[lkg].values())
            took += [ms / 1000 for ms in reports.took_ms[lkg]]
            # a runtime says where its time went after its report is stored: wait for the last word
            await pool.until(
                lambda rid=rid: len(pool.times(f"{PARTS[-1]}:{rid}:rollback")) == runtimes, f"round {i} parts", timeout
            )
            for part in (*PARTS, "store_read"):
                spent[part] += pool.times(f"{part}:{rid}:rollback")
            cpu_s, gc_s = await _window_cpu(pool, f"{rid}:rollback", timeout)
            spent["cpu"].append(cpu_s)
            spent["gc"].append(gc_s)
            seen = pool.times(f"seen:{rid}:rollback")
            sample_at = next((at for at, b in reversed(reports.samples) if b.get("digest") == digest), None)
            hops.append(
                {
                    "sample_stored": _ms(t0, sample_at),
                    "monitoring_failed": _ms(
                        t0, await _stored_at(js, stream, subjects.release(rid, "monitoring_failed"))
                    ),
                    "rollback_started": _ms(
                        t0, await _stored_at(js, stream, subjects.release(rid, "rollback_started"))
                    ),
                    "pointer_and_rolled_back": _ms(
                        t0, await _stored_at(js, stream, subjects.release(rid, "rolled_back"))
                    ),
                    "first_runtime_has_pointer": _ms(t0, min(seen) if seen else None),
                    "last_runtime_has_pointer": _ms(t0, max(seen) if seen else None),
                    "first_report_stored": _ms(t0, stored[0]),
                    "median_report_stored": _ms(t0, percentile(stored, 50)),
                    "last_report_stored": _ms(t0, stored[-1]),
                }
            )
            await _until_stored(js, stream, subjects.release(rid, "closed"), f"round {i} close", timeout)
            progress.update(i)
        return latencies, hops, {"took": took, **spent}
    finally:
        await sub.unsubscribe()


async def measure_raw(
    url: str, pool: Workers, runtimes: int, rounds: int, timeout: float, cpu: CpuMeter
) -> tuple[list, list, dict[str, list[float]]]:
    """(per-round latencies in s, per-round hop times, the workers' CPU and GC s per round) of the raw
    chain of the same shape."""
    admin = await raw_connect(url, name="bench-raw-admin")
    js = admin.jetstream()
    await js.add_stream(
        StreamConfig(
            name=RAW_LOG,
            subjects=["rawrb.log.>"],
            storage=StorageType.FILE,
            allow_atomic=True,
            max_consumers=LOG_MAX_CONSUMERS,
        )
    )
    await js.add_stream(StreamConfig(name=RAW_HEALTH, subjects=["rawrb.health.>"], storage=StorageType.FILE))
    conns = [await raw_connect(url, name=f"bench-raw-{role}") for role in ("monitor", "promoter", "activator")]
    monitor, promoter, activator = conns
    mjs, pjs = monitor.jetstream(), promoter.jetstream()

    async def on_sample(msg) -> None:  # the monitor: a live (core) subscription on every health message
        body = json.loads(msg.data)
        if body.get("kind") == "sample" and body.get("requests", 0) >= 20:
            if body["errors"] / body["requests"] > 2 * ERROR_RATE_MAX:
                await mjs.publish(RAW_FAILED, msg.data)

    async def on_failed(msg) -> None:  # the promoter
        await pjs.publish(RAW_ROLLBACK, msg.data)

    async def on_rollback(msg) -> None:  # the activator: pointer + event in one synced atomic batch
        body = json.loads(msg.data)
        pointer = json.dumps({"round": body["round"], "digest": body["lkg"], "kind": "rollback"}).encode()
        batch = f"rb{body['round']}"
        await activator.publish(RAW_POINTER, pointer, headers={"Nats-Batch-Id": batch, "Nats-Batch-Sequence": "1"})
        reply = await activator.request(
            RAW_ROLLED,
            msg.data,
            timeout=10,
            headers={"Nats-Batch-Id": batch, "Nats-Batch-Sequence": "2", "Nats-Batch-Commit": "1"},
        )
        if b'"error"' in reply.data:
            raise RuntimeError(f"raw atomic batch failed: {reply.data[:200]!r}")

    log_times: dict[tuple[str, int], float] = {}

    async def on_log(msg) -> None:  # the bench: stored time of each hop
        log_times[(msg.subject, json.loads(msg.data)["round"])] = msg.metadata.timestamp.timestamp()

    reports = Reports(runtimes, lambda body: str(body.get("round")))
    subs = [
        await monitor.subscribe("rawrb.health.>", cb=on_sample),
        await pjs.subscribe(RAW_FAILED, cb=on_failed, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW),
        await activator.jetstream().subscribe(
            RAW_ROLLBACK, cb=on_rollback, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW
        ),
        await js.subscribe(
            "rawrb.health.>", cb=reports.on_msg, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW
        ),
        await js.subscribe("rawrb.log.>", cb=on_log, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW),
    ]
    try:
        pool.following.clear()
        await pool.send("raw")
        await pool.until(lambda: len(pool.following) == len(pool.procs), "raw subscribers", timeout + runtimes * 0.2)
        latencies, hops = [], []
        spent: dict[str, list[float]] = {"cpu": [], "gc": []}
        quiet = 0.1 + runtimes * 0.001
        progress = Progress(f"raw chains with {runtimes} subscribers", rounds)
        for i in range(1, rounds + 1):
            await asyncio.sleep(quiet)
            done = reports.expect(str(i))
            body = {"runtime_id": PROBE, "digest": "d", "lkg": "lkg", "kind": "sample", "round": i, **BREACH}
            cpu.start()
            t0 = time.time()
            await js.publish(f"rawrb.health.{PROBE}", json.dumps(body).encode())
            try:
                t_end = await asyncio.wait_for(done, timeout + runtimes * 0.05)
            except TimeoutError:
                raise RuntimeError(f"raw round {i}: {len(reports.stored[str(i)])}/{runtimes} reports") from None
            cpu.stop()
            latencies.append(t_end - t0)
            stored = sorted(reports.stored[str(i)].values())
            seen = pool.times(f"seen:{i}")
            sample_at = next((at for at, b in reversed(reports.samples) if b.get("round") == i), None)
            hops.append(
                {
                    "sample_stored": _ms(t0, sample_at),
                    "monitoring_failed": _ms(t0, log_times.get((RAW_FAILED, i))),
                    "rollback_started": _ms(t0, log_times.get((RAW_ROLLBACK, i))),
                    "pointer_and_rolled_back": _ms(t0, log_times.get((RAW_ROLLED, i))),
                    "first_runtime_has_pointer": _ms(t0, min(seen) if seen else None),
                    "last_runtime_has_pointer": _ms(t0, max(seen) if seen else None),
                    "first_report_stored": _ms(t0, stored[0]),
                    "median_report_stored": _ms(t0, percentile(stored, 50)),
                    "last_report_stored": _ms(t0, stored[-1]),
                }
            )
            cpu_s, gc_s = await _window_cpu(pool, f"raw:{i}", timeout)
            spent["cpu"].append(cpu_s)
            spent["gc"].append(gc_s)
            progress.update(i)
        return latencies, hops, spent
    finally:
        for s in subs:
            await s.unsubscribe()
        for c in conns:
            await c.close()
        await js.delete_stream(RAW_LOG)
        await js.delete_stream(RAW_HEALTH)
        await admin.close()


def _serve(r, profile: Path | None) -> None:
    r.serve(name="serve", profile=profile)


async def run_one(
    runtimes: int,
    rounds: int,
    workers: int = 1,
    timeout: float = 60.0,
    profile: Path | None = None,
    gc_scaled: bool = True,
    signed_pointers: bool = True,
) -> dict:
    """Ours and the raw chain with `runtimes` runtimes, `rounds` rollbacks each, on one fresh server.
    With `profile` (a directory), the service and the runtime processes run under cProfile."""
    raise_fd_limit(runtimes * 3 + 256)  # the nats-server child inherits it: one socket per runtime
    workers = max(1, min(workers, runtimes))
    with rig(prefix="rb") as r:
        _serve(r, profile)
        subjects = Subjects(r.prefix)
        nc = await connect(r.url, name="bench-rollback")
        js = nc.jetstream(timeout=10)
        pool = RollbackWorkers()
        try:
            await wait_for_layout(js, subjects)
            await configure_channel(
                EventLog(nc, js, subjects), js, ENV, CHANNEL, channel_config([COHORT], window_s=1), OPERATOR
            )
            # pre-flight wants a runtime that reported in the cohort: the probe
            await js.publish(subjects.health(ENV, CHANNEL, COHORT, PROBE), sample_body(None, 10, 0))
            trust = json.loads(r.trust_file.read_text())
            # written by `kxr serve` beside its key when it created it (services/settings.py)
            keys_file = r.work / "data" / "service-keys.json"
            service_keys = json.loads(keys_file.read_text()) if signed_pointers else None
            share = [runtimes // workers + (1 if i < runtimes % workers else 0) for i in range(workers)]
            await pool.start(
                [
                    {"index": i, "n": n, "url": r.url, "prefix": r.prefix, "trust": trust, "gc_scaled": gc_scaled}
                    | {"service_keys": service_keys}
                    | ({"profile": str(profile / f"runtimes-{i}")} if profile else {})
                    for i, n in enumerate(share)
                ]
            )
            await pool.until_following(workers, runtimes, timeout)
            pointer = subjects.scope(ENV, CHANNEL, COHORT, "activated")

            async def all_live() -> bool:
                return await live_followers(js, subjects.releases_stream, pointer) >= runtimes

            await pool.until(all_live, "runtime followers", timeout)
            pids = {
                "nats_server": [r.server.proc.pid] if r.server.proc else [],
                "service": [p.pid for p in r.procs],
                "runtimes": [p.pid for p in pool.procs],
                "bench": [os.getpid()],
            }
            ours_cpu, raw_cpu = CpuMeter(pids), CpuMeter(pids)
            ours, ours_hops, took = await measure_ours(r, pool, nc, runtimes, rounds, timeout, ours_cpu)
            raw, raw_hops, raw_spent = await measure_raw(r.url, pool, runtimes, rounds, timeout, raw_cpu)
        finally:
            await pool.stop()
            await nc.close()
    if profile is not None:
        profile_tables(profile)
    o, b = latency_summary(ours), latency_summary(raw)
    target = target_ms(runtimes)
    return {
        "runtimes": runtimes,
        "rounds": rounds,
        "workers": workers,
        "ours": o,
        "baseline": b,
        "ratio_p50": round(o["p50_ms"] / b["p50_ms"], 2),
        "ratio_p99": round(o["p99_ms"] / b["p99_ms"], 2),
        "hops_ms_since_sample": {"ours": hop_summary(ours_hops), "baseline": hop_summary(raw_hops)},
        # CPU per round from the breach to the last report stored, by role (the raw chain's "service"
        # is idle: its hops run in this bench's process), and the runtimes' per runtime and pointer
        "cpu_per_round": {"ours": ours_cpu.summary(), "baseline": raw_cpu.summary()},
        # one runtime's CPU on the pointer (arrival to acked report), measured in its worker process
        "runtime_cpu": {
            "ours": pointer_cpu(took["cpu"], took["gc"], runtimes),
            "baseline": pointer_cpu(raw_spent["cpu"], raw_spent["gc"], runtimes),
        },
        # per runtime and round: its own `took_ms` (verify + switch), and where that time went
        "runtime_verify_and_switch": latency_summary(took["took"]),
        "runtime_parts": {part: latency_summary(took[part]) for part in PARTS},
        # switches back to the LKG that read it from the store (the rest: answered from the runtime's record)
        "switches_read_from_store": int(sum(took["store_read"])),
        "target_p99_ms": target,
        "profiled": profile is not None,  # under cProfile: the figures are slower than the plain run's
        # the workers' collector thresholds: "scaled" by the runtimes per process (see _worker), or "default"
        "worker_gc": "scaled" if gc_scaled else "default",
        # the runtimes check each pointer's service signature (a deployed runtime with KX_SERVICE_KEYS)
        "runtimes_check_signatures": signed_pointers,
        "met": None if target is None else o["p99_ms"] <= target,
    }


async def run(
    sizes: list[tuple[int, int]],
    workers: int = 4,
    timeout: float = 60.0,
    profile: Path | None = None,
    gc_scaled: bool = True,
    signed_pointers: bool = True,
) -> dict:
    """One `run_one` per (runtimes, rounds), each on its own server and service."""
    results = []
    for runtimes, rounds in sizes:
        sys.stderr.write(f"-- {runtimes} runtime(s), {rounds} round(s)\n")
        w = 1 if runtimes <= 20 else workers
        where = None
        if profile is not None:
            where = profile / f"n{runtimes}"
            where.mkdir(parents=True, exist_ok=True)
        results.append(await run_one(runtimes, rounds, w, timeout, where, gc_scaled, signed_pointers))
    return {
        "pack_bytes": PACK_BYTES,
        "sizes": results,
        "targets": {f"p99_ms_max_{s['runtimes']}": s["target_p99_ms"] for s in results},
        "met": {f"p99_{s['runtimes']}": s["met"] for s in results},
    }


def _ints(text: str, what: str) -> list[int]:
    """Comma-separated counts, each at least 1; anything else is one line on stderr and exit 2."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        print(f"bench.rollback: {what} takes comma-separated whole numbers >= 1, not {text!r}", file=sys.stderr)
        raise SystemExit(2)
    return values


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runtimes", default="5,1000", help="comma-separated runtime counts, one run each")
    ap.add_argument("--rounds", default="100,20", help="rollbacks per run: one number, or one per --runtimes")
    ap.add_argument("--workers", type=int, default=4, help="processes the runtimes are spread over (above 20)")
    ap.add_argument("--quick", action="store_true", help="3 runtimes, 5 rounds")
    ap.add_argument("--profile", type=Path, help="a directory: run the service and the runtimes under cProfile")
    ap.add_argument(
        "--worker-gc",
        choices=("scaled", "default"),
        default="scaled",
        help="the workers' GC thresholds: scaled by the runtimes per process (as one runtime per process), or default",
    )
    ap.add_argument(
        "--unsigned-pointers",
        action="store_true",
        help="runtimes without the service's keys: pointer signatures unchecked (as before session 9)",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one worker process, JSON spec
    args = ap.parse_args(argv)
    if args.worker:
        asyncio.run(_worker(json.loads(args.worker)))  # with a "profile", cProfile in its rollback windows
        return
    if args.quick:
        args.runtimes, args.rounds = "3", "5"
    runtimes, rounds = _ints(args.runtimes, "--runtimes"), _ints(args.rounds, "--rounds")
    if len(rounds) == 1:
        rounds = rounds * len(runtimes)
    if len(rounds) != len(runtimes) or args.workers < 1:
        print("bench.rollback: give one --rounds, or one per --runtimes; --workers at least 1", file=sys.stderr)
        raise SystemExit(2)
    sizes = list(zip(runtimes, rounds, strict=True))
    res = asyncio.run(
        run(
            sizes,
            args.workers,
            profile=args.profile,
            gc_scaled=args.worker_gc == "scaled",
            signed_pointers=not args.unsigned_pointers,
        )
    )
    rows = []
    for s in res["sizes"]:
        o, b, n = s["ours"], s["baseline"], s["runtimes"]
        target = f"<= {s['target_p99_ms']:g} ms" if s["target_p99_ms"] is not None else ""
        rows.append((f"p50 breach -> {n} on LKG", f"{o['p50_ms']} ms", f"{b['p50_ms']} ms / {s['ratio_p50']}x", ""))
        rows.append((f"p99 breach -> {n} on LKG", f"{o['p99_ms']} ms", f"{b['p99_ms']} ms / {s['ratio_p99']}x", target))
    report("rollback", res, rows)


if __name__ == "__main__":
    main()
