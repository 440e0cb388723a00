"""The dashboard's HTTP side (aiohttp): pages, JSON, and a server-sent-events stream.

GET only by default: the dashboard never writes to the log (decisions go through `kxr`,
with the operator's own NATS user). With actions on (`make_app(..., actions_server=URL)`,
actions.py), POST reaches the login and action routes only, each behind a session and
its CSRF token; forms may then post to this origin (CSP form-action 'self').
Every response forbids inline scripts, framing and any origin but this one, an unexpected
error included (a 500 of one line); with a loopback bind, requests naming another Host than
a loopback name, the bound address or the public origin's are refused, so a web page cannot
reach the dashboard through DNS rebinding.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from events.tokens import InvalidToken, check_token
from projections.evidence import EvidenceRecord
from services.reads.fleet import fleet_rows
from services.reads.history import OUTCOMES
from services.reads.live_view import release_view, window_view
from services.settings import Connection
from services.web_hosts import LOOPBACK_HOSTS, host_only

from . import actions, model, pages
from .assets import CSS, JS
from .hub import LiveHub

log = logging.getLogger(__name__)

HUB = web.AppKey("hub", LiveHub)
STREAMS = web.AppKey("streams", set)
KEEPALIVE_S = 15.0  # an SSE comment this often lets proxies and the server notice a gone browser
COALESCE_S = 0.2  # after a change, let the rest of a burst land: one render per burst, not per event
# Live views open at once: each holds a task rendering its page after every change to the log, so
# without a cap anyone who reaches the port (off loopback, without a proxy's own limit) makes the
# service render without bound. Far above what a team's browsers hold (one per open tab).
MAX_STREAMS = 256
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def _guard(allowed_hosts: frozenset[str] | None, headers: dict[str, str] = SECURITY_HEADERS):
    """Every response carries SECURITY_HEADERS: pages, JSON, refusals (421), the router's own 404
    and 405, which aiohttp raises as exceptions past the code after `handler`, and the 500 of an
    error no handler expected (aiohttp's own would go out without them)."""

    @web.middleware
    async def guard(request: web.Request, handler) -> web.StreamResponse:
        try:
            if allowed_hosts is not None and host_only(request.host).lower() not in allowed_hosts:
                response: web.StreamResponse = web.Response(
                    status=421, text=f"this dashboard answers to {', '.join(sorted(allowed_hosts))} only\n"
                )
            else:
                response = await handler(request)
        except web.HTTPException as exc:
            kept = {
                k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")
            }  # e.g. Allow
            response = web.Response(
                status=exc.status, reason=exc.reason, text=exc.text or f"{exc.status}: {exc.reason}", headers=kept
            )
        except Exception:  # a bug: logged whole, the browser gets one line (no traceback)
            log.exception("dashboard: %s %s failed", request.method, request.path)
            response = web.Response(status=500, text="500: the dashboard failed on this request (see its log)\n")
        if not response.prepared:  # a stream sent its headers (these included) already
            response.headers.update(headers)
        return response

    return guard


def _release_id(request: web.Request) -> str | None:
    """The id in the path if it is a valid token the log has seen, else None (a 404)."""
    try:
        release_id = check_token(request.match_info.get("release_id") or request.query.get("release", ""), "release_id")
    except InvalidToken:
        return None
    return release_id if request.app[HUB].world.known(release_id) else None


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(value, indent=2, sort_keys=True, default=str), content_type="application/json"
    )


async def overview_of(hub: LiveHub) -> dict[str, Any]:
    # one immutable fold for the whole page, with the newest closed releases whole (tombstoned ones read back)
    world, now = await hub.world_with(*model.recent_closed(hub.world, hub.stirred)), hub.clock()
    windows = {}
    for release in world.releases_in_flight():
        record = await hub.evidence(release.release_id)
        windows[release.release_id] = window_view(release, record, now, hub.samples(release), world) if record else None
    return model.overview(world, now, windows)


async def release_of(hub: LiveHub, release_id: str) -> tuple[dict[str, Any], EvidenceRecord]:
    """`live_view.release_view` of the release (the caller checked the log names it) and its evidence record."""
    record = await hub.evidence(release_id)
    world = await hub.world_with(release_id)
    release = world.release(release_id)
    assert record is not None and release is not None
    view = release_view(world, record, now=hub.clock(), stored_samples=hub.samples(release))
    assert view is not None
    return view, record


