"""The dashboard over plain HTTP, next to a running service (as `kxr serve --ui` runs it)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import aiohttp

from services.actions import operator
from services.dashboard.server import dashboard_for
from services.jetstream.log import Entry
from tests.harness import CHANNEL, OPERATOR, make_pack, running_service
from tests.security.conftest import as_role, authed  # noqa: F401 (fixtures: a server with per-role users)

HOSTILE = "<script>alert('owned')</script><img src=x onerror=alert(1)>"
ESCAPED = "&lt;script&gt;alert(&#x27;owned&#x27;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"
BOUND_S = 30  # an upper bound for the dashboard to show what the log says, not a measured speed


@asynccontextmanager
async def dashboard_of(svc) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    async with dashboard_for(svc.app, ("127.0.0.1", 0)) as url, aiohttp.ClientSession() as http:
        yield url, http


async def get_json(http: aiohttp.ClientSession, url: str, status: int = 200) -> dict:
    async with http.get(url) as response:
        assert response.status == status, await response.text()
        return await response.json()


async def eventually(probe, what: str):
    deadline = asyncio.get_running_loop().time() + BOUND_S
    while True:
        value = await probe()
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, f"the dashboard never showed {what}"
        await asyncio.sleep(0.1)


async def test_json_endpoints_escaping_and_read_only(nats_url, prefix):
    async with running_service(nats_url, prefix) as svc, dashboard_of(svc) as (url, http):
        await svc.configure()
        await svc.runtime("t-int-1")
        await svc.runtime("tenant-42")
        await svc.request("r1", make_pack("1.0.0", svc.key), rollback={"strategy": "none"}, reason=HOSTILE)
        assert (await svc.wait_release("r1")).outcome == "success"
        action = operator.annotate(svc.world, "r1", HOSTILE, None, OPERATOR, datetime.now(UTC))
        await svc.app.log.append(Entry(action.event, action.expected_seq, svc.app.subjects.release_filter("r1")))

        async def annotated():
            body = await get_json(http, url + "api/releases/r1")
            return body if body["evidence"]["timeline"][-1]["type"] == "release.annotated" else None

        body = await eventually(annotated, "the annotation")
        assert body["view"]["outcome"] == "success" and [s["state"] for s in body["view"]["stages"]] == [
            "passed",
            "passed",
        ]
        assert body["view"]["window"]["source"] == "verdict" and body["view"]["window"]["figures"]
        assert (
            body["evidence"]["identity"]["reason"] == HOSTILE
            and body["evidence"]["decisions"][-1]["rationale"] == HOSTILE
        )

        overview = await get_json(http, url + "api/overview")
        [group] = overview["scopes"]
        assert (group["env"], group["channel"]) == ("prod", "canary")
        assert [(c["cohort"], c["version"], c["lkg"], c["release"]) for c in group["cohorts"]] == [
            ("internal", "1.0.0", "1.0.0", "r1"),
            ("rest", "1.0.0", "1.0.0", "r1"),
        ]
        assert overview["releases"] == [] and [(r["release"], r["outcome"]) for r in overview["recent"]] == [
            ("r1", "success")
        ]

        async with http.get(url + "releases/r1") as response:
            page = await response.text()
            assert response.status == 200 and "script-src 'self'" in response.headers["Content-Security-Policy"]
        assert HOSTILE not in page and "<script>alert" not in page
        assert page.count(ESCAPED) >= 2  # the request's reason and the operator's rationale, shown as text
        assert "id='timeline'" in page and 'aria-label="figures against thresholds"' in page

        await get_json(http, url + "api/releases/nope", 404)
        await get_json(http, url + "api/releases/..%2Fetc", 404)
        await get_json(http, url + "api/stream?release=nope", 404)
        async with http.get(url + "releases/%3Cb%3E") as response:
            assert response.status == 404 and "<b>" not in await response.text()
        async with http.post(url + "api/overview", data=b"{}") as response:
            assert response.status == 405  # read-only: nothing but GET
        async with http.get(url + "api/overview", headers={"Host": "attacker.example"}) as response:
            assert response.status == 421  # a rebound DNS name does not reach a loopback dashboard


async def read_sections(stream: aiohttp.ClientResponse) -> dict:
    """The next `sections` event of a server-sent-events stream."""
    event = None
    while True:
        line = (await stream.content.readline()).decode()
        assert line, "the stream ended"
        if line.startswith("event: "):
            event = line[7:].strip()
        elif line.startswith("data: ") and event == "sections":
            return json.loads(line[6:])


async def test_stream_pushes_log_changes_and_an_open_windows_live_figures(nats_url, prefix):
    slow = {**CHANNEL, "monitoring": {**CHANNEL["monitoring"], "window_s": 60}}  # stays open while the test looks
    async with running_service(nats_url, prefix) as svc, dashboard_of(svc) as (url, http):
        await svc.configure(config=slow)
        await svc.runtime("t-int-1")
        async with http.get(url + "api/stream", timeout=aiohttp.ClientTimeout(total=BOUND_S)) as stream:
            assert stream.headers["Content-Type"].startswith("text/event-stream")
            first = await read_sections(stream)
            assert "no release in flight" in first["sections"]["releases"]
            await svc.request("r1", make_pack("1.0.0", svc.key), rollback={"strategy": "none"})
            while "data-release='r1'" not in (update := await read_sections(stream))["sections"]["releases"]:
                assert update["seq"] >= first["seq"]
            assert update["seq"] > first["seq"]

        async def live_window():
            window = (await get_json(http, url + "api/releases/r1"))["view"]["window"]
            return window if window and window["source"] == "live" and window["samples"] > 0 else None

        window = await eventually(live_window, "figures of the open window")
        assert window["open"] and window["result"] in (
            "passed",
            "inconclusive",
        )  # so far: what the monitor would say now
        assert {f["metric"] for f in window["figures"]} >= {"error_rate", "latency_p95_ms"}
        async with http.get(url + "releases/r1") as response:
            assert "figures so far" in await response.text()


async def test_fleet_history_and_a_releases_charts(nats_url, prefix):
    async with running_service(nats_url, prefix) as svc, dashboard_of(svc) as (url, http):
        await svc.configure()
        await svc.runtime("t-int-1")
        await svc.runtime("tenant-42")
        s = svc.app.subjects
        # a refusal with a hostile reason, on a channel no release here touches: shown as text
        refusal = {
            "runtime_id": "rt-evil",
            "digest": None,
            "at": datetime.now(UTC).isoformat(),
            "kind": "activation",
            "ok": False,
            "error": HOSTILE,
        }
        await svc.app.nc.publish(s.health("prod", "stable", "internal", "rt-evil"), json.dumps(refusal).encode())
        await svc.request("r1", make_pack("1.0.0", svc.key), rollback={"strategy": "none"})
        assert (await svc.wait_release("r1")).outcome == "success"

        async def fleet_on_1_0_0():
            body = await get_json(http, url + "api/fleet")
            rows = {r["runtime"]: r for r in body["rows"]}
            ours = [rows.get("rt-t-int-1"), rows.get("rt-tenant-42")]
            if not all(r and r["version"] == "1.0.0" and r["health"]["samples"] for r in ours):
                return None
            return body

        body = await eventually(fleet_on_1_0_0, "both runtimes on 1.0.0 with health")
        assert body["problem"] is None and body["ready"]
        rows = {r["runtime"]: r for r in body["rows"]}
        for rid, scope in (("rt-t-int-1", "prod/canary/internal"), ("rt-tenant-42", "prod/canary/rest")):
            row = rows[rid]
            assert (row["scope"], row["in_sync"], row["status"]) == (scope, True, "ok"), row
            assert row["activation"]["result"] == "ok" and row["activation"]["version"] == "1.0.0"
            assert row["health"]["error_rate"] == 0 and row["health"]["latency_p95_ms"] > 0
        assert rows["rt-evil"]["status"] == "refused" and rows["rt-evil"]["activation"]["reason"] == HOSTILE

        async with http.get(url + "fleet") as response:
            page = await response.text()
            assert response.status == 200 and "script-src 'self'" in response.headers["Content-Security-Policy"]
        assert "<script>alert" not in page and ESCAPED in page
        assert "data-runtime='rt-t-int-1'" in page and "/api/stream?view=fleet" in page

        history = await get_json(http, url + "api/history?outcome=success&channel=canary&since=1h")
        assert [r["release_id"] for r in history["rows"]] == ["r1"]
        # the rows of `kxr release list --json` (services/reads/history.py), read from the log the service
        # had folded before the dashboard started (the history is read whole, then followed)
        from services.reads.shapes import ReleaseSummary

        assert ReleaseSummary.model_validate(history["rows"][0]).outcome == "success"
        assert history["rows"][0]["stages"] == {"passed": 2, "total": 2}
        assert (await get_json(http, url + "api/history?outcome=rolled_back"))["rows"] == []
        assert "outcome" in (await get_json(http, url + "api/history?outcome=%3Cb%3E", 400))["error"]
        async with http.get(url + "history?outcome=%3Cb%3E") as response:
            assert response.status == 400 and "<b>" not in await response.text()
        async with http.get(url + "history?channel=prod/canary") as response:
            assert "href='/releases/r1'" in await response.text()
        # a dashboard started once r1 has ended (its follower caught up first): the history is read from the log
        async with dashboard_of(svc) as (late_url, _):
            late = await get_json(http, late_url + "api/history?outcome=success")
            assert late["rows"] == history["rows"], late

        series = (await get_json(http, url + "api/releases/r1"))["series"]
        assert [w["stage"] for w in series["windows"]] == [1, 2] and series["note"] is None
        rate = series["metrics"][0]
        assert rate["metric"] == "error_rate" and set(rate["runtimes"]) == {"rt-t-int-1", "rt-tenant-42"}
        async with http.get(url + "releases/r1") as response:
            page = await response.text()
        assert page.count('<svg class="series"') == 2 and "<details><summary>" in page


async def test_a_dashboard_that_may_not_read_health_says_so(as_role):  # noqa: F811 (the fixture)
    from services.dashboard.server import dashboard
    from services.reads.follower import Follower

    auditor = await as_role("auditor")
    subjects, js = as_role.authed.subjects, auditor.js
    follower = Follower(js, subjects)
    follow = asyncio.create_task(follower.run())
    try:
        await follower.catch_up()
        async with dashboard(follower, js, subjects, "127.0.0.1", 0) as url, aiohttp.ClientSession() as http:

            async def refused():
                body = await get_json(http, url + "api/fleet")
                return body if body["problem"] else None

            body = await eventually(refused, "that the fleet is not readable")
            assert "not readable by this dashboard's NATS user" in body["problem"] and body["rows"] == []
            async with http.get(url + "fleet") as response:
                page = await response.text()
            assert "id='fleet-problem'" in page and "no runtime has reported" not in page
    finally:
        follow.cancel()
        await asyncio.gather(follow, return_exceptions=True)
