"""Operator actions in the dashboard (services/dashboard/actions.py), over plain HTTP.

The NATS server runs the generated least-privilege users, as embedded `kxr serve` starts it
(tests/security/conftest.py `start_authed`): the service runs as the service user, the
runtimes as the runtime user, and the dashboard's login is the operator's user and
password, so NATS itself grants or refuses each action.
"""

from __future__ import annotations

import asyncio
import html
import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import nats

from events.channel import ChannelConfig
from events.model import Event
from events.service_signing import ServiceKeys
from events.signing import SigningKey
from services.actions.producer import configure_channel, push_pack, request_release
from services.app import App
from services.bootstrap import start_service
from services.dashboard.server import dashboard_for
from services.dashboard.session import COOKIE
from services.jetstream.log import EventLog
from services.jetstream.log_reads import log_entries
from services.runtime.sdk import Identity
from services.runtime.simulation import simulated_runtime
from services.settings import ROLES as CONSUMERS
from services.settings import Settings
from services.tasks import cancel_and_wait
from tests.harness import (
    CHANNEL,
    OPERATOR,
    PRODUCER,
    make_pack,
    request_data,
    running_service,
    trust_root_for,
    wait_for,
)
from tests.security.conftest import Authed, start_authed, stop_authed

SLOW = {**CHANNEL, "monitoring": {**CHANNEL["monitoring"], "window_s": 120}}  # in flight while the test acts
BOUND_S = 60  # upper bounds for the service to get somewhere, not measured speeds


@dataclass
class Stack:
    authed: Authed
    app: App
    conns: list = field(default_factory=list)
    tasks: list[asyncio.Task] = field(default_factory=list)
    producer_key: SigningKey = field(default_factory=SigningKey.generate)

    def password(self, role: str) -> str:
        return self.authed.creds[role].password

    def user(self, role: str) -> str:
        return self.authed.creds[role].user  # `<prefix>-operator`, as `kxr creds show operator` names it

    async def connect(self, role: str):
        nc = await nats.connect(self.authed.url, name=f"test-{role}", **self.authed.creds[role].connect_options())
        self.conns.append(nc)
        return nc

    async def request(
        self, release_id: str, version: str = "1.0.0", monitoring: dict | None = None, until: str = "monitoring"
    ) -> None:
        """A release as the producer user; by default it stays in its first monitoring window for two
        minutes. `monitoring`: the request's own; `until`: the phase to wait for."""
        producer = await self.connect("producer")
        js, s = producer.jetstream(timeout=10), self.authed.subjects
        pack = make_pack(version, self.producer_key)
        await push_pack(js, s, pack.body, pack.manifest, pack.digest)
        extra = {"monitoring": monitoring} if monitoring else {}
        await request_release(
            EventLog(producer, js, s), release_id, request_data(pack, rollback={"strategy": "none"}, **extra), PRODUCER
        )
        await wait_for(
            lambda: (r := self.app.follower.world.release(release_id)) is not None and r.phase == until,
            BOUND_S,
            f"release {release_id} {until}",
            lambda: self.app.follower.world.release(release_id),
        )

    async def events(self, release_id: str) -> list[Event]:
        """The release's events as stored in the log (read with the auditor's user)."""
        auditor = await self.connect("auditor")
        js, s = auditor.jetstream(timeout=10), self.authed.subjects
        return [event async for _, _, event in log_entries(js, s, [s.release_filter(release_id)]) if event]


