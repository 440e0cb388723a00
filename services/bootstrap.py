"""The composition root: which roles make up a service process, each built from one App.

`App` (services/app.py) is what every role shares: the connection, the follower's live fold,
the log writer and `emit`; it knows no consumer. This module is the one place that does: it
builds each role's runners (the lifecycle consumers, the pinner beside the activator, the
housekeeping beside the distributor) and starts them once the App's follower has caught up.
`kxr serve`, `kxr demo`, the benches and the tests start a service through `start_service`,
so a role is wired the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from services.app import App
from services.consumers.activator import Activator
from services.consumers.distributor import Distributor
from services.consumers.guard import Guard
from services.consumers.monitor import Monitor
from services.consumers.notifier.consumer import Notifier
from services.consumers.pinner import Pinner
from services.consumers.preparer import Preparer
from services.consumers.promoter import Promoter
from services.consumers.reactor import ReleaseReactor
from services.consumers.verifier import Verifier
from services.jetstream.janitor import Janitor
from services.jetstream.pack_keeper import PackKeeper
from services.jetstream.watchdog import Watchdog
from services.reads.projector import Projector

Runner = Coroutine[Any, Any, None]


class Role(Protocol):
    """A role's part of the process: the long-running coroutines it contributes."""

    def runners(self) -> list[Runner]: ...


ROLE_CLASSES: dict[str, Callable[[App], Role]] = {
    "preparer": Preparer,
    "distributor": Distributor,
    "verifier": Verifier,
    "activator": Activator,
    "monitor": Monitor,
    "promoter": Promoter,
    "notifier": Notifier,
    "guard": Guard,
}


# a release's path, in order: a consumer of it hands its outcome on to those after it that run in the
# same process (services/consumers/fast_path.py)
PATH = ("preparer", "distributor", "verifier", "activator")


def chain_steps(built: dict[str, Role]) -> None:
    """Give each consumer of the path the ones after it that run here, up to the first that does not."""
    steps = [built.get(name) for name in PATH]
    for n, step in enumerate(steps):
        if not isinstance(step, ReleaseReactor):
            continue
        after: list[ReleaseReactor] = []
        for nxt in steps[n + 1 :]:
            if not isinstance(nxt, ReleaseReactor):
                break
            after.append(nxt)
        step.then = tuple(after)
        # a decision now holds its release for the steps after it too (up to the activator's synced commit,
        # which groups the switches waiting behind it): as many in flight as the busiest of them takes
        step.concurrency = max([step.concurrency, *(s.concurrency for s in after)])


def build_roles(app: App, roles: tuple[str, ...]) -> list[Runner]:
    """The runners of `roles` (names of `ROLE_CLASSES`), not started."""
    built = {role: ROLE_CLASSES[role](app) for role in roles}
    if app.settings.fast_path:
        chain_steps(built)
    runners: list[Runner] = []
    for role in roles:
        runners.extend(built[role].runners())
        if role == "activator":  # pins switch scope pointers, which only the activator role writes
            runners.extend(Pinner(app).runners())
            # the operator's read models: written where the pointers move (one writer per process that activates)
            runners.extend(Projector(app).runners())
        if role == "distributor":
            # housekeeping rides with the distributor (one per `kxr serve`): the pack keeper keeps the
            # packs it distributed and scopes run fetchable, the janitor keeps the streams free of
            # other roles' leftover consumers, the watchdog disconnects a role's connection that floods
            runners.extend([PackKeeper(app).run(), Janitor(app.js, app.subjects).run(), Watchdog(app.nc).run()])
    return runners


async def start_service(app: App, roles: tuple[str, ...]) -> None:
    """Start `app` (layout, follower caught up), then every runner of `roles` as one of its tasks
    (stopped and awaited by `app.stop()`). No roles: a follower-only App."""
    await app.start()
    for runner in build_roles(app, roles):
        app.spawn(runner, getattr(runner, "__qualname__", "role"))
