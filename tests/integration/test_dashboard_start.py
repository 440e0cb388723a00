"""The dashboard started from the service's read models answers as one that folded the whole log.

A dashboard used to fold the log from seq 1 before its first page (~90 s at 1M events). It now
starts from the read models (services/reads/model_world.py start_world): scopes and channels
from their stored states, the releases in flight and the newest closed ones read back from their
own events, every other closed release a tombstone read back when a page asks for it or when it
changes again. Each check compares every page's JSON with a dashboard that folded the whole log,
after every step, including closed releases that change after the start.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import aiohttp

from events.model import Scope
from services.actions import operator
from services.actions.pins import pin as pin_action
from services.dashboard import model
from services.dashboard.hub import LiveHub
from services.dashboard.server import dashboard, start_follower
from services.jetstream.log import Entry
from services.reads.follower import Follower
from services.reads.model_reads import keys_id, read_view
from services.tasks import cancel_and_wait
from tests.harness import CHANNEL, OPERATOR, make_pack, running_service

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)  # one clock for both dashboards: pages say "for 3 s" etc.
BOUND_S = 30  # an upper bound for both dashboards to show the same log position, not a measured speed
FILTERS = ("", "?outcome=success", "?outcome=in-flight", "?channel=prod/canary", "?outcome=rolled_back")


@asynccontextmanager
async def a_dashboard(svc, from_models: bool) -> AsyncIterator[tuple[str, Follower, bool]]:
    if from_models:
        follower, started = await start_follower(svc.app.js, svc.app.subjects, svc.app.service_keys, fold_below=0)
    else:
        follower, started = Follower(svc.app.js, svc.app.subjects, service_keys=svc.app.service_keys), False
    task = asyncio.create_task(follower.run())
    try:
        await follower.catch_up()
        async with dashboard(
            follower, svc.app.js, svc.app.subjects, "127.0.0.1", 0, clock=lambda: NOW, from_models=started
        ) as url:
            yield url, follower, started
    finally:
        await cancel_and_wait([task])


async def pages(http: aiohttp.ClientSession, url: str, release_ids: list[str]) -> dict:
    out = {}
    for path in ["api/overview", *(f"api/history{f}" for f in FILTERS), *(f"api/releases/{r}" for r in release_ids)]:
        async with http.get(url + path) as response:
            out[path] = (response.status, settled(await response.json()))
    return out


def settled(body: dict) -> dict:
    """A page without an open window's live figures: each dashboard re-reads the health samples on its
    own clock (every 2 s), so two reads of the same window differ by the samples in between."""
    for row in body.get("releases", []):
        row.pop("window", None)
    if body.get("view", {}).get("outcome", "closed") is None:
        body["view"].pop("window", None)
        body.pop("series", None)
    return body


async def same_pages(http, models_url: str, fold_url: str, release_ids: list[str], svc) -> None:
    """Both dashboards show the log's end alike (the read models may lag the log by a write: retried)."""
    await svc.catch_up()
    deadline = asyncio.get_running_loop().time() + BOUND_S
    while True:
        got, want = await pages(http, models_url, release_ids), await pages(http, fold_url, release_ids)
        if got == want:
            return
        if asyncio.get_running_loop().time() > deadline:
            differ = [p for p in want if got.get(p) != want[p]]
            raise AssertionError(f"pages differ: {differ}; first: {got[differ[0]]} != {want[differ[0]]}")
        await asyncio.sleep(0.2)


async def fleet_names(http, url: str, runtime: str, version: str) -> None:
    """The dashboard's fleet lists `runtime` on `version` (health reports re-render every 2 s)."""
    deadline = asyncio.get_running_loop().time() + BOUND_S
    while True:
        async with http.get(url + "api/fleet") as response:
            rows = {r["runtime"]: r for r in (await response.json())["rows"]}
        if runtime in rows and rows[runtime]["version"] == version:
            return
        assert asyncio.get_running_loop().time() < deadline, f"{url} fleet: {rows.get(runtime)}"
        await asyncio.sleep(0.2)


