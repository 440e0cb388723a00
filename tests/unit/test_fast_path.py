"""The fast path's pure parts: how steps' decisions join into one batch, and where extending stops.

The steps here are fakes (pure logic only); tests/integration/test_fast_path.py runs the real consumers
against a real JetStream and checks the log tells the same story either way.
"""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

from rpds import HashTrieMap

from events.codec import make_event
from events.model import Actor, OperatorNote
from events.subjects import Subjects
from projections.releases import ReleaseState
from projections.world import World
from services.consumers.fast_path import Part, extend, joined
from services.consumers.outputs import Atomic, Chain, Ctx, Failed, Promotion, Timer
from services.observability.metrics import FAST_PATH

NOW = datetime(2026, 12, 6, tzinfo=UTC)
SERVICE = Actor(kind="service", id="test")


def note(text: str):
    return make_event("release.annotated", OperatorNote(rationale=text), actor=SERVICE, release_id="r1")


class Step:
    """A consumer as the fast path sees it: acts or not, observes (or fails), decides what it is given."""

    def __init__(
        self, name: str, decides, acts: bool = True, observes=None, fails_closed=None, joins: bool = True
    ) -> None:
        self.name = name
        self.port = SimpleNamespace(subjects=Subjects("kx"), ctx=lambda service: Ctx(NOW, service))
        self._decides, self._acts, self._observes, self._joins = decides, acts, observes, joins
        self._fails_closed = fails_closed if fails_closed is not None else []
        self.observed = 0

    def may_act(self, release) -> bool:
        return release is not None and self._acts

    def joins(self, world, release) -> bool:
        return self._joins

    async def observe(self, world, release, ctx):
        self.observed += 1
        if isinstance(self._observes, Exception):
            raise self._observes
        return self._observes

    def decide(self, world, release, facts, ctx):
        return list(self._decides)

    def fail_closed(self, world, release, failed, ctx):
        return list(self._fails_closed)

    def emitted(self, outputs) -> None:
        pass


WORLD = World(releases=HashTrieMap({"r1": ReleaseState(release_id="r1")}))
RELEASE = ReleaseState(release_id="r1")


def test_joined_puts_every_event_before_the_switch_that_they_earned_in_decision_order():
    a, b, c, d = note("a"), note("b"), note("c"), note("d")
    switch = Atomic((), (d,), "batch-1")
    timer = Timer("r1.0", NOW)
    parts = [
        Part(Step("p", []), [Chain((a, b))]),
        Part(Step("d", []), [Chain((c,))]),
        Part(Step("x", []), [switch, timer]),
    ]
    out = joined(parts)
    assert out == [Atomic((), (d,), "batch-1", (a, b, c)), timer]


def test_joined_without_a_switch_is_one_batch_of_release_events():
    a, b = note("a"), note("b")
    assert joined([Part(Step("p", []), [Chain((a,))]), Part(Step("d", []), [Chain((b,))])]) == [
        Atomic((), (), "", (a, b))
    ]


async def test_extend_goes_on_while_each_step_acts_and_decides_release_events():
    first, second = Step("d", [Chain(())]), Step("v", [Atomic((), (), "b")])
    parts = await extend(WORLD, RELEASE, [Chain(())], [first, second])
    assert [p.step for p in parts] == [first, second]


async def test_extend_stops_after_a_switch_and_at_a_step_that_does_not_act():
    switcher, after = Step("a", [Atomic((), (), "b")]), Step("m", [Chain(())])
    assert [p.step for p in await extend(WORLD, RELEASE, [Chain(())], [switcher, after])] == [switcher]
    assert after.observed == 0  # nothing is decided on a state that holds a switch not stored yet
    idle = Step("d", [Chain(())], acts=False)
    assert await extend(WORLD, RELEASE, [Chain(())], [idle]) == []
    assert idle.observed == 0


