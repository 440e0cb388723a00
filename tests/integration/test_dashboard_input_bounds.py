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
