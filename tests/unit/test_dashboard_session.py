"""Dashboard login sessions (services/dashboard/session.py) and the action routes' small rules (actions.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.dashboard import session as session_mod
from services.dashboard.actions import _safe_next, actor_of, parse_until
from services.dashboard.session import Sessions


class FakeConnection:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_sign_in_rotates_the_id_and_token_and_logout_closes_the_connection():
    sessions = Sessions()
    anonymous = await sessions.new()
    assert not anonymous.signed_in and anonymous.csrf_ok(anonymous.csrf) and not anonymous.csrf_ok(None)
    assert not anonymous.csrf_ok(anonymous.csrf[:-1]) and not anonymous.csrf_ok("")
    nc = FakeConnection()
    signed = await sessions.sign_in(anonymous, "kx-operator", nc)
    assert signed.signed_in and signed.sid != anonymous.sid and signed.csrf != anonymous.csrf
    assert await sessions.get(anonymous.sid) is None, "the pre-login id is not promoted"
    assert await sessions.get(signed.sid) is signed
    await sessions.end(signed)
    assert nc.closed and await sessions.get(signed.sid) is None and not signed.signed_in


async def test_idle_and_absolute_expiry_end_the_session_and_its_connection():
    clock = Clock()
    sessions = Sessions(clock=clock, idle_s=60)
    nc = FakeConnection()
    s = await sessions.sign_in(await sessions.new(), "kx-operator", nc)
    clock.now += 59
    assert await sessions.get(s.sid) is s  # used: the idle clock starts again
    clock.now += 59
    assert await sessions.get(s.sid) is s
    clock.now += 61
    assert await sessions.get(s.sid) is None and nc.closed

    nc2 = FakeConnection()
    s2 = await sessions.sign_in(await sessions.new(), "kx-operator", nc2)
    for _ in range(int(session_mod.MAX_AGE_S // 50) + 1):  # busy all along, still ends at MAX_AGE_S
        clock.now += 50
        if await sessions.get(s2.sid) is None:
            break
    assert nc2.closed and clock.now - 1000 >= session_mod.MAX_AGE_S


async def test_anonymous_sessions_beyond_their_cap_end_only_anonymous_ones(monkeypatch):
    """Anyone can open the login page: however many do, a signed-in session (and its NATS connection) stays."""
    monkeypatch.setattr(session_mod, "MAX_SESSIONS", 3)
    sessions = Sessions()
    nc = FakeConnection()
    first = await sessions.sign_in(await sessions.new(), "kx-operator", nc)
    oldest = await sessions.new()
    for _ in range(10):
        await sessions.new()
    assert len(sessions) == 4 and not nc.closed and await sessions.get(first.sid) is first
    assert await sessions.get(oldest.sid) is None


async def test_signed_in_sessions_beyond_their_cap_end_the_least_recently_used(monkeypatch):
    monkeypatch.setattr(session_mod, "MAX_SIGNED_IN", 2)
    sessions = Sessions()
    a, b, c = FakeConnection(), FakeConnection(), FakeConnection()
    first = await sessions.sign_in(await sessions.new(), "u1", a)
    second = await sessions.sign_in(await sessions.new(), "u2", b)
    assert await sessions.get(first.sid) is first  # used: now the second is the least recently used
    await sessions.sign_in(await sessions.new(), "u3", c)
    assert b.closed and await sessions.get(second.sid) is None
    assert not a.closed and await sessions.get(first.sid) is first and len(sessions) == 2


def test_the_cookie_lasts_the_idle_limit_and_never_past_the_absolute_one():
    clock = Clock()
    sessions = Sessions(clock=clock, idle_s=60)
    session = session_mod.Session("sid", "csrf", clock.now, clock.now)
    assert sessions.cookie_max_age(session) == 60
    clock.now += session_mod.MAX_AGE_S - 20
    assert sessions.cookie_max_age(session) == 20
    clock.now += 30
    assert sessions.cookie_max_age(session) == 0


@pytest.mark.parametrize(
    ("asked", "kept"),
    [
        ("/", "/"),
        ("/releases/r-1.2", "/releases/r-1.2"),
        ("//evil.example/", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("/releases/../../x", "/"),
        (None, "/"),
    ],
)
def test_after_login_only_a_page_of_the_dashboard(asked, kept):
    assert _safe_next(asked) == kept


def test_until_as_kxr_pin_takes_it_and_the_dashboard_actor():
    now = datetime(2026, 12, 5, tzinfo=UTC)
    assert parse_until("12h", now) == now + timedelta(hours=12)
    assert parse_until("2026-12-06T00:00:00Z", now) == now + timedelta(days=1)
    for bad in ("soon", "2026-12-06T00:00:00", "-5h", "", "²h", "١٢h"):
        with pytest.raises(ValueError):
            parse_until(bad, now)
    # past datetime's range (or int()'s digit limit): one line, not an OverflowError
    for far in ("2999999d", "9" * 5000 + "m"):
        with pytest.raises(ValueError, match=r"^until '.*' is out of range \(a duration up to year 9999\)$"):
            parse_until(far, now)
    actor = actor_of("kx-operator")
    assert (actor.kind, actor.id) == ("operator", "kx-operator@dashboard")
