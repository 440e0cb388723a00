"""Operator actions from the dashboard: pause, resume, abort, promote, extend, rollback, close, annotate,
pin, unpin.

Only with `kxr ui --actions` / `kxr serve --ui ADDR --ui-actions`, and only once signed in
with a NATS user and password (the operator's, as `kxr creds show operator` prints them).
Each action is decided by the very functions `kxr` uses (services/actions/operator.py,
the pinner's pin/unpin) on the dashboard's fold, caught up with the log first, and
appended with the same expected sequence on the signed-in user's own NATS connection: the
server grants exactly that user's permissions, and a stale decision is refused, never
misapplied. The actor is `<user>@dashboard`.

Every POST needs the session cookie (HttpOnly, SameSite=Strict) and the session's CSRF
token from the form, and is refused if it names another origin than the dashboard's (its
public one, `--ui-origin`, behind a proxy); the Host check of web.py applies before all of
it. A signed-in session's cookie is renewed on every response to its use (the server ends
it idle or too old all the same). A result (or the one-line reason of a refusal) is shown once on
the page the browser is sent back to (post/redirect/get).
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from nats.aio.client import Client

from events.model import Actor, Scope
from events.tokens import InvalidToken, check_token
from projections.world import World
from services.actions import operator as ops
from services.actions.pins import pin as pin_action
from services.actions.pins import unpin as unpin_action
from services.errors import OperatorError
from services.jetstream.log import AppendConflict, AppendFailed, Entry, EventLog
from services.permissions import inbox_for_user
from services.settings import ConfigError, Connection, Identity

from . import pages
from .hub import LiveHub
from .session import COOKIE, Denials, Session, Sessions

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3
LOGIN_CONNECT_BOUND_S = 10.0  # a login's connection, retries included
APPEND_TIMEOUT_S = 5.0
CATCH_UP_S = 10.0  # the fold must hold everything stored before an action is decided on it
MAX_FORM_BYTES = 16 * 1024
MAX_WINDOW_S = 365 * 86400  # an extension's window (the form's bound; kxr takes any positive)
LOGIN_REFUSED_PAUSE_S = 0.5  # each refused login costs the guesser this long


@dataclass
class Actions:
    """What the action routes share: the hub (the fold), the sessions, and where to connect: the server
    and its TLS options as kxr resolves them (services/settings.connection_from), without an identity."""

    hub: LiveHub
    server: Connection
    sessions: Sessions
    origin: str | None = None  # the public origin browsers see (`--ui-origin`, behind a proxy); None: as reached


ACTIONS = web.AppKey("actions", Actions)
USED = web.RequestKey("session", Session)  # the live session a request used: its cookie is renewed


def actor_of(user: str) -> Actor:
    """The actor recorded for a dashboard action: the NATS user, and that it came from the dashboard."""
    return Actor(kind="operator", id=f"{user}@dashboard")


def _safe_next(path: str | None) -> str:
    """Only a path of this dashboard (never `//host` or a scheme): no open redirect after login."""
    if path and re.fullmatch(r"/(releases/[A-Za-z0-9._~%-]{1,200}|fleet|history)?", path):
        return path
    return "/"


def own_origin(request: web.Request) -> str:
    """This dashboard's origin as the browser sees it: the public one when given (a TLS proxy in front
    makes the browser's `https://dash.example` of a request aiohttp gets as `http://127.0.0.1:8080`),
    else the scheme and Host of the request itself. Never taken from X-Forwarded-*: anyone can send those."""
    return request.app[ACTIONS].origin or f"{request.scheme}://{request.host}"


def _same_origin(request: web.Request) -> bool:
    """A browser names the page a POST came from; it must be this dashboard (SameSite=Strict says so too)."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != own_origin(request):
        return False
    return request.headers.get("Sec-Fetch-Site", "same-origin") in ("same-origin", "none")


