"""services/jetstream/watchdog.py `flooding`: which connections sent more than the limit since last seen."""

from __future__ import annotations

from datetime import UTC, datetime

from services.jetstream.watchdog import (
    ACCOUNT_LIMIT_ENV,
    DEFAULT_ACCOUNT_LIMIT,
    DEFAULT_LIMIT,
    flooding,
    limit_from_env,
)

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC).timestamp()


def conn(cid: int, in_msgs: int, started_s_ago: float = 100.0) -> dict:
    start = datetime.fromtimestamp(NOW - started_s_ago, UTC).isoformat().replace("+00:00", "Z")
    return {"cid": cid, "in_msgs": in_msgs, "start": start}


def test_a_connection_is_judged_by_its_rate_since_last_seen_or_since_it_started():
    before = {1: (NOW - 2, 1_000), 2: (NOW - 2, 500_000)}
    flood, seen = flooding(
        before,
        [
            conn(1, 1_000 + 30_000),  # 15,000/s in the last 2 s: over
            conn(2, 500_000 + 10),  # a busy past, quiet now: not
            conn(3, 50_000, started_s_ago=2),  # new: 25,000/s since it started: over at first sight
            conn(4, 50_000, started_s_ago=3600),  # new to the watchdog, long lived, ~14/s: not
            conn(5, 0, started_s_ago=0),  # just connected: no time to judge
        ],
        NOW,
        10_000,
    )
    assert [(cid, round(rate)) for cid, rate in flood] == [(1, 15_000), (3, 25_000)]
    assert seen == {1: (NOW, 31_000), 2: (NOW, 500_010), 3: (NOW, 50_000), 4: (NOW, 50_000), 5: (NOW, 0)}


def test_a_connection_gone_is_forgotten_and_a_start_it_cannot_read_is_not_judged():
    flood, seen = flooding({9: (NOW - 2, 0)}, [{"cid": 7, "in_msgs": 10**9, "start": "not a time"}], NOW, 10.0)
    assert flood == [] and seen == {7: (NOW, 10**9)}


def test_many_connections_each_under_the_limit_are_judged_together_busiest_first():
    """Each sends under the 10,000/s a connection may; together over the account's 20,000/s: the busiest
    go until the rest are under it, and the quiet ones stay."""
    before = {cid: (NOW - 2, 0) for cid in range(1, 7)}
    rates = {1: 9_000, 2: 3_000, 3: 8_000, 4: 7_000, 5: 5, 6: 2}  # 27,007/s together
    flood, _ = flooding(before, [conn(cid, 2 * rate) for cid, rate in rates.items()], NOW, 10_000, 20_000)
    assert [(cid, round(rate)) for cid, rate in flood] == [(1, 9_000)]  # 18,007/s left: under
    flood, _ = flooding(before, [conn(cid, 2 * rate) for cid, rate in rates.items()], NOW, 10_000, 5_000)
    assert [cid for cid, _ in flood] == [1, 3, 4]  # 3,007/s left
    # one over its own limit goes first, and its rate does not count again toward the account's
    flood, _ = flooding(before, [conn(1, 2 * 12_000), conn(2, 2 * 6_000)], NOW, 10_000, 8_000)
    assert [cid for cid, _ in flood] == [1]


def test_the_limits_are_settings():
    assert limit_from_env({}) == DEFAULT_LIMIT
    assert limit_from_env({"KX_FLOOD_MSGS_PER_S": "2500"}) == 2500.0
    for bad in ("lots", "0", "-5", "nan"):
        assert limit_from_env({"KX_FLOOD_MSGS_PER_S": bad}) == DEFAULT_LIMIT
    account = {"name": ACCOUNT_LIMIT_ENV, "default": DEFAULT_ACCOUNT_LIMIT}
    assert limit_from_env({}, **account) == DEFAULT_ACCOUNT_LIMIT == 50_000
    assert limit_from_env({ACCOUNT_LIMIT_ENV: "80000"}, **account) == 80_000.0
