"""The part of the world an operator action decides on, without a fold of the whole log.

Release actions (`release_world`): a release's own events, plus its channel (extend) or the scopes
of its activated cohorts (rollback), folded from those subjects alone — each of those depends on its
own subjects only, so this is exactly what a whole fold says about them. Pins (`pin_facts`,
`pin_world`), from the read models:

A pin reads its channel (configuration, cohorts), its scopes (pin, sequences) and, for the pack, the
newest verified release of that version to the channel (services/actions/pins.py); each depends on its
own subjects alone. The read models carry the fold's state of scopes and channels (model_states.py)
and their index finds the releases, which are then folded from their own events with signatures
checked. A fold of the whole log took ~90 s at 1M events; this reads a few keys and a few releases.
The append's expected sequence refuses a decision taken on a stale view, as on a fold.
"""

from __future__ import annotations

import asyncio
from typing import Any

from projections.world import World
from services.reads import read_models as rm

CANDIDATES = 5  # releases of the version, newest first, folded to find the verified pack


async def pin_facts(view, parts: tuple[str, ...], version: str | None) -> dict[str, Any]:
    """What a pin (with `version`) or unpin (None) of ENV/CHANNEL[/COHORT] reads, from a view at the log's end."""
    from services.reads.model_reads import NoView

    env, channel = parts[0], parts[1]
    chan = await view.get(rm.channel_key(env, channel))
    cohorts = [parts[2]] if len(parts) == 3 else (chan["cohorts"] if chan else ["all"])  # unconfigured: default
    scopes = await view.many([rm.scope_key(env, channel, c) for c in cohorts])
    if (chan is not None and "state" not in chan) or any("state" not in v for v in scopes.values()):
        raise NoView("the read models carry no scope state yet (written by an older service)")
    found = await releases_of(view, f"{env}/{channel}", version) if version is not None else []
    return {
        "seq": view.seq,
        "env_channel": (env, channel),
        "channel": chan,
        "scopes": scopes,
        "targets": [(env, channel, c) for c in cohorts],
        "releases": found,
    }


async def releases_of(view, target: str, version: str) -> list[str]:
    """The newest CANDIDATES releases to `target` whose pack has `version`, newest first (the index's
    shards newest first, then those releases' summaries)."""
    found: list[str] = []
    for shard in sorted(view.position.get("shards", []), reverse=True):
        index = await view.get(rm.index_key(shard))
        rows = sorted((r for r in (index or {}).get("rows", []) if r[2] == target), key=lambda r: -r[0])
        values = await view.many([rm.release_key(r[1]) for r in rows])
        for row in rows:
            pack = (values.get(rm.release_key(row[1])) or {}).get("summary", {}).get("pack")
            if pack and pack["version"] == version:
                found.append(row[1])
                if len(found) == CANDIDATES:
                    return found
    return found


async def pin_world(js, subjects, service_keys, facts: dict[str, Any], version: str | None) -> World:
    """The world a pin decides on: the model's scopes and channel, the candidate releases folded from
    their own events; when none of them was verified, a fold of the whole log (it says which, if any)."""
    from rpds import HashTrieMap

    from services.jetstream.log_reads import load_world, release_history
    from services.reads.model_states import load_channel, load_scope

    releases = {}
    for release_id in facts["releases"]:
        state = await release_history(js, subjects, release_id, facts["seq"] + 1, service_keys)
        if state is not None:
            releases[release_id] = state
            if state.verified is not None and state.verified.pack.version == version:
                break  # the newest verified one is what a pin takes (services/actions/pins.py find_pack)
    verified = any(r.verified is not None and r.verified.pack.version == version for r in releases.values())
    if version is not None and not verified:
        return await load_world(js, subjects, service_keys=service_keys)
    channel_state = load_channel(facts["channel"]["state"]) if facts["channel"] else None
    scopes = {tuple(v["state"]["key"]): load_scope(v["state"]) for v in facts["scopes"].values()}
    return World(
        applied_seq=facts["seq"],
        releases=HashTrieMap(releases),
        scopes=HashTrieMap(scopes),
        channels=HashTrieMap({tuple(facts["env_channel"]): channel_state} if channel_state else {}),
    )


async def release_world(
    js, subjects, service_keys, release_id: str, reads: str = "release", use_model: bool = True
) -> World:
    """What a release action decides on: the release's own events; with `reads` "channel" its target
    channel's too (extend: the minimum window), with "scopes" the scopes of its activated cohorts
    (rollback: pins and last-known-good) — from the read models' scope states when they are current
    (`use_model`), else folded from those scopes' whole pointer history (seconds at 1M events). That fold
    knows pins and pointers exactly, not the LKG a release's success set (a release event): a rollback
    decided on it goes to the pin in force or the target pre-flight recorded, the strategy's own."""
    from dataclasses import replace

    from rpds import HashTrieMap

    from services.jetstream.log_reads import fold_subjects

    own = [subjects.release_filter(release_id)]
    world = await fold_subjects(js, subjects, own, service_keys)
    release = world.release(release_id)
    target = release.prepared.target if release is not None and release.prepared is not None else None
    if reads == "release" or release is None or target is None:
        return world
    if reads == "channel":
        more = [subjects.channel(target.env, target.channel)]
    else:
        keys = [(target.env, target.channel, c) for c in release.activated]
        scopes = await _model_scopes(js, subjects, service_keys, keys) if use_model else None
        if scopes is not None:
            return replace(world, scopes=HashTrieMap(scopes))
        more = [subjects.scope_filter(*key) for key in keys]
    return await fold_subjects(js, subjects, own + more, service_keys)


