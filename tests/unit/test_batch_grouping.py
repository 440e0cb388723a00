"""The log writer's grouping rule (services/jetstream/log.py): which waiting atomic batches go together."""

from __future__ import annotations

import asyncio

from services.jetstream.log import MAX_GROUP_MESSAGES, Entry, _next_group, _Part


def part(batch_id: str, *subjects: str, filter_: str | None = None, done: bool = False) -> _Part:
    entries = [Entry(event=None, expected_seq=0, expected_filter=filter_) for _ in subjects]  # type: ignore[arg-type]
    future = asyncio.get_running_loop().create_future()
    if done:
        future.cancel()
    return _Part(entries, batch_id, [(s, b"", {}) for s in subjects], future)


def ids(parts: list[_Part]) -> list[str]:
    return [p.batch_id for p in parts]


async def test_disjoint_batches_go_together_in_order():
    waiting = [part("a", "s.1", "r.a.x", filter_="r.a.*"), part("b", "s.2", "r.b.x", filter_="r.b.*")]
    group, rest = _next_group(waiting)
    assert ids(group) == ["a", "b"] and rest == []


async def test_a_batch_on_a_subject_already_in_the_group_waits_and_keeps_later_ones_behind_it():
    waiting = [
        part("a", "s.1", "r.a.x", filter_="r.a.*"),
        part("b", "s.1", "r.b.x", filter_="r.b.*"),  # same scope subject as a: never in one batch
        part("c", "s.2", "r.b.y", filter_="r.b.*"),  # same release as b: stays behind b, in order
        part("d", "s.3", "r.d.x", filter_="r.d.*"),
    ]
    group, rest = _next_group(waiting)
    assert ids(group) == ["a", "d"] and ids(rest) == ["b", "c"]
    group, rest = _next_group(rest)
    assert ids(group) == ["b"] and ids(rest) == ["c"]


async def test_the_same_expectation_filter_is_a_collision_even_on_other_subjects():
    group, rest = _next_group([part("a", "r.a.x", filter_="r.a.*"), part("b", "r.a.y", filter_="r.a.*")])
    assert ids(group) == ["a"] and ids(rest) == ["b"]


async def test_a_group_stays_under_the_size_cap_but_a_large_batch_alone_is_sent():
    big = part("big", *(f"s.{i}" for i in range(MAX_GROUP_MESSAGES + 5)))
    small = part("small", "t.1")
    group, rest = _next_group([big, small])
    assert ids(group) == ["big"] and ids(rest) == ["small"]


async def test_a_batch_whose_caller_is_gone_is_not_sent():
    group, rest = _next_group([part("gone", "s.1", done=True), part("b", "s.2")])
    assert ids(group) == ["b"] and rest == []
