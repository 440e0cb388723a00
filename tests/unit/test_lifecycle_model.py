"""Model-based test of the whole release lifecycle (issue 13, "How to prove it").

A hypothesis state machine drives the real decide functions and folds (no NATS; see
lifecycle_model_support.Lifecycle for the IO facts it hands them) through random
interleavings: requests, health samples of every shape (missing metrics, refusals, old
digests, extreme values, late and early timestamps), timers and their redeliveries, stale
decisions that lose their race, operator verbs, pins and expiry, trust rotations, channel
changes and packs vanishing from the store. After every step the safety invariants of
`projections.invariants` (the auditor's own code) and the model's own checks must hold.

Deterministic in CI (derandomized); KX_MODEL_STEPS=200000 runs longer, e.g.
    KX_MODEL_STEPS=200000 .venv/bin/python -m pytest tests/unit/test_lifecycle_model.py -q
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from events.manifest import pack_object_name
from projections.invariants import finish
from projections.releases import STALE_PASS
from projections.world import World, apply
from services.consumers.outputs import Promotion

from .archive_support import assert_archiving_agrees
from .lifecycle_model_support import (
    CHANNELS,
    COHORTS,
    CONSUMERS,
    ENV,
    PACK_BY_DIGEST,
    PACKS,
    SAMPLE_KINDS,
    SUBJECTS,
    THRESHOLDS,
    WINDOWS,
    Lifecycle,
)

# Invariants today's code is known to break, each fixed on another branch of issue 13. The
# machine tolerates exactly these (their minimal examples are xfail-strict regression tests in
# test_model_regressions.py); empty this set once those branches are merged.
# Known violations the model tolerates while a fix is pending (an invariant code, or "code: words
# of its message"). Empty: every invariant holds; a new counter-example gets a regression test in
# test_model_regressions.py and a fix, not an entry here.
PENDING: dict[str, str] = {}


def pending(violation) -> bool:
    """Whether a violation is a known, pending one: its code, or "code: words of its message"."""
    return any(
        key == violation.code or (key.startswith(violation.code + ": ") and key.split(": ", 1)[1] in violation.message)
        for key in PENDING
    )


if os.environ.get("KX_MODEL_STRICT"):  # see what PENDING hides: every invariant, no exceptions
    PENDING = {}

STEP_COUNT = int(os.environ.get("KX_MODEL_STEPS", "20000"))  # rule steps in one CI run (each followed by every check)
STEPS_PER_RUN = 100
CHECKS = [0, 0]  # invariant checks, runs (a run's first check follows its initialisation, not a step)
# States the machine must reach in a run, each counted where a rule drives into it: a generator that
# stops reaching one proves nothing about it, so the test fails rather than passes vacuously.
REACHED: Counter[str] = Counter()
PULLED_LKG = "a rollback started of a release whose pack was a cohort's last-known-good"
SWAPPED = "a rollback or expansion held: its target's name re-pointed at other bytes of its size"
MUST_REACH = (
    "refusal in an earlier stage's cohort while a later stage is watched",
    "a release's steps stored in one atomic batch (fast path)",
    "a stalled verification failed closed in the fast path's batch",
    "a closed release read back whole by the archiving replay",
    "a release promoted to stable",
    "a promotion withheld: stable watches no longer than the canary",
    "a promotion decided while an operator aborted or paused the release",
    "an operator's rollback raced by a pin before it landed",
    "a switch refused: pinned after the verification",
    "a switch refused: the trust root dropped the signer",
    "a paused release resumed",
    "a settled scope flagged by the guard",
    "a rollout rolled back by the guard",
    "a rollout's cohorts reconfigured under it",
    "a new cohort brought in by a release of its own",
    "a pass the channel outran, held by the promoter",
    PULLED_LKG,
    SWAPPED,
    "a rollback left a cohort another release had taken over",
)

VERBS = ("pause", "resume", "abort", "promote", "extend", "rollback", "annotate", "close")
releases = st.integers(min_value=0, max_value=15)


def _rollback_stories(log: list) -> tuple[int, int]:
    """Rollbacks that started while their release's pack was the last-known-good of a cohort it switched
    (where `lkg_pulled` has something to check), and rollbacks that left a cohort another release's rollout had
    taken over (`activator.taken_over`)."""
    world, pulled, left = World(), 0, 0
    for position, event in log:
        if event is None:
            continue
        release = world.release(event.release_id or "") if event.family == "release" else None
        if release is not None and release.pack is not None and release.prepared is not None:
            where = release.prepared.target
            scopes = {c: world.scope(where.env, where.channel, c) for c in release.activated}
            if event.type == "release.rollback_started":
                pulled += any(s.lkg is not None and s.lkg.digest == release.pack.digest for s in scopes.values())
            elif event.type == "release.rolled_back":
                left += any(
                    s.active is not None
                    and s.active.kind == "rollout"
                    and s.active.release_id not in (None, release.release_id)
                    and s.active.pack.digest != release.pack.digest
                    for s in scopes.values()
                )
        world = apply(world, position, event)
    return pulled, left


class LifecycleMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.m = Lifecycle()
        self.stale: list[tuple[list, object]] = []
        self.slow = False  # a slow service: consumers move only in explicit steps (races, interleavings)

    def after(self) -> None:
        """The service reacts to what just happened (unless it is slow: then only explicit steps move)."""
        if not self.slow:
            self.m.settle()

    @rule()
    def service_speed(self) -> None:
        self.slow = not self.slow

    @rule()
    def service_split(self) -> None:
        """The path's consumers in one process (the fast path: a step's decision goes on through the next
        ones', stored in one batch) or split (`kxr serve --only`, KX_FAST_PATH=off): one step at a time."""
        self.m.fast = not self.m.fast

    @rule()
    def verification_stalls(self) -> None:
        """The verifier's reads cannot finish within its deadline (or can again): it fails closed on that
        one observation, with the fast path in the batch of the steps before it."""
        self.m.verify_stalls = not self.m.verify_stalls

    def teardown(self) -> None:
        # the auditor's replay keeps closed releases as tombstones: it must say what the whole fold said
        REACHED["a closed release read back whole by the archiving replay"] += assert_archiving_agrees(
            self.m.log, SUBJECTS, finish(self.m.audit)
        )
        REACHED["a release's steps stored in one atomic batch (fast path)"] += self.m.path_batches
        REACHED["a stalled verification failed closed in the fast path's batch"] += self.m.stalled_in_batches
        events = [event for _, event in self.m.log if event is not None]
        REACHED["a release promoted to stable"] += sum(e.type == "release.promoted" for e in events)
        REACHED["a promotion withheld: stable watches no longer than the canary"] += sum(
            e.type == "release.closed" and "withheld: prod/stable watches" in e.data.summary for e in events
        )
        refused = Counter(e.data.code for e in events if e.type == "release.activation_failed")
        REACHED["a switch refused: pinned after the verification"] += refused["smallest_scope_pinned"]
        REACHED["a switch refused: the trust root dropped the signer"] += refused["pack_no_longer_valid"]
        REACHED["a paused release resumed"] += sum(e.type == "release.resumed" for e in events)
        REACHED["an expansion held: a rollback target no longer ready"] += sum(
            e.type == "release.escalated" and e.data.code == "rollback_not_ready" for e in events
        )
        REACHED["a pass the channel outran, held by the promoter"] += sum(
            e.type == "release.escalated" and e.data.code == STALE_PASS for e in events
        )
        REACHED["a settled scope flagged by the guard"] += sum(e.type == "scope.flagged" for e in events)
        REACHED["a rollout rolled back by the guard"] += sum(
            e.type == "release.rollback_started" and e.actor.id == "guard" for e in events
        )
        pulled, left = _rollback_stories(self.m.log)
        REACHED[PULLED_LKG] += pulled
        REACHED[SWAPPED] += sum("holds other bytes" in e.data.model_dump_json() for e in events)
        REACHED["a rollback left a cohort another release had taken over"] += left

    def _release(self, pick: int) -> str | None:
        """The newest release first (pick 0): the older ones have mostly ended."""
        ids = sorted(
            self.m.world.releases.keys(),
            key=lambda r: (self.m.world.releases[r].requested_at or self.m.now, r),
            reverse=True,
        )
        return ids[pick % len(ids)] if ids else None

    @initialize(
        thresholds=st.integers(0, len(THRESHOLDS) - 1),
        min_samples=st.sampled_from([1, 2]),
        promote=st.booleans(),
        history=st.sampled_from(["none", "canary", "both", "two"]),
        stable_window=st.sampled_from([120, 120, 60]),
    )
    def channels(self, thresholds: int, min_samples: int, promote: bool, history: str, stable_window: int) -> None:
        """Both channels configured; the canary (or both) already ran a pack that passed (their LKG);
        "two": the canary ran 1.0.0, then 1.1.0 (its LKG now), both verified there (pins can name either).
        Stable mostly watches longer than the canary (60 s), sometimes not: that promotion is withheld."""
        CHECKS[1] += 1
        self.m.configure("canary", thresholds=thresholds, min_samples=min_samples)
        self.m.configure("stable", thresholds=thresholds, min_samples=min_samples, window_s=stable_window)
        for channel in {"none": (), "canary": ("canary",), "both": CHANNELS, "two": ("canary",)}[history]:
            self.m.bootstrap(channel, PACKS[0])
        if history == "two":
            self.m.request(PACKS[1])
            self.m.settle()
            self.m.healthy_window()
            self.m.healthy_window()
        if promote:
            self.m.configure("canary", thresholds=thresholds, min_samples=min_samples, promote=True)

    # -- producer and consumers --------------------------------------------------------------------
    @rule(
        pack=st.integers(0, len(PACKS) - 1),
        channel=st.sampled_from(CHANNELS),
        strategy=st.sampled_from(["lkg", "pinned", "lkg", "pinned", "none"]),
        ack=st.sampled_from([True, True, False]),
    )
    def request(self, pack: int, channel: str, strategy: str, ack: bool) -> None:
        self.m.request(PACKS[pack], channel, strategy, acknowledge_no_health=ack)
        self.after()

    @rule()
    def settle(self) -> None:
        self.m.settle()

    @rule(consumer=st.sampled_from(sorted(CONSUMERS)), pick=releases)
    def one_consumer(self, consumer: str, pick: int) -> None:
        rid = self._release(pick)
        if rid:
            self.m.step(consumer, rid)

    @rule(consumer=st.sampled_from(sorted(CONSUMERS)), pick=releases)
    def decide_now_commit_later(self, consumer: str, pick: int) -> None:
        """A decision whose append is delayed (a slow instance): it lands only if nothing moved since."""
        rid = self._release(pick)
        if rid:
            self.stale.append((self.m.decide(consumer, rid), self.m.world))

    @precondition(lambda self: bool(self.stale))
    @rule(which=st.integers(0, 7), again=st.booleans())
    def commit_late(self, which: int, again: bool) -> None:
        index = which % len(self.stale)
        outputs, world = self.stale[index]
        self.m.emit(outputs, world)  # type: ignore[arg-type]
        if not again:  # `again`: the same message redelivered later
            self.stale.pop(index)
        self.after()

    # -- health --------------------------------------------------------------------------------------
    @rule(
        kind=st.sampled_from(SAMPLE_KINDS),
        cohorts=st.sampled_from([COHORTS, COHORTS[:1], COHORTS[1:]]),
        channel=st.sampled_from(CHANNELS),
        offset=st.sampled_from([0, 0, 5, -90, 30, 200]),
        live=st.booleans(),
        times=st.integers(1, 3),
    )
    def samples(self, kind: str, cohorts: tuple[str, ...], channel: str, offset: int, live: bool, times: int) -> None:
        for _ in range(times):
            self.m.send_samples(kind, cohorts, channel, offset, live)
        self.after()

    @rule(pick=releases, which=st.integers(0, 3), live=st.booleans())
    def refusal_where_exposed(self, pick: int, which: int, live: bool) -> None:
        """A runtime of a cohort the release already switched refuses its pack."""
        exposed = [
            r
            for rid in sorted(self.m.world.in_flight)
            if (r := self.m.world.release(rid)) is not None and r.prepared is not None and r.activated
        ]
        if not exposed:
            return
        release = exposed[pick % len(exposed)]
        assert release.prepared is not None
        cohort = release.activated[which % len(release.activated)]
        self.m.send_samples("refusal", (cohort,), release.prepared.target.channel, 0, live)
        self.after()

    @rule(pack=st.integers(1, len(PACKS) - 1), live=st.booleans())
    def refusal_behind_a_later_stage(self, pack: int, live: bool) -> None:
        """A new release passes its first window on good data; while its second stage is watched, a runtime
        of the FIRST stage's cohort refuses the pack. An outside review found the monitor blind there, and
        the random rules above reached that state a handful of times in 20k steps (now counted: REACHED). The
        pack is one the gates admit now (`_story_request`): a pack drawn blindly was refused (a downgrade, a
        lost or untrusted pack) in most tries, and the count moved 8–36 per 20k steps with the draw's order."""
        with self._calm():
            rid = self._story_request(pack)
            self.m.healthy_window()  # stage 0's window passes, stage 1 is switched and watched
        release = self.m.world.release(rid) if rid else None
        if release is None or release.phase != "monitoring" or release.stage < 1:
            return
        earlier = [c for stage in release.stages[: release.stage] for c in stage if c in release.activated]
        if not earlier:
            return
        REACHED["refusal in an earlier stage's cohort while a later stage is watched"] += 1
        self.m.send_samples("refusal", (earlier[0],), "canary", 0, live)
        self.after()

    @rule(pack=st.integers(1, len(PACKS) - 1), stable=st.integers(0, 1), ack=st.booleans())
    def promotion(self, pack: int, stable: int, ack: bool) -> None:
        """The canary promotes to stable (which watches longer, or not: then the promotion is withheld); a new
        release passes the canary's windows on good data. The random rules above never carried a release that
        far (counted: REACHED), so nothing checked the promoter's last step nor the linked release's path."""
        with self._calm():
            self.m.configure("stable", window_s=WINDOWS["stable"][stable])
            if self._story_request(pack, promote=True, acknowledge_no_health=ack):
                for _ in range(3):
                    self.m.healthy_window()
        self.after()

    @rule(pack=st.integers(1, len(PACKS) - 1), verb=st.sampled_from(["abort", "pause"]))
    def promotion_races_an_operator(self, pack: int, verb: str) -> None:
        """The promoter decides to promote while an operator aborts or pauses the release; its decision lands
        after the operator's verb (the promoter is slow). When the promoter stored the linked request and
        `promoted` as two appends, the request landed and `promoted` lost the race: a linked release on stable
        that its source never promoted (`promotion_unrecorded`: this story found it in its first step). Now they
        are one atomic batch: nothing of a stale promotion lands."""
        with self._calm():
            self.m.configure("stable", window_s=WINDOWS["stable"][0])
            rid = self._story_request(pack, promote=True)
            for _ in range(4):  # every stage's window, the promoter down for the last one's
                release = self.m.world.release(rid) if rid else None
                if release is None or release.closed or release.prepared is None:
                    break
                last = release.stage == len(release.prepared.stages) - 1
                self.m.down = frozenset({"promoter"}) if last else frozenset()
                self.m.healthy_window()
                if last:
                    break
            self.m.down = frozenset()
            release = self.m.world.release(rid) if rid else None
            if rid and release is not None and release.phase == "passed":
                world, decided = self.m.world, self.m.decide("promoter", rid)
                if any(isinstance(out, Promotion) for out in decided) and self.m.operate(verb, rid):
                    REACHED["a promotion decided while an operator aborted or paused the release"] += 1
                self.m.emit(decided, world)
                self.m.settle()
        self.after()

    @rule(
        pack=st.integers(1, len(PACKS) - 1),
        pin=st.integers(0, len(PACKS) - 1),
        lift=st.booleans(),
        pinned_first=st.booleans(),
        trigger=st.sampled_from(["operator", "tenant_impact"]),
    )
    def rollback_races_a_pin(self, pack: int, pin: int, lift: bool, pinned_first: bool, trigger: str) -> None:
        """An operator rolls a watched rollout back while the activator is down, and a pin moves on its first
        cohort before the activator lands it: pinned after the rollback, or (`pinned_first`) pinned before it
        (the target is then the pin in force) and pinned to 1.0.0 after; `lift`: that last pin is lifted.
        The rollback lands on its chosen target or the pin in force, or holds, and last-known-good stays a
        pack that earned it. The random verbs rolled a release back twice per 20k steps (session 23's LKG bug
        came from such a race, on a closed release: its minimal example is in test_model_regressions)."""
        with self._calm():
            rid = self._story_request(pack)
            release = self.m.world.release(rid) if rid else None
            if rid and release is not None and release.activated:
                cohort = release.activated[0]
                self.m.down = frozenset({"activator"})
                try:
                    before = pinned_first and self.m.pin("canary", cohort, PACKS[pin].version)
                    after = PACKS[0].version if before else PACKS[pin].version
                    if self.m.operate("rollback", rid, trigger=trigger) and self.m.pin("canary", cohort, after):
                        REACHED["an operator's rollback raced by a pin before it landed"] += 1
                        if lift:
                            self.m.unpin("canary", cohort)
                finally:
                    self.m.down = frozenset()
                self.m.settle()
        self.after()

    @rule(pack=st.integers(1, len(PACKS) - 1), how=st.sampled_from(["pinned", "rotated", "rotated"]))
    def refused_at_the_switch(self, pack: int, how: str) -> None:
        """The activator refuses a switch the world changed under (`activation_failed`), which the random
        rules never reached in 20k steps: "pinned", the canary cohort pinned between the verification and the
        first switch (`smallest_scope_pinned`: the pack would first run in the wider stage); "rotated", the
        trust root drops the pack's only signer after its first stage (`pack_no_longer_valid` at the expansion,
        with the guard behind: a guard that sweeps first rolls the release back, `policy_violation`)."""
        with self._calm():
            if how == "pinned":
                self.m.fast = False  # split: a step at a time, so the pin lands before the switch
                rid = self._story_request(pack, settle=False)
                for consumer in ("preparer", "distributor", "verifier"):
                    if rid:
                        self.m.step(consumer, rid)
                release = self.m.world.release(rid) if rid else None
                if release is not None and release.phase == "verified":
                    self.m.pin("canary", "internal", "1.0.0")
                self.m.settle()
            else:
                while not self.m.next_rotation_drops_key_1() and self.m.rotate_trust():
                    pass  # to a root that trusts key 1 and whose successor drops it (v2 or v4)
                if self.m.next_rotation_drops_key_1() and self._story_request(pack, only=("1.1.0", "1.2.0")):
                    self.m.rotate_trust()
                    self.m.guard_lags = True  # else the guard rolls it back first (also right)
                    self.m.healthy_window()
        self.after()

    @rule(pack=st.integers(1, len(PACKS) - 1), promote=st.booleans())
    def policy_changes_under_a_rollout(self, pack: int, promote: bool) -> None:
        """A rollout is being watched when its channel moves to a runtime its pack does not support: the
        guard rolls it back (`policy_violation`); then the channel moves back (random rules rarely lined up a
        release in flight, a reconfiguration and the guard's check: counted in REACHED)."""
        with self._calm():
            if self._story_request(pack, promote=promote):
                self.m.configure("canary", promote=promote, runtime_version="3.0.0")
                self.m.guard()
                self.m.settle()
                self.m.configure("canary", promote=promote)
        self.after()

    @rule(
        pack=st.integers(1, len(PACKS) - 1),
        to=st.sampled_from(["one", "three"]),
        after_windows=st.integers(0, 1),
        back=st.booleans(),
        kinds=st.sampled_from([("activation_ok", "good", "good"), ("good", "errors"), ("refusal",)]),
    )
    def cohorts_change_under_a_rollout(
        self, pack: int, to: str, after_windows: int, back: bool, kinds: tuple[str, ...]
    ) -> None:
        """A rollout is watched when the canary's cohorts change under it: "one", internal's runtimes move into
        rest (the stage's cohort has no runtime left, the next stage's gains two that never ran the pack);
        "three", one runtime of rest moves into a new cohort `early` that the release's plan does not name.
        The runtimes report under their new cohorts (well, with errors, or refusing) and the windows end;
        `back`: the cohorts come back. The model's runtimes were fixed per cohort until session 24 (its random
        reconfigurations rarely change the cohorts under a release in flight: counted in REACHED)."""
        with self._calm():
            rid = self._story_request(pack)
            for _ in range(after_windows):
                self.m.healthy_window()
            release = self.m.world.release(rid) if rid else None
            if release is not None and release.phase == "monitoring":
                REACHED["a rollout's cohorts reconfigured under it"] += 1
                self.m.configure("canary", cohorts=to)
                for _ in range(3):
                    self.m.healthy_window(kinds=kinds)
                running = self.m.world.scope(ENV, "canary", "rest").active_pack
                if to == "three" and running is not None and not self.m.world.scope(ENV, "canary", "early").ever_active:
                    # the remedy pre-flight names: what rest runs, rolled out to the new cohort alone
                    REACHED["a new cohort brought in by a release of its own"] += 1
                    self.m.request(PACK_BY_DIGEST[running.digest], "canary", "none", plan=[["early"]])
                    self.m.settle()
                    self.m.healthy_window()
                if back:
                    self._cohorts_back()
        self.after()

    @rule(
        pack=st.integers(1, len(PACKS) - 1),
        to=st.sampled_from(["one", "three"]),
        after_windows=st.integers(0, 1),
        verb=st.sampled_from(["promote", "abort", "extend", "none"]),
        back=st.booleans(),
    )
    def verdict_outrun_by_a_channel_change(self, pack: int, to: str, after_windows: int, verb: str, back: bool) -> None:
        """The monitor judges a watched window (its runtimes reported well) but its append is delayed, and the
        canary's cohorts change before it lands: "one" takes the first stage's cohort out, "three" adds one. The
        pass is stored (its expectation is the release's subjects alone); an operator answers a hold with `verb`.
        The random rules (verdict_decided_now_stored_later, reconfigure, commit_late) did not line this up in 20k
        steps (session 25: counted in REACHED)."""
        with self._calm():
            rid = self._story_request(pack)
            for _ in range(after_windows):
                self.m.healthy_window()
            release = self.m.world.release(rid) if rid else None
            keys = [key for key in sorted(self.m.timers) if rid and key.startswith(f"{rid}.")]
            if release is not None and release.phase == "monitoring" and keys:
                for kind in ("activation_ok", "good", "good"):
                    self.m.send_samples(kind, COHORTS, "canary")
                decided_on = self.m.world
                verdict = self.m.fire_slowly(keys[0])
                self.m.configure("canary", cohorts=to)
                self.m.emit(verdict, decided_on)
                self.m.settle()
                if verb != "none" and self.m.world.release(rid).phase == "held":  # type: ignore[union-attr]
                    self.m.operate(verb, rid)  # type: ignore[arg-type]
                    self.m.settle()
                    self.m.healthy_window()
                if back:
                    self._cohorts_back()
        self.after()

    def _cohorts_back(self) -> None:
        """The canary's cohorts as they were (internal, rest), and a window under them."""
        self.m.configure("canary")
        self.m.healthy_window()

    @rule(pack=st.integers(1, len(PACKS) - 1))
    def target_lost_before_expansion(self, pack: int) -> None:
        """A rollout's first stage passes while its rollback target's pack object is gone from the store: the
        promoter holds the expansion (`escalated` `rollback_not_ready`) rather than expose more cohorts with
        no rollback that would land (the random rules lined that up a handful of times: counted in REACHED)."""
        with self._calm():
            rid = self._story_request(pack)
            self._lose_targets_for_a_window(rid)
        self.after()

    def _lose_targets_for_a_window(self, rid: str | None) -> None:
        release = self.m.world.release(rid) if rid else None
        lost = {}
        if release is not None and release.prepared is not None:
            for target in release.prepared.rollback_targets.values():
                if target is not None and pack_object_name(target.digest) in self.m.store:
                    lost[pack_object_name(target.digest)] = self.m.store[pack_object_name(target.digest)]
                    self.m.lose_pack(target.digest)
        self.m.healthy_window()
        self.m.store.update(lost)  # the store comes back (the rule `lose_pack` is the one that loses for good)

    @contextmanager
    def _calm(self) -> Iterator[None]:
        """A story runs on a service that is in step and verifies in time; the machine's own modes come back."""
        modes = (self.m.fast, self.m.verify_stalls, self.m.guard_lags)
        self.m.verify_stalls = self.m.guard_lags = False
        try:
            yield
        finally:
            self.m.fast, self.m.verify_stalls, self.m.guard_lags = modes

    def _story_request(
        self, pick: int, promote: bool = False, only: tuple[str, ...] = (), settle: bool = True, **kw: Any
    ) -> str | None:
        """A release on the canary that pre-flight and every gate will pass, so the story gets to its point:
        the canary as at the start (runtime 2.4.0, `promote`) with no pin in force, a pack picked among those
        the gates admit now (present, trusted, unexpired, fitting, newer than what runs; `only` those
        versions), and the rollback strategy pre-flight accepts. None (nothing requested) when there is none:
        the random rules got the run somewhere a story cannot start."""
        world = self.m.world
        self.m.configure("canary", promote=promote)
        cohorts = self.m.world.channel_config(ENV, "canary").cohort_names
        for cohort in cohorts:
            if world.scope(ENV, "canary", cohort).pinned_at(self.m.now) is not None:
                self.m.unpin("canary", cohort)
        scopes = [self.m.world.scope(ENV, "canary", c) for c in cohorts]
        strategy = "none" if not any(s.ever_active for s in scopes) else "lkg" if all(s.lkg for s in scopes) else None
        packs = [p for p in self.m.admissible("canary") if not only or p.version in only]
        if strategy is None or not packs:
            return None
        rid = self.m.request(packs[pick % len(packs)], "canary", strategy, **kw)
        if settle:
            self.m.settle()
        return rid

    @rule(pack=st.integers(1, len(PACKS) - 1))
    def stall_in_the_fast_path(self, pack: int) -> None:
        """A release reaches the verifier through the fast path while its reads stall: the fail-closed event is
        stored in one batch with the steps before it. Two random toggles and a request had to line up, and did
        4 times in 20k steps once a new rule moved the draw (session 28), under the must-reach floor of 5."""
        with self._calm():
            self.m.fast = self.m.verify_stalls = True
            self._story_request(pack)
        self.after()

    @rule(pick=releases, trigger=st.sampled_from(["tenant_impact", "policy_violation", "operator"]))
    def pull_a_success(self, pick: int, trigger: str) -> None:
        """An operator rolls back a release that closed `success` (tenant impact found later): its pack is
        pulled where it ran, as the last-known-good too (`lkg_pulled`; session 27)."""
        done = [rid for rid, r in self.m.world.releases.items() if r.closed and r.outcome == "success" and r.activated]
        if done:
            self.m.operate("rollback", sorted(done)[pick % len(done)], trigger=trigger)
        self.after()

    @rule(pick=releases)
    def pause_and_resume(self, pick: int) -> None:
        """An operator pauses a release, a window passes, and resumes it (random verbs almost never resumed one)."""
        moving = sorted(self.m.world.in_flight)
        rid = moving[pick % len(moving)] if moving else None
        if rid and self.m.operate("pause", rid):
            self.m.healthy_window()
            self.m.operate("resume", rid)
        self.after()

    @rule(
        kinds=st.lists(
            st.sampled_from(("good", "good", "activation_ok", "errors") + SAMPLE_KINDS), min_size=1, max_size=4
        ),
        channel=st.sampled_from(CHANNELS),
    )
    def window(self, kinds: list[str], channel: str) -> None:
        """Runtimes report (mostly well), then the window's time passes."""
        self.m.healthy_window(channel, tuple(kinds))

    # -- time ------------------------------------------------------------------------------------------
    @rule(seconds=st.sampled_from([1, 20, 61, 600, 3 * 3600, 2 * 86400]))
    def tick(self, seconds: int) -> None:
        self.m.now += timedelta(seconds=seconds)
        self.after()

    @precondition(lambda self: bool(self.m.timers))
    @rule(which=st.integers(0, 7))
    def fire_timer(self, which: int) -> None:
        keys = sorted(self.m.timers)
        self.m.fire(keys[which % len(keys)])
        self.after()

    @precondition(lambda self: any(not key.startswith("pin.") for key in self.m.timers))
    @rule(which=st.integers(0, 7))
    def verdict_decided_now_stored_later(self, which: int) -> None:
        """A window's verdict whose append is delayed: the channel may change before it lands (the monitor's
        expectation is on the release's subjects alone)."""
        keys = sorted(key for key in self.m.timers if not key.startswith("pin."))
        outputs = self.m.fire_slowly(keys[which % len(keys)])
        if outputs:
            self.stale.append((outputs, self.m.world))

    @rule()
    def sweep(self) -> None:
        self.m.sweep()
        self.after()

    @rule()
    def redeliver_timer(self) -> None:
        self.m.redeliver()
        self.after()

    # -- operator ------------------------------------------------------------------------------------
    @rule(
        verb=st.sampled_from(VERBS),
        pick=releases,
        trigger=st.sampled_from(["operator", "policy_violation", "tenant_impact"]),
        window_s=st.sampled_from([30, 60, 300]),
    )
    def operate(self, verb: str, pick: int, trigger: str, window_s: int) -> None:
        rid = self._release(pick)
        if rid:
            self.m.operate(verb, rid, trigger=trigger, window_s=window_s)
        self.after()

    @rule(
        channel=st.sampled_from(CHANNELS),
        cohort=st.sampled_from(COHORTS),
        pack=st.integers(0, len(PACKS) - 1),
        hours=st.sampled_from([1, 24, 24 * 40]),
    )
    def pin(self, channel: str, cohort: str, pack: int, hours: int) -> None:
        self.m.pin(channel, cohort, PACKS[pack].version, hours)
        self.after()

    @rule(channel=st.sampled_from(CHANNELS), pack=st.integers(0, len(PACKS) - 1))
    def pin_and_lift(self, channel: str, pack: int) -> None:
        """Every cohort pinned, and the pins lifted again: each scope's "pinned prior" for strategy `pinned`."""
        for cohort in COHORTS:
            if self.m.pin(channel, cohort, PACKS[pack].version, 24):
                self.m.unpin(channel, cohort)
        self.after()

    @rule(channel=st.sampled_from(CHANNELS), cohort=st.sampled_from(COHORTS))
    def unpin(self, channel: str, cohort: str) -> None:
        self.m.unpin(channel, cohort)
        self.after()

    # -- the world changing underneath ---------------------------------------------------------------
    @rule(guard=st.booleans())
    def rotate_trust(self, guard: bool) -> None:
        self.m.rotate_trust()
        if guard:  # the guard reacts to the rotation at once (else on a later sweep or trigger)
            self.m.guard()
        self.after()

    @rule()
    def guard(self) -> None:
        """The guard's check of every active pack (a trigger it reacts to: a pointer, a rotation, a config)."""
        self.m.guard()
        self.after()

    @rule(
        channel=st.sampled_from(CHANNELS),
        thresholds=st.integers(0, len(THRESHOLDS) - 1),
        min_samples=st.sampled_from([1, 2, 3]),
        promote=st.booleans(),
        forbid_downgrade=st.booleans(),
        window=st.integers(0, 1),
        runtime=st.sampled_from(["2.4.0", "2.4.0", "2.4.0", "3.0.0"]),
        policy=st.sampled_from(["default", "default", "default", "default", "builder", "revision", "attestation"]),
        cohorts=st.sampled_from(["two", "two", "two", "three", "one"]),
        guard=st.booleans(),
    )
    def reconfigure(
        self,
        channel: str,
        thresholds: int,
        min_samples: int,
        promote: bool,
        forbid_downgrade: bool,
        window: int,
        runtime: str,
        policy: str,
        cohorts: str,
        guard: bool,
    ) -> None:
        """`guard`: the guard reacts to the new configuration at once (else on a later sweep or trigger).
        `policy`: now and then the channel's policy turns against every pack's builder or revision, so a
        settled scope's violation changes code, and may change back (session 23: a flag back after another)."""
        self.m.configure(
            channel,
            thresholds=thresholds,
            min_samples=min_samples,
            promote=promote and channel == "canary",
            forbid_downgrade=forbid_downgrade,
            window_s=WINDOWS[channel][window],
            runtime_version=runtime,
            policy=policy,
            cohorts=cohorts,
        )
        if guard:
            self.m.guard()
        self.after()

    @rule(pack=st.integers(0, len(PACKS) - 1))
    def lose_pack(self, pack: int) -> None:
        self.m.lose_pack(PACKS[-1 - pack].digest)  # the simplest choice is not the packs every LKG starts from
        self.after()

    @rule(pack=st.integers(0, len(PACKS) - 1))
    def swap_pack(self, pack: int) -> None:
        """A pack's name re-pointed at other bytes of the same size, its own chunks gone (session 26's open case:
        a rollback's readiness compared the size only)."""
        self.m.swap_pack(PACKS[-1 - pack].digest)
        self.after()

    # -- after every step ------------------------------------------------------------------------------
    @invariant()
    def safe(self) -> None:
        CHECKS[0] += 1
        broken = [v for v in self.m.violations() + self.m.anomalies() if not pending(v)]
        assert not broken, "\n".join(v.line() for v in broken)


