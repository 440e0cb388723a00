"""The notifier role: a webhook post for each rollback, hold and escalation, recorded in the log.

Event-triggered (not level-triggered like the lifecycle consumers): each of those events
is one notification per sink that asked for its kind. Before posting, the notifier reads
what is already recorded for the release, so a redelivery (or a second instance) does not
post and record again; the record's id is derived from (event, sink) and appended with the
expected last sequence of the release's notification subjects, so only one outcome is ever
stored. A webhook that fails is recorded as `notification.failed` and the release goes on:
nothing here touches the release's own subjects.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import httpx
from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, PullSub
from faststream.nats.annotations import NatsMessage
from faststream.nats.message import NatsMessage as NatsStreamMessage
from nats.js.api import AckPolicy as JsAckPolicy
from nats.js.api import ConsumerConfig, DeliverPolicy
from prometheus_client import CollectorRegistry

from events.cloudevents import source_of
from events.codec import DecodeError, decode_event, make_event
from events.ids import derived_event_id
from events.model import Event
from events.notifications import KIND_OF_EVENT, NotificationOutcome, NotificationSink, expand_url
from events.subjects import Subjects
from projections.releases import ReleaseState
from services.consumers.notifier.delivery import Delivery, deliver
from services.consumers.notifier.webhook import DEFAULT_SOURCE, Backoff, webhook
from services.consumers.port import Port
from services.consumers.reactor import until_stored
from services.jetstream.client import relayed_delivery
from services.jetstream.log import Entry
from services.jetstream.log_reads import log_entries
from services.jetstream.subscribers import (
    WorkerPolicy,
    bind_durable,
    inbox_prefix,
    keep_durable,
    run_broker,
    service_broker,
)
from services.jetstream.worker import Poison
from services.observability.metrics import track_consumer

NAME = "notifier"
DURABLE = f"kxr-{NAME}"
MAX_DELIVER = 10
PULL_TIMEOUT_S = 5.0  # one pull request waits this long for a message before the next is sent
log = logging.getLogger(__name__)


def trigger_subject(prefix: str, event_type: str) -> str:
    family, suffix = event_type.split(".", 1)
    return f"{prefix}.scope.*.*.*.{suffix}" if family == "scope" else f"{prefix}.{family}.*.{suffix}"


class Notifier:
    """Not a `ReleaseReactor`: it acts once per triggering event (a post per sink), not on the
    release's state, and never moves a release, so it has no phase to guard and no fail-closed
    release event (a post that fails is recorded as `notification.failed`). It shares the
    reactor's conflict retry (`until_stored`) for its records."""

    def __init__(self, port: Port, backoff: Backoff = Backoff(), allow_private: bool | None = None) -> None:
        self.port = port
        self.backoff = backoff
        self._allow_private = allow_private

    @property
    def allow_private(self) -> bool:
        """May a sink post into the service's own network (destination.py)? As the deployment set it
        (KX_WEBHOOK_ALLOW_PRIVATE), unless this notifier was told."""
        return self.port.settings.webhook_allow_private if self._allow_private is None else self._allow_private

    def runners(self) -> list:
        return [self.run()]

    async def run(self) -> None:
        """The notifier's FastStream subscriber on the process's connection, until cancelled."""
        s = self.port.subjects
        config = consumer_config(s, self.port.settings.ack_wait_s)
        track_consumer(s.releases_stream, DURABLE)  # its lag is sampled for /metrics
        await bind_durable(self.port.js, s.releases_stream, config)  # created, or brought to this configuration
        await run_broker(self.broker(), lambda: keep_durable(self.port.js, s.releases_stream, config))

    def broker(self, registry: CollectorRegistry | None = None, tracer_provider: Any = None) -> NatsBroker:
        """A broker holding the notifier's subscriber, acking as the worker does (services/jetstream/subscribers.py).
        Not started: `run` starts it on the process's connection, a test under `TestNatsBroker`."""
        s = self.port.subjects
        policy = WorkerPolicy(s.releases_stream, DURABLE, self.port.deadletters, Poison, MAX_DELIVER)
        nc = getattr(self.port, "nc", None)
        broker = service_broker(nc, DURABLE, policy, registry, tracer_provider)
        subscribe(broker, s, self.on_trigger, self.decode, self.port.settings.ack_wait_s, nc)
        return broker

    def decode(self, msg: NatsStreamMessage) -> Event:
        """The message as an event, decoded as strictly as the log's own readers do (a message
        that is not a valid event is poison: dead-lettered, never retried).

        A message JetStream relayed onto a trigger subject (an API answer stored on the reply subject
        a request named: any role can have one stored there, docs/permissions.md "JetStream's answers")
        was written by no role, whatever its bytes say: refused as `log_reads.decode_entry` refuses it,
        so nobody is paged about a rollback, hold, escalation or flag the service never recorded."""
        relayed = relayed_delivery(msg.raw_message.headers)
        if relayed is not None:
            why = "an answer stored on this subject, written by no role"
            raise Poison(f"relayed by JetStream from stream {relayed[:100]}: {why}")
        try:
            return decode_event(msg.body, msg.raw_message.subject, self.port.subjects)
        except DecodeError as exc:
            raise Poison(str(exc)) from None

    async def on_trigger(self, event: Event, msg: NatsMessage) -> None:
        """A rollback, hold, escalation or flag: post to the sinks that asked for it, record each outcome."""
        await self.port.follower.wait_for(msg.raw_message.metadata.sequence.stream)
        await self.notify(event, msg.in_progress)  # retries may outlast the ack deadline: no redelivery meanwhile

    async def notify(self, event: Event, still_working: Callable[[], Awaitable[None]] | None = None) -> None:
        """Post and record what `event` calls for and is not recorded yet (a redelivery posts nothing)."""
        kind = KIND_OF_EVENT.get(event.type)
        release = await self.port.release_whole(event.release_id) if kind is not None and event.release_id else None
        if kind is None:
            return
        if event.family == "scope" and event.scope is not None:
            # a scope's flag: its channel's sinks; the release that put the pack there (if any)
            # gives owner and escalation, and is where the outcome is recorded
            env, channel = event.scope.env, event.scope.channel
        elif release is not None and release.requested is not None:
            env, channel = release.requested.target.env, release.requested.target.channel
        else:
            return
        sinks = [s for s in self.port.follower.world.channel_config(env, channel).notifications if kind in s.on]
        if not sinks:
            return
        # A flag on a pinned scope names no release: its posts carry the flag's id as Idempotency-Key
        # (receivers drop copies), but there is no release to record the outcome under.
        done, _ = await self.recorded(release.release_id) if release is not None else (set(), 0)
        source = source_of(self.port.subjects.prefix)  # a CloudEvent's source: this log
        # the environment's proxies are applied per post, by the sink's own host (notifier/destination.py)
        async with httpx.AsyncClient(trust_env=False) as client:
            for sink in sinks:
                if (event.event_id, sink.name) in done:
                    continue
                delivery = await self.send(client, sink, kind, event, release, still_working, source)
                if release is not None:
                    await self.record(sink, kind, event, delivery)

    async def send(
        self,
        client: httpx.AsyncClient,
        sink: NotificationSink,
        kind: str,
        event: Event,
        release: ReleaseState | None,
        still_working: Callable[[], Awaitable[None]] | None,
        source: str = DEFAULT_SOURCE,
    ) -> Delivery:
        secret = None
        # (`secret_env` may name any variable: its value only keys the HMAC, and is never sent anywhere)
        if sink.secret_env is not None:
            secret = os.environ.get(sink.secret_env) or None
            if secret is None:  # fail closed: never send unsigned what the receiver expects signed
                return Delivery(
                    False, 0, None, f"secret_env {sink.secret_env} is not set in the notifier's environment"
                )
        try:
            hook = webhook(kind, sink, event, release, secret, source)
        except ValueError as exc:  # fail closed here too: a secret that cannot sign sends nothing
            return Delivery(False, 0, None, f"secret_env {sink.secret_env}: {exc}")
        try:  # a ${KX_HOOK_*} in the URL: filled in here, never in the log (the message names only the variable)
            hook = replace(hook, url=expand_url(sink.url, os.environ))
        except ValueError as exc:
            return Delivery(False, 0, None, str(exc))
        return await deliver(client, hook, sink.attempts, self.backoff, still_working, allow_private=self.allow_private)

    async def recorded(self, release_id: str) -> tuple[set[tuple[str, str]], int]:
        """(trigger event id, sink) of every outcome recorded for the release, and the last sequence."""
        done: set[tuple[str, str]] = set()
        last = 0
        async for entry, _, event in log_entries(
            self.port.js, self.port.subjects, [self.port.subjects.notification_filter(release_id)]
        ):
            last = entry.seq
            if event is not None and isinstance(event.data, NotificationOutcome):
                done.add((event.data.trigger, event.data.sink))
        return done, last

    async def record(self, sink: NotificationSink, kind: str, trigger: Event, delivery: Delivery) -> None:
        release_id = trigger.release_id
        assert release_id
        outcome = NotificationOutcome(
            sink=sink.name,
            kind=kind,
            trigger=trigger.event_id,
            trigger_type=trigger.type,
            attempts=delivery.attempts,
            status=delivery.status,
            error=delivery.error,
        )
        event = make_event(
            "notification.sent" if delivery.ok else "notification.failed",
            outcome,
            actor=self.port.ctx(NAME).actor,
            release_id=release_id,
            causation_id=trigger.event_id,
            correlation_id=release_id,
            event_id=derived_event_id(trigger.event_id, NAME, sink.name),
            occurred_at=self.port.clock(),
        )
        (log.info if delivery.ok else log.warning)(
            "%s notification to %s %s after %d attempt(s)%s",
            kind,
            sink.name,
            "sent" if delivery.ok else "failed",
            delivery.attempts,
            f": {delivery.error}" if delivery.error else "",
        )

        async def once() -> None:
            done, last = await self.recorded(release_id)
            if (trigger.event_id, sink.name) in done:
                return  # another instance recorded it first
            await self.port.log.append(Entry(event, last, self.port.subjects.notification_filter(release_id)))

        # another notification of this release landing in between is a conflict: look again (the
        # records are read from the log itself, so there is no world view to catch up)
        await until_stored(once, f"notifier: {release_id}")


