"""The status read model: one row per scope and one per release, as JSON-able dicts (pure).

The dashboard's overview lists these (HTML in services/dashboard/pages.py). `kxr status`,
`kxr audit at` and `audit replay` print services/reads/shapes.py's models instead (the JSON
shapes of issue 16: lkg a pack object, RFC 3339 times), and their tables format those.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only annotations: `kxr --help` stays free of the projections' imports
    from projections.world import World


def timestamp(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def scope_rows(world: World) -> list[dict[str, Any]]:
    rows = []
    for key in sorted(world.scopes.keys()):
        s = world.scopes[key]
        rows.append(
            {
                "scope": "/".join(key),
                "version": s.active_pack.version if s.active_pack else None,
                "digest": s.active_pack.digest if s.active_pack else None,
                "kind": s.active.kind if s.active else None,
                "release": s.active.release_id if s.active else None,
                "since": timestamp(s.active_since) if s.active_since else None,
                "lkg": s.lkg.version if s.lkg else None,
                "pinned": f"{s.pin.pack.version} until {timestamp(s.pin.until)}" if s.pin else None,
                "flag": f"{s.flag.code}: {s.flag.message}"
                if s.flag
                else None,  # the guard's (services/consumers/guard.py)
            }
        )
    return rows


def release_rows(world: World, in_flight_only: bool) -> list[dict[str, Any]]:
    rows = []
    for r in sorted(world.releases.values(), key=lambda r: r.last_seq):
        if in_flight_only and not r.in_flight:
            continue
        stages = len(r.stages)
        rows.append(
            {
                "release": r.release_id,
                "pack": f"{r.pack.name}@{r.pack.version}" if r.pack else None,
                "target": f"{r.requested.target.env}/{r.requested.target.channel}" if r.requested else None,
                "phase": f"{r.phase}{' (paused)' if r.paused else ''}",
                "stage": f"{r.stage + 1}/{stages}" if stages else "-",
                "outcome": r.outcome,
                "why": r.failure,
            }
        )
    return rows
