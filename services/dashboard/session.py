"""Login sessions of the dashboard's operator actions: in memory, each holding its own NATS connection.

A session is created when a browser opens the login page (so the login form carries a
CSRF token too) and becomes signed in when the user's NATS credentials open a connection.
Anyone can open the login page (any site can make a browser fetch it), so those anonymous
sessions have a cap of their own: however many, they never push out a signed-in session.
The password goes to that connection and nowhere else: it is not kept here, not logged,
and a session ends (logout, expiry) by closing its connection. Cookies carry a random id
only (HttpOnly, SameSite=Strict); forms carry the session's CSRF token, compared in
constant time.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

COOKIE = "kxr_session"
IDLE_S = 30 * 60.0  # a session unused this long ends
MAX_AGE_S = 12 * 3600.0  # and any session after this long, used or not
MAX_SESSIONS = 512  # anonymous login-page sessions are cheap to create: the oldest of them go first
MAX_SIGNED_IN = 64  # signed-in sessions, each with a NATS connection: the least recently used goes first


@dataclass
class Denials:
    """Permission violations NATS reported on a session's connection: how many, and the last one."""

    count: int = 0
    last: str = ""


@dataclass
class Session:
    sid: str
    csrf: str
    created: float
    used: float
    user: str | None = None  # the NATS user, once signed in
    nc: Any = None  # its NATS connection (nats.aio.client.Client), once signed in
    flash: str | None = None  # the last action's one-line result, shown once
    denied: Denials = field(default_factory=Denials)  # permission violations the server reported on nc

    @property
    def signed_in(self) -> bool:
        return self.user is not None and self.nc is not None

    def csrf_ok(self, token: str | None) -> bool:
        return hmac.compare_digest(self.csrf.encode(), (token or "").encode())


class Sessions:
    """The live sessions, in two tables of their own: anonymous (login page) and signed in, each
    capped and ordered by last use, so creating one of a kind only ever ends one of that kind."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, idle_s: float = IDLE_S) -> None:
        self._clock = clock
        self._idle_s = idle_s
        self._anonymous: OrderedDict[str, Session] = OrderedDict()
        self._signed_in: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._anonymous) + len(self._signed_in)

    def _expired(self, session: Session, now: float) -> bool:
        return now - session.used > self._idle_s or now - session.created > MAX_AGE_S

    def cookie_max_age(self, session: Session) -> int:
        """Seconds the browser should keep the session's cookie: the idle limit, or less near the absolute one
        (the server enforces both whatever the browser keeps)."""
        left = MAX_AGE_S - (self._clock() - session.created)
        return max(0, int(min(self._idle_s, left)))

    async def get(self, sid: str | None) -> Session | None:
        """The live session of that id (its last use now), else None; an expired one is ended."""
        if not sid:
            return None
        table = self._signed_in if sid in self._signed_in else self._anonymous
        session = table.get(sid)
        if session is None:
            return None
        now = self._clock()
        if self._expired(session, now):
            await self.end(session)
            return None
        session.used = now
        table.move_to_end(sid)
        return session

    async def _add(self, table: OrderedDict[str, Session], cap: int) -> Session:
        while len(table) >= cap:
            await self.end(next(iter(table.values())))
        now = self._clock()
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now, now)
        table[session.sid] = session
        return session

    async def new(self) -> Session:
        """An anonymous session (the login form's); beyond MAX_SESSIONS the oldest anonymous one ends."""
        return await self._add(self._anonymous, MAX_SESSIONS)

    async def sign_in(self, old: Session, user: str, nc) -> Session:
        """A fresh id and token for the signed-in session (the pre-login id is never promoted); beyond
        MAX_SIGNED_IN the least recently used signed-in session ends."""
        await self.end(old)
        session = await self._add(self._signed_in, MAX_SIGNED_IN)
        session.user, session.nc = user, nc
        return session

    async def end(self, session: Session) -> None:
        self._anonymous.pop(session.sid, None)
        self._signed_in.pop(session.sid, None)
        nc, session.nc, session.user = session.nc, None, None
        if nc is not None:
            try:
                await nc.close()
            except Exception:  # a connection already gone is ended all the same
                pass

    async def end_all(self) -> None:
        for session in [*self._anonymous.values(), *self._signed_in.values()]:
            await self.end(session)