@asynccontextmanager
async def authed_service(data_dir: Path) -> AsyncIterator[Stack]:
    """A service as the service user, two simulated runtimes as the runtime user, a configured channel."""
    authed, lock = start_authed(data_dir, prefix="p" + uuid.uuid4().hex[:10], runtimes=())
    stack: Stack | None = None
    try:
        service_key = SigningKey.generate()
        svc = await nats.connect(authed.url, name="kxr-serve", **authed.creds["service"].connect_options())
        app = App(
            svc,
            Settings(nats_url=authed.url, prefix=authed.prefix),
            trust_root_for(stack_key := SigningKey.generate()),
            signer=service_key,
        )
        stack = Stack(authed, app, [svc], producer_key=stack_key)
        await start_service(app, CONSUMERS)
        operator = await stack.connect("operator")
        await configure_channel(
            EventLog(operator, operator.jetstream(timeout=10), authed.subjects),
            operator.jetstream(timeout=10),
            "prod",
            "canary",
            ChannelConfig.model_validate(SLOW),
            OPERATOR,
        )
        runtime_nc = await stack.connect("runtime")
        for i, tenant in enumerate(("t-int-1", "tenant-42")):
            rt = simulated_runtime(
                runtime_nc,
                Identity("prod", "canary", tenant, f"rt-{tenant}"),
                app.trust_root,
                {},
                prefix=authed.prefix,
                interval=0.1,
                seed=i,
                service_keys=ServiceKeys.of(service_key, list(CONSUMERS)),
            )
            await rt.resolve_cohort()
            stack.tasks.append(asyncio.create_task(rt.run()))
        yield stack
    finally:
        if stack is not None:
            await cancel_and_wait(stack.tasks)
            await stack.app.stop()
            for nc in reversed(stack.conns):
                await nc.close()
        stop_authed(authed, lock)


def csrf_of(page: str) -> str:
    found = re.search(r"name='csrf' value='([^']+)'", page)
    assert found, f"no CSRF token in the page:\n{page[:2000]}"
    return found.group(1)


def flash_of(page: str) -> str | None:
    found = re.search(r"id='flash' class='flash (?:ok|fail)' role='(?:status|alert)'>([^<]*)<", page)
    return html.unescape(found.group(1)) if found else None


