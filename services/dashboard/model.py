"""What the dashboard shows, as JSON-able dicts built from the fold (pure: no IO, time is an argument).

The rows come from `services/cli/views.py` (the same rows `kxr status` prints); this module
only groups them the way the pages show them and adds what a browser needs on top: the
monitoring window of each release in flight (start, end, elapsed fraction) and its figures.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rpds import HashTrieMap

from projections.releases import ReleaseState
from projections.world import World
from services.cli.views import release_rows, scope_rows


def window_of(release: ReleaseState, now: datetime) -> dict[str, Any] | None:
    """The release's latest monitoring window: open (elapsed so far) or closed with its verdict."""
    started = release.monitoring
    if started is None:
        return None
    verdict = next((v for suffix, v in reversed(release.verdicts) if v.stage == started.stage), None)
    result = next((suffix.removeprefix("monitoring_") for suffix, v in reversed(release.verdicts) if v.stage == started.stage), None)
    length = (started.ends_at - started.starts_at).total_seconds()
    elapsed = (now - started.starts_at).total_seconds()
    fraction = 1.0 if verdict is not None or length <= 0 else min(max(elapsed / length, 0.0), 1.0)
    return {
        "stage": started.stage,
        "cohorts": list(started.cohorts),
        "starts_at": started.starts_at.isoformat(),
        "ends_at": started.ends_at.isoformat(),
        "open": verdict is None,
        "elapsed_fraction": round(fraction, 4),
        "result": result,
        "samples": verdict.samples if verdict else None,
        "figures": [c.model_dump(mode="json") for c in verdict.comparisons] if verdict else [],
    }


def scope_groups(world: World) -> list[dict[str, Any]]:
    """Scopes grouped env -> channel, each with its cohorts (active pack + since, pin with expiry, LKG)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in scope_rows(world):
        env, channel, cohort = row["scope"].split("/")
        groups.setdefault((env, channel), []).append({**row, "cohort": cohort})
    return [{"env": env, "channel": channel, "cohorts": cohorts} for (env, channel), cohorts in sorted(groups.items())]


def overview(world: World, now: datetime) -> dict[str, Any]:
    releases = []
    for row in release_rows(world, in_flight_only=True):
        state = world.release(row["release"])
        assert state is not None  # the rows come from this world
        releases.append({**row, "window": window_of(state, now)})
    recent = [row for row in release_rows(world, in_flight_only=False) if row["outcome"] is not None][-20:]
    return {"log_seq": world.applied_seq, "scopes": scope_groups(world), "releases": releases, "recent": list(reversed(recent))}


def release_summary(world: World, release_id: str, now: datetime) -> dict[str, Any] | None:
    """The release's row (phase, stage, outcome, why) and window, or None if the log never named it."""
    state = world.release(release_id)
    if state is None:
        return None
    [row] = release_rows(World(releases=HashTrieMap({release_id: state})), in_flight_only=False)  # its row alone, not every release's
    return {**row, "stages": [list(s) for s in state.stages], "activated": list(state.activated), "window": window_of(state, now)}
