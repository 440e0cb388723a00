"""A replay that keeps each closed release as a tombstone, and reads it back whole when touched. Pure.

A whole replay holds every release the log ever saw with the decoded evidence of its
lifecycle — about 3 KB an entry, 3 GB at a million entries — and at that size its fold ran
a third slower (issue 18: the replay at 1M). What an auditor's answer needs of a closed
release is its outcome (the summary); only an entry that reads the release again (an
operator's rollback after close, a pointer naming it, anything illegal) needs it whole. So
the replay (services/reads/audit.py) buries a release once it closed, and before each read
batch restores, from the release's own subjects, every buried release an entry of the batch
touches (`to_restore`). The answer is the whole fold's, by construction:

- every check and the fold read a release only by an id the entry names (`touched`), so a
  release is whole whenever an entry could look at it;
- a release's state depends on its own events alone (`log_reads.release_history`), so the
  one read back is the one the whole fold holds at that point;
- a release is buried only closed, with an outcome and no illegal transition (what `finish`
  reports of a release it holds whole). An atomic batch's pairing, judged when the batch ends,
  reads scopes only: each claim took its release's target when its own entry was folded.

tests/unit/test_audit_archive.py compares the two folds, violation for violation.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from events.model import Event, Requested, ScopeActivated

from .evolve import evolve
from .invariants import Audit
from .releases import ReleaseState
from .world import restore, tombstone


def touched(event: Event) -> Iterator[str]:
    """The releases whose state the checks and the fold read for this entry (`projections.invariants`,
    `projections.world.apply`): its own, and the one a pointer's data names (a hostile pointer's
    envelope may name another, or none).

    (A `promoted` event also reads the release it names, to mark it `promotion_confirmed_by`: a
    mark the preparer and the check `promotion_unrecorded` read only while that release is in flight.
    Named release buried, the whole fold marks a closed release and this one does not: the same
    answer. A request that names the release it was promoted from reads that one, for the same mark
    on itself, in flight: that source is read back.)"""
    if event.release_id:
        yield event.release_id
    data = event.data
    if isinstance(data, ScopeActivated) and data.release_id:
        yield data.release_id
    if isinstance(data, Requested) and data.promoted_from:
        yield data.promoted_from


def to_restore(audit: Audit, events: Iterable[Event | None]) -> list[str]:
    """The buried releases these entries touch, in a stable order: each is read back before they fold."""
    stones = audit.world.tombstones
    if not stones:
        return []
    return sorted({rid for e in events if e is not None for rid in touched(e) if rid in stones})


def restored(audit: Audit, state: ReleaseState) -> Audit:
    """`audit` with a buried release whole again (`state`: its own events folded, up to where the audit is)."""
    return evolve(audit, {"world": restore(audit.world, state)})


def closed_in(events: Iterable[Event | None]) -> set[str]:
    """The releases these entries closed (candidates for `bury`)."""
    return {e.release_id for e in events if e is not None and e.type == "release.closed" and e.release_id}


def _buriable(state: ReleaseState) -> bool:
    # an illegal transition is reported by `finish` from the release whole: such a release stays whole
    return state.closed and state.outcome is not None and not state.anomalies


def bury(audit: Audit, candidates: Iterable[str]) -> Audit:
    """Each candidate (a release the read batch closed) that is still closed, and buriable, kept as a
    tombstone. One rolled back after close in the same read batch is left whole: it is a candidate
    again when it closes."""
    world = audit.world
    releases, stones = world.releases, world.tombstones
    for rid in candidates:
        state = releases.get(rid)
        if state is not None and _buriable(state):
            releases = releases.remove(rid)
            stones = stones.insert(rid, tombstone(state.last_seq, state.outcome))
    if releases is world.releases:
        return audit
    return evolve(audit, {"world": evolve(world, {"releases": releases, "tombstones": stones})})


def release_outcomes(audit: Audit) -> dict[str, int]:
    """How many releases ended each way (`<outcome>`, or `in flight (<phase>)`), buried ones included."""
    counts: dict[str, int] = {}
    for r in audit.world.releases.values():
        key = r.outcome or f"in flight ({r.phase})"
        counts[key] = counts.get(key, 0) + 1
    for stone in audit.world.tombstones.values():
        key = stone.outcome or "closed"  # (buried only with an outcome)
        counts[key] = counts.get(key, 0) + 1
    return counts
