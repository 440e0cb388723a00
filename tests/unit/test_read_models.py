"""The read models' values (services/reads/read_models.py) and what the CLI builds from them
(services/reads/model_reads.py) say what the fold says (pure; the e2e test compares on a live log)."""

from __future__ import annotations

import itertools
import subprocess
import sys
from datetime import timedelta

from services.reads import model_reads
from services.reads import read_models as rm
from services.reads.history import IN_FLIGHT, OUTCOMES, fold_history, select
from services.reads.shapes import dump, releases, scopes

from .test_history import story
from .test_projections import NOW


def test_release_values_filter_and_order_as_the_history_does() -> None:
    log = story()
    fold, world = fold_history(log.entries()), log.world()
    rows = [rm.index_row(v) for v in rm.release_values(fold.items.values(), world).values()]
    channels = [None, ("prod", "canary"), (None, "canary"), ("prod", "stable"), ("dev", "canary")]
    sinces = [None, NOW - timedelta(days=1), NOW, NOW + timedelta(minutes=5), NOW + timedelta(days=1)]
    for channel, outcome, since, limit in itertools.product(channels, [None, IN_FLIGHT, *OUTCOMES], sinces, [1, 2, 50]):
        expected = [
            i.state.release_id
            for i in select(fold.items.values(), channel=channel, outcome=outcome, since=since, limit=limit)
        ]
        assert model_reads.select(rows, channel, outcome, since, limit) == expected, (channel, outcome, since)


def test_scope_and_release_rows_are_the_status_shapes() -> None:
    log = story()
    fold, world = fold_history(log.entries()), log.world()
    values = rm.world_values(world)
    shown = [values[rm.scope_key(*key)]["scope"] for key in sorted(world.scopes.keys())]
    assert shown == dump(scopes(world))
    stored = rm.release_values(fold.items.values(), world)
    rows = sorted(stored.values(), key=lambda v: v["last_seq"])
    assert [v["row"] for v in rows] == dump(releases(world, False))
    in_flight = rm.position_value(world, {}, None)["in_flight"]
    assert [stored[rm.release_key(r)]["row"] for r in in_flight] == dump(releases(world, True))
    assert in_flight == ["r3"]


def test_a_channel_value_is_channel_show_and_its_cohorts() -> None:
    world = story().world()
    value = rm.world_values(world)[rm.channel_key("prod", "canary")]
    state = world.channel_state("prod", "canary")
    assert value["show"] == rm.channel_show(state, None, "prod", "canary")
    assert value["cohorts"] == list(state.config.cohort_names)


def test_encode_carries_the_sequence_and_content_gives_it_back() -> None:
    raw = rm.encode({"b": 1, "a": [1, 2]}, 42)
    assert rm.content(raw) == (42, {"a": [1, 2], "b": 1})


