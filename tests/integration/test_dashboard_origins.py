"""The Host check (web.py `_guard`, server.allowed_hosts) and the Origin check (actions.py `_same_origin`)
in the deployments the README describes: another loopback address, and a TLS proxy in front of the
dashboard named with `--ui-origin`. A cross-site POST stays refused in every one of them."""

from __future__ import annotations

from tests.integration.test_dashboard_actions import csrf_of, flash_of, web_stack

PUBLIC = "https://dash.example"
# what a TLS-terminating proxy forwards: the browser's Host, and how it was reached (never trusted for the check)
PROXIED = {"Host": "dash.example", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "dash.example"}
# a form post of the page https://dash.example, as a browser sends it (Chromium: Origin and Sec-Fetch-Site)
SAME_SITE = {"Origin": PUBLIC, "Sec-Fetch-Site": "same-origin"}


async def test_a_dashboard_bound_to_another_loopback_address_answers_its_own_url(nats_url, prefix):
    """`kxr ui --host 127.0.0.2` is a loopback bind: the Host check applied with only 127.0.0.1, ::1 and
    localhost allowed, so the dashboard answered 421 to the very URL it printed."""
    async with web_stack(nats_url, prefix, host="127.0.0.2") as (url, _b, http):
        assert url.startswith("http://127.0.0.2:")
        async with http.get(url + "healthz") as response:
            assert response.status == 200, (response.status, await response.text())
        async with http.get(url + "healthz", headers={"Host": "rebound.example"}) as response:
            assert response.status == 421  # a DNS-rebinding page's Host is refused as before


async def test_behind_a_tls_proxy_login_and_actions_work_and_the_cookie_is_secure(nats_url, prefix):
    """README: bound to anything but loopback, "put a TLS proxy in front" and name it with --ui-origin.
    Without it the browser's `Origin: https://dash.example` never matched the `http://` aiohttp sees:
    every POST, the login first, was refused as coming "from another site"."""
    async with web_stack(nats_url, prefix, actions=True, host="0.0.0.0", origin=PUBLIC) as (_u, browser, _h):
        b = browser()
        csrf = csrf_of(await b.get("/login?next=/", headers=PROXIED))
        form = {"csrf": csrf, "user": "kx-operator", "password": "any", "next": "/"}
        # cross-site: another origin, the same host over plain http, or a browser that says so: refused
        for foreign in (
            {"Origin": "https://attacker.example", "Sec-Fetch-Site": "cross-site"},
            {"Origin": "http://dash.example", "Sec-Fetch-Site": "same-origin"},
            {"Origin": "https://dash.example.attacker.example"},
            {"Origin": "null"},
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site"},
        ):
            refused = await b.post("/login", form, status=403, headers={**PROXIED, **foreign})
            assert refused == "refused: this request comes from another site\n", (foreign, refused)
        async with b.http.post(
            b.url + "login", data=form, headers=b._headers({**PROXIED, **SAME_SITE}), allow_redirects=False
        ) as response:
            assert response.status == 303 and response.headers["Location"] == "/", await response.text()
            cookie = response.cookies["kxr_session"]
            assert cookie["secure"] and cookie["httponly"] and cookie["samesite"] == "Strict", cookie.output()
            b.cookie = cookie.value
        page = await b.get("/", headers=PROXIED)
        assert "Signed in as <b id='user'>kx-operator</b>" in page
        csrf = csrf_of(page)
        unpin = {"csrf": csrf, "action": "unpin", "scope": "prod/canary/rest", "rationale": "r"}
        await b.post("/actions/scopes", unpin, status=403, headers={**PROXIED, "Origin": "https://attacker.example"})
        assert await b.post("/actions/scopes", unpin, headers={**PROXIED, **SAME_SITE}) == "/"
        # past the origin, session and CSRF checks: decided, and refused by the pin rules (nothing is pinned)
        assert flash_of(await b.get("/", headers=PROXIED)) == "refused: prod/canary/rest is not pinned"


async def test_a_proxy_that_rewrites_the_host_to_loopback_still_logs_in(nats_url, prefix):
    """A proxy on the same machine that passes `Host: 127.0.0.1:PORT` on (nginx's default): the request
    names no public host at all, so only the declared origin tells what the browser's Origin is. The
    loopback bind also answers the public host (a proxy that passes it on), and nothing else."""
    async with web_stack(nats_url, prefix, actions=True, origin=PUBLIC) as (url, browser, http):
        b = browser()
        csrf = csrf_of(await b.get("/login?next=/"))
        form = {"csrf": csrf, "user": "kx-operator", "password": "any", "next": "/"}
        await b.post("/login", form, status=403, headers={"Origin": url.rstrip("/")})  # not the origin browsers see
        assert await b.post("/login", form, headers=SAME_SITE) == "/"
        assert "Signed in as <b id='user'>kx-operator</b>" in await b.get("/")
        async with http.get(url + "healthz", headers={"Host": "dash.example"}) as response:
            assert response.status == 200
        async with http.get(url + "healthz", headers={"Host": "rebound.example"}) as response:
            assert response.status == 421


async def test_without_its_public_origin_a_proxied_post_is_refused_with_the_way_out(nats_url, prefix):
    """No --ui-origin: the browser's https origin is not the http one aiohttp sees; still refused (an
    X-Forwarded-Proto anyone can send is never believed), with the option that fixes it in the reason."""
    async with web_stack(nats_url, prefix, actions=True, host="0.0.0.0") as (_u, browser, _h):
        b = browser()
        csrf = csrf_of(await b.get("/login?next=/", headers=PROXIED))
        form = {"csrf": csrf, "user": "kx-operator", "password": "any", "next": "/"}
        refused = await b.post("/login", form, status=403, headers={**PROXIED, **SAME_SITE})
        assert refused == (
            "refused: this request comes from another site "
            "(behind a TLS proxy? start the dashboard with --ui-origin https://dash.example)\n"
        )