class Browser:
    """An HTTP client that keeps the dashboard's cookie (aiohttp's jar refuses cookies of a bare IP)."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url = http, url
        self.cookie: str | None = None

    def _headers(self, extra: dict | None) -> dict:
        headers = {"Cookie": f"{COOKIE}={self.cookie}"} if self.cookie else {}
        return {**headers, **(extra or {})}

    def _keep(self, response: aiohttp.ClientResponse) -> None:
        if COOKIE in response.cookies:
            morsel = response.cookies[COOKIE]
            assert morsel["httponly"] and morsel["samesite"] == "Strict" and morsel["path"] == "/", morsel.output()
            self.cookie = morsel.value or None

    async def get(self, path: str, status: int = 200, headers: dict | None = None) -> str:
        async with self.http.get(self.url + path.lstrip("/"), headers=self._headers(headers)) as response:
            text = await response.text()
            assert response.status == status, (response.status, text[:500])
            self._keep(response)
            return text

    async def post(self, path: str, form: dict, status: int = 303, headers: dict | None = None) -> str:
        async with self.http.post(
            self.url + path.lstrip("/"), data=form, headers=self._headers(headers), allow_redirects=False
        ) as response:
            text = await response.text()
            assert response.status == status, (response.status, text[:500])
            self._keep(response)
            return response.headers.get("Location", text)

    async def login(self, user: str, password: str, status: int = 303) -> str:
        csrf = csrf_of(await self.get("/login?next=/"))
        return await self.post("/login", {"csrf": csrf, "user": user, "password": password, "next": "/"}, status)


@asynccontextmanager
async def dashboard(stack: Stack, actions: bool = True) -> AsyncIterator[Callable[[], Browser]]:
    async with (
        dashboard_for(stack.app, ("127.0.0.1", 0), actions=actions) as url,
        aiohttp.ClientSession() as http,
    ):
        assert url is not None
        yield lambda: Browser(http, url)


async def test_read_only_unless_started_with_actions(tmp_path):
    async with authed_service(tmp_path) as stack, dashboard(stack, actions=False) as browser:
        b = browser()
        page = await b.get("/")
        assert "Read-only" in page and "/login" not in page
        assert "form-action 'none'" in (await stack_headers(b, "/"))["Content-Security-Policy"]
        await b.get("/login", status=404)
        # no such routes: read-only mode has no login and no action to post to
        await b.post("/login", {"user": stack.user("operator"), "password": stack.password("operator")}, status=404)
        await b.post("/actions/releases/r1", {"action": "pause", "rationale": "x"}, status=404)
        await b.post("/", {"action": "pause"}, status=405)


async def test_login_csrf_and_pause_resume_as_the_operator(tmp_path):
    async with authed_service(tmp_path) as stack, dashboard(stack) as browser:
        await stack.request("r1")
        b = browser()
        pause = {"action": "pause", "rationale": "checking the error budget"}

        # no session, a foreign Host, a foreign Origin, a bad CSRF token: refused, nothing recorded
        await b.post("/actions/releases/r1", pause, status=403)
        page = await b.get("/releases/r1")
        assert "log in" in page and "id='do-pause'" not in page, "actions before login"
        csrf = csrf_of(await b.get("/login?next=/releases/r1"))
        await b.post(
            "/login", {"csrf": "x" + csrf, "user": stack.user("operator"), "password": stack.password("operator")}, 403
        )
        await b.post(
            "/login",
            {"csrf": csrf, "user": stack.user("operator"), "password": stack.password("operator")},
            403,
            headers={"Origin": "http://attacker.example"},
        )
        refused = await b.post("/login", {"csrf": csrf, "user": stack.user("operator"), "password": "wrong"}, 403)
        assert flash_of(refused) == "login refused: NATS said Authorization Violation", refused
        assert "wrong" not in refused.replace("wrong password", "")
        before = b.cookie
        assert (
            await b.post(
                "/login",
                {
                    "csrf": csrf,
                    "user": stack.user("operator"),
                    "password": stack.password("operator"),
                    "next": "/releases/r1",
                },
            )
            == "/releases/r1"
        )
        assert b.cookie and b.cookie != before, "the session id changes at login"

        page = await b.get("/releases/r1")
        assert "Signed in as" in page and "id='do-pause'" in page
        csrf = csrf_of(page)
        assert "form-action 'self'" in (await stack_headers(b, "/releases/r1"))["Content-Security-Policy"]
        await b.post("/actions/releases/r1", {**pause, "csrf": csrf[::-1]}, 403)
        await b.post("/actions/releases/r1", {**pause, "csrf": csrf}, 421, headers={"Host": "attacker.example"})
        assert not stack.app.follower.world.release("r1").paused

        # a rationale is required, as with kxr's -m
        assert (
            await b.post("/actions/releases/r1", {"action": "pause", "rationale": " ", "csrf": csrf}) == "/releases/r1"
        )
        assert flash_of(await b.get("/releases/r1")) == (
            "refused: a rationale is required: every operator decision is recorded with its reason"
        )

        await b.post("/actions/releases/r1", {**pause, "csrf": csrf})
        flash = flash_of(await b.get("/releases/r1"))
        assert flash and flash.startswith(f"release.paused recorded as {stack.user('operator')}@dashboard (log seq "), (
            flash
        )
        await wait_for(lambda: stack.app.follower.world.release("r1").paused, 10, "r1 paused")
        await b.post("/actions/releases/r1", {**pause, "csrf": csrf})
        assert flash_of(await b.get("/releases/r1")) == "refused: release r1 is already paused: nothing to pause"

        await b.post("/actions/releases/r1", {"action": "resume", "rationale": "budget fine", "csrf": csrf})
        assert (flash_of(await b.get("/releases/r1")) or "").startswith(
            f"release.resumed recorded as {stack.user('operator')}@dashboard (log seq "
        )
        await wait_for(lambda: not stack.app.follower.world.release("r1").paused, 10, "r1 resumed")

        decisions = [
            (e.type, e.actor.kind, e.actor.id, e.data.rationale)  # type: ignore[union-attr]
            for e in await stack.events("r1")
            if e.type in ("release.paused", "release.resumed")
        ]
        assert decisions == [
            ("release.paused", "operator", f"{stack.user('operator')}@dashboard", "checking the error budget"),
            ("release.resumed", "operator", f"{stack.user('operator')}@dashboard", "budget fine"),
        ]

        # logged out: the session (and its NATS connection) is gone, its cookie and token are worth nothing
        old_cookie = b.cookie
        assert await b.post("/logout", {"csrf": csrf}) == "/"
        b.cookie = old_cookie
        await b.post("/actions/releases/r1", {**pause, "csrf": csrf}, 403)


async def stack_headers(b: Browser, path: str) -> dict:
    async with b.http.get(b.url + path.lstrip("/"), headers=b._headers(None)) as response:
        return dict(response.headers)


async def test_nats_refuses_what_the_signed_in_user_may_not_do(tmp_path):
    async with authed_service(tmp_path) as stack, dashboard(stack) as browser:
        await stack.request("r1")
        b = browser()
        await b.login(stack.user("auditor"), stack.password("auditor"))  # a real user, that may publish nothing
        csrf = csrf_of(await b.get("/releases/r1"))
        await b.post("/actions/releases/r1", {"action": "pause", "rationale": "let me", "csrf": csrf})
        flash = flash_of(await b.get("/releases/r1"))
        assert flash and flash.startswith(f"refused: permission denied: NATS user {stack.user('auditor')}:"), flash
        assert "permissions violation for publish" in flash.lower(), flash
        await b.post("/actions/releases/r1", {"action": "annotate", "rationale": "me neither?", "csrf": csrf})
        flash = flash_of(await b.get("/releases/r1"))
        assert flash and "release.r1.annotated" in flash and flash.startswith("refused: permission denied"), flash
        assert not any(e.type == "release.paused" for e in await stack.events("r1"))


async def test_pin_unpin_and_annotate_from_the_dashboard(tmp_path):
    async with authed_service(tmp_path) as stack, dashboard(stack) as browser:
        await stack.request("r1")
        b = browser()
        await b.login(stack.user("operator"), stack.password("operator"))
        page = await b.get("/")
        assert "<option value='prod/canary/rest'>" in page and "id='do-pin'" in page
        csrf = csrf_of(page)
        operator = f"{stack.user('operator')}@dashboard"
        pin = {"csrf": csrf, "action": "pin", "scope": "prod/canary/rest", "version": "1.0.0", "until": "2h"}

        await b.post("/actions/scopes", {**pin, "rationale": ""})
        assert flash_of(await b.get("/")) == "refused: a pin needs a rationale"
        await b.post("/actions/scopes", {**pin, "until": "soon", "rationale": "freeze"})
        assert (
            flash_of(await b.get("/")) == "refused: until 'soon' is not an RFC 3339 time nor a duration like 12h or 7d"
        )
        await b.post("/actions/scopes", {**pin, "rationale": "freeze for the audit"})
        assert (flash_of(await b.get("/")) or "").startswith(f"scope.pinned recorded as {operator} (log seq ")
        await wait_for(
            lambda: stack.app.follower.world.scope("prod", "canary", "rest").pin is not None, 10, "rest pinned"
        )
        pinned = stack.app.follower.world.scope("prod", "canary", "rest").pin
        assert pinned is not None and pinned.rationale == "freeze for the audit" and pinned.by == operator

        await b.post(
            "/actions/scopes", {"csrf": csrf, "action": "unpin", "scope": "prod/canary/rest", "rationale": "done"}
        )
        assert (flash_of(await b.get("/")) or "").startswith(f"scope.unpinned recorded as {operator}")
        await wait_for(
            lambda: stack.app.follower.world.scope("prod", "canary", "rest").pin is None, 10, "rest unpinned"
        )

        # annotate takes a note or an incident link; rollback is refused with the lifecycle's reason before activation
        csrf = csrf_of(await b.get("/releases/r1"))
        link = "https://incidents.example/INC-7"
        await b.post("/actions/releases/r1", {"csrf": csrf, "action": "annotate", "rationale": "", "incident": link})
        assert (flash_of(await b.get("/releases/r1")) or "").startswith(f"release.annotated recorded as {operator}")
        await b.post("/actions/releases/r1", {"csrf": csrf, "action": "sideways", "rationale": "x"})
        assert (flash_of(await b.get("/releases/r1")) or "").startswith("refused: no action 'sideways'")
        annotated = [e for e in await stack.events("r1") if e.type == "release.annotated"]
        assert [(e.actor.id, e.data.incident) for e in annotated] == [(operator, link)]  # type: ignore[union-attr]


async def test_extend_then_close_a_held_release_from_the_dashboard(tmp_path):
    """A held release (an inconclusive window) has two ways on besides promote and rollback, as in kxr:
    `extend` (a new window, no shorter than the channel's) and `close --outcome failed|aborted`."""
    async with authed_service(tmp_path) as stack, dashboard(stack) as browser:
        operator_nc = await stack.connect("operator")
        s = stack.authed.subjects
        quick = {**SLOW, "monitoring": {**SLOW["monitoring"], "window_s": 1}}  # windows of a second
        await configure_channel(
            EventLog(operator_nc, operator_nc.jetstream(timeout=10), s),
            operator_nc.jetstream(timeout=10),
            "prod",
            "canary",
            ChannelConfig.model_validate(quick),
            OPERATOR,
        )
        await wait_for(
            lambda: stack.app.follower.world.channel_config("prod", "canary").monitoring.window_s == 1,
            BOUND_S,
            "the one-second channel configuration",
        )
        # more samples than a one-second window holds: inconclusive, held for an operator
        await stack.request("r1", monitoring={"window_s": 1, "min_samples": 100000}, until="held")
        b = browser()
        await b.login(stack.user("operator"), stack.password("operator"))
        page = await b.get("/releases/r1")
        assert "id='do-extend'" in page and "id='do-close'" in page and "<option value='aborted'>" in page
        csrf = csrf_of(page)
        operator = f"{stack.user('operator')}@dashboard"

        async def act(form: dict) -> str:
            await b.post("/actions/releases/r1", {**form, "csrf": csrf})
            return flash_of(await b.get("/releases/r1")) or ""

        extend = {"action": "extend", "rationale": "gather more samples"}
        assert await act({**extend, "window": "soon"}) == (
            "refused: extend needs the new window in seconds (1 to 31536000), got 'soon'"
        )
        assert (await act({**extend, "window": "2"})).startswith(f"release.monitoring_started recorded as {operator}")
        await wait_for(lambda: stack.app.follower.world.release("r1").phase != "held", 10, "r1 monitoring again")
        # kxr's own refusal, word for word: only a held release can be closed by hand
        refused = await act({"action": "close", "outcome": "failed", "rationale": "x"})
        assert refused.startswith("refused: release r1 is monitoring: only a held release") or refused.startswith(
            "refused: release r1 is held"  # the two-second window may already be judged again
        ), refused
        await wait_for(lambda: stack.app.follower.world.release("r1").phase == "held", BOUND_S, "r1 held again")
        assert (await act({"action": "close", "outcome": "sideways", "rationale": "no"})).startswith(
            "refused: --outcome must be one of failed, aborted"
        )
        assert (await act({"action": "close", "outcome": "aborted", "rationale": "not worth the wait"})).startswith(
            f"release.closed recorded as {operator}"
        )
        # the service keeps a closed release as a tombstone (its outcome)
        await wait_for(lambda: "r1" in stack.app.follower.world.tombstones, 10, "r1 closed")
        assert stack.app.follower.world.tombstones["r1"].outcome == "aborted"

        # the same events, permissions and actor as kxr's: the operator's user, as <user>@dashboard
        decisions = [(e.type, e.actor.kind, e.actor.id) for e in await stack.events("r1") if e.actor.kind == "operator"]
        assert decisions == [
            ("release.monitoring_started", "operator", operator),
            ("release.closed", "operator", operator),
        ]
        closed = [e for e in await stack.events("r1") if e.type == "release.closed"][-1]
        assert closed.data.outcome == "aborted" and "not worth the wait" in closed.data.summary  # type: ignore[attr-defined]


@asynccontextmanager
async def web_stack(
    nats_url: str, prefix: str, actions: bool = False, host: str = "127.0.0.1", origin: str | None = None
) -> AsyncIterator[tuple[str, Callable[[], Browser], aiohttp.ClientSession]]:
    """A service with no consumers on the suite's nats-server (no users: any user and password sign in,
    tests/security/test_dashboard_tls_login.py) and its dashboard, as `kxr serve --ui HOST:0 [--ui-actions]
    [--ui-origin ORIGIN]`: its URL, a browser factory and the HTTP client. Enough for the web rules alone."""
    async with (
        running_service(nats_url, prefix, roles=()) as svc,
        dashboard_for(svc.app, (host, 0), actions=actions, origin=origin) as url,
        aiohttp.ClientSession() as http,
    ):
        assert url is not None
        yield url, (lambda: Browser(http, url)), http
