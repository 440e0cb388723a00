"""Scaling curve: time-to-activate and the service's memory as scopes and history grow.

    .venv/bin/python -m bench.scaling            # scopes 10..10,000; history 0..1M events
    .venv/bin/python -m bench.scaling --quick

Each point is a fresh prefix on one file-backed server (in RAM where there is one): its
history (bench/history.py) or its scopes (channels x 10 cohorts, configured) are written
first, then `kxr serve` starts and `bench.time_to_activate.measure` times sequential
releases once the service's (new, durable) consumers have worked through the history's
triggers: ready_s is the time from the start of `kxr serve` to that point. RSS is the
service process's resident set after the releases (ready_rss_mib: when it was ready).
The baseline (raw hops, same method as time_to_activate) is measured once in the same run.

History points start the service from a snapshot, as a restart of a long-running service
does: the bench folds the log with the service's own follower and saves the snapshot it
would have saved (fold_s). `--cold` starts it with a full replay instead (the service folds
the whole history before its consumers run; minutes at 1M events).
`--restart` starts the service once first (its projector writes the read models), stops it,
and measures the second start: a long-running service's restart, which resumes its read
models from the bucket instead of reading the release history again (first_start_model_s:
how long the first start took to write them).
Every long step shows its progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from nats import errors as nats_errors

from events.channel import ChannelConfig
from events.service_signing import ServiceKeys
from events.subjects import Subjects
from services.actions.producer import configure_channel
from services.jetstream.client import connect
from services.jetstream.janitor import all_consumers
from services.jetstream.log import EventLog
from services.keyfiles import write_secret
from services.reads.follower import Follower
from services.reads.snapshots import Snapshots
from services.settings import ROLES

from .common import OPERATOR, Progress, channel_config, latency_summary, model_written, profile_tables, report
from .history import Generated, fast_rig, generate
from .time_to_activate import measure, raw_hops, wait_for_layout

COHORTS_PER_CHANNEL = 10


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def scoped_config(cohorts: int) -> ChannelConfig:
    """`channel_config` with `cohorts` cohorts: every one but the last picks its tenant."""
    doc = channel_config().model_dump(mode="json")
    names = [f"k{i}" for i in range(cohorts)]
    doc["cohorts"] = [{"name": n, "tenants": [f"tenant-{n}"]} for n in names[:-1]] + [{"name": names[-1]}]
    doc["plan"] = [names]
    return ChannelConfig.model_validate(doc)


async def _configure_scopes(url: str, prefix: str, scopes: int) -> None:
    nc = await connect(url, name="bench-scopes")
    js = nc.jetstream(timeout=10)
    log = EventLog(nc, js, Subjects(prefix))
    config = scoped_config(COHORTS_PER_CHANNEL)
    for i in range(max(1, scopes // COHORTS_PER_CHANNEL)):
        await configure_channel(log, js, "prod", f"s{i}", config, OPERATOR)
    await nc.close()


async def _history(url: str, prefix: str, events: int, key) -> Generated:
    nc = await connect(url, name="bench-history")
    try:
        progress = Progress(f"history {events}: filling the log", events)
        return await generate(nc.jetstream(timeout=30), Subjects(prefix), events, key, progress=progress.update)
    finally:
        await nc.close()


async def seed_snapshot(url: str, prefix: str, signer=None) -> float:
    """Fold the log as the service's follower does and save the snapshot it would have saved
    (closed releases as tombstones); seconds it took. A service then starts from it: snapshot +
    tail, as a restarted service does. (`--cold` starts from sequence 1 instead: the service
    folds the whole history at start-up, minutes at 1M events, before its consumers run.)"""
    subjects = Subjects(prefix)
    nc = await connect(url, name="bench-snapshot")
    js = nc.jetstream(timeout=30)
    service_keys = ServiceKeys.of(signer, list(ROLES)) if signer is not None else None
    snapshots = Snapshots(js, subjects, signer=signer)  # signed: a service trusting the keys loads only that
    follower = Follower(js, subjects, snapshots=snapshots, archive_closed=True, service_keys=service_keys)
    task = asyncio.create_task(follower.run())
    t0 = time.monotonic()
    try:
        last = (await js.stream_info(subjects.releases_stream)).state.last_seq
        progress = Progress(f"{prefix}: folding the log for a snapshot", last)
        while follower.position < last:
            if task.done():
                task.result()  # the follower failed: say why
            try:
                await follower.wait_for(last, timeout=1.0)
            except TimeoutError:
                pass
            progress.update(follower.position)
        progress.update(follower.position)
        # under the keys it was folded with: a service loads only a snapshot of the keys it trusts
        # (without them it was ignored, and every history point measured a fold from sequence 1)
        await snapshots.save(follower.world, service_keys, follower.ignored)
        return time.monotonic() - t0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await nc.close()


DRAIN_BASE_S = 300.0
DRAIN_PER_EVENT_S = 2e-3  # ~0.25-0.45 ms per history event measured; 4x+ headroom on a busy machine
DRAIN_STALL_S = 300.0  # no consumer moved for this long: stuck, whatever the overall budget


def drain_timeout(history: int) -> float:
    return DRAIN_BASE_S + DRAIN_PER_EVENT_S * history


async def drained(
    js, stream: str, timeout: float = DRAIN_BASE_S, progress: str | None = None, proc=None, log=None
) -> None:
    """Until the service's consumers have worked through the history's triggers (steady state:
    a brand-new consumer on an old log first decides, once, on every release it ever saw).

    Progress counts the deliveries the service's `kxr-` consumers have worked through out of
    the most they ever had left (consumers appear one by one as the service starts)."""
    started = time.monotonic()
    deadline = started + timeout
    bar: Progress | None = None
    most = 0
    last_left, moved_at = None, started
    while True:
        try:
            infos = [c for c in await all_consumers(js, stream) if (c.config.durable_name or "").startswith("kxr-")]
        except nats_errors.TimeoutError:  # a busy server (or machine) answers late: ask again; a stall still ends it
            infos = None
        now = time.monotonic()
        if infos is None:
            if now > deadline or now - moved_at > DRAIN_STALL_S:
                raise RuntimeError(f"the server did not answer consumer info within {timeout:.0f}s")
            await asyncio.sleep(0.5)
            continue
        left = sum(c.num_pending + c.num_ack_pending for c in infos)
        if left != last_left or not infos:  # before its consumers exist the service is still folding the log
            last_left, moved_at = left, now
        most = max(most, left)
        if progress is not None and most:
            bar = bar or Progress(progress, most)
            bar.total = most
            bar.update(most - left)
        if infos and left == 0:
            return
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log is not None and log.exists() else []
            raise RuntimeError(
                f"the service exited ({proc.returncode}) before its consumers drained the history: {tail}"
            )
        if now > deadline:
            raise RuntimeError(
                f"the service's consumers did not drain the history within {timeout:.0f}s ({left} deliveries left)"
            )
        if now - moved_at > DRAIN_STALL_S:
            raise RuntimeError(
                f"the service's consumers made no progress for {DRAIN_STALL_S:.0f}s ({left} deliveries left)"
            )
        await asyncio.sleep(0.5)


def service_signs_as_history(r) -> None:
    """The service's signing key is the one the generated history was signed with (bench/history.py),
    so its fold trusts that history: otherwise every service event of it counts for nothing and each
    of its releases looks stuck at `requested` to a signature-checking reader (the read models)."""
    data = r.work / "data"
    data.mkdir(parents=True, exist_ok=True)
    write_secret(data / "service.key.json", json.dumps(r.key.to_file_dict("kxr-serve")))
    (data / "service-keys.json").write_text(json.dumps(ServiceKeys.of(r.key, list(ROLES)).to_document()))


async def said_ready(log, proc, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while "running against" not in (log.read_text(errors="replace") if log.exists() else ""):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the service did not say it was ready ({proc.poll()=})")
        await asyncio.sleep(0.05)


async def first_start(r, prefix: str, history: int) -> float:
    """A service started and stopped once its read models are written; seconds from start to written."""
    started = time.monotonic()
    proc = r.serve(name=f"serve-{prefix}-first", KX_PREFIX=prefix)
    try:
        nc = await connect(r.url, name="bench-first-start")
        js = nc.jetstream(timeout=30)
        await wait_for_layout(js, Subjects(prefix), timeout=600)
        await model_written(js, Subjects(prefix), drain_timeout(history), proc)
        await nc.close()
        return time.monotonic() - started
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def point(
    r,
    name: str,
    releases: int,
    warmup: int,
    *,
    scopes: int = 0,
    history: int = 0,
    snapshot: bool = True,
    restart: bool = False,
    profile: Path | None = None,
) -> dict:
    prefix = f"sc{name}"
    extra: dict = {}
    if history:
        gen = await _history(r.url, prefix, history, r.key)
        extra["generate_events_per_s"] = round(gen.rate)
        extra["start"] = "cold"
        if snapshot:
            extra["start"] = "snapshot"
            extra["fold_s"] = round(await seed_snapshot(r.url, prefix, r.key), 1)
    if history and restart:
        # a long-running service's restart: the read models are in the bucket already (the first
        # start's projector wrote them); the measured start resumes them from the bucket's position
        extra["start"] += "+restart"
        extra["first_start_model_s"] = round(await first_start(r, prefix, history), 1)
    started = time.monotonic()
    proc = r.serve(name=f"serve-{prefix}", profile=profile, KX_PREFIX=prefix)
    try:
        nc = await connect(r.url, name="bench-wait")
        await wait_for_layout(nc.jetstream(timeout=10), Subjects(prefix), timeout=600)
        if restart:  # its durables exist (the first start's): drained at once, so wait for it to say ready
            await said_ready(r.work / f"serve-{prefix}.log", proc)
            extra["said_ready_s"] = round(time.monotonic() - started, 1)
        await drained(
            nc.jetstream(timeout=30),
            Subjects(prefix).releases_stream,
            timeout=drain_timeout(history),
            progress=f"{name}: the new service works through the history" if history else None,
            proc=proc,
            log=r.work / f"serve-{prefix}.log",
        )
        ready_s = time.monotonic() - started
        ready_rss = rss_mib(proc.pid)
        if history and snapshot:
            ignored = [line for line in _log_lines(r.work / f"serve-{prefix}.log") if "snapshot ignored" in line]
            if ignored:  # the point would measure a fold from sequence 1, not a start from the snapshot
                raise RuntimeError(f"the service did not start from the seeded snapshot: {ignored[0][:300]}")
        await nc.close()
        if scopes:
            await _configure_scopes(r.url, prefix, scopes)
        lat = latency_summary(await measure(r.url, prefix, r.key, releases, warmup))
        rss = rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {
        "p50_ms": lat["p50_ms"],
        "p99_ms": lat["p99_ms"],
        "rss_mib": round(rss, 1),
        "ready_s": round(ready_s, 1),
        "ready_rss_mib": round(ready_rss, 1),
        **extra,
    }


def _log_lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines() if path.exists() else []


def slope(xs: list[int], ys: list[float]) -> float:
    """Least-squares slope of y against x (per unit of x)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


