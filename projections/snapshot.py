"""A World as bytes and back: snapshots that let a restart read snapshot + tail.

JSON through pydantic (never pickle: a snapshot is data, loading one must not run
code). The snapshot records the stream sequence it has applied, and carries a format
version: anything unreadable, or of another format, is ignored and the log is replayed
from sequence 1 instead, which is always correct, only slower.

Tombstones (closed releases in a service's world) are plain `[id, last_seq, outcome]`
rows: a snapshot of a long history loads in the time it takes to read them, and only the
releases still in flight go through the full models.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError
from rpds import HashTrieMap, HashTrieSet

from .releases import ReleaseState
from .scopes import ScopeState
from .world import ChannelProblem, ChannelState, World, tombstone

FORMAT = 3  # 2: tombstones; 3: pointer chain (scope generation and last pointer digest)


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


_ADAPTER = TypeAdapter(WorldImage)


def dump_world(world: World) -> bytes:
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
    )
    return zlib.compress(_ADAPTER.dump_json(image), 6)


def load_world(blob: bytes) -> World | None:
    """The World in a snapshot, or None if it cannot be trusted to be one of ours."""
    try:
        image = _ADAPTER.validate_json(zlib.decompress(blob))
    except (zlib.error, ValidationError, ValueError):
        return None
    if image.format != FORMAT:
        return None
    return World(
        applied_seq=image.applied_seq,
        releases=HashTrieMap(image.releases),
        scopes=HashTrieMap({s.key: s for s in image.scopes}),
        channels=HashTrieMap(dict(image.channels)),  # keys validated as tuple[str, str] already
        in_flight=HashTrieSet(image.in_flight),
        trust_rotations=tuple((seq, doc) for seq, doc in image.trust_rotations),
        tombstones=HashTrieMap({rid: tombstone(seq, outcome) for rid, seq, outcome in image.tombstones}),
        channel_problems=HashTrieMap(dict(image.channel_problems)),
    )