def _proxy_hint(request: web.Request) -> str:
    """What to do when the Origin is this very Host over another scheme: a TLS proxy in front, undeclared."""
    origin = request.headers.get("Origin") or ""
    if request.app[ACTIONS].origin is None and origin.startswith("https://") and origin[8:] == request.host:
        return f" (behind a TLS proxy? start the dashboard with --ui-origin {origin})"
    return ""


async def _session(request: web.Request) -> Session | None:
    session = await request.app[ACTIONS].sessions.get(request.cookies.get(COOKIE))
    if session is not None:
        request[USED] = session
    return session


def _set_cookie(response: web.StreamResponse, request: web.Request, session: Session) -> None:
    """The session's cookie, kept by the browser as long as the server would keep the session unused;
    `Secure` when the browser reaches the dashboard over HTTPS (directly, or its public origin says so)."""
    actions = request.app[ACTIONS]
    response.set_cookie(
        COOKIE,
        session.sid,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure or own_origin(request).startswith("https://"),
        max_age=actions.sessions.cookie_max_age(session),
    )


@web.middleware
async def _renew_cookie(request: web.Request, handler) -> web.StreamResponse:
    """A signed-in session's cookie again on each response to its use: the browser keeps it while the
    operator works (set at login alone, it lapsed IDLE_S later however busy). Not when the response
    sets it itself (login, logout), nor on a stream (its headers are out)."""
    response = await handler(request)
    session = request.get(USED)
    if session is not None and session.signed_in and not response.prepared and COOKIE not in response.cookies:
        _set_cookie(response, request, session)
    return response


async def _checked_post(request: web.Request) -> tuple[Session, Any]:
    """The session and form of a POST, or 403 with one line: another origin, no session, a bad CSRF token."""
    if not _same_origin(request):
        raise web.HTTPForbidden(text=f"refused: this request comes from another site{_proxy_hint(request)}\n")
    session = await _session(request)
    if session is None:
        raise web.HTTPForbidden(text="refused: no session (open /login first, or it expired)\n")
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        raise web.HTTPForbidden(text="refused: form too large\n")
    form = await request.post()
    token = form.get("csrf")
    if not session.csrf_ok(token if isinstance(token, str) else None):
        raise web.HTTPForbidden(text="refused: bad or missing CSRF token (reload the page)\n")
    return session, form


def _text(form, name: str) -> str:
    value = form.get(name, "")
    return value if isinstance(value, str) else ""


def parse_until(text: str, now: datetime) -> datetime:
    """As `kxr pin --until`: RFC 3339 with a timezone, or a duration from now (90m, 12h, 7d)."""
    units = {"m": 60, "h": 3600, "d": 86400}
    number = text[:-1]
    if text and text[-1] in units and number.isascii() and number.isdigit():  # isdigit alone takes '²'
        try:
            return now + timedelta(seconds=int(number) * units[text[-1]])
        except (OverflowError, ValueError):  # past year 9999 (datetime's range), or past int()'s digit limit
            raise ValueError(f"until {text!r} is out of range (a duration up to year 9999)") from None
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"until {text!r} is not an RFC 3339 time nor a duration like 12h or 7d") from None
    if at.tzinfo is None:
        raise ValueError("until needs a timezone (e.g. a trailing Z)")
    return at


def _back(to: str) -> web.Response:
    """303 to a page of this dashboard (returned, not raised: the guard rebuilds raised ones without cookies)."""
    return web.Response(status=303, headers={"Location": to}, text=f"see {to}\n")


# ---- login, logout ----------------------------------------------------------------------------------------


async def login_page(request: web.Request) -> web.Response:
    session = await _session(request) or await request.app[ACTIONS].sessions.new()
    next_path = _safe_next(request.query.get("next"))
    response = web.Response(text=pages.login_page(session.csrf, next_path), content_type="text/html")
    _set_cookie(response, request, session)
    return response


