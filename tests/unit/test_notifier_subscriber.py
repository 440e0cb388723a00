"""The notifier and the dead-letter watcher as FastStream subscribers, in memory (`TestNatsBroker`):
which messages reach them, how each is decoded, and how it is acked, nak'ed or dead-lettered
(services/jetstream/subscribers.py `WorkerPolicy`, the worker's policy). No NATS server: the
transport is FastStream's test broker; the delivery logic behind `notify` has its own tests
(test_notifications.py, integration/test_webhook_delivery.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from unittest.mock import AsyncMock, MagicMock

import pytest
from faststream.exceptions import SubscriberNotFound
from faststream.nats import TestNatsBroker
from prometheus_client import CollectorRegistry

from events.codec import encode_event, make_event
from events.model import Actor, Event
from events.subjects import Subjects
from services.consumers.notifier.consumer import DURABLE, MAX_DELIVER, Notifier, consumer_config
from services.jetstream.deadletter import WATCHER, MaxDeliveriesWatcher
from services.jetstream.subscribers import service_broker
from services.observability.metrics import PROCESSED
from services.settings import Settings

SERVICE = Actor(kind="service", id="promoter")
NOW = datetime(2030, 1, 1, tzinfo=UTC)
SUBJECTS = Subjects("tn")
STREAM = SUBJECTS.releases_stream


def ack_reply(seq: int, delivered: int = 1) -> str:
    """The reply subject JetStream gives a delivered message: what `msg.metadata` is read from."""
    return f"$JS.ACK.{STREAM}.{DURABLE}.{delivered}.{seq}.{seq}.1893456000000000000.0"


@dataclass
class FakeFollower:
    waited: list[int] = field(default_factory=list)

    async def wait_for(self, seq: int, timeout: float | None = 30.0) -> None:
        self.waited.append(seq)


@dataclass
class FakeDeadLetters:
    records: list[tuple] = field(default_factory=list)

    async def record(self, consumer, stream, seq, subject, data, reason, deliveries=1) -> None:
        self.records.append((consumer, stream, seq, subject, data, reason, deliveries))


@dataclass
class FakePort:
    subjects: Subjects = SUBJECTS
    settings: Settings = field(default_factory=Settings)
    follower: FakeFollower = field(default_factory=FakeFollower)
    deadletters: FakeDeadLetters = field(default_factory=FakeDeadLetters)
    nc: None = None


class Recording(Notifier):
    """The real subscriber and decoding; `notify` (the webhook posts) replaced by a record of its calls."""

    def __init__(self, port: FakePort, fail: Exception | None = None) -> None:
        super().__init__(port)  # type: ignore[arg-type]
        self.notified: list[Event] = []
        self.fail = fail

    async def notify(self, event, still_working=None) -> None:
        if self.fail is not None:
            raise self.fail
        assert still_working is not None
        await still_working()  # the keep-alive reaches the message (FastStream's test message takes it)
        self.notified.append(event)


def rolled_back(release_id: str = "r1") -> Event:
    return make_event(
        "release.rolled_back",
        {"cohorts": ["internal"], "targets": {"internal": None}},
        actor=SERVICE,
        release_id=release_id,
        occurred_at=NOW,
    )


def processed(outcome: str) -> float:
    return PROCESSED.labels(STREAM, DURABLE, outcome)._value.get()


async def test_a_trigger_event_is_decoded_waited_for_notified_and_acked() -> None:
    port = FakePort()
    notifier = Recording(port)
    broker = notifier.broker(CollectorRegistry())
    event = rolled_back()
    acked = processed("acked")
    async with TestNatsBroker(broker) as br:
        await br.publish(
            encode_event(event),
            SUBJECTS.release("r1", "rolled_back"),
            stream=STREAM,
            reply_to=ack_reply(41),
            headers={"Nats-Msg-Id": event.event_id},
        )
        (subscriber,) = broker.subscribers
        subscriber.calls[0].handler.mock.assert_called_once()  # type: ignore[union-attr]
    assert notifier.notified == [event]
    assert port.follower.waited == [41]  # decides on a fold that has reached the message
    assert processed("acked") == acked + 1
    assert port.deadletters.records == []


async def test_only_the_trigger_subjects_reach_it() -> None:
    notifier = Recording(FakePort())
    broker = notifier.broker(CollectorRegistry())
    async with TestNatsBroker(broker) as br:
        with pytest.raises(SubscriberNotFound):  # nothing subscribes to a promotion
            await br.request(b"{}", SUBJECTS.release("r1", "promoted"), stream=STREAM)
    assert notifier.notified == []
    filters = consumer_config(SUBJECTS).filter_subjects
    assert filters is not None and "tn.release.*.rolled_back" in filters and "tn.scope.*.*.*.flagged" in filters


async def test_a_message_that_is_not_a_valid_event_is_dead_lettered_at_once() -> None:
    port = FakePort()
    notifier = Recording(port)
    broker = notifier.broker(CollectorRegistry())
    dead = processed("dead_lettered")
    async with TestNatsBroker(broker) as br:
        await br.publish(b'{"not": "an event"}', SUBJECTS.release("r1", "rolled_back"), reply_to=ack_reply(7))
    assert notifier.notified == []
    ((consumer, stream, seq, subject, data, reason, deliveries),) = port.deadletters.records
    assert (consumer, stream, seq, subject, data, deliveries) == (
        DURABLE,
        STREAM,
        7,
        SUBJECTS.release("r1", "rolled_back"),
        b'{"not": "an event"}',
        1,
    )
    assert reason  # the decoder's own words
    assert processed("dead_lettered") == dead + 1


async def test_a_trigger_jetstream_relayed_is_dead_lettered_and_pages_nobody() -> None:
    """An API answer JetStream stored on a trigger subject (docs/permissions.md "JetStream's answers")
    was written by no role: refused as every reader of the log refuses it, whatever its bytes say."""
    port = FakePort()
    notifier = Recording(port)
    broker = notifier.broker(CollectorRegistry())
    event = rolled_back()  # a well-formed service event, as a producer can store it for JetStream to relay
    async with TestNatsBroker(broker) as br:
        await br.publish(
            encode_event(event),
            SUBJECTS.release("r1", "rolled_back"),
            stream=STREAM,
            reply_to=ack_reply(12),
            headers={"Nats-Stream": "OBJ_tn_packs", "Nats-Subject": "$O.tn_packs.C.x", "Nats-Sequence": "3"},
        )
    assert notifier.notified == []
    ((consumer, _, seq, _, _, reason, deliveries),) = port.deadletters.records
    assert (consumer, seq, deliveries) == (DURABLE, 12, 1)
    assert reason.startswith("relayed by JetStream from stream OBJ_tn_packs"), reason


async def test_a_failure_is_nak_ed_with_back_off_and_dead_lettered_on_the_last_delivery(monkeypatch) -> None:
    port = FakePort()
    notifier = Recording(port, fail=RuntimeError("receiver exploded"))
    broker = notifier.broker(CollectorRegistry())
    naks: list[float | None] = []
    terms: list[int] = []

    async def nak(self, delay=None):  # FastStream's test message: record what the policy asked for
        naks.append(delay)

    async def term(self):
        terms.append(1)

    from faststream.nats.testing import PatchedMessage

    monkeypatch.setattr(PatchedMessage, "nak", nak)
    monkeypatch.setattr(PatchedMessage, "term", term)
    event = rolled_back()
    async with TestNatsBroker(broker) as br:
        for delivered in (1, 2, MAX_DELIVER):
            await br.publish(
                encode_event(event), SUBJECTS.release("r1", "rolled_back"), reply_to=ack_reply(9, delivered)
            )
    assert naks == [0.4, 0.8]  # 0.2 s · 2^n, as the worker's
    assert terms == [1]  # the last delivery is kept as a dead letter and terminated, not redelivered
    ((consumer, _, seq, _, _, reason, deliveries),) = port.deadletters.records
    assert (consumer, seq, deliveries) == (DURABLE, 9, MAX_DELIVER)
    assert reason.startswith(f"gave up after {MAX_DELIVER} deliveries") and "receiver exploded" in reason


async def test_faststream_s_prometheus_middleware_counts_into_the_registry_it_is_given() -> None:
    registry = CollectorRegistry()
    broker = Recording(FakePort()).broker(registry)
    async with TestNatsBroker(broker) as br:
        await br.publish(encode_event(rolled_back()), SUBJECTS.release("r1", "rolled_back"), reply_to=ack_reply(3))
    names = {m.name for m in registry.collect()}
    assert "kx_faststream_received_messages" in names, names
    total = registry.get_sample_value(
        "kx_faststream_received_processed_messages_total",
        {"app_name": "konnaxion-releases", "broker": "nats", "handler": DURABLE, "status": "acked"},
    )
    assert total == 1, [s for m in registry.collect() for s in m.samples]


async def test_the_broker_never_closes_the_connection_it_shares() -> None:
    nc = MagicMock()
    nc.drain, nc.close = AsyncMock(), AsyncMock()
    port = FakePort()
    port.nc = nc  # type: ignore[assignment]
    nc.new_inbox = lambda: "_INBOX_tn_service.abc"
    broker = Recording(port).broker(CollectorRegistry())
    (subscriber,) = broker.subscribers
    assert subscriber.extra_options["inbox_prefix"] == b"_INBOX_tn_service."  # the user's own reply prefix
    assert await broker.connect() is nc
    await broker.stop()
    nc.drain.assert_not_called()
    nc.close.assert_not_called()


def test_the_faststream_internals_the_shared_broker_relies_on_are_there() -> None:
    """services/jetstream/subscribers.py `SharedConnectionBroker` overrides `NatsBroker._connect` and
    clears `_connection` before `NatsBroker.stop` (which drains it); a FastStream that renames either
    would open a second connection or close the process's own. faststream is pinned exactly for this."""
    import inspect

    from faststream.nats import NatsBroker

    assert "_connect" in NatsBroker.__dict__ and inspect.iscoroutinefunction(NatsBroker._connect)
    assert "self._connection.drain()" in inspect.getsource(NatsBroker.stop)
    assert "self._connection = await self._connect()" in inspect.getsource(NatsBroker.connect)


