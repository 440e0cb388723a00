"""The shared adapter of every release consumer: level-triggered, conflict-safe.

Each consumer subscribes (durably) to every event on every release. For each one
it waits until the process's world view includes that event, then decides on the
release's *current* state. Deciding on state rather than on the single trigger
makes restarts, redeliveries, pause/resume and a second instance all converge:
the same state gives the same derived event ids (dropped as duplicates), and a
lost optimistic-concurrency race is re-decided on the newer state.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from nats.aio.msg import Msg

from events.codec import DecodeError
from projections.releases import ReleaseState, triggers_for
from projections.world import World
from services.jetstream.log import AppendConflict
from services.observability.logs import log_context
from services.consumers.outputs import Ctx, Output
from services.jetstream.worker import Poison, Worker

if TYPE_CHECKING:
    from services.app import App

log = logging.getLogger(__name__)
MAX_CONFLICTS = 8
RECONCILE_EVERY_S = 5.0
CONCURRENCY = 32  # releases decided on at once per consumer (I/O-bound: reads of packs and health, appends)


class ReleaseReactor:
    name = "reactor"
    # The phases this consumer decides in. Its durable consumer only receives the events
    # that lead into them (`triggers_for`): most events concern one or two consumers, and a
    # delivery that cannot change a decision still costs a fetch, a wait and an ack. The
    # reconcile sweep would still catch anything a narrower filter missed.
    acts_in: frozenset[str] = frozenset()

    def __init__(self, app: "App") -> None:
        self.app = app
        # one decision at a time per release in this process: its lock and how many want it
        self._deciding: dict[str, tuple[asyncio.Lock, int]] = {}

    def runners(self) -> list:
        worker = Worker(
            self.app.js, self.app.subjects.releases_stream, f"kxr-{self.name}", self.trigger_subjects(),
            self.handle, self.app.deadletters, ack_wait=self.app.settings.ack_wait_s, concurrency=CONCURRENCY,
        )
        return [worker.run(), self.reconcile()]

    def trigger_subjects(self) -> list[str]:
        p = self.app.subjects.prefix
        if not self.acts_in:
            return [f"{p}.release.*.*"]
        return [f"{p}.release.*.{event_type}" for event_type in triggers_for(self.acts_in)]

    async def reconcile(self, every: float = RECONCILE_EVERY_S) -> None:
        """Decide on every release in flight: at start-up, then now and then.

        A message a crashed process had fetched but not acked only comes back after the
        ack deadline; deciding on the state directly means nothing waits for it.
        """
        while True:
            world = self.app.follower.world
            for release_id in sorted(world.in_flight):
                if self.busy(release_id) or not self.may_act(world.release(release_id)):
                    continue
                try:
                    with log_context(release_id=release_id):
                        await self.settle(release_id)
                except Exception as exc:  # the worker's retry and the next round cover it
                    log.info("%s: reconcile of %s deferred: %s", self.name, release_id, exc)
            await asyncio.sleep(every)

    def may_act(self, release: ReleaseState | None) -> bool:
        """Cheap pre-check for the sweep: is the release in a phase this consumer decides in?"""
        return release is not None and (not self.acts_in or release.phase in self.acts_in)

    def emitted(self, outputs: list[Output]) -> None:
        """Called once `outputs` are stored (for consumers that remember what they did)."""

    async def handle(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        await self.app.follower.wait_for(seq)
        family, tokens = self.app.subjects.parse(msg.subject)
        if family != "release" or len(tokens) != 2:
            raise Poison(f"not a release subject: {msg.subject}")
        release_id = tokens[0]
        problem = self.app.follower.undecodable.get(seq)
        if problem is not None:
            await self.on_undecodable(msg, release_id, problem)
            return
        await self.settle(release_id)

    async def on_undecodable(self, msg: Msg, release_id: str, problem: DecodeError) -> None:
        raise Poison(str(problem))

    def busy(self, release_id: str) -> bool:
        return release_id in self._deciding

    async def settle(self, release_id: str, decide=None) -> None:
        """Decide on the release's current state and perform the result, re-deciding on conflict."""
        decide = decide or self.decide
        lock, users = self._deciding.get(release_id, (asyncio.Lock(), 0))
        self._deciding[release_id] = (lock, users + 1)
        try:
            async with lock:
                await self._settle(release_id, decide)
        finally:
            lock, users = self._deciding[release_id]
            if users == 1:
                del self._deciding[release_id]  # the map holds only releases being decided on
            else:
                self._deciding[release_id] = (lock, users - 1)

    async def _settle(self, release_id: str, decide) -> None:
        for attempt in range(MAX_CONFLICTS):
            world = self.app.follower.world
            release = world.release(release_id)
            if release is None:
                return
            outputs = await decide(world, release, self.app.ctx(self.name))
            if not outputs:
                return
            try:
                await self.app.emit(outputs, release)
                self.emitted(outputs)
                return
            except AppendConflict as exc:
                log.info("%s: %s lost a race (%s); deciding again", self.name, release_id, exc)
                await self.app.follower.catch_up()
                await asyncio.sleep(0.01 * attempt)
        raise RuntimeError(f"{self.name}: {release_id} kept conflicting after {MAX_CONFLICTS} attempts")

    async def decide(self, world: World, release: ReleaseState, ctx: Ctx) -> list[Output]:
        raise NotImplementedError