def login_connection(server: Connection, user: str, password: str) -> Connection:
    """The server and TLS options the dashboard connects with (CA, client certificate: `--tls-*`,
    KX_TLS_*, a context), as `user`: what `kxr --tls-… ` would open for that user."""
    # the operator's user receives replies on its own inbox prefix only (docs/permissions.md)
    identity = Identity("dashboard login", user=user, password=password, inbox_prefix=inbox_for_user(user))
    return replace(server, identity=identity)


async def _open_connection(server: Connection, user: str, password: str, denied: Denials) -> Client:
    """A NATS connection as `user`; raises with the server's reason (the password is in no message)."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        text = str(exc).strip().removeprefix("nats:").strip().strip("'\"") or exc.__class__.__name__
        errors.append(text)
        if "permissions violation" in text.lower():
            denied.count, denied.last = denied.count + 1, text

    options = login_connection(server, user, password).connect_options()  # ConfigError: an unusable TLS file
    nc = Client()
    try:
        # bounded: nats-py can wait forever on a TLS handshake that never completes (a server that
        # requires TLS, reached without it)
        async with asyncio.timeout(LOGIN_CONNECT_BOUND_S):
            await nc.connect(
                servers=[server.url or ""],
                **options,
                name="kxr-ui-actions",
                error_cb=on_error,
                connect_timeout=CONNECT_TIMEOUT_S,
                allow_reconnect=True,
                max_reconnect_attempts=3,
                reconnect_time_wait=0.5,  # type: ignore[arg-type]  # nats-py annotates int; it sleeps this float
            )
    except TimeoutError:
        try:
            await nc.close()
        except Exception:  # never connected: nothing to close
            pass
        raise ConnectionError(f"no answer from {server.url} within {LOGIN_CONNECT_BOUND_S:.0f} s") from None
    except Exception as exc:
        try:
            await nc.close()
        except Exception:  # never connected: nothing to close
            pass
        reason = next((e for e in errors if "authorization" in e.lower()), None) or errors[-1] if errors else str(exc)
        raise ConnectionError(reason or exc.__class__.__name__) from None
    return nc


async def login(request: web.Request) -> web.Response:
    actions = request.app[ACTIONS]
    session, form = await _checked_post(request)
    user, password = _text(form, "user").strip(), _text(form, "password")
    next_path = _safe_next(_text(form, "next"))
    if not user or not password:
        return _login_refused(request, session, next_path, "login refused: a NATS user and its password are needed")
    denied = Denials()
    try:
        nc = await _open_connection(actions.server, user, password, denied)
    except ConfigError as exc:  # the dashboard's own TLS files: its operator's to fix, not the user's password
        log.warning("dashboard login for NATS user %r cannot connect: %s", user, exc)
        return _login_refused(request, session, next_path, f"login refused: {exc}")
    except ConnectionError as exc:
        log.warning("dashboard login refused for NATS user %r: %s", user, exc)  # never the password
        await asyncio.sleep(LOGIN_REFUSED_PAUSE_S)
        return _login_refused(request, session, next_path, f"login refused: NATS said {exc}")
    del password
    signed_in = await actions.sessions.sign_in(session, user, nc)
    signed_in.denied = denied
    log.info("dashboard: %s signed in", user)
    response = _back(next_path)
    _set_cookie(response, request, signed_in)
    return response


def _login_refused(request: web.Request, session: Session, next_path: str, message: str) -> web.Response:
    response = web.Response(
        status=403, text=pages.login_page(session.csrf, next_path, message), content_type="text/html"
    )
    _set_cookie(response, request, session)
    return response


async def logout(request: web.Request) -> web.Response:
    session, _ = await _checked_post(request)
    user = session.user
    await request.app[ACTIONS].sessions.end(session)
    if user:
        log.info("dashboard: %s signed out", user)
    response = _back("/")
    response.del_cookie(COOKIE, path="/", httponly=True, samesite="Strict")
    return response


# ---- the actions ----------------------------------------------------------------------------------------


async def _signed_in(request: web.Request) -> tuple[Session, Any]:
    session, form = await _checked_post(request)
    if not session.signed_in:
        raise web.HTTPForbidden(text="refused: log in first (/login)\n")
    return session, form


async def _record(actions: Actions, session: Session, build, world_of) -> str:
    """Decide on the fold caught up with the log (`await world_of()`: the part a decision reads whole,
    LiveHub.world_with / pin_world), append on the user's connection; the one-line result."""
    hub = actions.hub
    try:
        await hub.follower.catch_up(CATCH_UP_S)
        world = await world_of()
    except Exception as exc:
        return f"refused: the dashboard could not catch up with the log ({exc.__class__.__name__}); retry"
    try:
        event, expected, expected_filter = build(world, hub.clock(), hub.subjects)
    except OperatorError as exc:
        return f"refused: {exc}"
    nc = session.nc
    if nc is None or not nc.is_connected:
        return "refused: the NATS connection of this session is gone; log out and in again"
    log_ = EventLog(nc, nc.jetstream(timeout=APPEND_TIMEOUT_S), hub.subjects, timeout=APPEND_TIMEOUT_S)
    seen = session.denied.count
    append = asyncio.ensure_future(log_.append(Entry(event, expected, expected_filter)))
    # a publish NATS refuses gets no answer at all, only an error on the connection: stop waiting at that
    while not append.done() and session.denied.count == seen:
        await asyncio.wait({append}, timeout=0.05)
    if not append.done():
        append.cancel()
        await asyncio.gather(append, return_exceptions=True)
        return f"refused: permission denied: NATS user {session.user}: {session.denied.last}"
    try:
        seq = append.result()
    except AppendConflict:
        return "refused: the log moved while this action was decided; look again and retry"
    except AppendFailed as exc:
        return f"refused: {exc}"
    log.info("dashboard: %s recorded %s (log seq %d)", session.user, event.type, seq)
    return f"{event.type} recorded as {event.actor.id} (log seq {seq})"