@dataclass
class FakeJs:
    stored: dict[tuple[str, int], tuple[str, bytes]] = field(default_factory=dict)

    async def get_msg(self, stream: str, seq: int):
        if (stream, seq) not in self.stored:
            raise LookupError(f"no message {seq} in {stream}")
        subject, data = self.stored[(stream, seq)]
        return type("Raw", (), {"subject": subject, "data": data})()


async def test_the_dead_letter_watcher_keeps_what_jetstream_gave_up_on() -> None:
    js, dead = FakeJs({(STREAM, 12): ("tn.release.r1.annotated", b"junk")}), FakeDeadLetters()
    watcher = MaxDeliveriesWatcher(js, SUBJECTS, dead)  # type: ignore[arg-type]
    broker = service_broker(None, WATCHER, registry=CollectorRegistry())
    watcher.subscribe(broker)
    advisory = {
        "type": "io.nats.jetstream.advisory.v1.max_deliver",
        "stream": STREAM,
        "consumer": "kxr-guard",
        "stream_seq": 12,
        "deliveries": 3,
    }
    async with TestNatsBroker(broker) as br:
        await br.publish(advisory, f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{STREAM}.kxr-guard")
        # one it cannot act on (the message is gone): logged, nothing kept, the watcher goes on
        await br.publish({**advisory, "stream_seq": 13}, f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{STREAM}.x")
        # a reader's own consumer that gave up (max_deliver 1, never acked): not the service's failure
        foreign = {**advisory, "consumer": "kxr-looks-like-the-service"}
        await br.publish(foreign, f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{STREAM}.kxr-looks-like-the-service")
        with pytest.raises(SubscriberNotFound):  # only the streams the service consumes are watched
            await br.request(advisory, "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.OTHER.kxr-guard")
    ((consumer, stream, seq, subject, data, reason, deliveries),) = dead.records
    assert (consumer, stream, seq, subject, data, deliveries) == (
        "kxr-guard",
        STREAM,
        12,
        "tn.release.r1.annotated",
        b"junk",
        3,
    )
    assert "max-deliver advisory" in reason
    assert sorted(watcher.advisory_subjects()) == [
        f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{SUBJECTS.releases_stream}.*",
        f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{SUBJECTS.timers_stream}.*",
    ]


async def test_each_message_gets_a_consumer_span_in_the_trace_its_traceparent_names() -> None:
    from faststream.nats.testing import build_message
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    notifier = Recording(FakePort())
    broker = notifier.broker(CollectorRegistry(), tracer_provider=provider)
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with TestNatsBroker(broker):
        # as a message from NATS arrives (published by nats-py with the header, not through FastStream,
        # whose own publish would start a trace of its own)
        msg = await build_message(
            encode_event(rolled_back()),
            SUBJECTS.release("r1", "rolled_back"),
            reply_to=ack_reply(5),
            headers={"traceparent": f"00-{trace_id}-{parent}-01"},
        )
        (subscriber,) = broker.subscribers
        await subscriber.process_message(msg)
    consumer_spans = [s for s in exporter.get_finished_spans() if s.kind.name == "CONSUMER"]
    assert consumer_spans, [s.name for s in exporter.get_finished_spans()]
    (span,) = consumer_spans
    assert format(span.context.trace_id, "032x") == trace_id
    assert span.parent is not None and format(span.parent.span_id, "016x") == parent
    assert notifier.notified  # and the handler ran inside it
