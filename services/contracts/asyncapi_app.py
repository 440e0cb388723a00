"""The contract as a FastStream app, for `faststream docs gen` (AsyncAPI 3.0): docs/asyncapi/.

It declares every subject of the contract with its payload model and stream, and exists to
generate the document, never to run: starting this app fails. Two of the service's consumers
are FastStream subscribers, and the document holds them as they run, declared by their own
code on this app's broker: the notifier (`kxr-notifier`, services/consumers/notifier/consumer.py
`subscribe`) and the dead-letter watcher (`kxr-max-deliveries-<stream>`,
services/jetstream/deadletter.py `MaxDeliveriesWatcher.subscribe`). The lifecycle consumers are
nats-py code (services/jetstream/subscribers.py says why) and appear as the subjects they read.

Operations are the release service's side of each subject: `send` for what the service
appends (runtimes consume `scope.activated`), `receive` for what producers, operators and
runtimes publish. Who may publish what comes from the NATS permissions of each role
(services/permissions.py), so a subject both the service and an operator write (an
operator's override of a held window, say) appears once per side.

The document FastStream builds is passed through `asyncapi_doc.conform` (valid component keys,
declared address parameters) by `ContractAsyncAPI`, inside `faststream docs gen` itself.

Regenerate (from the repository root):
    faststream docs gen services.contracts.asyncapi_app:app --out docs/asyncapi/asyncapi.json
    faststream docs gen services.contracts.asyncapi_app:app --yaml --out docs/asyncapi/asyncapi.yaml
"""

from __future__ import annotations

from io import StringIO
from typing import Any

from faststream import FastStream
from faststream.nats import JStream, NatsBroker, NatsRouter
from faststream.specification import AsyncAPI

from events.health import HealthSample
from events.model import PAYLOADS, SCHEMA_VERSION
from events.subjects import Subjects
from services.consumers.notifier.consumer import Notifier, subscribe
from services.jetstream.deadletter import MaxDeliveriesWatcher

from .asyncapi_doc import conform
from .catalog import Channel, channels
from .envelopes import envelope_model

TITLE = "Konnaxion Releases"
VERSION = f"{SCHEMA_VERSION}.0.0"  # the wire contract's schema_version: the document changes with the contract
DESCRIPTION = """\
The wire contract of Konnaxion Releases (CONTRACT.md), generated from the code's models.

`send` operations are what the release service appends; `receive` operations are what
producers, operators and runtimes publish for it. Every message of the release log
(stream KX_RELEASES) is the event envelope with its type's `data`, published with the header
`Nats-Msg-Id` = `event_id`; release subjects are appended with
`Nats-Expected-Last-Subject-Sequence` on `kx.release.<release_id>.*`, scope pointers only in
JetStream atomic batches. Health samples go to stream KX_HEALTH. Subject tokens match
`^[A-Za-z0-9_-]{1,64}$`; the prefix `kx` is configurable (KX_PREFIX). JSON Schemas of the same
models: docs/schemas/index.json.
"""
DOCS_ONLY = "services.contracts.asyncapi_app documents the contract and does not run: use `kxr serve`"

broker = NatsBroker("nats://localhost:4222", description="NATS with JetStream", logger=None)
_streams = {name: JStream(name, declare=False) for name in sorted({c.stream for c in channels()})}


def _payload(channel: Channel) -> type:
    return envelope_model(channel.name) if channel.name in PAYLOADS else HealthSample


def _describe(channel: Channel, writer: str | None = None) -> str:
    who = f"Published by the {writer}." if writer else f"Published by: {', '.join(channel.writers)}."
    return f"{channel.description}\n\nStream: {channel.stream}. {who}"


def _receiver(model: type, name: str) -> Any:
    async def receive(message) -> None:
        raise RuntimeError(DOCS_ONLY)

    # FastStream documents a subscriber's payload from its handler's annotation.
    receive.__annotations__ = {"message": model, "return": None}
    receive.__name__ = receive.__qualname__ = f"receive_{name}"
    return receive


def _declare() -> None:
    # One router per endpoint: a broker keeps its own endpoints in a WeakSet, whose order follows
    # memory addresses, but its routers in a list, so this fixes the document's order.
    for channel in channels():
        stream, model = _streams[channel.stream], _payload(channel)
        if "service" in channel.writers:
            router = NatsRouter()
            router.publisher(
                channel.subject,
                stream=stream,
                title=channel.name,
                description=_describe(channel, "release service"),
                schema=model,
            )
            broker.include_router(router)
        for writer in (w for w in channel.writers if w != "service"):
            title = f"{channel.name}-by-{writer}" if "service" in channel.writers else channel.name
            router = NatsRouter()
            router.subscriber(channel.subject, stream=stream, title=title, description=_describe(channel, writer))(
                _receiver(model, f"{channel.name.replace('.', '_')}_by_{writer}")
            )
            broker.include_router(router)
    # the service's FastStream subscribers, declared by the code that runs them (never started here)
    subjects = Subjects("kx")
    notifier = Notifier(None)  # type: ignore[arg-type]  # declaring its subscriber uses no port
    router = NatsRouter()
    subscribe(router, subjects, notifier.on_trigger, notifier.decode)
    broker.include_router(router)
    watcher = MaxDeliveriesWatcher(None, subjects, None)  # type: ignore[arg-type]
    for subject in watcher.advisory_subjects():
        router = NatsRouter()
        watcher.subscribe(router, subject)
        broker.include_router(router)


class ConformingDocument:
    """A FastStream `Specification` holding the conforming JSON form of FastStream's own document."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self._doc = doc

    @property
    def title(self) -> str:
        return str(self._doc["info"]["title"])

    def to_jsonable(self) -> Any:
        return self._doc

    def to_json(self) -> str:
        import json

        return json.dumps(self._doc)

    def to_yaml(self) -> str:  # as FastStream writes it (faststream/specification/base/schema.py)
        import yaml  # type: ignore[import-untyped]

        io = StringIO(initial_value="", newline="\n")
        yaml.dump(self._doc, io, sort_keys=False)
        return io.getvalue()


class ContractAsyncAPI(AsyncAPI):
    """FastStream's AsyncAPI factory, its document made conforming (`asyncapi_doc.conform`)."""

    def to_specification(self) -> Any:
        return ConformingDocument(conform(super().to_specification().to_jsonable()))


_declare()
app = FastStream(broker, specification=ContractAsyncAPI(broker, title=TITLE, version=VERSION, description=DESCRIPTION))


@app.on_startup
async def _refuse() -> None:
    raise RuntimeError(DOCS_ONLY)
