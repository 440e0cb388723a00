"""The consumer contract (services/consumers/reactor.py) and the narrow port (services/consumers/port.py).

- `App` is a `Port`, structurally; no consumer module imports the App.
- What each consumer writes when it cannot observe or decide (`fail_closed`), and that the
  reactor writes it on the Worker's last delivery instead of a silent dead letter.
"""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest
from nats.aio.client import Client

from events.subjects import Subjects
from services.app import App
from services.consumers import verifier as verifier_module
from services.consumers.activator import Activator
from services.consumers.distributor import Distributor
from services.consumers.monitor import Monitor
from services.consumers.port import Port, WorldView
from services.consumers.preparer import Preparer
from services.consumers.promoter import Promoter
from services.consumers.reactor import MAX_DELIVER, Failed, ReleaseReactor
from services.consumers.verifier import Verifier
from services.settings import Settings

from .test_decisions import (
    LATER,
    ctx,
    history,
    monitoring_log,
    prepared_release,
    requested_log,
    rolling_back_log,
    single_event,
    state,
    verified_log,
)
from .test_projections import P1, Log

CONSUMERS = Path(__file__).resolve().parents[2] / "services" / "consumers"
BOOM = Failed("internal_error", "RuntimeError: boom")


# ---- the port ----------------------------------------------------------------------------------
def _app_as_port(app: App) -> Port:
    return app  # what a type checker (mypy) checks: App satisfies the Port structurally, members' types included


def test_app_is_a_port() -> None:
    app = App(Client(), Settings(prefix="tport"))  # nothing connects until start()
    assert isinstance(_app_as_port(app), Port)  # the runtime check: every member is there
    assert isinstance(app.follower, WorldView)


def test_a_port_is_all_a_consumer_needs() -> None:
    bare = SimpleNamespace()
    assert not isinstance(bare, Port)


def test_no_consumer_imports_the_app() -> None:
    for path in CONSUMERS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                assert name not in ("services.app", "..app", "...app") and not name.endswith("services.app"), (
                    path,
                    name,
                )


# ---- what each consumer writes when it cannot go on (pure) ---------------------------------------
def _fail(consumer: type[ReleaseReactor], release, world=None, failed: Failed = BOOM):
    return consumer(SimpleNamespace()).fail_closed(world, release, failed, ctx(consumer.name))


def test_preparer_fails_closed_with_a_rejection_that_says_why() -> None:
    event = single_event(_fail(Preparer, state(requested_log())[1]))
    assert event.type == "release.rejected"
    assert [(r.code, r.message) for r in event.data.reasons] == [
        ("preflight", "pre-flight could not evaluate the request: RuntimeError: boom")
    ]


def test_distributor_fails_closed_on_an_unreadable_store_as_before() -> None:
    event = single_event(
        _fail(Distributor, prepared_release(), failed=Failed("store_unreadable", "TimeoutError: x", "distribution"))
    )
    assert event.type == "release.verification_failed"
    assert (event.data.gate, event.data.code) == ("distribution", "store_unreadable")
    assert event.data.message == "the pack store could not be read: TimeoutError: x"
    other = single_event(_fail(Distributor, prepared_release()))
    assert (other.data.gate, other.data.code, other.data.message) == (
        "distribution",
        "internal_error",
        "RuntimeError: boom",
    )


def test_verifier_fails_closed_at_the_gate_it_names() -> None:
    log = history(Log())
    log.requested("r1")
    log.prepared("r1")
    log.distributed("r1")
    event = single_event(_fail(Verifier, state(log)[1], failed=Failed("timeout", "too slow", "deadline")))
    assert event.type == "release.verification_failed"
    assert (event.data.gate, event.data.code, event.data.message) == ("deadline", "timeout", "too slow")
    assert [(g.gate, g.ok) for g in event.data.gates] == [("deadline", False)]


async def test_verifier_observes_a_context_it_cannot_build_as_an_internal_failure(monkeypatch) -> None:
    """Before, `context_for` ran outside the observation's guard: its raise was retried by the Worker for
    every delivery before the give-up failed the release closed; now it is the observation's failure."""

    def broken(*args, **kwargs):
        raise RuntimeError("no such channel")

    monkeypatch.setattr(verifier_module, "context_for", broken)
    log = history(Log())
    log.requested("r1")
    log.prepared("r1")
    log.distributed("r1")
    world, release = state(log)
    port = SimpleNamespace(current_trust_root=lambda: object(), settings=SimpleNamespace(verify_timeout_s=5.0))
    facts = await Verifier(port).observe(world, release, ctx("verifier"))  # type: ignore[arg-type]
    assert facts == Failed("internal_error", "RuntimeError: no such channel", "internal")


