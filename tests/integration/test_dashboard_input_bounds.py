"""Input the dashboard refuses in one line, whatever its size or script: a history filter is a 400
(README, Dashboard: "A filter that does not parse is one line and a 400"), an action a flash of
"refused: …" after the post/redirect/get, never a bare 500. A duration past datetime's range
(`2999999d`) made `timedelta` raise OverflowError, and `str.isdigit()` takes '²', which `int()` refuses."""

from __future__ import annotations

from services.dashboard.web import SECURITY_HEADERS
from tests.integration.test_dashboard_actions import csrf_of, flash_of, web_stack


async def test_a_history_since_out_of_datetime_range_is_a_400_with_the_security_headers(nats_url, prefix):
    async with web_stack(nats_url, prefix) as (url, _b, http):
        for path in (
            "api/history?since=2999999d",
            "history?since=2999999d",
            "api/stream?view=history&since=99999999999h",
            "api/history?since=" + "9" * 5000 + "d",  # past int()'s digit limit: a ValueError of another text
            "api/history?since=%C2%B2d",  # '²d'
        ):
            async with http.get(url + path) as response:
                body = await response.text()
                assert response.status == 400, (path, response.status, body[:300])
                for name, value in SECURITY_HEADERS.items():
                    assert response.headers.get(name) == value, (path, name, response.headers.get(name))
        async with http.get(url + "api/history?since=2999999d") as response:
            assert (await response.json()) == {
                "error": "since '2999999d': out of range (a duration back to year 1 at most)"
            }


async def test_a_pin_until_out_of_range_is_refused_in_one_line(nats_url, prefix):
    async with web_stack(nats_url, prefix, actions=True) as (_u, browser, _h):
        b = browser()
        await b.login("kx-operator", "any")  # a server without users: any name and password sign in
        csrf = csrf_of(await b.get("/"))
        pin = {"csrf": csrf, "action": "pin", "scope": "prod/canary/rest", "version": "1.0.0", "rationale": "r"}
        assert await b.post("/actions/scopes", {**pin, "until": "2999999d"}) == "/"
        assert flash_of(await b.get("/")) == "refused: until '2999999d' is out of range (a duration up to year 9999)"
        await b.post("/actions/scopes", {**pin, "until": "²d"})
        assert flash_of(await b.get("/")) == (
            "refused: until '²d' is not an RFC 3339 time nor a duration like 12h or 7d"
        )


async def test_an_extend_window_in_other_digits_is_refused_in_one_line(nats_url, prefix):
    async with web_stack(nats_url, prefix, actions=True) as (_u, browser, _h):
        b = browser()
        await b.login("kx-operator", "any")
        csrf = csrf_of(await b.get("/"))
        for window in ("²", "١٢", "9" * 5000):
            extend = {"csrf": csrf, "action": "extend", "rationale": "r", "window": window}
            assert await b.post("/actions/releases/r1", extend) == "/releases/r1"
            assert flash_of(await b.get("/")) == (
                f"refused: extend needs the new window in seconds (1 to 31536000), got {window!r}"
            )


async def test_live_views_past_the_cap_are_a_503_and_one_let_go_is_one_someone_may_open(nats_url, prefix, monkeypatch):
    """Each live view holds a task rendering its page after every change: without a cap, anyone who reaches
    the port makes the service render without bound (an outside review: "/api/stream unlimited")."""
    import asyncio

    import aiohttp

    from services.dashboard import web

    monkeypatch.setattr(web, "MAX_STREAMS", 3)
    async with web_stack(nats_url, prefix) as (url, _b, http):
        async with aiohttp.ClientSession() as other:
            opened = [await other.get(url + "api/stream") for _ in range(3)]
            try:
                assert [r.status for r in opened] == [200, 200, 200]
                async with http.get(url + "api/stream?view=fleet") as refused:
                    assert refused.status == 503 and refused.headers["Retry-After"] == "30"
                    assert (await refused.json()) == {"error": "3 live views are open already: try again later"}
                    for name, value in SECURITY_HEADERS.items():
                        assert refused.headers.get(name) == value, name
                opened.pop().close()  # a browser leaves: the server notices and lets another one in
                for _ in range(100):
                    async with http.get(url + "api/stream") as again:
                        if again.status == 200:
                            break
                    await asyncio.sleep(0.05)
                assert again.status == 200
            finally:
                for response in opened:
                    response.close()
