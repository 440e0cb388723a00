"""What the overview shows, as JSON-able dicts built from the fold (pure: no IO, time is an argument).

The rows come from `services/reads/status.py` (the same rows `kxr status` prints) and each
release's monitoring window from `services/reads/live_view.py` (what `kxr watch` shows); this
module only groups them the way the page shows them. The release page shows
`live_view.release_view` as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from projections.world import World
from services.reads.status import release_rows, scope_rows

RECENT = 20  # finished releases listed under the ones in flight


def scope_groups(world: World) -> list[dict[str, Any]]:
    """Scopes grouped env -> channel, each with its cohorts (active pack + since, pin with expiry, LKG)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in scope_rows(world):
        env, channel, cohort = row["scope"].split("/")
        groups.setdefault((env, channel), []).append({**row, "cohort": cohort})
    return [{"env": env, "channel": channel, "cohorts": cohorts} for (env, channel), cohorts in sorted(groups.items())]


def overview(world: World, now: datetime, windows: Mapping[str, dict[str, Any] | None]) -> dict[str, Any]:
    """`windows`: release id -> `live_view.window_view(...)` for the releases in flight."""
    rows = release_rows(world, in_flight_only=False)
    in_flight = [{**row, "window": windows.get(row["release"])} for row in rows if row["release"] in world.in_flight]
    recent = [row for row in rows if row["release"] not in world.in_flight][-RECENT:]
    return {
        "log_seq": world.applied_seq,
        "at": now.isoformat(),
        "scopes": scope_groups(world),
        "releases": in_flight,
        "recent": list(reversed(recent)),
    }
