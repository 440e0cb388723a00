"""`ReleaseWatch` against a real JetStream: it follows the log and an open window's health samples."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from services.actions import operator as ops
from services.cli.watch import EXIT_HELD, exit_status
from services.jetstream.log import Entry
from services.reads.watch import ReleaseWatch, UnknownRelease
from tests.harness import OPERATOR, make_pack, running_service


def now() -> datetime:
    return datetime.now(UTC)


async def test_an_open_window_shows_live_figures_then_the_watch_ends_with_the_release(nats_url, prefix):
    async with running_service(nats_url, prefix) as svc:
        await svc.configure()
        await svc.runtime("t-int-1")
        await svc.runtime("tenant-42")
        # a long window: the watch sees it open whatever the machine's speed; the abort below ends it
        await svc.request(
            "r1",
            make_pack("1.0.0", svc.key),
            rollback={"strategy": "none"},
            monitoring={"window_s": 120, "min_samples": 1},
        )
        watch = ReleaseWatch(svc.app.nc, svc.app.js, svc.app.subjects, "r1", clock=now, interval=0.2)
        seen_live, last = None, None
        async with asyncio.timeout(60):  # a hang is a failure with a reason, not a stuck suite
            async for view in watch.views():
                last = view
                window = view["window"]
                if seen_live is None and window and window["source"] == "live" and window["samples"] >= 1:
                    seen_live = view
                    action = ops.abort(svc.world, "r1", "seen enough", OPERATOR, now())
                    await svc.app.log.append(
                        Entry(action.event, action.expected_seq, svc.app.subjects.release_filter("r1"))
                    )
                if exit_status(view, until_held=True) is not None:
                    break
        assert watch.health_readable is True and seen_live is not None
        window = seen_live["window"]
        assert (
            window["open"]
            and window["stage"] == 1
            and window["cohorts"] == ["internal"]
            and 0 <= window["fraction"] < 1
        )
        figures = {f["metric"]: f for f in window["figures"]}
        assert figures["error_rate"]["threshold"] == 0.05 and figures["error_rate"]["ok"] is True
        assert figures["latency_p95_ms"]["threshold"] == 250 and figures["latency_p95_ms"]["value"] is not None
        assert (
            seen_live["stages"][0]["state"] == "monitoring"
            and all(g["ok"] for g in seen_live["gates"])
            and seen_live["gates"]
        )
        # aborted with nothing to roll back to (strategy none): the release holds for an operator, escalated
        assert last["waiting"] and last["phase"] == "held" and "escalated" in last["why"]
        assert exit_status(last, until_held=True) == EXIT_HELD and exit_status(last, until_held=False) is None
        assert [e["type"] for e in last["events"]][-1] == "release.escalated"


async def test_an_unknown_release_is_refused_once_the_log_is_read(nats_url, prefix):
    async with running_service(nats_url, prefix, roles=()) as svc:
        watch = ReleaseWatch(svc.app.nc, svc.app.js, svc.app.subjects, "nope", clock=now)
        with pytest.raises(UnknownRelease, match="no release nope"):
            async for _ in watch.views():
                pass
