"""The monitor's live health feed: subscribed to the cohorts where a window may fail early, only.

A fleet reports all the time (samples every few seconds, an activation report per runtime per
switch), and every report is stored in the health stream, where a window's opening scan and its
verdict read it. The live feed exists only to fail an open window at once on a hard breach, so
it needs the reports of the cohorts with a window open (or about to open), not the fleet's:
subscribed to the whole `health.>`, a rollback with 1,000 runtimes delivered their 1,000
activation reports to the service, each parsed and dropped (bench.rollback `cpu_per_round`).

Subscriptions follow the releases: each release names the cohort subjects it wants
(services/monitoring/judge.py `live_cohorts`), a subject is subscribed while any release wants it.
NATS keeps the order of one connection's commands, so a subscription made when a release's event
is folded is in force before any later read the monitor makes on that connection (the scan of
the stored reports when the window opens): no report falls between the two.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription


class LiveHealth:
    def __init__(self, nc: Client, on_msg: Callable[[Msg], Awaitable[None]]) -> None:
        self._nc = nc
        self._on_msg = on_msg
        self._subs: dict[str, Subscription] = {}  # subject -> its subscription
        self._users: dict[str, set[str]] = {}  # subject -> the releases that want it
        self._wanted: dict[str, frozenset[str]] = {}  # release id -> the subjects it wants

    @property
    def subjects(self) -> frozenset[str]:
        """The subjects subscribed now."""
        return frozenset(self._subs)

    async def want(self, release_id: str, subjects: Iterable[str]) -> None:
        """`release_id` now wants exactly `subjects` (none: it wants nothing any more)."""
        new, old = frozenset(subjects), self._wanted.get(release_id, frozenset())
        if new == old:
            return
        if new:
            self._wanted[release_id] = new
        else:
            self._wanted.pop(release_id, None)
        for subject in new - old:  # subscribed before anything is dropped: no moment without the feed
            users = self._users.setdefault(subject, set())
            users.add(release_id)
            if subject not in self._subs:
                self._subs[subject] = await self._nc.subscribe(subject, cb=self._on_msg)
        for subject in old - new:
            users = self._users.get(subject, set())
            users.discard(release_id)
            if not users:
                self._users.pop(subject, None)
                sub = self._subs.pop(subject, None)
                if sub is not None:
                    await sub.unsubscribe()

    async def close(self) -> None:
        subs, self._subs = list(self._subs.values()), {}
        self._users.clear()
        self._wanted.clear()
        for sub in subs:
            with contextlib.suppress(nats.errors.Error):  # a closed connection has dropped them already
                await sub.unsubscribe()