async def release_action(request: web.Request) -> web.Response:
    actions = request.app[ACTIONS]
    session, form = await _signed_in(request)
    try:
        release_id = check_token(request.match_info["release_id"], "release_id")
    except InvalidToken:
        raise web.HTTPNotFound(text="no release by that id\n") from None
    what, rationale = _text(form, "action"), _text(form, "rationale")
    actor = actor_of(session.user or "")
    incident = _text(form, "incident").strip() or None
    trigger = _text(form, "trigger") or "operator"
    outcome = _text(form, "outcome").strip()

    def extend(w, now):
        window = _text(form, "window").strip()
        # ASCII digits, and few: str.isdigit() also takes '²', which int() refuses
        if not re.fullmatch(r"[0-9]{1,12}", window) or not 1 <= int(window) <= MAX_WINDOW_S:
            raise OperatorError(f"extend needs the new window in seconds (1 to {MAX_WINDOW_S}), got {window!r}")
        return ops.extend(w, release_id, int(window), rationale, actor, now)

    deciders = {
        "pause": lambda w, now: ops.pause(w, release_id, rationale, actor, now),
        "resume": lambda w, now: ops.resume(w, release_id, rationale, actor, now),
        "abort": lambda w, now: ops.abort(w, release_id, rationale, actor, now),
        "promote": lambda w, now: ops.promote(w, release_id, rationale, actor, now),
        "extend": extend,
        "rollback": lambda w, now: ops.rollback(w, release_id, trigger, rationale, actor, now),
        "close": lambda w, now: ops.close(w, release_id, outcome, rationale, actor, now),
        "annotate": lambda w, now: ops.annotate(w, release_id, rationale, incident, actor, now),
    }
    decide = deciders.get(what)
    if decide is None:
        session.flash = f"refused: no action {what!r} (one of {', '.join(deciders)})"
    else:

        def build(world, now, subjects):
            action = decide(world, now)
            return action.event, action.expected_seq, subjects.release_filter(release_id)

        session.flash = await _record(actions, session, build, lambda: actions.hub.world_with(release_id))
    return _back(f"/releases/{release_id}")