async def _model_scopes(js, subjects, service_keys, keys: list[tuple[str, str, str]]) -> dict | None:
    """The fold's state of these scopes from the read models at the log's end; None when they cannot
    say (no service writes them, they lag, other keys, no state yet, any error): the caller folds."""
    from services.jetstream.direct import connection_of
    from services.reads import model_reads
    from services.reads.model_states import load_scope

    async def use(view):
        found = await view.many([rm.scope_key(*key) for key in keys])
        if any("state" not in value for value in found.values()):
            raise model_reads.NoView("no scope state in the read models yet")
        return {tuple(v["state"]["key"]): load_scope(v["state"]) for v in found.values()}

    try:
        return await model_reads.read_view(
            connection_of(js), subjects.releases_stream, subjects.read_bucket, model_reads.keys_id(service_keys), use
        )
    except Exception:  # the models are a shortcut: the caller folds the scopes' own subjects
        return None


# ---- a long-lived reader's start (the dashboard) -------------------------------------------------
START_WAIT_S = 3.0  # how long a start waits for the models to reach the log's end (else it folds)
READS_AT_ONCE = 32  # releases read back from their own events at once


async def start_world(js, subjects, service_keys, recent: int) -> World:
    """A world to follow the log from, built from the read models at the log's end instead of a fold
    of the whole log (the dashboard's start: ~90 s at 1M events). NoView when they cannot say.

    Scopes and channels are the fold's own states the models carry; the releases in flight, the
    `recent` newest closed ones and any neither in flight nor closed are read back whole from
    their own events (exactly what a whole fold says of each: a release depends on its own events
    alone); every other closed release is a tombstone (its last sequence and outcome, from the
    index), which the follower reads back whole if it changes again (`Follower.run`). So the world
    answers as a whole fold does for everything but closed releases' details, which a reader asks
    for by id (`release_history`)."""
    from rpds import HashTrieMap, HashTrieSet

    from projections.world import ChannelProblem, tombstone
    from services.jetstream.direct import connection_of
    from services.jetstream.log_reads import logged_rotations
    from services.reads import model_reads
    from services.reads.model_reads import CLOSED, ID, LAST_SEQ, OUTCOME
    from services.reads.model_states import load_channel, load_scope

    async def use(view):
        shards = [rm.index_key(n) for n in view.position["shards"]]
        return view.seq, view.position, await view.under("scope"), await view.under("channel"), await view.many(shards)

    seq, position, scopes, channels, index = await model_reads.read_view(
        connection_of(js),
        subjects.releases_stream,
        subjects.read_bucket,
        model_reads.keys_id(service_keys),
        use,
        wait_s=START_WAIT_S,
    )
    rows = [row for value in index.values() for row in value["rows"]]
    if len(index) != len(position["shards"]) or any(len(row) < rm.INDEX_COLUMNS for row in rows):
        raise model_reads.NoView("the read models' index is an older writer's (no last sequences)")
    if any("state" not in v for v in [*scopes.values(), *channels.values()]):
        raise model_reads.NoView("the read models carry no scope or channel state yet (an older writer)")
    closed = sorted((row for row in rows if row[CLOSED]), key=lambda row: row[LAST_SEQ])
    whole = {row[ID] for row in rows if not row[CLOSED]} | {row[ID] for row in closed[len(closed) - recent :]}
    # the reads go out first: the server answers them while this process builds the tombstones
    reads = asyncio.ensure_future(_read_back(js, subjects, service_keys, sorted(whole), seq))
    rotations = asyncio.ensure_future(logged_rotations(js, subjects))
    await asyncio.sleep(0)
    tombstones = HashTrieMap(
        {row[ID]: tombstone(row[LAST_SEQ], row[OUTCOME]) for row in rows if row[CLOSED] and row[ID] not in whole}
    )
    try:
        releases = await reads
        if len(releases) != len(whole):
            raise model_reads.NoView(f"{len(whole) - len(releases)} releases the read models name have no events")
        root_docs = await rotations
    finally:
        rotations.cancel()  # a no-op once done; else (a read failed) no task left behind
    problems = {
        (v["show"]["env"], v["show"]["channel"]): ChannelProblem(p["seq"], p["reason"])
        for v in channels.values()
        if (p := v["show"].get("problem")) is not None
    }
    return World(
        applied_seq=seq,
        releases=HashTrieMap(releases),
        scopes=HashTrieMap({tuple(v["state"]["key"]): load_scope(v["state"]) for v in scopes.values()}),
        channels=HashTrieMap(
            {
                (v["show"]["env"], v["show"]["channel"]): channel_state
                for v in channels.values()
                if (channel_state := load_channel(v["state"])) is not None
            }
        ),
        in_flight=HashTrieSet(r for r, state in releases.items() if state.in_flight),
        trust_rotations=tuple((s, root) for s, root in root_docs if s <= seq),
        tombstones=tombstones,
        channel_problems=HashTrieMap(problems),
    )


async def _read_back(js, subjects, service_keys, release_ids: list[str], seq: int) -> dict:
    """These releases whole as of `seq`, each from its own events, READS_AT_ONCE at a time."""
    from services.jetstream.log_reads import release_history

    releases = {}
    for i in range(0, len(release_ids), READS_AT_ONCE):
        part = release_ids[i : i + READS_AT_ONCE]
        for state in await asyncio.gather(*(release_history(js, subjects, r, seq + 1, service_keys) for r in part)):
            if state is not None:
                releases[state.release_id] = state
    return releases
