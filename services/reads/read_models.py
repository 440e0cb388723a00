"""The operator's read models as KV values (pure): the fold's state in the shapes `--json` prints.

The service keeps them in the bucket `Subjects.read_bucket` (services/reads/projector.py writes,
services/reads/model_reads.py reads), so `kxr status`, `kxr release list`, `kxr channel show` and
`kxr pin` answer in a few direct gets instead of folding the log. Keys and values (JSON):

    scope.<env>.<channel>.<cohort>  {"seq", "generation", "scope": <shapes.Scope>,
                                     "state": the fold's ScopeState (model_states.py)}
    release.<id>                    {"seq", "last_seq", "closed", "row": <shapes.Release>,
                                     "summary": <shapes.ReleaseSummary>}
    channel.<env>.<channel>         {"seq", "show": <shapes.ChannelShow>, "cohorts": [names],
                                     "state": the fold's ChannelState or null}
    pack.<algo>-<hex>               {"seq", "digest", "name", "version"}: a pack a release named (the
                                     dashboard's fleet names a runtime's digest by it)
    index.<n>                       {"seq", "rows": [[first seq, id, target, closed, outcome,
                                     requested_at, closed_at, last seq], ...]}: the releases
                                     whose first event is in log seqs [n*SHARD_SEQS, (n+1)*SHARD_SEQS)
    position                        {"seq", "keys", "ignored": [<shapes.Ignored>] (the newest 100),
                                     "ignored_total", "in_flight": [ids], "shards": [n, ...],
                                     "shard_seqs": {"n": the seq its value carries},
                                     "releases": how many}

`seq` is the log sequence the writer had folded when it wrote the value (a value is rewritten
only when its content changes, so it reflects every sequence from its `seq` up to the one a
newer value of the key carries). `position` is written last, after every other key of the
same fold: when it says `seq` P, every key holds its state at P. `keys` names the service keys
the fold trusted (None: signatures not checked), so a reader folds the log itself when it
would trust other keys. `in_flight`: the releases in flight, in the order `kxr status` lists
them (by their last sequence).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from services.reads.history import HistoryItem, summary
from services.reads.shapes import (
    ChannelShow,
    Problem,
    ReleaseSummary,
    dump,
    ignored_total,
    newest_ignored,
    release_shape,
    rfc3339,
    scope_shape,
)

if TYPE_CHECKING:
    from projections.releases import ReleaseState
    from projections.scopes import ScopeState
    from projections.world import ChannelProblem, ChannelState, World

POSITION = "position"
# `kxr release list` reads the index newest shard first: one shard holds the releases whose first
# event falls in SHARD_SEQS log sequences (a few hundred releases, well under the 1 MB a value may hold)
SHARD_SEQS = 5_000


def scope_key(env: str, channel: str, cohort: str) -> str:
    return f"scope.{env}.{channel}.{cohort}"


def release_key(release_id: str) -> str:
    return f"release.{release_id}"


def pack_key(digest: str) -> str:
    """`sha256:ab…` -> `pack.sha256-ab…` (a KV key has no colon)."""
    return "pack." + digest.replace(":", "-", 1)


def pack_values(values: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The pack keys of these release values: each pack a release names, once."""
    packs = (v["summary"]["pack"] for v in values if v["summary"].get("pack"))
    return {pack_key(p["digest"]): {"digest": p["digest"], "name": p["name"], "version": p["version"]} for p in packs}


def channel_key(env: str, channel: str) -> str:
    return f"channel.{env}.{channel}"


def release_row(r: ReleaseState) -> dict[str, Any]:
    """A release as `kxr status` lists it (shapes.releases, for one release)."""
    return dump(release_shape(r))


def release_value(item: HistoryItem, world_state: ReleaseState | None = None) -> dict[str, Any]:
    """`world_state`: the world's own state of a release in flight (what `kxr status` shows), else the history's."""
    state = world_state or item.state
    return {
        "last_seq": state.last_seq,
        "closed": item.state.closed,
        "row": release_row(state),
        "summary": dump(ReleaseSummary.model_validate(summary(item))),
    }


def channel_show(state: ChannelState | None, problem: ChannelProblem | None, env: str, channel: str) -> dict:
    """What `kxr channel show` prints: the last readable configuration and, if the newest entry
    could not be read, that problem (`config` is null when no entry ever could be)."""
    return dump(
        ChannelShow(
            scope=f"{env}/{channel}",
            env=env,
            channel=channel,
            configured_at=rfc3339(state.configured_at) if state else None,
            configured_by=state.configured_by if state else None,
            seq=state.seq if state else None,
            config=state.config.model_dump(mode="json", by_alias=True, exclude_none=True) if state else None,
            problem=Problem(seq=problem.seq, reason=problem.reason, message=problem.describe()) if problem else None,
        )
    )


