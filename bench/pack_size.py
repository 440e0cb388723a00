"""Pack size: verify + distribute 1 MiB, 100 MiB and 1 GiB packs, against a raw object-store get.

    .venv/bin/python -m bench.pack_size                      # 1 MiB, 100 MiB, 1 GiB
    .venv/bin/python -m bench.pack_size --sizes 1M,100M      # or --quick (256 KiB, 4 MiB)

Per size, on a file-backed nats-server with the service's own layout: the pack is
generated as a deterministic pseudo-random stream into a temp file (hashed on the way,
never held whole) and pushed from the file with nats-py's object store, with a manifest
signed for its digest and size. Then, each in a fresh child process whose peak resident
set is read before and after (`ru_maxrss`, so growth = what the read itself held):

- ours: the distributor's check (both objects' sizes) + `services.verification.pipeline.run_gates`
  against the real store with every gate: manifest signature under the trust root, the
  pack streamed through the digester (digest and size capped), compatibility, policy,
  evidence;
- raw: nats-py `ObjectStore.get(name, writeinto=sink)` of the same pack (its streamed
  read: an ordered push consumer on the chunks, SHA-256 checked against the object's
  meta), the sink discarding the bytes.

Figures: MiB/s both ways (median of `repeats` reads), ours/raw, and the RSS growth of
each; target growth < 64 MiB at 1 GiB (streaming: never the whole pack in memory).
Disk: a 1 GiB pack costs ~1 GiB in JetStream + 1 GiB temp file, removed after each size.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from events.manifest import manifest_object_name, pack_object_name
from events.model import PackRef
from events.subjects import Subjects
from services.actions.producer import build_signed, manifest_bytes
from services.jetstream.client import connect
from services.jetstream.layout import ensure_layout

from .common import COMPATIBILITY, Progress, channel_config, peak_rss_mib, report, rig

MiB = 1024 * 1024
GEN_CHUNK = 4 * MiB
DEFAULT_SIZES = "1M,100M,1G"
QUICK_SIZES = "256K,4M"
RSS_TARGET_MIB = 64.0
ROOT = Path(__file__).resolve().parents[1]


def parse_size(text: str) -> int:
    """'256K', '100M', '1G' or a byte count -> bytes."""
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    units = {"K": 1024, "M": MiB, "G": 1024 * MiB}
    try:
        if text and text[-1] in units:
            value = int(float(text[:-1]) * units[text[-1]])
        else:
            value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 256K, 100M, 1G)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a pack size must be positive, not {text!r}")
    return value


def human(size: int) -> str:
    for unit, factor in (("GiB", 1024 * MiB), ("MiB", MiB), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


def write_pack(path: Path, size: int, seed: int, progress: Progress | None = None) -> str:
    """A deterministic pseudo-random pack of `size` bytes on disk; its digest. Memory: one chunk."""
    rng = random.Random(seed)
    h = hashlib.sha256()
    written = 0
    with path.open("wb") as f:
        while written < size:
            chunk = rng.randbytes(min(GEN_CHUNK, size - written))
            h.update(chunk)
            f.write(chunk)
            written += len(chunk)
            if progress:
                progress.update(written // MiB)
    return "sha256:" + h.hexdigest()


def signed_manifest(key, version: str, digest: str, size: int) -> bytes:
    """A manifest signed for a pack known by digest and size only (the pack is never in memory)."""
    signed = build_signed(
        b"",
        name="kb",
        version=version,
        schema=COMPATIBILITY["schema"],
        profile="standard",
        runtime=">=2,<3",
        build_id=f"b-{version}",
        builder="bench",
        run=f"r-{version}",
        source="https://git.example/kb",
        revision=f"rev-{version}",
    )
    signed.update(digest=digest, size=size)
    return manifest_bytes(signed, [key])


async def push_from_file(url: str, subjects: Subjects, path: Path, digest: str, manifest: bytes) -> None:
    """Pack and manifest into the packs bucket; nats-py reads the file a chunk at a time."""
    nc = await connect(url, name="bench-pack-producer")
    try:
        js = nc.jetstream(timeout=30)
        await ensure_layout(js, subjects)
        store = await js.object_store(subjects.packs_bucket)
        with path.open("rb") as f:
            await store.put(pack_object_name(digest), f)
        await store.put(manifest_object_name(digest), manifest)
    finally:
        await nc.close()


async def drop_pack(url: str, subjects: Subjects, digest: str) -> None:
    nc = await connect(url, name="bench-pack-cleanup")
    try:
        store = await nc.jetstream(timeout=30).object_store(subjects.packs_bucket)
        for name in (pack_object_name(digest), manifest_object_name(digest)):
            await store.delete(name)  # purges the chunks: the disk is given back before the next size
    finally:
        await nc.close()


# ---- the measured reads, each in its own process -----------------------------------------------
class _Discard:
    """A writeinto target for nats-py that keeps nothing (so the raw read streams too)."""

    def write(self, data: bytes) -> int:
        return len(data)


async def _read_ours(js, subjects: Subjects, spec: dict) -> dict:
    from services.jetstream.packstore import PackStore
    from services.verification.context import verify_context
    from services.verification.pipeline import run_gates

    store = PackStore(js, subjects)
    digest = spec["digest"]
    t0 = time.perf_counter()
    names = [pack_object_name(digest), manifest_object_name(digest)]
    sizes = await asyncio.gather(*(store.size(n) for n in names))  # what the distributor asks
    if None in sizes:
        raise RuntimeError(f"distributor check: missing object(s) {names}: {sizes}")
    t1 = time.perf_counter()
    pack = PackRef(name="kb", version=spec["version"], digest=digest)
    vctx = verify_context(
        pack,
        trust_root_from(spec["trust"]),
        datetime.now(UTC),
        "rollout",
        env="prod",
        channel="bench",
        cohorts=("all",),
        channel_config=channel_config(),
        active={"all": None},
    )
    v = await run_gates(store, digest, vctx)
    t2 = time.perf_counter()
    if v.failure is not None or not v.ok:
        raise RuntimeError(f"verification failed: {v.failure}")
    return {"distribute_s": t1 - t0, "verify_s": t2 - t1, "total_s": t2 - t0}


async def _read_raw(js, subjects: Subjects, spec: dict) -> dict:
    store = await js.object_store(subjects.packs_bucket)
    t0 = time.perf_counter()
    result = await store.get(pack_object_name(spec["digest"]), writeinto=_Discard())
    t1 = time.perf_counter()
    if result.info.size != spec["size"]:
        raise RuntimeError(f"raw get: {result.info.size} bytes, expected {spec['size']}")
    return {"total_s": t1 - t0}


async def _read_raw_fetch(js, subjects: Subjects, spec: dict) -> dict:
    """Bare nats-py, no object-store layer: a pull consumer on the chunks, fetched 16 at a time, hashed."""
    from nats.js.api import AckPolicy, ConsumerConfig

    store = await js.object_store(subjects.packs_bucket)
    t0 = time.perf_counter()
    info = await store.get_info(pack_object_name(spec["digest"]))
    sub = await js.pull_subscribe(
        f"$O.{subjects.packs_bucket}.C.{info.nuid}",
        stream=f"OBJ_{subjects.packs_bucket}",
        config=ConsumerConfig(ack_policy=AckPolicy.NONE, mem_storage=True),
    )
    h, seen = hashlib.sha256(), 0
    try:
        while seen < info.size:
            for msg in await sub.fetch(16, timeout=10):
                h.update(msg.data)
                seen += len(msg.data)
    finally:
        await sub.unsubscribe()
    t1 = time.perf_counter()
    if seen != spec["size"] or "sha256:" + h.hexdigest() != spec["digest"]:
        raise RuntimeError(f"raw fetch: {seen} bytes, digest mismatch or wrong size")
    return {"total_s": t1 - t0}


READS = {"ours": _read_ours, "raw": _read_raw, "raw_fetch": _read_raw_fetch}


def trust_root_from(doc: dict):
    from events.signing import TrustRoot

    return TrustRoot.from_document(doc)


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> float:
    """Reset the peak RSS (Linux clear_refs 5) and return the current RSS in MiB.

    Without the reset, a peak left by the imports would hide the read's growth; where the
    reset is refused, fall back to the process's peak so far (growth is then understated
    only if the read stays under that peak, which the report says).
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return peak_rss_mib()
    return _status_mib("VmRSS")


