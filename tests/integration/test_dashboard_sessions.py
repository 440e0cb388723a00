"""Dashboard login sessions (services/dashboard/session.py, actions.py) as a browser keeps them:
anonymous login pages never push out a signed-in session, and a signed-in operator's cookie lasts as
long as the server keeps the session (renewed on use; the server still ends it idle or too old)."""

from __future__ import annotations

import asyncio

from services.dashboard.session import COOKIE, IDLE_S, MAX_SESSIONS
from tests.integration.test_dashboard_actions import csrf_of, web_stack


async def test_anonymous_login_pages_never_sign_out_an_operator(nats_url, prefix):
    """Any web page the operator opens can make the browser fetch /login (an <img>: no cookie is sent,
    SameSite=Strict), each fetch a new anonymous session; more than MAX_SESSIONS of them ended the
    oldest session of any kind: the operator's, and its NATS connection."""
    async with web_stack(nats_url, prefix, actions=True) as (url, browser, http):
        operator = browser()
        await operator.login("kx-operator", "any")
        assert "Signed in as" in await operator.get("/")

        async def anonymous() -> None:
            # what <img src="http://127.0.0.1:8080/login"> on another site makes the browser send
            async with http.get(url + "login", headers={"Sec-Fetch-Site": "cross-site"}) as response:
                assert response.status == 200
                await response.read()

        for _ in range(0, 2 * MAX_SESSIONS, 64):
            await asyncio.gather(*(anonymous() for _ in range(64)))
        # a session ends with its NATS connection (Sessions.end): still signed in, still connected
        assert "Signed in as" in await operator.get("/"), "the operator was signed out by anonymous requests to /login"


async def test_a_signed_in_operators_cookie_is_renewed_while_in_use(nats_url, prefix):
    """The cookie was set for IDLE_S at login and never again: the browser dropped it 30 minutes after
    login however busy the operator was, while the server kept the session alive."""
    async with web_stack(nats_url, prefix, actions=True) as (url, browser, http):
        b = browser()
        # anonymous pages get no renewal: only the login page sets their cookie
        async with http.get(url + "fleet") as response:
            assert COOKIE not in response.cookies
        await b.login("kx-operator", "any")
        signed_in = {"Cookie": f"{COOKIE}={b.cookie}"}
        renewed = {}
        for path in ("", "fleet", "history"):
            async with http.get(url + path, headers=signed_in) as response:
                await response.read()
                renewed[path] = response.cookies.get(COOKIE)
        csrf = csrf_of(await b.get("/"))
        async with http.post(
            url + "actions/scopes",
            data={"csrf": csrf, "action": "unpin", "scope": "prod/canary/rest", "rationale": "r"},
            headers=signed_in,
            allow_redirects=False,
        ) as response:
            assert response.status == 303
            renewed["POST actions/scopes"] = response.cookies.get(COOKIE)
        for where, morsel in renewed.items():
            assert morsel is not None, f"{where}: the signed-in session's cookie is not renewed"
            assert morsel.value == b.cookie and int(morsel["max-age"]) == int(IDLE_S), (where, morsel.output())
            assert morsel["httponly"] and morsel["samesite"] == "Strict" and morsel["path"] == "/", morsel.output()
        # logged out, the cookie is deleted, not renewed
        async with http.post(url + "logout", data={"csrf": csrf}, headers=signed_in, allow_redirects=False) as response:
            assert response.status == 303 and response.cookies[COOKIE]["max-age"] == "0"
        async with http.get(url, headers=signed_in) as response:
            assert COOKIE not in response.cookies and "Signed in as" not in await response.text()
