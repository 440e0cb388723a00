"""What an account per role costs: a role's reads across its account's imports, against the same reads
from inside JetStream's own account, on one server in the same run.

    .venv/bin/python -m bench.accounts                       # 2,000 direct gets, a 20,000-entry log
    .venv/bin/python -m bench.accounts --gets 200 --entries 2000

Embedded `kxr serve` puts every role but the service in its own account, importing `$JS.API.>` from
`KX` (services/nats_accounts.py `role_imports`), so JetStream's answers cannot be relayed onto a subject a
stream captures (docs/permissions.md "JetStream's answers"). Every request a runtime, an operator or an
auditor sends then crosses an import: its reply is mapped to a fresh subject in `KX` and back. Measured,
each on the embedded server's own configuration (users, permissions, accounts, limits):

- a runtime's pointer read: a direct get of the last message on a subject (`last_by_subj`), one at a
  time, request to answer; the baseline is the service's user asking the same from inside `KX`;
- an auditor's replay read: every entry of the log through the project's reader (an ephemeral pull
  consumer, kept-open pull requests with heartbeats); the baseline is the service's user reading it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from events.subjects import Subjects
from services.jetstream.client import connect
from services.jetstream.embedded import EmbeddedServer, StoreLock, authorized_config, free_port
from services.jetstream.layout import ensure_layout
from services.jetstream.log_reads import log_entries

from .common import Progress, latency_summary, report

PREFIX = "bacc"


async def direct_gets(nc, stream: str, subject: str, n: int, progress: Progress | None = None) -> list[float]:
    """Seconds per request, one at a time: a direct get of `subject`'s last message."""
    ask = json.dumps({"last_by_subj": subject}).encode()
    took = []
    for i in range(n):
        t0 = time.perf_counter()
        answer = await nc.request(f"$JS.API.DIRECT.GET.{stream}", ask, timeout=5)
        took.append(time.perf_counter() - t0)
        if answer.headers and answer.headers.get("Status"):
            raise RuntimeError(f"direct get answered {answer.headers}")
        if progress is not None:
            progress.update(i + 1)
    return took


async def read_all(js, subjects: Subjects) -> tuple[int, float]:
    """(entries, seconds) to read the whole log through the project's reader."""
    t0 = time.perf_counter()
    n = 0
    async for _ in log_entries(js, subjects):
        n += 1
    return n, time.perf_counter() - t0


async def run(gets: int = 2000, entries: int = 20_000, rounds: int = 3) -> dict:
    s = Subjects(PREFIX)
    with tempfile.TemporaryDirectory(prefix="kx-bench-accounts-") as tmp:
        work = Path(tmp)
        port = free_port()
        url = f"nats://127.0.0.1:{port}"
        lock = StoreLock(work / "nats").acquire()
        config, creds = authorized_config(work, PREFIX, url)
        server = EmbeddedServer(
            store_dir=work / "nats", port=port, config_file=config, log_file=work / "nats.log"
        ).start(lock=lock)
        conns = []
        try:
            for role in ("service", "runtime", "auditor"):
                conns.append(await connect(url, name=f"bench-{role}", **creds[role].connect_options()))
            service, runtime, auditor = conns
            js = service.jetstream()
            await ensure_layout(js, s)
            progress = Progress("log entries written", entries)
            body = json.dumps({"bench": "accounts", "pad": "x" * 200}).encode()
            for start in range(0, entries, 500):
                acks = [
                    js.publish(s.release(f"b{i}", "verified"), body) for i in range(start, min(entries, start + 500))
                ]
                await asyncio.gather(*acks)
                progress.update(min(entries, start + 500))
            subject = s.release(f"b{entries - 1}", "verified")
            gets_same, gets_cross, reads_same, reads_cross = [], [], [], []
            for r in range(rounds):  # interleaved: a busy neighbour slows both sides of a round alike
                gets_same += await direct_gets(service, s.releases_stream, subject, gets)
                gets_cross += await direct_gets(
                    runtime, s.releases_stream, subject, gets, Progress(f"round {r + 1}: cross-account gets", gets)
                )
                reads_same.append(await read_all(js, s))
                reads_cross.append(await read_all(auditor.jetstream(), s))
            for n, _ in reads_same + reads_cross:
                if n != entries:
                    raise RuntimeError(f"a read saw {n} entries of {entries}")
        finally:
            for nc in conns:
                await nc.close()
            server.stop()
            lock.release()
    same, cross = latency_summary(gets_same), latency_summary(gets_cross)
    rate_same = max(entries / t for _, t in reads_same)
    rate_cross = max(entries / t for _, t in reads_cross)
    return {
        "gets": gets * rounds,
        "entries": entries,
        "direct_get_same_account": same,
        "direct_get_cross_account": cross,
        "direct_get_p50_ratio": round(cross["p50_ms"] / same["p50_ms"], 3),
        "read_entries_per_s_same_account": round(rate_same),
        "read_entries_per_s_cross_account": round(rate_cross),
        "read_ratio": round(rate_cross / rate_same, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gets", type=int, default=2000, help="direct gets per side and round")
    parser.add_argument("--entries", type=int, default=20_000, help="log entries to read back")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    res = asyncio.run(run(args.gets, args.entries, args.rounds))
    same, cross = res["direct_get_same_account"], res["direct_get_cross_account"]
    report(
        "accounts",
        res,
        [
            (
                "runtime's direct get, p50 / p99",
                f"{cross['p50_ms']} / {cross['p99_ms']} ms",
                f"service in KX {same['p50_ms']} / {same['p99_ms']} ms; {res['direct_get_p50_ratio']}x",
                "(cost)",
            ),
            (
                "auditor's whole-log read",
                f"{res['read_entries_per_s_cross_account']}/s",
                f"service in KX {res['read_entries_per_s_same_account']}/s; {res['read_ratio']}x",
                "(cost)",
            ),
        ],
    )


if __name__ == "__main__":
    main()