async def test_a_failed_observation_fails_closed_in_the_batch_and_ends_it():
    """As its own consumer would on its delivery (observe once; a failure is written at once), not
    observed a second time by that consumer (a verification past its deadline paid it twice)."""
    refusal = Chain((note("verification_failed"),))
    failed = Step("v", [Chain(())], observes=Failed("deadline", "too slow", "deadline"), fails_closed=[refusal])
    after = Step("a", [Atomic((), (), "b")])
    parts = await extend(WORLD, RELEASE, [Chain(())], [Step("d", [Chain(())]), failed, after])
    assert [(p.step.name, p.outputs) for p in parts] == [("d", [Chain(())]), ("v", [refusal])]
    assert failed.observed == 1 and after.observed == 0  # nothing is decided after a fail-closed event
    # where the lifecycle has no room for a fail-closed event, its consumer is left to it, as before
    no_room = Step("v", [Chain(())], observes=Failed("deadline", "too slow", "deadline"))
    assert await extend(WORLD, RELEASE, [Chain(())], [no_room]) == []


async def test_a_step_that_does_not_join_is_left_to_its_own_consumer_unobserved():
    long_read = Step("v", [Chain(())], joins=False)
    parts = await extend(WORLD, RELEASE, [Chain(())], [Step("d", [Chain(())]), long_read])
    assert [p.step.name for p in parts] == ["d"] and long_read.observed == 0


async def test_extend_leaves_a_raising_observation_to_the_steps_own_consumer():
    raising = Step("v", [Chain(())], observes=RuntimeError("store unreachable"))
    parts = await extend(WORLD, RELEASE, [Chain(())], [Step("d", [Chain(())]), raising])
    assert [p.step.name for p in parts] == ["d"]  # what came before it still goes


async def test_extend_joins_nothing_but_release_events_switches_and_timers():
    promoting = Step("p", [Promotion(note("n"), note("m"))])
    assert await extend(WORLD, RELEASE, [Chain(())], [promoting]) == []
    two_switches = Step("a", [Atomic((), (), "x"), Atomic((), (), "y")])
    assert await extend(WORLD, RELEASE, [Chain(())], [two_switches]) == []
    # and a decision that itself stores nothing in order (a timer alone, say) is not extended at all
    later = Step("d", [Chain(())])
    assert await extend(WORLD, RELEASE, [Timer("r1.0", NOW)], [later]) == [] and later.observed == 0


def _counted(step: str, outcome: str) -> float:
    return FAST_PATH.labels(step, outcome)._value.get()


async def test_every_step_tried_is_counted_by_what_became_of_it():
    """kx_fast_path_steps{step,outcome}: how often the path falls back to one step per delivery, and why."""
    kinds = (
        ("cd", "joined"),
        ("cv", "failed_closed"),
        ("cn", "not_acting"),
        ("cr", "raised"),
        ("cj", "not_joinable"),
        ("cl", "not_joining"),
    )
    before = {k: _counted(*k) for k in kinds}
    failing = Step("cv", [], observes=Failed("x", "y"), fails_closed=[Chain(())])
    await extend(WORLD, RELEASE, [Chain(())], [Step("cd", [Chain(())]), failing])
    await extend(WORLD, RELEASE, [Chain(())], [Step("cj", [Promotion(note("n"), note("m"))])])
    await extend(WORLD, RELEASE, [Chain(())], [Step("cl", [Chain(())], joins=False)])
    await extend(WORLD, RELEASE, [Chain(())], [Step("cn", [Chain(())], acts=False)])
    await extend(WORLD, RELEASE, [Chain(())], [Step("cr", [], observes=RuntimeError("gone"))])
    assert {k: _counted(*k) - v for k, v in before.items()} == {
        ("cd", "joined"): 1,
        ("cv", "failed_closed"): 1,
        ("cn", "not_acting"): 1,
        ("cr", "raised"): 1,
        ("cj", "not_joinable"): 1,
        ("cl", "not_joining"): 1,
    }