def consumer_config(subjects: Subjects, ack_wait_s: float = 30.0) -> ConsumerConfig:
    """The notifier's durable consumer, as it has always been configured (its name and filter
    unchanged, so an existing deployment keeps its position)."""
    return ConsumerConfig(
        durable_name=DURABLE,
        ack_policy=JsAckPolicy.EXPLICIT,
        ack_wait=ack_wait_s,
        max_deliver=MAX_DELIVER,
        filter_subjects=[trigger_subject(subjects.prefix, event_type) for event_type in KIND_OF_EVENT],
        # NEW: a notifier deployed on an old log must not page anyone about last year's rollbacks;
        # once created, the durable consumer remembers where it was across restarts.
        deliver_policy=DeliverPolicy.NEW,
        max_ack_pending=1000,
    )


def subscribe(
    registrator: Any,
    subjects: Subjects,
    handler: Callable[..., Awaitable[None]],
    decoder: Callable[[NatsStreamMessage], Event],
    ack_wait_s: float = 30.0,
    nc: Any = None,
) -> Any:
    """Declare the notifier's subscriber on `registrator` (a broker or router): the service runs it,
    services/contracts/asyncapi_app.py documents it."""
    inbox = {"inbox_prefix": inbox_prefix(nc)} if nc is not None else {}
    return registrator.subscriber(
        config=consumer_config(subjects, ack_wait_s),
        durable=DURABLE,
        stream=JStream(subjects.releases_stream, declare=False),
        pull_sub=PullSub(batch_size=1, timeout=PULL_TIMEOUT_S),  # one at a time, in log order
        ack_policy=AckPolicy.NACK_ON_ERROR,  # what escapes WorkerPolicy is redelivered, never acked
        decoder=decoder,
        title=DURABLE,
        description=(
            "The notifier: a webhook post per sink for each rollback, hold, escalation and flag, "
            "recorded as notification.sent/failed (durable pull consumer kxr-notifier on KX_RELEASES)."
        ),
        **inbox,
    )(handler)
