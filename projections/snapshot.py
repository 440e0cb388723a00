"""A World as bytes and back: snapshots that let a restart read snapshot + tail.

JSON through pydantic (never pickle: a snapshot is data, loading one must not run
code). The snapshot records the stream sequence it has applied, and carries a format
version: anything unreadable, or of another format, is ignored and the log is replayed
from sequence 1 instead, which is always correct, only slower.

Tombstones (closed releases in a service's world) are plain `[id, last_seq, outcome]`
rows: a snapshot of a long history loads in the time it takes to read them, and only the
releases still in flight go through the full models.

Beside the world, a snapshot carries what the fold that wrote it knew and the world does not
hold: the entries that counted for nothing (`Noted`: the newest ones and how many in all), so a
restart lists what a whole fold lists, and which service keys that fold trusted (`keys`, their
fingerprint), so a process that trusts other keys does not start from it.
"""

from __future__ import annotations

import heapq
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError
from rpds import HashTrieMap, HashTrieSet

from .releases import ReleaseState
from .scopes import ScopeState
from .world import PROBLEM_REASON_MAX, ChannelProblem, ChannelState, World, tombstone

# 2: tombstones; 3: pointer chain (scope generation and last pointer digest); 4: the entries that
# counted for nothing and the service keys the fold trusted (a format 3 snapshot names no keys: it
# is not loaded, the log is replayed once); 5: a scope's LKG before the current one (`lkg_prior`) and the
# packs pulled there, and the folds of sessions 26 and 27 (a refused pin is no pinned prior; a rollback pulls its
# release's pack): a format 4 snapshot holds what the older folds made of the same log, so it is replayed once
FORMAT = 5


def undecodable_why(reason: str) -> str:
    """Why an entry that does not decode counts for nothing, as the folds list it beside ignored ones."""
    return f"undecodable: {reason}"


class Noted(Mapping[int, str]):
    """seq -> why an entry counts for nothing: the newest `keep` by sequence, and `total`, how many in all.

    Anyone who may append can make such entries (junk, a forged service event), so what a fold
    keeps of them, and every value or snapshot that carries them, must stay bounded: the oldest
    are dropped, the total still counts them. A why is cut to PROBLEM_REASON_MAX characters
    (a decode error can quote what it was given). Entries may be noted in any order.
    """

    __slots__ = ("keep", "total", "_whys", "_seqs")

    def __init__(self, keep: int, items: Iterable[tuple[int, str]] = (), total: int = 0) -> None:
        if keep < 1:
            raise ValueError("a Noted keeps at least one entry")
        self.keep = keep
        self.total = 0
        self._whys: dict[int, str] = {}
        self._seqs: list[int] = []  # a heap of the kept sequences: the oldest is dropped first
        for seq, why in items:
            self[seq] = why
        self.total = max(self.total, total)

    def __setitem__(self, seq: int, why: str) -> None:
        why = why[:PROBLEM_REASON_MAX]
        if seq in self._whys:
            self._whys[seq] = why
            return
        self.total += 1
        if len(self._whys) >= self.keep and seq < self._seqs[0]:
            return  # older than every one kept: counted, not kept
        self._whys[seq] = why
        heapq.heappush(self._seqs, seq)
        if len(self._whys) > self.keep:
            del self._whys[heapq.heappop(self._seqs)]

    def __getitem__(self, seq: int) -> str:
        return self._whys[seq]

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self._whys))

    def __len__(self) -> int:
        return len(self._whys)

    def copy(self) -> Noted:
        return Noted(self.keep, self._whys.items(), self.total)

    def __repr__(self) -> str:
        return f"Noted(keep={self.keep}, total={self.total}, {dict(sorted(self._whys.items()))!r})"


@dataclass
class WorldImage:
    format: int
    applied_seq: int
    releases: dict[str, ReleaseState]
    scopes: list[ScopeState]
    channels: list[tuple[tuple[str, str], ChannelState]]
    in_flight: list[str]
    trust_rotations: list[tuple[int, dict[str, Any]]]
    tombstones: list[tuple[str, int, str | None]]
    # optional, so a snapshot written before it existed still loads
    channel_problems: list[tuple[tuple[str, str], ChannelProblem]] = field(default_factory=list)
    keys: str | None = None  # the fingerprint of the service keys the fold trusted (None: unchecked)
    ignored: list[tuple[int, str]] = field(default_factory=list)  # the newest noted, oldest first
    ignored_total: int = 0


@dataclass(frozen=True)
class Snapshot:
    """A snapshot read back: the world, the service keys its fold trusted, what it noted as counting for nothing."""

    world: World
    keys: str | None
    ignored: list[tuple[int, str]]
    ignored_total: int


_ADAPTER = TypeAdapter(WorldImage)


def dump_world(world: World, keys: str | None = None, ignored: Noted | None = None) -> bytes:
    """The world as a snapshot; `keys`: the fingerprint of the service keys it was folded under."""
    image = WorldImage(
        format=FORMAT,
        applied_seq=world.applied_seq,
        releases=dict(world.releases.items()),
        scopes=[world.scopes[k] for k in sorted(world.scopes.keys())],
        channels=sorted(world.channels.items()),
        in_flight=sorted(world.in_flight),
        trust_rotations=list(world.trust_rotations),
        tombstones=sorted((rid, t.last_seq, t.outcome) for rid, t in world.tombstones.items()),
        channel_problems=sorted(world.channel_problems.items()),
        keys=keys,
        ignored=list(ignored.items()) if ignored is not None else [],
        ignored_total=ignored.total if ignored is not None else 0,
    )
    return zlib.compress(_ADAPTER.dump_json(image), 6)


def load_world(blob: bytes) -> World | None:
    """The World in a snapshot, or None if it cannot be trusted to be one of ours."""
    snapshot = load_snapshot(blob)
    return snapshot.world if snapshot is not None else None


def load_snapshot(blob: bytes) -> Snapshot | None:
    """The snapshot in `blob`, or None if it cannot be trusted to be one of ours."""
    try:
        image = _ADAPTER.validate_json(zlib.decompress(blob))
    except (zlib.error, ValidationError, ValueError):
        return None
    if image.format != FORMAT:
        return None
    world = World(
        applied_seq=image.applied_seq,
        releases=HashTrieMap(image.releases),
        scopes=HashTrieMap({s.key: s for s in image.scopes}),
        channels=HashTrieMap(dict(image.channels)),  # keys validated as tuple[str, str] already
        in_flight=HashTrieSet(image.in_flight),
        trust_rotations=tuple((seq, doc) for seq, doc in image.trust_rotations),
        tombstones=HashTrieMap({rid: tombstone(seq, outcome) for rid, seq, outcome in image.tombstones}),
        channel_problems=HashTrieMap(dict(image.channel_problems)),
    )
    return Snapshot(world, image.keys, image.ignored, max(image.ignored_total, len(image.ignored)))