def test_the_read_path_loads_neither_the_event_model_nor_pydantic() -> None:
    """`kxr status` from the read models: its modules import no pydantic model (a cold start cost)."""
    code = (
        "import sys\n"
        "import services.cli.status, services.cli.readmodel, services.reads.model_reads, events.subjects\n"
        "import services.jetstream.client, services.settings\n"
        "heavy = [m for m in ('events.model', 'events.codec', 'pydantic', 'services.reads.shapes',"
        " 'projections.world', 'cryptography') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


class FakeView:
    """A View over a dict of values (model_reads reads through get/many)."""

    def __init__(self, values: dict[str, dict], position: dict) -> None:
        self.values, self.position = values, position

    async def get(self, key: str):
        return self.values.get(key)

    async def many(self, keys: list[str]):
        return {k: self.values[k] for k in keys if k in self.values}


async def test_release_list_reads_the_index_newest_shard_first(monkeypatch) -> None:
    monkeypatch.setattr(rm, "SHARD_SEQS", 3)  # a shard per few log seqs: the story spans several
    log = story()
    fold, world = fold_history(log.entries()), log.world()
    stored = rm.release_values(fold.items.values(), world)
    shards: dict[int, list] = {}
    for value in stored.values():
        row = rm.index_row(value)
        shards.setdefault(rm.shard_of(row[0]), []).append(row)
    assert len(shards) > 1
    values = {**stored, **{rm.index_key(n): rm.index_value(rows) for n, rows in shards.items()}}
    view = FakeView(values, rm.position_value(world, {}, None, shards, len(stored)))
    for channel, outcome, limit in itertools.product(
        [None, ("prod", "canary")], [None, IN_FLIGHT, "success"], [1, 3, 50]
    ):
        got, total = await model_reads.release_list(view, channel, outcome, None, limit)
        expected = select(fold.items.values(), channel=channel, outcome=outcome, limit=limit)
        assert [s["release_id"] for s in got] == [i.state.release_id for i in expected], (channel, outcome, limit)
        assert total == 4


def test_a_reader_without_keys_uses_the_models_only_when_nothing_unsigned_was_ignored() -> None:
    """An entry that does not decode counts for nothing with or without keys; any other ignored entry,
    or more of them than the position lists, may be one a fold without keys would count."""
    undecodable = {"seq": 7, "why": "undecodable: not JSON"}
    unsigned = {"seq": 8, "why": "release.requested not signed by a service key: unsigned"}
    assert model_reads._nothing_unsigned({"ignored": [], "ignored_total": 0})
    assert model_reads._nothing_unsigned({})  # an older writer that listed nothing
    assert model_reads._nothing_unsigned({"ignored": [undecodable], "ignored_total": 1})
    assert not model_reads._nothing_unsigned({"ignored": [undecodable, unsigned], "ignored_total": 2})
    assert not model_reads._nothing_unsigned({"ignored": [undecodable], "ignored_total": 2})  # one not listed


class _View:
    """model_reads.View's reads, from a dict (the keys read are counted)."""

    def __init__(self, values: dict, position: dict) -> None:
        self.values, self.position, self.seq, self.read = values, position, position["seq"], []

    async def many(self, keys):
        self.read += keys
        return {k: self.values[k] for k in keys if k in self.values}


def test_the_dashboard_reads_again_only_the_index_shards_that_changed() -> None:
    import asyncio

    def row(seq: int, rid: str, closed: bool) -> list:
        return [seq, rid, "prod/canary", closed, "success" if closed else None, None, None, seq + 5]

    summary = {"seq": 0}
    values = {
        "index.0": {"seq": 10, "rows": [row(1, "a", True), row(2, "b", True)]},
        "index.1": {"seq": 20, "rows": [row(5001, "c", False)]},
        **{f"release.{r}": {"summary": {**summary, "release_id": r}} for r in "abcd"},
    }
    position = {"seq": 20, "shards": [0, 1], "shard_seqs": {"0": 10, "1": 20}}
    kept: dict = {}
    view = _View(values, position)
    rows, total = asyncio.run(model_reads.release_matches(view, None, None, None, 2, kept))
    assert [r["release_id"] for r in rows] == ["c", "b"] and total == 3
    assert sorted(k for k in view.read if k.startswith("index.")) == ["index.0", "index.1"]
    # the newest shard changes (d requested), the older one does not: only index.1 is read again
    values["index.1"] = {"seq": 30, "rows": [row(5001, "c", False), row(5002, "d", False)]}
    view = _View(values, {"seq": 30, "shards": [0, 1], "shard_seqs": {"0": 10, "1": 30}})
    rows, total = asyncio.run(model_reads.release_matches(view, None, "in-flight", None, 5, kept))
    assert [r["release_id"] for r in rows] == ["d", "c"] and total == 2
    assert [k for k in view.read if k.startswith("index.")] == ["index.1"]
    # an older writer names no shard seqs: every shard is read
    view = _View(values, {"seq": 30, "shards": [0, 1]})
    asyncio.run(model_reads.release_matches(view, None, None, None, 5, kept))
    assert sorted(k for k in view.read if k.startswith("index.")) == ["index.0", "index.1"]
