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


async def test_the_oldest_sessions_go_first_beyond_the_cap(monkeypatch):
    monkeypatch.setattr(session_mod, "MAX_SESSIONS", 3)
    sessions = Sessions()
    nc = FakeConnection()
    first = await sessions.sign_in(await sessions.new(), "kx-operator", nc)
    for _ in range(3):
        await sessions.new()
    assert len(sessions) == 3 and nc.closed and await sessions.get(first.sid) is None


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
    for bad in ("soon", "2026-12-06T00:00:00", "-5h", ""):
        with pytest.raises(ValueError):
            parse_until(bad, now)
    actor = actor_of("kx-operator")
    assert (actor.kind, actor.id) == ("operator", "kx-operator@dashboard")
