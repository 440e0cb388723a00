"""Reading the operator's read models (services/reads/read_models.py) without folding the log.

Light on purpose: JSON, direct gets and the stream's info; no event model, no pydantic, so
`kxr status` starts fast. A view is used only when it is the log's state: its `position` has
reached the log's last sequence (waiting up to `WAIT_S` for the service to write it), the
service trusted the same service keys as the reader (or, unchecked, ignored nothing), every
value read is no newer than `position` (else a write was under way: read again), and every
answer came from a server that holds that `position` (a replica behind it would answer with
older values or none, under a position that says "current": read again). Otherwise
`open_view` says why, and the command folds the log as before.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from services.jetstream.direct import Behind, DirectGetError, Stored, last_per_subject

WAIT_S = 1.0
POLL_S = 0.05
TIMEOUT_S = 2.0
BATCH = 1024


class NoView(Exception):
    """Why the read models cannot answer now (the command folds the log instead). `quiet`: nothing
    worth saying, the fold will say it (there is no log at all)."""

    def __init__(self, reason: str, quiet: bool = False) -> None:
        super().__init__(reason)
        self.quiet = quiet


def keys_id(service_keys) -> str | None:
    """Which service keys a fold trusted: the SHA-256 of their document (None: unchecked)."""
    if service_keys is None:
        return None
    doc = json.dumps(service_keys.to_document(), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(doc.encode()).hexdigest()


class View:
    """The read models at one log position (`seq`), stored in the bucket at `kv_seq`."""

    def __init__(self, nc, bucket: str, position: dict[str, Any], kv_seq: int) -> None:
        self._nc = nc
        self._bucket = bucket
        self.position = position
        self.seq: int = position["seq"]
        self._kv_seq = kv_seq
        self._position_subject = f"$KV.{bucket}.position"

    def _value(self, out: dict[str, dict[str, Any]], stored: Stored) -> None:
        _written_by_a_client(stored)
        if not stored.data or stored.subject == self._position_subject:  # a delete marker; the position
            return
        value = json.loads(stored.data)
        if value.get("seq", 0) > self.seq:
            raise _Moved()
        out[stored.subject.removeprefix(f"$KV.{self._bucket}.")] = value

    async def _read(self, subjects: list[str]) -> dict[str, dict[str, Any]]:
        """The last value on each of `subjects`, every page answered by a server that holds the
        position read (the position is asked for too: a page always has something to match)."""
        out: dict[str, dict[str, Any]] = {}
        async for stored in last_per_subject(
            self._nc,
            f"KV_{self._bucket}",
            [*subjects, self._position_subject],
            timeout=TIMEOUT_S,
            page=BATCH,
            at_least=self._kv_seq,
        ):
            self._value(out, stored)
        return out

    async def _last(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """The last value of each of `keys` (no wildcards: a server answers at most 1024 subjects)."""
        return await self._read([f"$KV.{self._bucket}.{k}" for k in keys])

    async def get(self, key: str) -> dict[str, Any] | None:
        return (await self._last([key])).get(key)

    async def many(self, keys: list[str], chunk: int = 256) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(keys), chunk):
            out.update(await self._last(keys[i : i + chunk]))
        return out

    async def under(self, prefix: str) -> dict[str, dict[str, Any]]:
        """Every key `prefix.…` (e.g. `scope`, `release`): the last message on each, a page at a time
        (a key rewritten between pages is seen again later; the newer value wins)."""
        return await self._read([f"$KV.{self._bucket}.{prefix}.>"])


def _written_by_a_client(stored: Stored) -> None:
    """Raises NoView for a value JetStream relayed into the bucket (an API answer on its subject, which
    any role can cause: docs/permissions.md "JetStream's answers"): the reader folds the log instead."""
    if stored.relayed is not None:
        raise NoView(
            f"a read model was relayed by JetStream from stream {stored.relayed[:100]}, not written by the service"
        )


class _Moved(Exception):
    """A value newer than the position read: the writer is between two keys."""


async def _log_last_seq(nc, stream: str) -> int:
    msg = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=TIMEOUT_S)
    doc = json.loads(msg.data)
    if "error" in doc:
        raise NoView(f"the log {stream}: {doc['error'].get('description', 'no stream info')}", quiet=True)
    return int(doc["state"]["last_seq"])


async def _position(nc, bucket: str) -> tuple[dict[str, Any], int] | None:
    """The position the read models were written at, and where the bucket stored it (None: not yet)."""
    try:
        async for stored in last_per_subject(nc, f"KV_{bucket}", [f"$KV.{bucket}.position"], timeout=TIMEOUT_S):
            _written_by_a_client(stored)
            return (json.loads(stored.data), stored.seq) if stored.data else None
    except DirectGetError as exc:
        raise NoView(f"no read models in {bucket} ({exc})") from None
    return None


def _nothing_unsigned(position: dict[str, Any]) -> bool:
    """Whether the writer's fold ignored no entry a fold without service keys would count: then a reader
    without keys sees the same. Entries that do not decode count for nothing either way (projections
    .snapshot.undecodable_why); any other listed one, or more than are listed, may be unsigned."""
    ignored = position.get("ignored") or []
    listed_all = position.get("ignored_total", len(ignored)) == len(ignored)
    return listed_all and all(item["why"].startswith("undecodable: ") for item in ignored)


async def read_view(
    nc,
    log_stream: str,
    bucket: str,
    trusted: str | None,
    use: Callable[[View], Any],
    wait_s: float = WAIT_S,
) -> Any:
    """`await use(view)` on the read models at the log's last sequence, or NoView saying why not."""
    from nats.errors import NoRespondersError
    from nats.errors import TimeoutError as NatsTimeout

    deadline = time.monotonic() + wait_s
    behind = 0  # answers from a server behind the position read (asked again)
    try:
        last = await _log_last_seq(nc, log_stream)
        while True:
            found = await _position(nc, bucket)
            if found is None:  # the bucket is there (a service created it) but not written yet
                if time.monotonic() >= deadline:
                    raise NoView(f"no read models in {bucket} yet (does a `kxr serve` with the activator run?)")
            elif found[0]["seq"] >= last:
                position, kv_seq = found
                if position.get("keys") != trusted and not (trusted is None and _nothing_unsigned(position)):
                    raise NoView("the service trusts other service keys than this command")
                try:
                    return await use(View(nc, bucket, position, kv_seq))
                except _Moved:
                    pass
                except Behind:
                    behind += 1
            elif time.monotonic() >= deadline:
                raise NoView(f"read models at log seq {found[0]['seq']}, the log at {last}")
            if time.monotonic() >= deadline:
                if behind:
                    raise NoView(f"read models answered by a server behind their position ({behind} times)")
                raise NoView("read models being written for longer than a second")
            await asyncio.sleep(POLL_S)
    except (NoRespondersError, NatsTimeout, DirectGetError) as exc:
        raise NoView(f"read models not readable: {exc.__class__.__name__}") from None


