"""Release history: one summary per release ever requested, closed ones included (`kxr release list`).

A service's follower keeps a closed release only as a tombstone (its last sequence and
outcome: projections/world.py), too little for a history line (pack, target, owner, when).
So the history is its own light fold over release events only (no pointers, channels or
notifications), each release folded by the same `apply_release_event` the world uses,
plus the time it closed (the world keeps no such field). `HistoryFold` is pure and can be
fed by any reader (a follower's listener too); `load_history` is the one-off reader for
the CLI: an index of three events per release, then the chosen releases whole.

Output of `summary` (fields are only ever added):

    {
      "release_id": str,
      "pack": {"name", "version", "digest": "sha256:…"} | null,
      "target": "env/channel" | null, "owner": str | null,
      "phase": str | null, "paused": bool,
      "outcome": "success" | "promoted_by_override" | "rolled_back" | "pinned" | "aborted"
                 | "rejected" | "failed" | null (in flight),
      "requested_at", "closed_at": RFC 3339 | null,
      "stages": {"passed": int, "total": int},   # stages whose window passed (an operator's pass too)
      "promoted_to", "promoted_from": release id | null,
      "why": str | null,                         # why it stopped or failed, if it did
      "seq": int                                 # log sequence of its first event (the order: newest first)
    }
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from events.model import Event
from events.subjects import Subjects
from projections.position import Position
from projections.releases import ReleaseState, apply_release_event

if TYPE_CHECKING:  # `kxr release list` from the read models does not load the snapshot's models
    from projections.snapshot import Noted

OUTCOMES = ("success", "promoted_by_override", "rolled_back", "pinned", "aborted", "rejected", "failed")
IN_FLIGHT = "in-flight"
DEFAULT_LIMIT = 50
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True, slots=True)
class HistoryItem:
    """One release as the history knows it: its state (the world's fold), its first sequence, when it closed."""

    state: ReleaseState
    first_seq: int
    closed_at: datetime | None = None

    @property
    def target(self) -> tuple[str, str] | None:
        req = self.state.requested
        return (req.target.env, req.target.channel) if req else None


@dataclass
class HistoryFold:
    """Release events folded into one `HistoryItem` per release (pure; positions in log order)."""

    items: dict[str, HistoryItem] = field(default_factory=dict)
    applied_seq: int = 0

    def apply(self, position: Position, event: Event) -> None:
        if position.seq <= self.applied_seq:
            return
        self.applied_seq = position.seq
        if event.family != "release" or not event.release_id:
            return
        item = self.items.get(event.release_id)
        if item is None:
            item = HistoryItem(ReleaseState(release_id=event.release_id), position.seq)
        state = apply_release_event(item.state, position.seq, event)
        closed_at = item.closed_at
        if event.suffix == "closed" and state.closed:
            closed_at = event.occurred_at
        elif not state.closed:  # an operator's rollback after close reopens it
            closed_at = None
        self.items[event.release_id] = HistoryItem(state, item.first_seq, closed_at)

    def newest_first(self) -> list[HistoryItem]:
        return sorted(self.items.values(), key=lambda i: i.first_seq, reverse=True)


def fold_history(entries: Iterable[tuple[Position, Event]]) -> HistoryFold:
    fold = HistoryFold()
    for position, event in entries:
        fold.apply(position, event)
    return fold


# ---- filters ---------------------------------------------------------------------------------------
def parse_since(text: str, now: datetime) -> datetime:
    """`--since`: an RFC 3339 time with a timezone, or a duration back from `now` (`90s`, `30m`, `12h`, `7d`, `2w`).

    Raises ValueError with a one-line reason."""
    text = text.strip()
    unit = _UNITS.get(text[-1:].lower()) if text else None
    number = text[:-1]
    if unit is not None and number.isascii() and number.isdigit():  # isdigit alone takes '²', which int() refuses
        try:
            return now - timedelta(seconds=int(number) * unit)
        except (OverflowError, ValueError):  # before year 1 (datetime's range), or past int()'s digit limit
            raise ValueError(f"--since {text!r}: out of range (a duration back to year 1 at most)") from None
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since {text!r}: expected an RFC 3339 time or a duration like 7d, 12h, 30m") from None
    if at.tzinfo is None:
        raise ValueError(f"--since {text!r}: an RFC 3339 time needs a timezone (e.g. a trailing Z)")
    return at


def check_outcome(outcome: str) -> str:
    """One of `OUTCOMES` or `in-flight` (`in_flight`, the dashboard's spelling, too)."""
    if outcome == "in_flight":
        return IN_FLIGHT
    if outcome not in (*OUTCOMES, IN_FLIGHT):
        raise ValueError(f"--outcome {outcome!r}: expected one of {', '.join((*OUTCOMES, IN_FLIGHT))}")
    return outcome


Channel = tuple[str | None, str]  # (env, channel); env None: that channel in any env


@dataclass(frozen=True)
class Filter:
    """Which releases a history shows: `kxr release list` and the dashboard's /history, one rule."""

    channel: Channel | None = None
    outcome: str | None = None  # one of OUTCOMES or IN_FLIGHT
    since: datetime | None = None


def parse_channel(text: str) -> Channel:
    """`ENV/CHANNEL`, or `CHANNEL` alone (in any env). Raises ValueError with a one-line reason."""
    from events.tokens import InvalidToken, check_token

    parts = text.strip().split("/")
    try:
        if len(parts) == 2:
            return check_token(parts[0], "env"), check_token(parts[1], "channel")
        if len(parts) == 1:
            return None, check_token(parts[0], "channel")
    except InvalidToken:
        pass
    raise ValueError(f"--channel {text!r}: expected ENV/CHANNEL or CHANNEL")


def parse_filter(
    channel: str | None = None, outcome: str | None = None, since: str | None = None, *, now: datetime
) -> Filter:
    """The filter from its three texts (None or blank: any). Raises ValueError with a one-line reason."""

    def given(text: str | None) -> str | None:
        return text.strip() or None if text is not None else None

    channel, outcome, since = given(channel), given(outcome), given(since)
    return Filter(
        parse_channel(channel) if channel else None,
        check_outcome(outcome) if outcome else None,
        parse_since(since, now) if since else None,
    )


def matches(
    item: HistoryItem,
    *,
    channel: Channel | None = None,
    outcome: str | None = None,
    since: datetime | None = None,
) -> bool:
    """Whether a release belongs in the list.

    `channel`: (env, channel), env None for that channel in any env. `since`: the releases
    of that period: requested at or after it, or still open at it (closed after it, or not
    closed yet)."""
    state = item.state
    if channel is not None:
        target = item.target
        if target is None or target[1] != channel[1] or channel[0] not in (None, target[0]):
            return False
    if outcome is not None:
        closed = state.closed
        if outcome == IN_FLIGHT:
            if closed:
                return False
        elif not closed or state.outcome != outcome:
            return False
    if since is not None:
        requested = state.requested_at
        if not (
            (requested is not None and requested >= since)
            or not state.closed
            or (item.closed_at is not None and item.closed_at >= since)
        ):
            return False
    return True


def matching(items: Iterable[HistoryItem], flt: Filter) -> list[HistoryItem]:
    """Every release that matches `flt`, newest (by first log sequence) first."""
    chosen = [i for i in items if matches(i, channel=flt.channel, outcome=flt.outcome, since=flt.since)]
    chosen.sort(key=lambda i: i.first_seq, reverse=True)
    return chosen


def select(
    items: Iterable[HistoryItem],
    *,
    channel: Channel | None = None,
    outcome: str | None = None,
    since: datetime | None = None,
    limit: int = DEFAULT_LIMIT,
) -> list[HistoryItem]:
    """The newest `limit` releases that match, newest (by first log sequence) first."""
    return matching(items, Filter(channel, outcome, since))[: max(limit, 0)]


# ---- the summary ----------------------------------------------------------------------------------
def rfc3339(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with `Z` and microseconds (the evidence record's and `kxr watch`'s form)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if value else None


def stages_passed(state: ReleaseState) -> int:
    return len({v.stage for kind, v in state.verdicts if kind == "monitoring_passed"})


def summary(item: HistoryItem) -> dict[str, Any]:
    state = item.state
    req = state.requested
    pack = state.pack
    return {
        "release_id": state.release_id,
        "pack": {"name": pack.name, "version": pack.version, "digest": pack.digest} if pack else None,
        "target": f"{req.target.env}/{req.target.channel}" if req else None,
        "owner": req.owner if req else None,
        "phase": state.phase,
        "paused": state.paused,
        "outcome": state.outcome if state.closed else None,
        "requested_at": rfc3339(state.requested_at),
        "closed_at": rfc3339(item.closed_at) if state.closed else None,
        "stages": {"passed": stages_passed(state), "total": len(state.stages)},
        "promoted_to": state.promoted.promoted_to if state.promoted else None,
        "promoted_from": req.promoted_from if req else None,
        "why": state.failure,
        "seq": item.first_seq,
    }


def table_row(s: dict[str, Any]) -> dict[str, Any]:
    """A summary as short table cells (the terminal's `kxr release list`, meant to fit 80 columns):
    the request time without the year, how long it took to close (`--json` has both times whole)."""
    pack = s["pack"]
    stages = s["stages"]
    return {
        "release": s["release_id"],
        "pack": f"{pack['name']}@{pack['version']}" if pack else None,
        "target": s["target"],
        "outcome": s["outcome"] or f"({s['phase'] or '?'}{', paused' if s['paused'] else ''})",
        "stages": f"{stages['passed']}/{stages['total']}",
        "requested": f"{s['requested_at'][5:10]} {s['requested_at'][11:16]}" if s["requested_at"] else None,
        "took": _took(s["requested_at"], s["closed_at"]),
    }


def _took(start: str | None, end: str | None) -> str | None:
    if not start or not end:
        return None
    seconds = int((_parse(end) - _parse(start)).total_seconds())
    if seconds < 0:
        return None  # clocks of different writers
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d"


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# ---- reading the log -----------------------------------------------------------------------------
# The events that decide whether a release matches a filter: its request (target, time, order),
# its close (outcome, time) and a rollback after close (open again). Folded alone they give
# every release's `matches` exactly as its whole fold does (tests/unit/test_history.py).
INDEX_EVENTS = ("requested", "closed", "rollback_started")
WHOLE_READS_AT_ONCE = 8


@dataclass(frozen=True)
class History:
    items: list[HistoryItem]  # the selected releases, whole, newest first
    total: int  # releases in the log
    # log seq -> why an entry it read counted for nothing (an unsigned service event, or one that does not
    # decode): the newest IGNORED_SHOWN, and `ignored.total`, how many in all (anyone may append junk)
    ignored: Noted


async def load_history(
    js,
    subjects: Subjects,
    service_keys=None,
    *,
    channel: Channel | None = None,
    outcome: str | None = None,
    since: datetime | None = None,
    limit: int = DEFAULT_LIMIT,
) -> History:
    """The newest `limit` releases that match, each folded whole from its own subjects.

    Two steps, so the cost grows with three events per release and `limit` whole releases,
    not with the whole log: the index (`INDEX_EVENTS`, one single-subject read each: a
    server filters one wildcard subject from its index, where a consumer with several
    filters scans the stream), then the chosen releases' own subjects. With `service_keys`,
    an event claiming a service actor that no service key trusted for its role signed
    counts for nothing (as in `kxr status`); an entry that does not decode too, and both are listed."""
    import asyncio
    import heapq

    from projections.snapshot import Noted
    from services.reads.shapes import IGNORED_SHOWN

    ignored = Noted(IGNORED_SHOWN)
    reads = [
        _read(js, subjects, f"{subjects.prefix}.release.*.{suffix}", service_keys, ignored) for suffix in INDEX_EVENTS
    ]
    index = fold_history(heapq.merge(*await asyncio.gather(*reads), key=lambda pe: pe[0].seq))
    chosen = select(index.items.values(), channel=channel, outcome=outcome, since=since, limit=limit)
    gate = asyncio.Semaphore(WHOLE_READS_AT_ONCE)

    async def whole(release_id: str) -> HistoryItem | None:
        async with gate:
            # its index events were noted by the index's reads: each entry is counted once
            entries = await _read(
                js, subjects, subjects.release_filter(release_id), service_keys, ignored, noted=INDEX_EVENTS
            )
        return fold_history(entries).items.get(release_id)

    folded = await asyncio.gather(*(whole(i.state.release_id) for i in chosen))
    # the whole fold has the last word (a release that moved between the two reads)
    items = [i for i in folded if i is not None and matches(i, channel=channel, outcome=outcome, since=since)]
    return History(items, len(index.items), ignored)


async def _read(
    js, subjects: Subjects, flt: str, service_keys, ignored: Noted, noted: tuple[str, ...] = ()
) -> list[tuple[Position, Event]]:
    """The events on `flt` that count; those that do not (undecodable, or unsigned with `service_keys`)
    go to `ignored` with why, but for those on a suffix in `noted` (another read noted them)."""
    from projections.invariants import signature_problem
    from projections.snapshot import undecodable_why
    from services.jetstream.log_reads import log_batches, undecodable_reason

    out: list[tuple[Position, Event]] = []
    async for batch in log_batches(js, subjects, [flt]):
        for entry, position, event in batch:
            if event is None:
                if position.subject.rpartition(".")[2] not in noted:
                    ignored[position.seq] = undecodable_why(undecodable_reason(entry, subjects))
                continue
            if service_keys is not None:
                problem = signature_problem(service_keys, position.subject, event, entry.data, entry.headers)
                if problem:
                    if position.subject.rpartition(".")[2] not in noted:
                        ignored[position.seq] = f"{event.type} not signed by a service key: {problem}"
                    continue
            out.append((position, event))
    return out


async def load_fold(js, subjects: Subjects, service_keys=None) -> HistoryFold:
    """Every release's lifecycle events in the log, folded: where a live history (the dashboard's)
    starts before it follows the log (`HistoryFold.apply` skips what it has already applied)."""
    from projections.snapshot import Noted

    ignored = Noted(1)  # not shown: bounded
    return fold_history(await _read(js, subjects, f"{subjects.prefix}.release.*.*", service_keys, ignored))