async def until_models_current(svc) -> None:
    """The read models have reached the log's end (read_view waits for that, up to its bound)."""
    subjects = svc.app.subjects
    keys = keys_id(svc.app.service_keys)

    async def seq(view):
        return view.seq

    await read_view(svc.app.nc, subjects.releases_stream, subjects.read_bucket, keys, seq, wait_s=BOUND_S)


async def test_a_dashboard_from_the_read_models_shows_what_a_whole_fold_shows(nats_url, prefix, monkeypatch):
    monkeypatch.setattr(model, "RECENT", 2)  # so that older closed releases start as tombstones
    async with running_service(nats_url, prefix) as svc, aiohttp.ClientSession() as http:
        await svc.configure()
        await svc.runtime("t-int-1")
        await svc.runtime("tenant-42")
        versions = {"r1": "1.0.0", "r2": "1.1.0", "r3": "1.2.0", "r4": "1.3.0"}
        digests: dict[str, str] = {}
        for release_id, version in versions.items():
            first = {"rollback": {"strategy": "none"}} if release_id == "r1" else {}  # no last-known-good yet
            pack = make_pack(version, svc.key)
            digests[release_id] = pack.digest
            await svc.request(release_id, pack, **first)
            assert (await svc.wait_release(release_id)).outcome == "success"
        await until_models_current(svc)

        async with a_dashboard(svc, True) as (models_url, models, started), a_dashboard(svc, False) as (fold_url, *_):
            assert started, "the dashboard did not start from the read models"
            assert set(models.world.tombstones.keys()) == {"r1", "r2"}  # r3, r4: the two newest closed, whole
            ids = [*versions, "nope"]
            await same_pages(http, models_url, fold_url, ids, svc)

            # a runtime still on r1's pack (only a tombstoned release names it): both fleets name its version
            stale = {"runtime_id": "rt-stale", "digest": digests["r1"], "kind": "sample", "requests": 10, "errors": 0}
            subject = svc.app.subjects.health("prod", "canary", "internal", "rt-stale")
            await svc.app.js.publish(subject, json.dumps({**stale, "at": datetime.now(UTC).isoformat()}).encode())
            for url in (models_url, fold_url):
                await fleet_names(http, url, "rt-stale", "1.0.0")

            # a tombstoned release annotated (it stays a tombstone, its sequence moves), another one
            # rolled back after it closed (read back whole), a new release in flight
            now = datetime.now(UTC)
            for action in (
                operator.annotate(svc.world, "r1", "a note after close", None, OPERATOR, now),
                operator.rollback(svc.world, "r2", "operator", "bad after all", OPERATOR, now),
            ):
                subject_filter = svc.app.subjects.release_filter(action.event.release_id)
                await svc.app.log.append(Entry(action.event, action.expected_seq, subject_filter))
            slow = {**CHANNEL, "monitoring": {**CHANNEL["monitoring"], "window_s": 120}}
            await svc.configure(config=slow)
            await svc.request("r5", make_pack("2.0.0", svc.key))
            await svc.wait_release("r5", "monitoring")
            await same_pages(http, models_url, fold_url, [*ids, "r5"], svc)
            assert "r2" not in models.world.tombstones and "r1" in models.world.tombstones

            # a pin to a version only a tombstoned release verified: the same decision as on the whole fold
            scope = Scope(env="prod", channel="canary", cohort="internal")
            hub = LiveHub(models, svc.app.js, svc.app.subjects, lambda: NOW, from_models=True)
            hub_world = await hub.pin_world("prod", "canary", "1.0.0")
            until = now + timedelta(hours=1)
            got = pin_action(hub_world, scope, "1.0.0", until, "hold", OPERATOR, now)
            want = pin_action(svc.world, scope, "1.0.0", until, "hold", OPERATOR, now)
            assert (got[0].data, got[1]) == (want[0].data, want[1])