@pytest.mark.timeout(max(120, STEP_COUNT // 100))  # a longer run (KX_MODEL_STEPS) gets a longer budget
def test_lifecycle_model_keeps_every_safety_invariant() -> None:
    """`run_model` in a process of its own. Derandomized, hypothesis still draws its examples in an order that
    follows where objects sit in memory (its labels of rules and strategies hash functions by identity), so the
    examples changed with whichever tests ran before in the same worker: the same commit reached a story 32
    times alone and never after test_contract_edges (session 25). A fresh interpreter runs one set of examples
    for this file's text, whatever ran before it."""
    child = subprocess.run(
        [sys.executable, "-c", "from tests.unit.test_lifecycle_model import run_model; run_model()"],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=max(120, STEP_COUNT // 100) - 5,
    )
    print(child.stdout)
    # its stderr is mostly the consumers' warnings; a failure's cause is at its end (hypothesis's steps are on stdout)
    assert child.returncode == 0, child.stdout[-20_000:] + child.stderr[-5_000:]


def run_model() -> None:
    """The machine, derandomized, for STEP_COUNT steps; then every MUST_REACH state reached often enough."""
    CHECKS[:] = [0, 0]
    REACHED.clear()
    runs = math.ceil(STEP_COUNT / STEPS_PER_RUN * 1.25)  # some runs end early
    run_state_machine_as_test(
        LifecycleMachine,
        settings=settings(
            derandomize=True,
            database=None,
            max_examples=runs,
            stateful_step_count=STEPS_PER_RUN,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            print_blob=False,
        ),
    )
    steps = CHECKS[0] - CHECKS[1]
    print(f"lifecycle model: {steps} steps in {CHECKS[1]} runs, every invariant checked after each")
    assert steps >= STEP_COUNT, f"only {steps} steps ran, {STEP_COUNT} wanted"
    print(f"reached: {dict(REACHED)}")
    # At least once per 4,000 steps each. The derandomized draw's order follows where objects sit in memory
    # (see the test above), so one story's count moves widely between edits of this file: "a switch refused:
    # pinned after the verification" read 388, 233, 58, 34, 15, 9 and 8 in session 27's runs. Once per 2,000
    # failed on such a draw, not on a generator that stopped reaching a state (which reads 0).
    assert all(REACHED[what] >= STEP_COUNT // 4000 for what in MUST_REACH), dict(REACHED)


def test_pending_names_only_known_invariants() -> None:
    from projections.invariants import SAFETY_CODES

    model_codes = {"invalid_contract_json", "decide_raised", "undecodable", "illegal_transition"}
    assert {key.split(": ", 1)[0] for key in PENDING} <= set(SAFETY_CODES) | model_codes
