"""Appending to the release log: idempotent, conflict-checked, atomic where it must be.

Every append carries `Nats-Msg-Id = event_id`; appends to a release subject carry
the expected last sequence of `kx.release.<id>.*`, and a batch carries the expected
last sequence of every scope subject it switches. On a single server the
expected-sequence check runs before the duplicate check, so a retried append can
come back as "wrong last sequence" (10071) or, for a batch, "duplicate message id"
(10201): we then look at what is stored and treat our own event as success.

A replicated (R3) stream checks the other way round, and says more while a proposal
is in flight (verified on nats-server 2.15.1, tests/cluster):
- a retried append is a plain PubAck with `duplicate` set and the stored sequence;
- the same message id while its first copy is still being replicated: "duplicate
  message id is in process" (10158) — our own write may yet land, so ask again shortly
  (the answer then is the duplicate), never call it a conflict;
- an expectation on a subject another in-flight write is changing: "wrong last
  sequence" without a number (10164) — a lost race, exactly like 10071.
A retried batch is 10201 on both.

Group commit: nats-server syncs each atomic batch to disk before it answers (file-backed
stream), and batches sent side by side are not synced together (2.15.1: 250-380 two-message
batches/s at 1 to 32 in flight, 1,284 switches/s at 4 per batch, 4,508/s at 16, same disk).
So batches asked for while one is being committed wait and are committed together, as one
atomic batch, never two touching the same subject or expectation filter; every message keeps
its own expected last subject sequence, and a group the server refuses is committed again in
halves, down to one batch at a time. A batch committed in a group stores the group's Nats-Batch-Id, not its own.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from dataclasses import dataclass

from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from events.codec import encode_event, scope_tuple
from events.ids import derived_event_id
from events.model import Event
from events.service_signing import OwnAppends, signature_headers
from events.signing import SigningKey
from events.subjects import Subjects
from services.observability import tracing

WRONG_LAST_SEQUENCE = 10071
WRONG_LAST_SEQUENCE_IN_FLIGHT = 10164  # replicated streams: another write to the subject is being proposed
DUPLICATE_IN_FLIGHT = 10158  # replicated streams: this message id is being proposed right now
BATCH_DUPLICATE_ID = 10201
LOST_RACE = (WRONG_LAST_SEQUENCE, WRONG_LAST_SEQUENCE_IN_FLIGHT)
IN_FLIGHT_RETRIES = 20  # x a short pause: a proposal settles in milliseconds, a leader change in seconds


class AppendConflict(RuntimeError):
    """Someone else appended first: re-read the state and decide again."""


class AppendFailed(RuntimeError):
    """The server refused or did not answer: nothing is known to be stored."""


@dataclass(frozen=True)
class Entry:
    """One event to append, with its optimistic-concurrency expectation."""

    event: Event
    expected_seq: int | None = None  # None: no expectation
    expected_filter: str | None = None  # subject filter the expectation applies to (None: own subject)


class EventLog:
    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        subjects: Subjects,
        timeout: float = 5.0,
        signer: SigningKey | None = None,
        coalesce: bool = True,
    ) -> None:
        self._nc = nc
        self._js = js
        self.subjects = subjects
        self._timeout = timeout
        self._signer = signer  # a service signs every append (tamper evidence, events/service_signing.py)
        # what it signed: its own follower skips their Ed25519 verification
        self.own_appends = OwnAppends(signer) if signer is not None else None
        self._coalesce = coalesce
        self._waiting: list[_Part] = []  # atomic batches waiting for the one being committed
        self._committer: asyncio.Task | None = None
        self._committing = False  # a caller is committing its own batch (nothing else was in flight)

    def subject_of(self, event: Event) -> str:
        return self.subjects.expected_subject(event.type, event.release_id, scope_tuple(event))

    def release_entry(self, event: Event, expected_seq: int) -> Entry:
        assert event.release_id
        return Entry(event, expected_seq, self.subjects.release_filter(event.release_id))

    def _headers(self, entry: Entry, subject: str, payload: bytes) -> dict[str, str]:
        headers = {"Nats-Msg-Id": entry.event.event_id}
        if self._signer is not None:
            headers.update(signature_headers(self._signer, subject, payload))
            if self.own_appends is not None:
                self.own_appends.remember(subject, payload, headers)
        if entry.expected_seq is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(entry.expected_seq)
            if entry.expected_filter:
                headers["Nats-Expected-Last-Subject-Sequence-Subject"] = entry.expected_filter
        # the deciding span's traceparent, if tracing; never part of what is signed
        tracing.inject(headers, entry.event.event_id)
        return headers

    async def append(self, entry: Entry) -> int:
        """Append one event; returns its stream sequence (also when it was already stored)."""
        subject = self.subject_of(entry.event)
        payload = encode_event(entry.event)
        headers = self._headers(entry, subject, payload)
        for attempt in range(IN_FLIGHT_RETRIES):
            try:
                ack = await self._js.publish(subject, payload, timeout=self._timeout, headers=headers)
            except APIError as exc:
                if exc.err_code in LOST_RACE:
                    stored = await self._stored_seq(subject, entry.event.event_id)
                    if stored is not None:
                        return stored
                    raise AppendConflict(f"{subject}: {exc.description}") from None
                if exc.err_code == DUPLICATE_IN_FLIGHT:  # our own copy is being replicated: ask again
                    await asyncio.sleep(_pause(attempt))
                    continue
                raise AppendFailed(f"{subject}: {exc.description}") from None
            except (TimeoutError, NatsTimeoutError) as exc:
                raise AppendFailed(f"{subject}: no answer from JetStream ({exc.__class__.__name__})") from None
            return ack.seq
        raise AppendFailed(f"{subject}: event {entry.event.event_id} still in flight; outcome unknown")

    async def append_chain(self, entries: list[Entry]) -> list[int]:
        """Append events to one release in order, each expecting the previous one's sequence."""
        seqs: list[int] = []
        for entry in entries:
            if seqs and entry.expected_seq is not None:
                entry = Entry(entry.event, seqs[-1], entry.expected_filter)
            seqs.append(await self.append(entry))
        return seqs

    async def commit_batch(self, entries: list[Entry], batch_id: str = "") -> int:
        """All-or-nothing append of several events (JetStream atomic batch). Returns the last seq.

        With `coalesce` (the default), batches asked for while another is being committed are
        committed together, as one atomic batch, by `_commit_waiting`; one alone is sent as it is.
        """
        if not entries:
            raise ValueError("empty batch")
        batch_id = batch_id or derived_event_id(entries[0].event.event_id, "batch", str(len(entries)))
        messages = []
        for entry in entries:  # built here: signed, and in the caller's trace context
            subject = self.subject_of(entry.event)
            payload = encode_event(entry.event)
            messages.append((subject, payload, self._headers(entry, subject, payload)))
        if not self._coalesce:
            return await self._commit_alone(_Part(entries, batch_id, messages))
        if not self._committing and not self._waiting and (self._committer is None or self._committer.done()):
            # nothing in flight: sent at once from here (a lone switch waits for no other task);
            # what is asked for meanwhile waits, and goes in one group once this is answered
            self._committing = True
            try:
                return await self._commit_alone(_Part(entries, batch_id, messages))
            finally:
                self._committing = False
                self._start_committer()
        part = _Part(entries, batch_id, messages, asyncio.get_running_loop().create_future())
        self._waiting.append(part)
        self._start_committer()
        assert part.done is not None
        return await part.done

    def _start_committer(self) -> None:
        if self._waiting and not self._committing and (self._committer is None or self._committer.done()):
            self._committer = asyncio.create_task(self._commit_waiting(), name="commit-batches")

    async def _commit_waiting(self) -> None:
        """Commit the waiting batches, several at a time: on a file-backed stream the server syncs
        each atomic batch to disk before it answers (~3 ms here), and batches sent side by side
        are not synced together (nats-server 2.15.1), so one batch carrying several releases'
        switches is how a busy activator goes past ~300 switches/s.

        A group never holds two batches that touch the same subject or expectation filter (they
        wait for the next round, in order), so each message's expected last subject sequence is
        checked exactly as when sent alone. Every batch stays all-or-nothing (the group is); a
        group the server refuses (a lost race, a retried batch, anything) is not interpreted: its
        halves are committed again, down to a batch alone, which gets the answer it would have had alone.
        """
        group: list[_Part] = []
        try:
            while self._waiting:
                group, self._waiting = _next_group(self._waiting)
                if len(group) == 1:
                    await _settle(group[0], self._commit_alone(group[0]))
                    continue
                if group:
                    await self._commit_group(group)
        finally:
            for part in [*group, *self._waiting]:  # stopped or broken: nothing more is sent, nobody waits forever
                if part.done is not None and not part.done.done():
                    part.done.set_exception(AppendFailed(f"batch {part.batch_id}: not committed, the writer stopped"))
            self._waiting = []

    async def _commit_group(self, group: list[_Part]) -> None:
        try:
            answer = await self._send(_group_id(group), [m for part in group for m in part.messages])
        except AppendFailed:
            answer = {"error": {"description": "no answer"}}
        if answer.get("error"):
            # whose fault is not said: each half again (in order), down to one batch alone, which
            # gets the answer it would have had if never grouped; a few commits, not one per batch
            for half in (group[: len(group) // 2], group[len(group) // 2 :]):
                if len(half) == 1:
                    await _settle(half[0], self._commit_alone(half[0]))
                else:
                    await self._commit_group(half)
            return
        last = int(answer["seq"]) - sum(len(part.messages) for part in group)
        for part in group:  # an atomic batch is stored in consecutive sequences, in order
            last += len(part.messages)
            if part.done is not None and not part.done.done():
                part.done.set_result(last)

    async def _send(self, batch_id: str, messages: list[tuple[str, bytes, dict[str, str]]]) -> dict:
        """One atomic batch on the wire; the server's answer to its commit."""
        last = len(messages)
        try:
            for index, (subject, payload, headers) in enumerate(messages, 1):
                headers = {**headers, "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(index)}
                if index < last:
                    await self._nc.publish(subject, payload, headers=headers)
                else:
                    headers["Nats-Batch-Commit"] = "1"
                    reply = await self._nc.request(subject, payload, headers=headers, timeout=self._timeout)
        except (TimeoutError, NatsTimeoutError):
            raise AppendFailed(f"batch {batch_id}: no answer from JetStream") from None
        return json.loads(reply.data)

    async def _commit_alone(self, part: _Part) -> int:
        answer = await self._send(part.batch_id, part.messages)
        error = answer.get("error")
        if not error:
            return int(answer["seq"])
        final = part.entries[-1]
        final_subject = part.messages[-1][0]
        code = error.get("err_code")
        if code in LOST_RACE or code == BATCH_DUPLICATE_ID:
            # Did an earlier attempt of this very batch commit? Its last event would be stored.
            stored = await self._stored_seq(final_subject, final.event.event_id)
            if stored is not None:
                return stored
            raise AppendConflict(f"batch {part.batch_id}: {error.get('description')}")
        if code == DUPLICATE_IN_FLIGHT:  # an attempt of these very events is being replicated: wait for it
            for attempt in range(IN_FLIGHT_RETRIES):
                await asyncio.sleep(_pause(attempt))
                stored = await self._stored_seq(final_subject, final.event.event_id)
                if stored is not None:
                    return stored
        raise AppendFailed(f"batch {part.batch_id}: {error.get('description')}")

    async def _stored_seq(self, subject: str, event_id: str) -> int | None:
        try:
            msg = await self._js.get_last_msg(self.subjects.releases_stream, subject)
        except NotFoundError:
            return None
        if (msg.headers or {}).get("Nats-Msg-Id") == event_id:
            return msg.seq
        return None


def _pause(attempt: int) -> float:
    return min(0.01 * 2**attempt, 0.5)


MAX_GROUP_MESSAGES = 256  # well under the server's atomic batch limit (1,000 messages)


@dataclass
class _Part:
    """One atomic batch asked for: its entries, id, messages as sent, and the caller's answer."""

    entries: list[Entry]
    batch_id: str
    messages: list[tuple[str, bytes, dict[str, str]]]
    done: asyncio.Future[int] | None = None

    @property
    def keys(self) -> set[str]:
        """Every subject it writes and every filter it expects on: what another batch of the group must not touch."""
        keys = {subject for subject, _, _ in self.messages}
        keys.update(entry.expected_filter for entry in self.entries if entry.expected_filter)
        return keys


def _next_group(waiting: list[_Part]) -> tuple[list[_Part], list[_Part]]:
    """The next batches to commit together (in order, disjoint in subjects and filters, at most
    MAX_GROUP_MESSAGES unless one alone is larger), and the ones left waiting, in order."""
    group: list[_Part] = []
    rest: list[_Part] = []
    used: set[str] = set()
    size = 0
    for part in waiting:
        if part.done is not None and part.done.done():  # its caller is gone (cancelled): not sent
            continue
        keys = part.keys
        if group and (keys & used or size + len(part.messages) > MAX_GROUP_MESSAGES):
            rest.append(part)
            used |= keys  # a later batch on the same subjects keeps its place behind this one
            continue
        group.append(part)
        used |= keys
        size += len(part.messages)
    return group, rest


def _group_id(group: list[_Part]) -> str:
    """The Nats-Batch-Id of several batches committed together (each one's own id stays in its events)."""
    return derived_event_id(group[0].batch_id, "batches", ",".join(part.batch_id for part in group[1:]))


async def _settle(part: _Part, outcome: Awaitable[int]) -> None:
    """Hand `part`'s caller what committing it gave: its last sequence, or the error."""
    try:
        result = await outcome
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if part.done is not None and not part.done.done():
            part.done.set_exception(exc)
        return
    if part.done is not None and not part.done.done():
        part.done.set_result(result)
