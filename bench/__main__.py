"""Run every bench, one after another, each in its own process.

    .venv/bin/python -m bench                 # the issue's sizes (long: tens of minutes)
    .venv/bin/python -m bench --quick         # small sizes, a few minutes
    .venv/bin/python -m bench --only replay,fan_out

Each bench prints its table on stderr as it finishes; the JSON objects are written to
`bench/results/<name>.json` (the figures the README's table is made from).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

# name -> (arguments for the sizes, arguments for a quick run)
BENCHES: dict[str, tuple[list[str], list[str]]] = {
    "time_to_activate": ([], ["--releases", "50"]),
    "throughput": ([], ["--channels", "40", "--cohorts", "5"]),
    "replay": ([], ["--quick"]),
    "pack_size": ([], ["--quick"]),
    "fan_out": ([], ["--quick"]),
    "scaling": ([], ["--quick"]),
    "cli_start": ([], ["--quick"]),
    "rollback": ([], ["--quick"]),
    "operator_reads": ([], ["--quick"]),
    "accounts": ([], ["--gets", "200", "--entries", "2000"]),
}
RESULTS = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="run every bench")
    ap.add_argument("--quick", action="store_true", help="small sizes")
    ap.add_argument("--only", default="", help="comma-separated bench names")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"bench: unknown bench {', '.join(unknown)} (known: {', '.join(BENCHES)})", file=sys.stderr)
        return 2
    RESULTS.mkdir(exist_ok=True)
    failed = []
    for name in names:
        full, quick = BENCHES[name]
        sys.stderr.write(f"\n== {name} ==\n")
        started = time.monotonic()
        run = subprocess.run(
            [sys.executable, "-m", f"bench.{name}", *(quick if args.quick else full)], stdout=subprocess.PIPE, text=True
        )
        if run.returncode != 0:
            failed.append(name)
            sys.stderr.write(f"bench {name} failed with status {run.returncode}\n")
            continue
        doc = json.loads(run.stdout.strip().splitlines()[-1])
        doc["wall_s"] = round(time.monotonic() - started, 1)
        (RESULTS / f"{name}.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    if failed:
        print(f"bench: {len(failed)} failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