async def overview_page(request: web.Request) -> web.Response:
    sections = pages.overview_sections(await overview_of(request.app[HUB]))
    extra, banner = await actions.page_extras(request)
    return web.Response(
        text=pages.page("Konnaxion Releases", "/api/stream", {**sections, **extra}, banner=banner),
        content_type="text/html",
    )


async def release_page(request: web.Request) -> web.Response:
    release_id = _release_id(request)
    if release_id is None:
        return web.Response(
            status=404, text=pages.not_found_page("No release by that id in the log."), content_type="text/html"
        )
    base = await release_sections_of(request.app[HUB], release_id)
    stream = f"/api/stream?release={release_id}"  # a checked token: nothing to escape in a URL
    extra, banner = await actions.page_extras(request, release_id)
    sections = {"summary": base["summary"], **extra, **base}  # the actions (if any) right under "Now"
    return web.Response(
        text=pages.page(f"Release {release_id}", stream, sections, back=True, banner=banner),
        content_type="text/html",
    )


async def series_of(hub: LiveHub, record: EvidenceRecord) -> dict[str, Any]:
    """The release's windows as time series per runtime (`model.window_series`)."""
    return model.window_series(list(record.windows), await hub.window_samples(record))


async def release_sections_of(hub: LiveHub, release_id: str) -> dict[str, str]:
    view, record = await release_of(hub, release_id)
    return pages.release_sections(view, record, await series_of(hub, record))


def fleet_of(hub: LiveHub) -> dict[str, Any]:
    tail = hub.fleet
    rows = fleet_rows(tail.fleet, hub.world, hub.clock(), hub.pack_versions) if tail.problem is None else []
    return {
        "at": hub.clock().isoformat(),
        "ready": tail.ready,
        "problem": tail.problem,
        "rows": rows,
        "unattributed": tail.fleet.unattributed,
    }


async def history_of(hub: LiveHub, query) -> dict[str, Any]:
    """Raises model.FilterError on a filter that does not parse."""
    return await hub.history_rows(model.parse_filter(query, hub.clock()))


def _filters(query) -> dict[str, str | None]:
    return {k: (query.get(k) or "").strip() or None for k in ("channel", "outcome", "since")}


async def history_sections(hub: LiveHub, query) -> dict[str, str]:
    history = await history_of(hub, query)
    return {
        "filters": pages.history_filters(_filters(query), history["channels"], OUTCOMES),
        "history": pages.history_section(history),
    }


async def fleet_page(request: web.Request) -> web.Response:
    sections = {"fleet": pages.fleet_section(fleet_of(request.app[HUB]))}
    banner = await actions.banner_only(request, "/fleet")
    return web.Response(
        text=pages.page("Fleet", "/api/stream?view=fleet", sections, back=True, banner=banner),
        content_type="text/html",
    )


async def history_page(request: web.Request) -> web.Response:
    try:
        sections = await history_sections(request.app[HUB], request.query)
    except model.FilterError as exc:
        return web.Response(
            status=400,
            text=pages.page("Bad filter", "", {"missing": pages.bad_filter(str(exc))}, back=True),
            content_type="text/html",
        )
    stream = "/api/stream?" + urlencode({"view": "history", **{k: v for k, v in _filters(request.query).items() if v}})
    banner = await actions.banner_only(request, "/history")
    return web.Response(
        text=pages.page("Release history", stream, sections, back=True, banner=banner), content_type="text/html"
    )


async def fleet_json(request: web.Request) -> web.Response:
    return _json(fleet_of(request.app[HUB]))


async def history_json(request: web.Request) -> web.Response:
    try:
        return _json(await history_of(request.app[HUB], request.query))
    except model.FilterError as exc:
        return _json({"error": str(exc)}, 400)


async def overview_json(request: web.Request) -> web.Response:
    return _json(await overview_of(request.app[HUB]))


async def release_json(request: web.Request) -> web.Response:
    release_id = _release_id(request)
    if release_id is None:
        return _json({"error": "no release by that id in the log"}, 404)
    hub = request.app[HUB]
    view, record = await release_of(hub, release_id)
    return _json({"view": view, "evidence": record.to_json(), "series": await series_of(hub, record)})