async def scope_action(request: web.Request) -> web.Response:
    actions = request.app[ACTIONS]
    session, form = await _signed_in(request)
    what, rationale = _text(form, "action"), _text(form, "rationale")
    actor = actor_of(session.user or "")
    try:
        env, channel, cohort = (
            check_token(p, n)
            for p, n in zip(_text(form, "scope").split("/"), ("env", "channel", "cohort"), strict=True)
        )
    except (InvalidToken, ValueError):
        session.flash = "refused: pick a cohort (ENV/CHANNEL/COHORT)"
        return _back("/")
    scope = Scope(env=env, channel=channel, cohort=cohort)
    version: str | None = None
    if what == "pin":
        version, until = _text(form, "version").strip(), _text(form, "until").strip()

        def decide(world, now):
            try:
                at = parse_until(until, now)
            except ValueError as exc:
                raise OperatorError(str(exc)) from None
            return pin_action(world, scope, version, at, rationale, actor, now)

    elif what == "unpin":

        def decide(world, now):
            return unpin_action(world, scope, rationale, actor, now)

    else:
        session.flash = f"refused: no action {what!r} (pin or unpin)"
        return _back("/")

    def build(world, now, subjects):
        event, expected = decide(world, now)
        return event, expected, subjects.scope_filter(env, channel, cohort)

    session.flash = await _record(actions, session, build, lambda: actions.hub.pin_world(env, channel, version))
    return _back("/")


# ---- what web.py asks for its pages -------------------------------------------------------------------------


async def page_extras(request: web.Request, release_id: str | None = None) -> tuple[dict[str, str], str | None]:
    """Sections to add and the banner for a page: nothing in read-only mode (no `--actions`)."""
    actions = request.app.get(ACTIONS)
    if actions is None:
        return {}, None
    session = await _session(request)
    here = f"/releases/{release_id}" if release_id else "/"
    if session is None or not session.signed_in:
        return {}, pages.account_banner(None, None, None, here)
    flash, session.flash = session.flash, None
    banner = pages.account_banner(session.user, session.csrf, flash, here)
    if release_id is not None:
        return {"actions": pages.release_actions_section(release_id, session.csrf)}, banner
    return {"pins": pages.scope_actions_section(cohorts_of(actions.hub.world), session.csrf)}, banner


async def banner_only(request: web.Request, here: str) -> str | None:
    """The banner of a page with no action of its own (fleet, history): who is signed in, or a login link."""
    actions = request.app.get(ACTIONS)
    if actions is None:
        return None
    session = await _session(request)
    if session is None or not session.signed_in:
        return pages.account_banner(None, None, None, here)
    flash, session.flash = session.flash, None
    return pages.account_banner(session.user, session.csrf, flash, here)


def cohorts_of(world: World) -> list[str]:
    """Every cohort of every configured channel (pinnable before it ever ran a pack), and every scope seen."""
    cohorts = {"/".join(key) for key in world.scopes.keys()}
    for env, channel in world.channels.keys():
        cohorts.update(f"{env}/{channel}/{cohort}" for cohort in world.channel_config(env, channel).cohort_names)
    return sorted(cohorts)


async def _end_sessions(app: web.Application) -> None:
    await app[ACTIONS].sessions.end_all()


def register(app: web.Application, hub: LiveHub, server: Connection, origin: str | None = None) -> None:
    """Add the login and action routes (POST only on these) to the dashboard's app. `origin`: the public
    origin browsers reach it at (server.parse_origin); None: the one each request arrives at."""
    app[ACTIONS] = Actions(hub, server, Sessions(), origin)
    app.on_shutdown.append(_end_sessions)
    app.middlewares.append(_renew_cookie)  # inside web.py's guard: its security headers stay on every response
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_post("/actions/releases/{release_id}", release_action)
    app.router.add_post("/actions/scopes", scope_action)