def peak_rss_since_reset() -> float:
    try:
        return _status_mib("VmHWM")
    except (OSError, RuntimeError):
        return peak_rss_mib()


async def _child(spec: dict) -> dict:
    subjects = Subjects(spec["prefix"])
    nc = await connect(spec["url"], name=f"bench-pack-{spec['mode']}")
    try:
        js = nc.jetstream(timeout=60)
        read = READS[spec["mode"]]
        before = reset_peak_rss()  # after imports and the connection: growth is the read's own
        runs = [await read(js, subjects, spec) for _ in range(spec["repeats"])]
        after = peak_rss_since_reset()
    finally:
        await nc.close()
    return {
        "runs": runs,
        "rss_before_mib": round(before, 1),
        "rss_after_mib": round(after, 1),
        "rss_growth_mib": round(after - before, 1),
    }


def measure_in_child(spec: dict, timeout: float) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.pack_size", "--child", json.dumps(spec)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['mode']} read of {human(spec['size'])} failed:\n{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- the bench -----------------------------------------------------------------------------------
def repeats_for(size: int) -> int:
    return 15 if size <= 4 * MiB else 5 if size <= 128 * MiB else 1


def _median_s(child: dict) -> float:
    return statistics.median(r["total_s"] for r in child["runs"])


def summarise(size: int, ours: dict, raw: dict, fetch: dict) -> dict:
    o_s, r_s, f_s = _median_s(ours), _median_s(raw), _median_s(fetch)
    o_rate, r_rate, f_rate = size / MiB / o_s, size / MiB / r_s, size / MiB / f_s
    return {
        "bytes": size,
        "label": human(size),
        "repeats": len(ours["runs"]),
        "ours": {
            "mib_s": round(o_rate, 1),
            "median_s": round(o_s, 4),
            "distribute_ms": round(statistics.median(r["distribute_s"] for r in ours["runs"]) * 1000, 3),
            "verify_s": round(statistics.median(r["verify_s"] for r in ours["runs"]), 4),
            "rss_growth_mib": ours["rss_growth_mib"],
        },
        "raw": {"mib_s": round(r_rate, 1), "median_s": round(r_s, 4), "rss_growth_mib": raw["rss_growth_mib"]},
        "raw_fetch": {"mib_s": round(f_rate, 1), "median_s": round(f_s, 4), "rss_growth_mib": fetch["rss_growth_mib"]},
        "ratio": round(o_rate / r_rate, 3),
        "ratio_vs_fetch": round(o_rate / f_rate, 3),
    }