async def health(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    return _json({"ok": True, "log_seq": hub.seq, "health_samples_problem": hub.health_note})


async def stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the page's sections now, then again after every change to the log."""
    hub = request.app[HUB]
    release_id = None
    view = request.query.get("view")
    if "release" in request.query:
        release_id = _release_id(request)
        if release_id is None:
            return _json({"error": "no release by that id in the log"}, 404)
    elif view == "history":
        try:
            model.parse_filter(request.query, hub.clock())
        except model.FilterError as exc:
            return _json({"error": str(exc)}, 400)
    elif view not in (None, "fleet"):
        return _json({"error": "view: fleet or history"}, 400)
    if len(request.app[STREAMS]) >= MAX_STREAMS:  # the page says it is not live (dashboard.js)
        busy = _json({"error": f"{MAX_STREAMS} live views are open already: try again later"}, 503)
        busy.headers["Retry-After"] = "30"
        return busy
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no", **SECURITY_HEADERS}
    )
    await response.prepare(request)
    request.app[STREAMS].add(asyncio.current_task())
    try:
        while True:
            seen = hub.version
            if release_id is not None:
                sections = await release_sections_of(hub, release_id)
            elif view == "fleet":
                sections = {"fleet": pages.fleet_section(fleet_of(hub))}
            elif view == "history":
                sections = await history_sections(hub, request.query)
            else:
                sections = pages.overview_sections(await overview_of(hub))
            update = {"seq": hub.seq, "now": hub.clock().isoformat(), "sections": sections}
            await response.write(f"event: sections\ndata: {json.dumps(update)}\n\n".encode())
            while not await hub.wait_newer(seen, KEEPALIVE_S):
                await response.write(b": keepalive\n\n")
            await asyncio.sleep(COALESCE_S)
    except (ConnectionResetError, asyncio.CancelledError):
        return response  # the browser left, or the dashboard is stopping
    except Exception:  # after its headers went out: end the stream (the browser reconnects), never a 2nd answer
        log.exception("dashboard: the stream %s failed", request.path_qs)
        return response
    finally:
        request.app[STREAMS].discard(asyncio.current_task())


def _asset(body: str, content_type: str):
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=body, content_type=content_type)

    return handler


async def _end_streams(app: web.Application) -> None:
    streams = app[
        STREAMS
    ]  # a name first: inside list(...) mypy infers the key's type from list's argument and refuses it
    for task in list(streams):
        task.cancel()


def make_app(
    hub: LiveHub,
    allowed_hosts: frozenset[str] | None = LOOPBACK_HOSTS,
    actions_server: Connection | None = None,
    origin: str | None = None,
) -> web.Application:
    """`allowed_hosts`: Host header values answered, without port (None: any, for a deliberate
    non-loopback bind).

    `actions_server`: the NATS server (and TLS options, no identity) signed-in operators act through
    (None: read-only). `origin`: the public origin browsers reach the dashboard at, behind a proxy
    (`--ui-origin`): the one form posts must come from, and `https://` makes the cookie Secure."""
    headers = SECURITY_HEADERS
    if actions_server is not None:
        csp = headers["Content-Security-Policy"].replace("form-action 'none'", "form-action 'self'")
        # a browser's Origin on a form post is "null" under no-referrer; same-origin still tells no other site
        headers = {**headers, "Content-Security-Policy": csp, "Referrer-Policy": "same-origin"}
    app = web.Application(middlewares=[_guard(allowed_hosts, headers)], client_max_size=actions.MAX_FORM_BYTES)
    app[HUB] = hub
    app[STREAMS] = set()
    app.on_shutdown.append(_end_streams)
    app.router.add_get("/", overview_page)
    app.router.add_get("/releases/{release_id}", release_page)
    app.router.add_get("/api/overview", overview_json)
    app.router.add_get("/api/releases/{release_id}", release_json)
    app.router.add_get("/api/stream", stream)
    app.router.add_get("/fleet", fleet_page)
    app.router.add_get("/history", history_page)
    app.router.add_get("/api/fleet", fleet_json)
    app.router.add_get("/api/history", history_json)
    app.router.add_get("/healthz", health)
    app.router.add_get("/assets/dashboard.css", _asset(CSS, "text/css"))
    app.router.add_get("/assets/dashboard.js", _asset(JS, "text/javascript"))
    if actions_server is not None:
        actions.register(app, hub, actions_server, origin)
    return app