# ---- what the commands print, from a view ----------------------------------------------------------
async def status(view: View, all_releases: bool) -> dict[str, Any]:
    """`kxr status --json` but `signatures` (the command's own): scopes, releases, log_seq, ignored."""
    scopes = await view.under("scope")
    if all_releases:
        rows = sorted((await view.under("release")).values(), key=lambda v: v["last_seq"])
    else:
        found = await view.many([f"release.{r}" for r in view.position["in_flight"]])
        rows = [found[f"release.{r}"] for r in view.position["in_flight"] if f"release.{r}" in found]
        if len(rows) != len(view.position["in_flight"]):
            raise _Moved()
    return {
        "scopes": [
            v["scope"]
            for v in sorted(
                scopes.values(), key=lambda v: (v["scope"]["env"], v["scope"]["channel"], v["scope"]["cohort"])
            )
        ],
        "releases": [v["row"] for v in rows],
        "log_seq": view.seq,
        "ignored": view.position["ignored"],
        "ignored_total": view.position.get("ignored_total", len(view.position["ignored"])),  # older writers
    }


async def channel(view: View, env: str, name: str) -> dict[str, Any] | None:
    """The channel's value: `show` (`kxr channel show --json`) and its `cohorts`; None if never configured."""
    return await view.get(f"channel.{env}.{name}")


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# An index row of one release (read_models.index_row): what `kxr release list` filters and orders by.
SEQ, ID, TARGET, CLOSED, OUTCOME, REQUESTED_AT, CLOSED_AT, LAST_SEQ = range(8)


