"""Which events wake which consumer, and one decision at a time per release."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from projections.releases import PHASE_AFTER, triggers_for
from services.bootstrap import ROLE_CLASSES
from services.consumers.reactor import ReleaseReactor


def test_triggers_are_the_events_that_lead_into_the_phases_plus_resumed() -> None:
    assert triggers_for(frozenset({"requested"})) == ("requested", "resumed")
    assert set(triggers_for(frozenset({"monitoring"}))) == {"monitoring_started", "resumed"}
    assert set(triggers_for(frozenset({"held"}))) == {"monitoring_inconclusive", "escalated", "resumed"}
    with pytest.raises(ValueError):
        triggers_for(frozenset({"no-such-phase"}))


def test_every_phase_a_consumer_acts_in_is_one_the_fold_can_reach() -> None:
    reachable = {p for p in PHASE_AFTER.values() if p}
    for name, cls in ROLE_CLASSES.items():
        acts_in = getattr(cls, "acts_in", frozenset())
        assert acts_in <= reachable, name
        for phase in acts_in:  # each phase it acts in is entered by at least one event it receives
            assert any(PHASE_AFTER.get(t) == phase for t in triggers_for(acts_in)), (name, phase)


class _Recorder(ReleaseReactor):
    name = "recorder"

    def __init__(self, app) -> None:
        super().__init__(app)
        self.active: dict[str, int] = {}
        self.overlaps = 0
        self.decisions = 0
        self.most_at_once = 0

    async def observe(self, world, release, ctx):
        self.active[release] = self.active.get(release, 0) + 1
        if self.active[release] > 1:
            self.overlaps += 1
        self.most_at_once = max(self.most_at_once, sum(1 for n in self.active.values() if n))
        await asyncio.sleep(0.01)  # an I/O-bound observation (a pack read, say)
        self.active[release] -= 1
        return None

    def decide(self, world, release, facts, ctx):
        self.decisions += 1
        return []


def _app() -> SimpleNamespace:
    world = SimpleNamespace(release=lambda release_id: release_id)  # the "state" is the id itself

    async def catch_up() -> None:
        return None

    return SimpleNamespace(follower=SimpleNamespace(world=world, catch_up=catch_up), ctx=lambda name: None)


async def test_decisions_on_one_release_never_overlap_but_releases_run_together() -> None:
    reactor = _Recorder(_app())
    await asyncio.gather(*(reactor.settle(f"r{i % 4}") for i in range(16)))  # 4 releases x 4 triggers
    assert reactor.overlaps == 0 and reactor.decisions == 16
    assert reactor.most_at_once == 4  # different releases are decided on side by side
    assert reactor._deciding == {}  # nothing left behind
    assert not reactor.busy("r0")


def test_a_new_durable_starts_behind_junk_only_when_it_still_answers_it() -> None:
    """A brand-new preparer starts at the oldest junk request nobody answered yet; junk already answered
    (its release id now known) or that no consumer answers (not a request) does not pull it back, and
    other consumers only dead-letter junk, which the follower did already."""
    from events.codec import DecodeError
    from events.subjects import Subjects
    from projections.world import World, tombstone
    from services.consumers.preparer import Preparer
    from services.consumers.verifier import Verifier

    subjects = Subjects("kx")

    def junk(subject: str) -> DecodeError:
        problem = DecodeError("not JSON")
        problem.subject = subject
        return problem

    world = World(applied_seq=1000, tombstones=World().tombstones.insert("answered", tombstone(40, "rejected")))
    undecodable = {
        30: junk("kx.release.answered.requested"),  # answered since: `rejected` made the id known
        50: junk("kx.release.r9.verified"),  # not a request: dead-lettered, nobody answers it
        70: junk("kx.release.waiting.requested"),  # unanswered: the new preparer must see it
    }
    port = SimpleNamespace(follower=SimpleNamespace(world=world, undecodable=undecodable), subjects=subjects)
    assert Preparer(port).first_open_seq() == 70
    assert Verifier(port).first_open_seq() == 1001  # after the log as folded
    del undecodable[70]
    assert Preparer(port).first_open_seq() == 1001
