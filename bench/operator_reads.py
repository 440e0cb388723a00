"""Operator reads as the log grows: from the service's read models against a fold of the log (issue 18).

    .venv/bin/python -m bench.operator_reads                     # logs of 1k, 10k, 100k events
    .venv/bin/python -m bench.operator_reads --sizes 1000,1000000
    .venv/bin/python -m bench.operator_reads --quick             # 1k and 10k, fewer runs

One file-backed server (in RAM where there is one); the log grows through `--sizes` with clones
of the recorded history (bench/history.py). At each size the read models are written as the
service writes them (services/reads/projector.py, from a follower that has folded the log:
`project_s` is that start-up, what a restarted service pays once in the background), then each
command runs as a new `kxr` process, as an operator runs it: from the read models, and with
`--fold` (the whole log folded per call, the way every one of them worked before). Times are
the whole process (start-up included), median of `--runs` (the fold: of `--fold-runs`).
The dashboard's first paint: `kxr ui` started until its overview page is served (`--fold`: the
whole log folded first, as every dashboard did before session 8).
`kxr pin` and `kxr release annotate` run once per size, last (they append: the models then lag
until the next size's projection); before session 7 both folded the whole log, as `--fold` does.
Target (issue 18): at most 1 s at 1M events.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import time

from events.subjects import Subjects
from services.app import App
from services.jetstream.client import connect
from services.reads.projector import project_once
from services.settings import Settings

from .common import Progress, kxr_binary, report
from .history import fast_rig, generate

TARGET_S = 1.0
DEFAULT_SIZES = (1_000, 10_000, 100_000)
QUICK_SIZES = (1_000, 10_000)


def commands(release_id: str, channel: str) -> dict[str, list[str]]:
    return {
        "kxr status": ["status", "--json"],
        "kxr release list": ["release", "list", "--json"],
        "kxr channel show": ["channel", "show", channel, "--json"],
        "kxr release show": ["release", "show", release_id, "--json"],
    }


async def project(url: str, work, prefix: str) -> tuple[float, str, str, int, list[str]]:
    """The read models written at the log's end: (seconds, the newest release id, a channel, releases,
    what `kxr pin` then pins: a scope and the version of the newest verified release to it)."""
    from services.reads.history import load_history

    nc = await connect(url, name="bench-operator-reads")
    try:
        app = App(nc, Settings(nats_url=url, prefix=prefix, data_dir=work / "data"))
        t0 = time.perf_counter()
        await app.start()
        projector = await project_once(app, timeout=3600)
        seconds = time.perf_counter() - t0
        channel = "/".join(sorted(app.follower.world.channels.keys())[0])
        recent = (await load_history(app.js, app.subjects, None, limit=20)).items
        verified = next(i.state for i in recent if i.state.verified is not None and i.state.prepared is not None)
        target = verified.prepared.target  # type: ignore[union-attr]
        cohort = app.follower.world.channel_config(target.env, target.channel).cohort_names[0]
        pin = [f"{target.env}/{target.channel}/{cohort}", verified.verified.pack.version]  # type: ignore[union-attr]
        await app.stop()
    finally:
        await nc.close()
    assert projector.newest is not None, "no release in the log"
    return seconds, projector.newest[1], channel, projector.releases, pin


def timed(argv: list[str], env: dict[str, str], expect_fold: bool) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=3600)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    folded = b"folding the log" in done.stderr
    if folded and not expect_fold:
        raise RuntimeError(f"{' '.join(argv)} folded the log: {done.stderr.decode()[-300:]}")
    return seconds


def first_paint(env: dict[str, str], fold: bool) -> float:
    """`kxr ui` started → its overview page served (the first paint), in seconds; the process is stopped.

    From the read models unless `fold` (`kxr ui --fold`: the whole log folded first, as it always did);
    a short log too (KX_UI_FOLD_BELOW=0: `kxr ui` would fold one under 10k entries)."""
    import re
    import urllib.request

    argv = [kxr_binary(), "ui", "--port", "0", *(["--fold"] if fold else [])]
    t0 = time.perf_counter()
    ui = subprocess.Popen(
        argv,
        env={**env, "KX_UI_FOLD_BELOW": "0"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert ui.stderr is not None
        line = ui.stderr.readline().decode()  # "kxr ui: dashboard at URL (read-only; <how it started>; …)"
        found = re.search(r"dashboard at (\S+) \(read-only; ([^;]+);", line)
        if found is None:
            raise RuntimeError(f"kxr ui did not start: {line}{ui.stderr.read().decode()[-500:]}")
        if ("folded the log" in found[2]) != fold:
            raise RuntimeError(f"kxr ui {'did not fold' if fold else 'folded the log'}: {line}")
        with urllib.request.urlopen(found[1], timeout=600) as page:
            page.read()
        return time.perf_counter() - t0
    finally:
        ui.terminate()
        ui.wait(30)


def run(sizes: tuple[int, ...], runs: int, fold_runs: int) -> dict:
    points = []
    with fast_rig("reads") as r:
        subjects = Subjects(r.prefix)
        env = r.env(COLUMNS="100")
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(r.work / "pycache")
        stored = 0
        for size in sizes:

            async def fill(size: int = size, stored: int = stored) -> int:
                nc = await connect(r.url, name="bench-operator-reads-fill")
                try:
                    progress = Progress(f"log to {size:,} events", size)
                    done = await generate(
                        nc.jetstream(timeout=60),
                        subjects,
                        size - stored,
                        None,
                        channels=10,
                        progress=lambda n: progress.update(stored + n),
                    )
                    return done.last_seq
                finally:
                    await nc.close()

            stored = asyncio.run(fill()) if size > stored else stored
            project_s, newest, channel, releases, (scope, version) = asyncio.run(project(r.url, r.work, r.prefix))
            point: dict = {"events": stored, "releases": releases, "project_s": round(project_s, 2), "commands": {}}
            for name, args in commands(newest, channel).items():
                argv = [kxr_binary(), *args]
                timed(argv, env, expect_fold=name == "kxr release show")  # warm the page cache
                model = [timed(argv, env, expect_fold=name == "kxr release show") for _ in range(runs)]
                row = {"model_s": round(statistics.median(model), 3)}
                if name != "kxr release show":  # it reads the release's own events: no --fold, no model
                    folded = [timed([*argv, "--fold"], env, expect_fold=True) for _ in range(fold_runs)]
                    row["fold_s"] = round(statistics.median(folded), 3)
                    row["speedup"] = round(row["fold_s"] / row["model_s"], 1)
                point["commands"][name] = row
            # the dashboard's first paint: `kxr ui` started until its overview page is served
            paint = [first_paint(env, fold=False) for _ in range(runs)]
            folded_paint = [first_paint(env, fold=True) for _ in range(fold_runs)]
            row = {"model_s": round(statistics.median(paint), 3), "fold_s": round(statistics.median(folded_paint), 3)}
            point["commands"]["kxr ui (first paint)"] = {**row, "speedup": round(row["fold_s"] / row["model_s"], 1)}
            # last, once: it appends (the models then lag, with no service here to write them) and
            # decides on the models (the scope's and channel's state, the newest releases of the version)
            pin = [kxr_binary(), "pin", scope, "--version", version, "--until", "1h", "-m", "bench"]
            point["commands"]["kxr pin"] = {"model_s": round(timed(pin, env, expect_fold=False), 3), "runs": 1}
            # a release action decides on the release's own events (services/reads/model_world.py)
            note = [kxr_binary(), "release", "annotate", newest, "-m", "bench"]
            point["commands"]["kxr release annotate"] = {"model_s": round(timed(note, env, True), 3), "runs": 1}
            points.append(point)
    largest = points[-1]
    return {
        "runs": runs,
        "fold_runs": fold_runs,
        "points": points,
        "target_s": TARGET_S,
        "met_at_largest": {n: c["model_s"] <= TARGET_S for n, c in largest["commands"].items()},
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="log sizes in events, ascending")
    ap.add_argument("--runs", type=int, default=5, help="timed runs from the read models (median)")
    ap.add_argument("--fold-runs", type=int, default=1, help="timed runs with --fold (median)")
    ap.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}, 3 runs")
    args = ap.parse_args(argv)
    sizes = QUICK_SIZES if args.quick else tuple(int(s) for s in args.sizes.split(",") if s)
    if not sizes or sorted(sizes) != list(sizes) or sizes[0] < 1 or args.runs < 1 or args.fold_runs < 1:
        ap.error("--sizes: ascending positive integers; --runs and --fold-runs at least 1")
    res = run(sizes, 3 if args.quick else args.runs, args.fold_runs)
    rows = []
    for p in res["points"]:
        for name, c in p["commands"].items():
            fold = (
                f"fold {c['fold_s']} s, {c['speedup']}x"
                if "fold_s" in c
                else "(once; it folded the whole log before)"
                if name in ("kxr pin", "kxr release annotate")
                else "(its own events only)"
            )
            rows.append((f"{name} @ {p['events']:,} events", f"{c['model_s']} s", fold, f"<= {TARGET_S:.0f} s"))
        rows.append((f"read models written @ {p['events']:,}", f"{p['project_s']} s", "-", "-"))
    report("operator_reads", res, rows)


if __name__ == "__main__":
    main()