async def run(sizes: list[int], seed: int = 8, repeats: int | None = None) -> dict:
    results = []
    with rig(prefix="pack") as r:
        subjects = Subjects(r.prefix)
        trust = json.loads(r.trust_file.read_text())
        for i, size in enumerate(sizes):
            free = shutil.disk_usage(r.work).free
            if free < 3 * size + 512 * MiB:
                raise RuntimeError(f"{human(size)} needs ~{human(3 * size)} free in {r.work}; {free // MiB} MiB left")
            path = r.work / f"pack-{i}.bin"
            version = f"1.0.{i}"
            digest = write_pack(
                path,
                size,
                seed + i,
                Progress(f"generate {human(size)} (MiB)", max(1, size // MiB)) if size >= 64 * MiB else None,
            )
            await push_from_file(r.url, subjects, path, digest, signed_manifest(r.key, version, digest, size))
            path.unlink()
            spec = {
                "url": r.url,
                "prefix": r.prefix,
                "digest": digest,
                "size": size,
                "version": version,
                "trust": trust,
                "repeats": repeats or repeats_for(size),
            }
            timeout = 120 + size / MiB  # generous: at 1 MiB/s something else is wrong
            sys.stderr.write(f"{human(size)}: raw get, raw fetch, then ours ({spec['repeats']} reads each)\n")
            raw = await asyncio.to_thread(measure_in_child, {**spec, "mode": "raw"}, timeout)
            fetch = await asyncio.to_thread(measure_in_child, {**spec, "mode": "raw_fetch"}, timeout)
            ours = await asyncio.to_thread(measure_in_child, {**spec, "mode": "ours"}, timeout)
            results.append(summarise(size, ours, raw, fetch))
            await drop_pack(r.url, subjects, digest)
    largest = max(results, key=lambda x: x["bytes"])
    return {
        "sizes": results,
        "targets": {"rss_growth_mib_max_at_1gib": RSS_TARGET_MIB, "ratio_min": 1.0},
        "met": {
            "rss_growth": largest["ours"]["rss_growth_mib"] < RSS_TARGET_MIB,
            "rss_growth_measured_at": largest["label"],
            "throughput_vs_raw": all(x["ratio"] >= 1.0 for x in results),
        },
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=DEFAULT_SIZES, help=f"comma-separated, e.g. {DEFAULT_SIZES} (default)")
    ap.add_argument("--quick", action="store_true", help=f"small sizes ({QUICK_SIZES})")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # internal: one measured read, JSON spec
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(asyncio.run(_child(json.loads(args.child)))))
        return
    sizes = [parse_size(s) for s in (QUICK_SIZES if args.quick else args.sizes).split(",") if s.strip()]
    res = asyncio.run(run(sizes))
    rows = []
    for x in res["sizes"]:
        rows.append(
            (
                f"{x['label']} verify+distribute",
                f"{x['ours']['mib_s']} MiB/s",
                f"{x['raw']['mib_s']} MiB/s / {x['ratio']}x",
                ">= 1x raw get",
            )
        )
        rows.append(
            (
                f"{x['label']} vs bare pull fetch",
                f"{x['ours']['mib_s']} MiB/s",
                f"{x['raw_fetch']['mib_s']} MiB/s / {x['ratio_vs_fetch']}x",
                "(floor, info)",
            )
        )
        rows.append(
            (
                f"{x['label']} peak RSS growth",
                f"{x['ours']['rss_growth_mib']} MiB",
                f"{x['raw']['rss_growth_mib']} MiB (raw)",
                f"< {RSS_TARGET_MIB:g} MiB at 1 GiB",
            )
        )
    report("pack_size", res, rows)


if __name__ == "__main__":
    main()