def test_activator_fails_a_stage_closed_and_holds_a_rollback() -> None:
    event = single_event(_fail(Activator, state(verified_log())[1]))
    assert event.type == "release.activation_failed"
    assert (event.data.stage, event.data.code, event.data.message) == (0, "internal_error", "RuntimeError: boom")
    held = single_event(_fail(Activator, state(rolling_back_log())[1]))
    assert held.type == "release.escalated" and held.data.code == "internal_error"
    assert "activator could not act on phase rolling_back: RuntimeError: boom" == held.data.message


def test_monitor_holds_an_open_window_inconclusive() -> None:
    event = single_event(_fail(Monitor, state(monitoring_log())[1]))
    assert event.type == "release.monitoring_inconclusive"
    assert event.data.reason == "the window could not be watched: RuntimeError: boom"


def test_promoter_holds_where_the_lifecycle_allows_and_not_where_it_does_not() -> None:
    log = verified_log()
    log.stage("r1", 0, ["internal"])
    assert single_event(_fail(Promoter, state(log)[1])).type == "release.escalated"  # passed: held for an operator
    log = history(Log())
    log.requested("r1")
    log.add("release.rejected", {"reasons": [{"code": "x", "message": "y"}]}, release_id="r1")
    assert _fail(Promoter, state(log)[1]) == []  # rejected: only `closed` may follow; a dead letter it stays


# ---- the reactor: the Worker's last delivery fails closed ----------------------------------------
class _Port(SimpleNamespace):
    def __init__(self, world) -> None:
        async def catch_up(timeout=None) -> None:
            return None

        async def wait_for(seq, timeout=None) -> None:
            return None

        super().__init__(
            follower=SimpleNamespace(world=world, undecodable={}, catch_up=catch_up, wait_for=wait_for),
            subjects=Subjects("kx"),
            emitted=[],
        )

    def ctx(self, service: str):
        return ctx(service)

    async def emit(self, outputs, release) -> None:
        self.emitted.extend(outputs)


class _Broken(Preparer):
    async def observe(self, world, release, ctx):
        raise RuntimeError("boom")


def _msg(deliveries: int):
    meta = SimpleNamespace(sequence=SimpleNamespace(stream=1), num_delivered=deliveries)
    return SimpleNamespace(subject="kx.release.r1.requested", metadata=meta)


async def test_an_exception_is_retried_then_fails_the_release_closed_saying_why() -> None:
    port = _Port(requested_log().world())
    preparer = _Broken(port)
    with pytest.raises(RuntimeError, match="boom"):
        await preparer.handle(_msg(1))  # the Worker retries it
    assert port.emitted == []
    await preparer.handle(_msg(MAX_DELIVER))  # the last delivery: handled, by a fail-closed event
    event = single_event(port.emitted)
    assert event.type == "release.rejected"
    assert event.data.reasons[0].message == (
        "pre-flight could not evaluate the request: "
        f"preparer gave up after {MAX_DELIVER} deliveries: RuntimeError: boom"
    )
    assert event.occurred_at == LATER


async def test_without_a_fitting_event_the_last_failure_stays_a_dead_letter() -> None:
    log = history(Log())
    log.requested("r1", P1)
    log.add("release.rejected", {"reasons": [{"code": "x", "message": "y"}]}, release_id="r1")

    class Broken(Promoter):
        async def observe(self, world, release, ctx):
            raise RuntimeError("boom")

    port = _Port(log.world())
    with pytest.raises(RuntimeError, match="boom"):
        await Broken(port).handle(
            SimpleNamespace(subject="kx.release.r1.rejected", metadata=_msg(MAX_DELIVER).metadata)
        )
    assert port.emitted == []


async def test_a_named_failure_is_failed_closed_at_once() -> None:
    class Unreadable(Distributor):
        async def observe(self, world, release, ctx):
            return Failed("store_unreadable", "TimeoutError: x", "distribution")

    log = requested_log()
    log.prepared("r1")
    port = _Port(log.world())
    await Unreadable(port).handle(SimpleNamespace(subject="kx.release.r1.prepared", metadata=_msg(1).metadata))
    assert single_event(port.emitted).data.code == "store_unreadable"
