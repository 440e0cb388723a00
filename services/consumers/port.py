"""What a consumer may use of the running service: the narrow port it is built with.

Consumers (and the reactor they run on) are typed against `Port`, never against
`services.app.App`: a consumer sees the world view, the clock, the log writer, the
JetStream context its reads go through, and nothing of how the process is put
together (its tasks, snapshots, start-up). `App` satisfies `Port` structurally (no
inheritance); tests/unit/test_port.py checks that it keeps doing so, and a test may
hand a consumer any object with these members.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Protocol, runtime_checkable

from nats.aio.client import Client
from nats.js import JetStreamContext

from events.codec import DecodeError
from events.signing import TrustRoot
from events.subjects import Subjects
from projections.releases import ReleaseState
from projections.world import World
from services.consumers.outputs import Ctx, Output, Timer
from services.jetstream.deadletter import DeadLetters
from services.jetstream.log import EventLog
from services.settings import Settings


@runtime_checkable
class WorldView(Protocol):
    """The process's folded log (services/reads/follower.py): the state a consumer decides on,
    and waits for a position in."""

    undecodable: dict[int, DecodeError]  # seq -> why that log entry is not a valid event

    @property
    def world(self) -> World:
        """The fold at a whole position (never half an atomic batch)."""
        ...

    async def wait_for(self, seq: int, timeout: float | None = 30.0) -> None: ...

    async def catch_up(self, timeout: float | None = 60.0) -> None: ...

    def listen(self) -> asyncio.Queue:
        """(Position, Event | None) of every entry folded from now on (the monitor's live feed follows them)."""
        ...

    def unlisten(self, queue: asyncio.Queue) -> None: ...


@runtime_checkable
class Port(Protocol):
    """Everything a lifecycle consumer needs from the service it runs in."""

    # reads and subscriptions (pack store, health, the log's own subjects)
    @property
    def nc(self) -> Client: ...
    @property
    def js(self) -> JetStreamContext: ...
    @property
    def subjects(self) -> Subjects: ...
    @property
    def settings(self) -> Settings: ...
    @property
    def follower(self) -> WorldView: ...
    # writes: events outside a release decision (scopes, notifications), dead letters
    @property
    def log(self) -> EventLog: ...
    @property
    def deadletters(self) -> DeadLetters: ...

    def clock(self) -> datetime: ...

    def ctx(self, service: str) -> Ctx:
        """What a decision may depend on besides the world: now, and who decides."""
        ...

    def current_trust_root(self) -> TrustRoot | None:
        """The anchor advanced by every valid rotation in the log (None: none configured)."""
        ...

    async def emit(self, outputs: list[Output], release: ReleaseState | None) -> None:
        """Perform a decision: append its events (guarded by the release's last sequence), set its timers."""
        ...

    async def schedule(self, timer: Timer) -> None: ...

    async def release_whole(self, release_id: str) -> ReleaseState | None:
        """The release with all it has seen, a closed one too."""
        ...