async def run(
    scope_points: list[int],
    history_points: list[int],
    releases: int,
    warmup: int,
    snapshot: bool = True,
    restart: bool = False,
    profile: Path | None = None,
) -> dict:
    curves: dict[str, list[dict]] = {"scopes": [], "history": []}
    with fast_rig("scaling") as r:
        service_signs_as_history(r)
        for n in scope_points:
            curves["scopes"].append({"x": n, **await point(r, f"s{n}", releases, warmup, scopes=n)})
        for n in history_points:
            curves["history"].append(
                {
                    "x": n,
                    **await point(
                        r, f"h{n}", releases, warmup, history=n, snapshot=snapshot, restart=restart, profile=profile
                    ),
                }
            )
        base = latency_summary(await raw_hops(r.url, max(releases, 100)))
    out: dict = {
        "releases_per_point": releases,
        "history_start": ("snapshot" if snapshot else "cold") + ("+restart" if restart else ""),
        "baseline": base,
        "curves": curves,
        "slopes": {},
    }
    for axis, rows in curves.items():
        if len(rows) >= 2:
            xs = [row["x"] for row in rows]
            # per 1,000 scopes / per 100k events: ms and MiB
            unit = 1000 if axis == "scopes" else 100_000
            out["slopes"][axis] = {
                f"p50_ms_per_{unit}": round(slope(xs, [row["p50_ms"] for row in rows]) * unit, 3),
                f"rss_mib_per_{unit}": round(slope(xs, [row["rss_mib"] for row in rows]) * unit, 2),
            }
        for row in rows:
            row["ratio_p50"] = round(row["p50_ms"] / base["p50_ms"], 2)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scopes", default="10,100,1000,10000")
    ap.add_argument("--history", default="0,100000,1000000")
    ap.add_argument("--releases", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument(
        "--cold",
        action="store_true",
        help="history points start the service without a snapshot (a full replay: fails past ~200k events)",
    )
    ap.add_argument(
        "--restart",
        action="store_true",
        help="history points: start the service once (it writes its read models), stop it, measure the restart",
    )
    ap.add_argument("--profile", type=Path, help="a directory: history points' measured service under cProfile")
    ap.add_argument("--quick", action="store_true", help="scopes 10,100; history 0,5000; 20 releases")
    args = ap.parse_args(argv)
    if args.quick:
        args.scopes, args.history, args.releases = "10,100", "0,5000", 20
    parse = lambda text: [int(x) for x in text.split(",") if x.strip()]  # noqa: E731
    res = asyncio.run(
        run(
            parse(args.scopes),
            parse(args.history),
            args.releases,
            args.warmup,
            not args.cold,
            args.restart,
            args.profile,
        )
    )
    if args.profile:
        profile_tables(args.profile)
    rows = []
    for axis, points in res["curves"].items():
        for p in points:
            rows.append(
                (
                    f"{axis} = {p['x']}",
                    f"p50 {p['p50_ms']} p99 {p['p99_ms']} ms",
                    f"{res['baseline']['p50_ms']} ms / {p['ratio_p50']}x",
                    f"rss {p['rss_mib']} MiB, ready in {p['ready_s']} s" + (f" ({p['start']})" if "start" in p else ""),
                )
            )
    for axis, s in res["slopes"].items():
        rows.append((f"slope ({axis})", ", ".join(f"{k} {v}" for k, v in s.items()), "", "flat"))
    report("scaling", res, rows)


if __name__ == "__main__":
    main()
