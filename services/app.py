"""What every role of a service process shares: one connection, one follower, the log writer, `emit`.

The roles themselves (the consumers) are built from an App by the composition root,
services/bootstrap.py; an App knows none of them. `kxr serve` builds an App and starts it
there; tests build one against the suite's nats-server. Nothing connects at import time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from nats.aio.client import Client
from nats.js import JetStreamContext

from events.canonical import compact_bytes
from events.signing import SigningKey, TrustRoot
from events.subjects import Subjects
from events.trust import TrustChain, follow_chain
from projections.releases import ReleaseState
from services.consumers.outputs import Atomic, Chain, Ctx, Output, Promotion, Timer
from services.jetstream.deadletter import DeadLetters, watch_max_deliveries
from services.jetstream.layout import LayoutSettings, ensure_layout
from services.jetstream.log import Entry, EventLog
from services.jetstream.log_reads import release_history
from services.reads.follower import Follower
from services.reads.snapshots import Snapshots

from .settings import Settings, service_keys_for
from .tasks import cancel_and_wait, utc_clock

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]


def _report_crash(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s stopped: %r", task.get_name(), task.exception(), exc_info=task.exception())


class App:
    def __init__(
        self,
        nc: Client,
        settings: Settings,
        trust_root: TrustRoot | None = None,
        clock: Clock = utc_clock,
        signer: SigningKey | None = None,
    ) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=10)
        self.settings = settings
        self.subjects = Subjects(settings.prefix)
        self.log = EventLog(nc, self.js, self.subjects, signer=signer)
        self.snapshots = Snapshots(self.js, self.subjects, signer=signer)
        # what the service's own fold trusts: only what these keys signed counts (settings.service_keys_for)
        self.service_keys = service_keys_for(settings, signer)
        self.deadletters = DeadLetters(self.js, self.subjects)
        self.follower = Follower(
            self.js,
            self.subjects,
            snapshots=self.snapshots,
            archive_closed=True,
            deadletters=self.deadletters,
            service_keys=self.service_keys,
            own_appends=self.log.own_appends,
        )
        self.trust_root = trust_root
        self.clock = clock
        self._tasks: list[asyncio.Task] = []
        self._chain: tuple[tuple, TrustChain] | None = None

    def trust_chain(self) -> TrustChain | None:
        """The anchor (KX_TRUST_ROOT) advanced by every valid rotation in the log."""
        if self.trust_root is None:
            return None
        rotations = self.follower.world.trust_rotations
        key = (self.trust_root, len(rotations))
        if self._chain is None or self._chain[0] != key:
            self._chain = (key, follow_chain(self.trust_root, rotations))
        return self._chain[1]

    def current_trust_root(self) -> TrustRoot | None:
        chain = self.trust_chain()
        return chain.current if chain else None

    def ctx(self, service: str) -> Ctx:
        return Ctx(now=self.clock(), service=service)

    async def release_whole(self, release_id: str) -> ReleaseState | None:
        """The release with all it has seen, closed ones too: the follower keeps closed releases
        as tombstones, so one of those is folded from its own subjects (a few events)."""
        world = self.follower.world
        release = world.release(release_id)
        if release is None and release_id in world.tombstones:
            release = await release_history(
                self.js, self.subjects, release_id, before_seq=world.applied_seq + 1, service_keys=self.service_keys
            )
        return release

    async def ensure_layout(self) -> None:
        await ensure_layout(
            self.js,
            self.subjects,
            LayoutSettings(health_max_age_s=self.settings.health_max_age_s, replicas=self.settings.replicas),
        )

    # -- performing decisions -----------------------------------------------------------------
    async def emit(self, outputs: list[Output], release: ReleaseState | None) -> None:
        for out in outputs:
            if isinstance(out, Chain):
                assert release is not None
                await self.log.append_chain([self.log.release_entry(e, release.last_seq) for e in out.events])
            elif isinstance(out, Atomic):
                assert release is not None
                # the events that earned the switch first (fast path), then the switch and its record; every
                # release event expects the release's last sequence (the server checks it once per batch)
                entries = [self.log.release_entry(e, release.last_seq) for e in out.lead]
                entries += [Entry(w.event, w.expected_seq) for w in out.scope_writes]
                entries += [self.log.release_entry(e, release.last_seq) for e in out.release_events]
                await self.log.commit_batch(entries, out.batch_id)
            elif isinstance(out, Promotion):
                assert release is not None
                # one atomic batch: `promoted` on this release's last sequence, then the linked request on
                # a release id nobody has used; a lost race stores neither (decided again on the new state)
                promoted = self.log.release_entry(out.promoted, release.last_seq)
                await self.log.commit_batch([promoted, self.log.release_entry(out.request, 0)])
            elif isinstance(out, Timer):
                await self.schedule(out)
            else:  # pragma: no cover - exhaustive
                raise TypeError(out)

    async def schedule(self, timer: Timer) -> None:
        when = timer.at.astimezone(UTC)
        if when.microsecond:  # the schedule takes whole seconds: round up, never fire early
            when = when.replace(microsecond=0) + timedelta(seconds=1)
        at = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        await self.js.publish(
            self.subjects.timer_schedule(timer.key),
            compact_bytes(timer.payload),
            headers={
                "Nats-Schedule": f"@at {at}",
                "Nats-Schedule-Target": self.subjects.timer_fire(timer.key),
                "Nats-Msg-Id": timer.msg_id or f"timer:{timer.key}:{at}",
            },
            stream=self.subjects.timers_stream,
        )

    # -- running --------------------------------------------------------------------------------
    def spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(_report_crash)
        self._tasks.append(task)
        return task

    async def start(self) -> None:
        """The layout, the follower (from the snapshot if there is one) caught up, the dead-letter
        watch; the roles are spawned on top by services/bootstrap.py."""
        await self.ensure_layout()
        await self.follower.start_from_snapshot()  # snapshot + tail instead of the whole log, if it may
        self.spawn(self.follower.run(), "follower")
        self.spawn(watch_max_deliveries(self.nc, self.js, self.subjects, self.deadletters), "max-deliveries")
        # consumers decide on a world at least as new as the log was at start; a cold start
        # (no snapshot, or one of an older format) on a long log takes minutes, not a fixed 60 s
        await self.follower.catch_up_from_start()

    async def wait(self) -> None:
        """Run until a task fails (re-raised) or the app is stopped."""
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if not task.cancelled() and task.exception():
                raise task.exception()  # type: ignore[misc]

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        if self.follower.position:
            await self.follower.save_snapshot()
        self._tasks.clear()