def scope_value(key: tuple[str, str, str], s: ScopeState) -> dict[str, Any]:
    """A scope's value: what `kxr status` shows of it, and the fold's own state (`kxr pin` decides on it)."""
    from services.reads.model_states import dump_scope  # pydantic: the writer's and pin's, never status's

    return {"generation": s.generation, "scope": dump(scope_shape(key, s)), "state": dump_scope(s)}


def channel_value(world: World, env: str, channel: str) -> dict[str, Any]:
    """A channel's value: `kxr channel show`, its cohorts, and the fold's own state of it."""
    from services.reads.model_states import dump_channel

    state, problem = world.channels.get((env, channel)), world.channel_problems.get((env, channel))
    return {
        "show": channel_show(state, problem, env, channel),
        "cohorts": list(world.channel_config(env, channel).cohort_names),
        "state": dump_channel(state),
    }


def world_values(world: World) -> dict[str, dict[str, Any]]:
    """Every scope and channel key of the world (without `seq`)."""
    out: dict[str, dict[str, Any]] = {scope_key(*key): scope_value(key, s) for key, s in world.scopes.items()}
    for env, channel in {*world.channels.keys(), *world.channel_problems.keys()}:
        out[channel_key(env, channel)] = channel_value(world, env, channel)
    return out


def release_values(items: Iterable[HistoryItem], world: World) -> dict[str, dict[str, Any]]:
    return {release_key(i.state.release_id): release_value(i, world.releases.get(i.state.release_id)) for i in items}


def index_row(value: dict[str, Any]) -> list[Any]:
    """A release's row in the list index (services/reads/model_reads.py: SEQ, ID, TARGET, ...)."""
    s = value["summary"]
    return [
        s["seq"],
        s["release_id"],
        s["target"],
        value["closed"],
        s["outcome"],
        s["requested_at"],
        s["closed_at"],
        value["last_seq"],  # a closed release's tombstone (services/reads/model_world.py start_world)
    ]


INDEX_COLUMNS = 8  # an older writer's rows have 7 (no last seq): a resuming projector folds again


def index_closed_at(row: list[Any]) -> datetime | None:
    """When an index row's release closed, as the history keeps it (`summary` writes it back the same)."""
    return datetime.fromisoformat(row[6].replace("Z", "+00:00")) if row[6] else None


def shard_of(first_seq: int) -> int:
    return first_seq // SHARD_SEQS


def index_key(shard: int) -> str:
    return f"index.{shard}"


def index_value(rows: Iterable[list[Any]]) -> dict[str, Any]:
    return {"rows": sorted(rows, key=lambda r: r[0])}


def position_value(
    world: World,
    ignored: Mapping[int, str],
    trusted: str | None,
    shards: Mapping[int, int] | Iterable[int] = (),
    releases: int = 0,
) -> dict[str, Any]:
    """`shards`: the index shards, or shard -> the `seq` its stored value carries (then `shard_seqs`
    too: a reader that keeps shards reads again only those that changed, services/dashboard/hub.py)."""
    value: dict[str, Any] = {
        "keys": trusted,
        "ignored": newest_ignored(ignored),
        "ignored_total": ignored_total(ignored),
        "in_flight": [r.release_id for r in world.releases_in_flight()],
        "shards": sorted(shards),
        "releases": releases,
    }
    if isinstance(shards, Mapping):
        value["shard_seqs"] = {str(n): seq for n, seq in sorted(shards.items())}
    return value


def encode(value: dict[str, Any], seq: int) -> bytes:
    return json.dumps({"seq": seq, **value}, sort_keys=True, separators=(",", ":")).encode()


def fingerprint(value: dict[str, Any]) -> bytes:
    """What a writer remembers of a value it wrote (16 bytes, not the value: memory grows with keys)."""
    return hashlib.blake2b(json.dumps(value, sort_keys=True, separators=(",", ":")).encode(), digest_size=16).digest()


def content(raw: bytes) -> tuple[int, dict[str, Any]]:
    """A stored value's `seq` and the rest (what the writer compares)."""
    doc = json.loads(raw)
    seq = int(doc.pop("seq", 0))
    return seq, doc
