"""Release history (services/reads/history.py): the light fold, the filters and the summary (pure)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest

from services.reads.history import (
    IN_FLIGHT,
    INDEX_EVENTS,
    OUTCOMES,
    HistoryFold,
    check_outcome,
    fold_history,
    parse_since,
    select,
    summary,
    table_row,
)

from .test_projections import NOW, P0, P1, Log


def story() -> Log:
    """r0 success (two stages), r1 rolled back at stage 1, r2 rejected on another channel, r3 in flight."""
    log = Log()
    log.channel()
    log.two_stage_success("r0", P0)
    log.through_verified("r1")
    log.stage("r1", 0, ["internal"], outcome="failed")
    log.rollback_started("r1", {"internal": P0})
    log.rolled_back("r1", {"internal": P0})
    log.closed("r1", "rolled_back")
    log.requested("r2", target={"env": "prod", "channel": "stable"})
    log.add("release.rejected", {"reasons": [{"code": "accepts_request", "message": "no"}]}, release_id="r2")
    log.closed("r2", "rejected")
    log.through_verified("r3")
    log.stage("r3", 0, ["internal"])
    return log


def ids(items) -> list[str]:
    return [i.state.release_id for i in items]


def test_the_fold_keeps_each_release_as_the_world_folds_it_plus_when_it_closed() -> None:
    log = story()
    fold = fold_history(log.entries())
    world = log.world()
    assert set(fold.items) == {"r0", "r1", "r2", "r3"}
    for rid, item in fold.items.items():
        assert item.state == replace(world.release(rid), promotion_confirmed_by=None)
    closed_events = {e.release_id: e.occurred_at for e in log.events if e.type == "release.closed"}
    assert {rid: i.closed_at for rid, i in fold.items.items() if i.closed_at} == closed_events
    assert fold.items["r3"].closed_at is None
    # a replayed (overlapping) position changes nothing
    again = HistoryFold(dict(fold.items), fold.applied_seq)
    for position, event in log.entries():
        again.apply(position, event)
    assert again.items == fold.items


def test_newest_first_and_the_limit() -> None:
    fold = fold_history(story().entries())
    assert ids(fold.newest_first()) == ["r3", "r2", "r1", "r0"]
    assert ids(select(fold.items.values())) == ["r3", "r2", "r1", "r0"]
    assert ids(select(fold.items.values(), limit=2)) == ["r3", "r2"]


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        ("success", ["r0"]),
        ("rolled_back", ["r1"]),
        ("rejected", ["r2"]),
        ("in-flight", ["r3"]),
        ("aborted", []),
    ],
)
def test_the_outcome_filter(outcome: str, expected: list[str]) -> None:
    fold = fold_history(story().entries())
    assert ids(select(fold.items.values(), outcome=outcome)) == expected


def test_the_channel_filter() -> None:
    fold = fold_history(story().entries())
    assert ids(select(fold.items.values(), channel=("prod", "stable"))) == ["r2"]
    assert ids(select(fold.items.values(), channel=("prod", "canary"))) == ["r3", "r1", "r0"]
    assert ids(select(fold.items.values(), channel=("dev", "canary"))) == []


def test_since_keeps_releases_requested_or_still_open_since_then() -> None:
    log = story()
    fold = fold_history(log.entries())
    r2_requested = fold.items["r2"].state.requested_at
    assert ids(select(fold.items.values(), since=r2_requested)) == ["r3", "r2"]
    # just before r1 closed: r1 was still open then, r0 was not
    r1_closed = fold.items["r1"].closed_at
    assert ids(select(fold.items.values(), since=r1_closed - timedelta(seconds=1))) == ["r3", "r2", "r1"]
    # long after everything: only what is still in flight
    assert ids(select(fold.items.values(), since=NOW + timedelta(days=1))) == ["r3"]
    # filters combine
    assert ids(select(fold.items.values(), since=NOW, outcome="success", channel=("prod", "canary"))) == ["r0"]


def test_parse_since_takes_rfc3339_or_a_duration() -> None:
    assert parse_since("7d", NOW) == NOW - timedelta(days=7)
    assert parse_since("12h", NOW) == NOW - timedelta(hours=12)
    assert parse_since("30m", NOW) == NOW - timedelta(minutes=30)
    assert parse_since("90s", NOW) == NOW - timedelta(seconds=90)
    assert parse_since("2w", NOW) == NOW - timedelta(weeks=2)
    assert parse_since("2030-01-01T10:00:00Z", NOW) == NOW - timedelta(hours=2)
    assert parse_since("2030-01-01T13:00:00+01:00", NOW) == NOW
    for bad, why in [
        ("yesterday", "RFC 3339"),
        ("2030-01-01T10:00:00", "timezone"),
        ("-7d", "RFC 3339"),
        ("", "RFC 3339"),
        ("²d", "RFC 3339"),  # str.isdigit() takes '²', int() does not: not a duration
        ("2999999d", "out of range"),  # before year 1: an OverflowError of timedelta, as one line
        ("9" * 5000 + "s", "out of range"),  # past int()'s digit limit
    ]:
        with pytest.raises(ValueError, match=why):
            parse_since(bad, NOW)


def test_times_are_utc_with_z() -> None:
    from datetime import timezone

    from services.reads.history import rfc3339

    paris = timezone(timedelta(hours=1))
    assert rfc3339(NOW.astimezone(paris)) == "2030-01-01T12:00:00.000000Z" == rfc3339(NOW)
    assert rfc3339(None) is None


def test_check_outcome_names_the_choices() -> None:
    assert check_outcome("in-flight") == "in-flight" == check_outcome("in_flight")
    assert check_outcome("promoted_by_override") == "promoted_by_override"
    with pytest.raises(ValueError, match="expected one of success, promoted_by_override"):
        check_outcome("sucess")


def test_the_summary_shape() -> None:
    log = story()
    fold = fold_history(log.entries())
    r0 = summary(fold.items["r0"])
    assert r0 == {
        "release_id": "r0",
        "pack": {"name": "kb", "version": "0.9.0", "digest": P0["digest"]},
        "target": "prod/canary",
        "owner": "kb-team",
        "phase": "closed",
        "paused": False,
        "outcome": "success",
        "requested_at": r0["requested_at"],
        "closed_at": r0["closed_at"],
        "stages": {"passed": 2, "total": 2},
        "promoted_to": None,
        "promoted_from": None,
        "why": None,
        "seq": fold.items["r0"].first_seq,
    }
    assert r0["pack"]["digest"].startswith("sha256:")
    assert r0["requested_at"] < r0["closed_at"] and r0["closed_at"].endswith("Z")
    r1 = summary(fold.items["r1"])
    assert (r1["outcome"], r1["stages"], r1["why"].split(":")[0]) == (
        "rolled_back",
        {"passed": 0, "total": 2},
        "monitoring_failed",
    )
    r3 = summary(fold.items["r3"])
    assert (r3["outcome"], r3["closed_at"], r3["phase"], r3["stages"]) == (
        None,
        None,
        "passed",
        {"passed": 1, "total": 2},
    )
    assert summary(fold.items["r2"])["target"] == "prod/stable"
    assert json.loads(json.dumps(r0)) == r0
    assert table_row(r3)["outcome"] == "(passed)" and table_row(r0)["stages"] == "2/2"
    assert table_row(r0)["pack"] == "kb@0.9.0"
    assert (table_row(r0)["took"], table_row(r3)["took"]) == (f"{log.events.index(closed_r0(log)) - 1}s", None)
    assert table_row(r0)["requested"] == "01-01 12:00"
    assert [
        table_row({**r0, "requested_at": "2030-01-01T12:00:00.000000Z", "closed_at": end})["took"]
        for end in ("2030-01-01T12:59:00.5Z", "2030-01-01T15:05:00Z", "2030-01-04T12:00:00Z", "2030-01-01T11:00:00Z")
    ] == ["59m", "3h05m", "3d", None]


def closed_r0(log: Log):
    """(the story's clock: event i occurred at NOW + i s; r0's request is event 1)"""
    return next(e for e in log.events if e.type == "release.closed" and e.release_id == "r0")


def test_a_promotion_names_both_ends() -> None:
    log = Log()
    log.channel()
    log.two_stage_success("r0", P1)
    log.promoted("r0", "stable")
    log.requested("r0-stable", promoted_from="r0", target={"env": "prod", "channel": "stable"})
    fold = fold_history(log.entries())
    assert summary(fold.items["r0"])["promoted_to"] == log.events[-2].data.promoted_to
    assert summary(fold.items["r0-stable"])["promoted_from"] == "r0"


def test_an_operator_rollback_after_close_reopens_the_release() -> None:
    log = Log()
    log.channel()
    log.two_stage_success("r0", P0)
    log.two_stage_success("r1", P1)
    assert fold_history(log.entries()).items["r1"].closed_at is not None
    log.rollback_started("r1", {"internal": P0, "rest": P0}, trigger="operator")
    item = fold_history(log.entries()).items["r1"]
    assert (item.closed_at, summary(item)["outcome"]) == (None, None)
    assert ids(select([item], outcome="in-flight")) == ["r1"]


def test_the_index_events_alone_select_what_the_whole_fold_selects() -> None:
    """`load_history` chooses releases from `INDEX_EVENTS` only, then folds the chosen ones whole."""
    log = story()
    log.rollback_started("r0", {"internal": P0, "rest": P0}, trigger="operator")  # closed, then open again
    log.two_stage_success("r4", P1)
    whole = fold_history(log.entries())
    index = fold_history((p, e) for p, e in log.entries() if e.family == "release" and e.suffix in INDEX_EVENTS)
    assert set(index.items) == set(whole.items)
    r1_closed = whole.items["r1"].closed_at
    for outcome in (None, IN_FLIGHT, *OUTCOMES):
        for channel in (None, ("prod", "canary"), ("prod", "stable")):
            for since in (None, NOW, r1_closed, r1_closed + timedelta(seconds=1), NOW + timedelta(days=1)):
                for limit in (1, 2, 50):
                    kw = {"outcome": outcome, "channel": channel, "since": since, "limit": limit}
                    assert ids(select(index.items.values(), **kw)) == ids(select(whole.items.values(), **kw)), kw
    assert ids(select(index.items.values(), outcome=IN_FLIGHT)) == ["r3", "r0"]