def matches(row: list[Any], channel, outcome: str | None, since: datetime | None) -> bool:
    """services/reads/history.py `matches`, on an index row."""
    closed = row[CLOSED]
    if channel is not None:
        target = row[TARGET].split("/") if row[TARGET] else None
        if target is None or target[1] != channel[1] or channel[0] not in (None, target[0]):
            return False
    if outcome is not None:
        if outcome == "in-flight":
            if closed:
                return False
        elif not closed or row[OUTCOME] != outcome:
            return False
    if since is not None:
        requested = row[REQUESTED_AT]
        if not (
            (requested is not None and _time(requested) >= since)
            or not closed
            or (row[CLOSED_AT] is not None and _time(row[CLOSED_AT]) >= since)
        ):
            return False
    return True


def select(rows: list[list[Any]], channel, outcome: str | None, since: datetime | None, limit: int) -> list[str]:
    """services/reads/history.py `select`, on index rows: the ids of the newest `limit` that match."""
    chosen = sorted((r for r in rows if matches(r, channel, outcome, since)), key=lambda r: r[SEQ], reverse=True)
    return [r[ID] for r in chosen[: max(limit, 0)]]


class Listed(dict):
    """seq -> why: the newest entries a fold noted as counting for nothing, and `total`, how many in all
    (a `projections.snapshot.Noted` as the read models carry it; this read path loads no event model)."""

    total = 0


def ignored_of(position: dict[str, Any]) -> Listed:
    """The entries the writer's fold noted as counting for nothing (the newest listed, how many in
    all), as a fold of the log reports them: a reader of the models says so too, never nothing."""
    listed = Listed((int(item["seq"]), str(item["why"])) for item in position.get("ignored") or [])
    listed.total = max(len(listed), int(position.get("ignored_total", len(listed))))
    return listed


async def release_list(view: View, channel, outcome: str | None, since: datetime | None, limit: int):
    """(the newest `limit` summaries that match, newest first; how many releases the log holds).

    The index is sharded by the log sequence of each release's first event (`index.<n>`, newest
    shard first): reading stops at the shard that fills `limit`, so the newest releases cost one
    shard whatever the history's length (a filter that matches little reads more of them)."""
    ids: list[str] = []
    for shard in sorted(view.position["shards"], reverse=True):
        value = await view.get(f"index.{shard}")
        if value is None:
            raise _Moved()
        ids += select(value["rows"], channel, outcome, since, limit - len(ids))
        if len(ids) >= limit:
            break
    found = await view.many([f"release.{r}" for r in ids])
    if len(found) != len(ids):
        raise _Moved()
    return [found[f"release.{r}"]["summary"] for r in ids], view.position["releases"]


async def release_matches(
    view: View, channel, outcome: str | None, since: datetime | None, limit: int, kept: dict | None = None
):
    """(the newest `limit` summaries that match, newest first; how many match): `release_list` with a
    count, so every shard of the index is needed (the dashboard's /history says how many match).
    `kept`: shard -> (its seq, its rows) from earlier reads, updated here (`_shards`)."""
    shards = await _shards(view, kept)
    rows = [row for n in view.position["shards"] for row in shards[n]]
    ids = select(rows, channel, outcome, since, len(rows))
    found = await view.many([f"release.{r}" for r in ids[:limit]])
    if len(found) != len(ids[:limit]):
        raise _Moved()
    return [found[f"release.{r}"]["summary"] for r in ids[:limit]], len(ids)


async def _shards(view: View, kept: dict | None) -> dict[int, list[list[Any]]]:
    """Every index shard's rows. With `kept` (shard -> (seq, rows), the caller's across reads) only
    the shards whose `seq` the position names otherwise are read again: at 1M events the index is
    ~15 MB of JSON, of which a moving log changes the newest shard or two."""
    kept = {} if kept is None else kept
    seqs = view.position.get("shard_seqs") or {}  # an older writer names none: every shard is read
    shards = view.position["shards"]
    stale = [n for n in shards if n not in kept or str(n) not in seqs or kept[n][0] != seqs[str(n)]]
    found = await view.many([f"index.{n}" for n in stale])
    if len(found) != len(stale):
        raise _Moved()
    for n in stale:
        value = found[f"index.{n}"]
        kept[n] = (value["seq"], value["rows"])
    for n in set(kept) - set(shards):
        del kept[n]
    return {n: kept[n][1] for n in shards}
