"""Scaling curve: time-to-activate and the service's memory as scopes and history grow.

    .venv/bin/python -m bench.scaling            # scopes 10..10,000; history 0..1M events
    .venv/bin/python -m bench.scaling --quick

Each point is a fresh prefix on one file-backed server: its history (bench/history.py) or
its scopes (channels x 10 cohorts, configured) are written first, then `kxr serve` starts
(a full replay: no snapshot) and `bench.time_to_activate.measure` times sequential
releases. RSS is the service process's resident set after the releases. The baseline
(raw hops, same method as time_to_activate) is measured once in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from events.channel import ChannelConfig
from events.subjects import Subjects
from services.app import connect
from services.log import EventLog
from services.producer import configure_channel
from .common import OPERATOR, channel_config, latency_summary, report
from .history import fast_rig, generate
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


async def _history(url: str, prefix: str, events: int, key) -> None:
    nc = await connect(url, name="bench-history")
    await generate(nc.jetstream(timeout=30), Subjects(prefix), events, key)
    await nc.close()


async def drained(js, stream: str, timeout: float = 900.0) -> None:
    """Until the service's consumers have worked through the history's triggers (steady state:
    a brand-new consumer on an old log first decides, once, on every release it ever saw)."""
    deadline = time.monotonic() + timeout
    while True:
        infos = [c for c in await js.consumers_info(stream) if (c.config.durable_name or "").startswith("kxr-")]
        if infos and all(c.num_pending == 0 and c.num_ack_pending == 0 for c in infos):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the service's consumers did not drain the history within {timeout:.0f}s")
        await asyncio.sleep(0.5)


async def point(r, name: str, releases: int, warmup: int, *, scopes: int = 0, history: int = 0) -> dict:
    prefix = f"sc{name}"
    if history:
        await _history(r.url, prefix, history, r.key)
    started = time.monotonic()
    proc = r.serve(name=f"serve-{prefix}", KX_PREFIX=prefix)
    try:
        nc = await connect(r.url, name="bench-wait")
        await wait_for_layout(nc.jetstream(timeout=10), Subjects(prefix), timeout=600)
        await drained(nc.jetstream(timeout=10), Subjects(prefix).releases_stream)
        ready_s = time.monotonic() - started
        await nc.close()
        if scopes:
            await _configure_scopes(r.url, prefix, scopes)
        lat = latency_summary(await measure(r.url, prefix, r.key, releases, warmup))
        rss = rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"], "rss_mib": round(rss, 1), "ready_s": round(ready_s, 1)}


def slope(xs: list[int], ys: list[float]) -> float:
    """Least-squares slope of y against x (per unit of x)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


async def run(scope_points: list[int], history_points: list[int], releases: int, warmup: int) -> dict:
    curves: dict[str, list[dict]] = {"scopes": [], "history": []}
    with fast_rig("scaling") as r:
        for n in scope_points:
            curves["scopes"].append({"x": n, **await point(r, f"s{n}", releases, warmup, scopes=n)})
        for n in history_points:
            curves["history"].append({"x": n, **await point(r, f"h{n}", releases, warmup, history=n)})
        base = latency_summary(await raw_hops(r.url, max(releases, 100)))
    out: dict = {"releases_per_point": releases, "baseline": base, "curves": curves, "slopes": {}}
    for axis, rows in curves.items():
        if len(rows) >= 2:
            xs = [row["x"] for row in rows]
            # per 1,000 scopes / per 100k events: ms and MiB
            unit = 1000 if axis == "scopes" else 100_000
            out["slopes"][axis] = {f"p50_ms_per_{unit}": round(slope(xs, [row["p50_ms"] for row in rows]) * unit, 3),
                                   f"rss_mib_per_{unit}": round(slope(xs, [row["rss_mib"] for row in rows]) * unit, 2)}
        for row in rows:
            row["ratio_p50"] = round(row["p50_ms"] / base["p50_ms"], 2)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scopes", default="10,100,1000,10000")
    ap.add_argument("--history", default="0,100000,1000000")
    ap.add_argument("--releases", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="scopes 10,100; history 0,5000; 20 releases")
    args = ap.parse_args(argv)
    if args.quick:
        args.scopes, args.history, args.releases = "10,100", "0,5000", 20
    parse = lambda text: [int(x) for x in text.split(",") if x.strip()]  # noqa: E731
    res = asyncio.run(run(parse(args.scopes), parse(args.history), args.releases, args.warmup))
    rows = []
    for axis, points in res["curves"].items():
        for p in points:
            rows.append((f"{axis} = {p['x']}", f"p50 {p['p50_ms']} p99 {p['p99_ms']} ms",
                         f"{res['baseline']['p50_ms']} ms / {p['ratio_p50']}x", f"rss {p['rss_mib']} MiB, ready in {p['ready_s']} s"))
    for axis, s in res["slopes"].items():
        rows.append((f"slope ({axis})", ", ".join(f"{k} {v}" for k, v in s.items()), "", "flat"))
    report("scaling", res, rows)


if __name__ == "__main__":
    main()
