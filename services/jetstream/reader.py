"""An ordered reader of a stream: in sequence order, from any sequence, surviving restarts.

Used by the world follower (live), the auditor's replay and by queries that read a
slice of telemetry. Built on an ephemeral ack-none pull consumer that is re-created
from the next expected sequence whenever it disappears (server restart) or a gap
shows up, so a reader never skips or repeats a message.

A gap in a read of every subject (`contiguous`) is either a message the consumer skipped (a
lagging replica or mirror: read again) or a hole in the stream itself (a deleted message, a restored
backup, a damaged store): nothing can ever fill that, and re-opening at it looped for ever. So the
stream's leader is asked (`STREAM.MSG.GET`, leader only) before re-opening. A hole it confirms is,
in a one-off read, reported (`on_missing`, else a warning) and read past; in a live read it raises
`MissingEntries`: a follower folds state from every entry and must not fold over one it never saw.
A gap the leader does not confirm is read again as before; a one-off read gives up on it after
GAP_FOR_S (`GapNotFilled`), so a one-off read never spins.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError

from services.jetstream.client import PermissionDenied
from services.jetstream.direct import connection_of, leader_next
from services.jetstream.layout import LayoutError
from services.jetstream.pull import DEFAULT_HEARTBEAT_S, ConsumerGone, ContinuousPull
from services.tasks import Backoff

log = logging.getLogger(__name__)


RETRY_FIRST_S = 0.2  # a reader re-opens after this, doubling while it keeps failing ...
RETRY_MAX_S = 5.0  # ... up to this (a server that refuses every consumer is not asked 5 times a second)
LIMIT_REACHED = 10026  # JSMaximumConsumersLimitErr: the stream's or the account's consumer limit
REFUSED_FOR_S = 5.0  # a one-off read refused a consumer by that limit gives up after this (it frees in a minute)
FAILING_FOR_S = 30.0  # ... and after this when refused for anything else (a leader election takes seconds)
GAP_FOR_S = 30.0  # a one-off read gives up on a gap the stream's leader does not confirm as a hole after this

Missing = Callable[[int, int], None]  # told of a hole in the stream: (first, last) sequence not stored


class ReadRefused(RuntimeError):
    """The server kept refusing a one-off read its consumer (the stream's or the account's consumer
    limit, most often): the read fails saying so, where it used to wait for ever."""


class GapNotFilled(ReadRefused):
    """A one-off read's consumer kept skipping a sequence the stream's leader holds (a lagging replica or
    mirror that did not catch up within GAP_FOR_S): the read fails saying so, where it looped for ever."""


class MissingEntries(LayoutError):
    """A live read of the whole stream met a hole the stream's leader confirms: sequences `first` to
    `last` are not stored (deleted). Nothing can fill it, and what a fold makes of the entries after it
    is not what the log said: the follower stops here (services/reads/follower.py)."""

    def __init__(self, stream: str, first: int, last: int) -> None:
        self.stream, self.first, self.last = stream, first, last
        super().__init__(
            f"{stream} has a hole: {_span(first, last)} not stored (deleted: the stream's leader confirms it); "
            "the state folded after it cannot be vouched for"
        )


def _span(first: int, last: int) -> str:
    return f"seq {first} is" if first == last else f"seqs {first} to {last} ({last - first + 1} entries) are"


class _Skipped(ConsumerGone):
    """The consumer skipped sequences from `first` on that the stream's leader holds (or could not say)."""

    def __init__(self, first: int, why: str) -> None:
        self.first = first
        super().__init__(why)


@dataclass(frozen=True, slots=True)
class RawEntry:
    seq: int
    subject: str
    data: bytes
    headers: dict[str, str]
    stored_at: datetime | None
    pending: int  # messages left after this one when it was delivered


def _delivery(msg: Msg) -> tuple[int, datetime, int]:
    """(stream sequence, stored at, pending) from a JetStream message's reply subject.

    The same values as nats-py's `msg.metadata`, without building its Metadata (two
    dataclasses and seven fields) for each message: the common reply subject
    `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>`
    is split here, any other form (with a domain) goes through nats-py.
    """
    tokens = msg.reply.split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[5]), datetime.fromtimestamp(int(tokens[7]) / 1_000_000_000.0, UTC), int(tokens[8])
    meta = msg.metadata
    return meta.sequence.stream, meta.timestamp, meta.num_pending


class OrderedReader:
    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        filter_subjects: list[str],
        start_seq: int = 1,
        *,
        deliver_last_per_subject: bool = False,
        start_time: datetime | None = None,
        batch: int = 256,
        contiguous: bool = False,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        on_missing: Missing | None = None,
    ) -> None:
        self._js = js
        self._stream = stream
        self._filters = filter_subjects
        self.next_seq = max(1, start_seq)
        self._last_per_subject = deliver_last_per_subject
        self._start_time = start_time
        self._batch = batch
        # A reader over every subject of a stream sees consecutive sequences; a gap then
        # means the consumer skipped something and must be re-opened where we were, or the
        # stream has a hole there (its leader says which: `_gap`)
        self._contiguous = contiguous
        self._on_missing = on_missing  # a one-off read's holes go here (else a warning), in log order
        self.missing: list[tuple[int, int]] = []  # the holes met so far: (first, last) sequence
        self._whole = False  # the stream, as the read began, held every sequence from its first to its last
        self._heartbeat_s = heartbeat_s  # live reads: how soon a lost pull request is noticed
        self._sub: JetStreamContext.PullSubscription | None = None
        self._ahead = 0  # a sequence the leader said is on our filters, not delivered yet (`_ends_here`)
        self._history_end: int | None = None  # following: the stream's last sequence as the read began

    async def _consumer_filters(self) -> list[str]:
        """The consumer's filters: none when ours name every subject the stream stores on.

        nats-server serves a consumer with several filter subjects an order of magnitude
        slower than one without (measured on 2.15.1: ~170 against ~17 us a message over
        a 30k-message release log), and a whole-log reader asks for exactly the stream's
        subjects. When each of the stream's subjects is one of our filters, every stored
        message matches a filter, so no filter selects the same messages. Anything else
        (a mirror, sources, a subject transform, a failed look-up) keeps the filters.
        """
        if len(self._filters) < 2:
            return list(self._filters)
        try:
            cfg = (await self._js.stream_info(self._stream)).config
        except Exception:  # decide nothing on a failed look-up: the consumer is created as asked
            return list(self._filters)
        if (
            cfg.subjects
            and set(cfg.subjects) <= set(self._filters)
            and not cfg.mirror
            and not cfg.sources
            and getattr(cfg, "subject_transform", None) is None
        ):
            return []
        return list(self._filters)

    def _config(self, filters: list[str]) -> ConsumerConfig:
        if self._last_per_subject:
            cfg = ConsumerConfig(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT)
        elif self._start_time is not None and self.next_seq <= 1:
            cfg = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=self._start_time)
        else:
            cfg = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self.next_seq)
        cfg.ack_policy = AckPolicy.NONE
        cfg.filter_subjects = filters or None
        cfg.mem_storage = True
        cfg.inactive_threshold = 60.0
        cfg.max_ack_pending = -1
        return cfg

    async def _open(self) -> None:
        await self.close()
        self._sub = await self._js.pull_subscribe(
            "", stream=self._stream, config=self._config(await self._consumer_filters())
        )

    async def close(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:  # closing a consumer that the server already dropped is not an error
                pass
            self._sub = None

    async def read(self, *, follow: bool, idle_timeout: float = 1.0) -> AsyncIterator[RawEntry]:
        """Yield entries in order. Without `follow`, stop once caught up with the stream."""
        async for batch in self.read_batches(follow=follow, idle_timeout=idle_timeout):
            for entry in batch:
                self.next_seq = entry.seq + 1  # as far as the caller has seen, should it stop here
                yield entry

    async def read_batches(self, *, follow: bool, idle_timeout: float = 1.0) -> AsyncIterator[list[RawEntry]]:
        """`read`, a list of entries (in order, never empty) at a time: what had arrived together."""
        if follow:
            async for batch in self._follow():
                yield batch
            return
        async for batch in self._until_caught_up(idle_timeout):
            yield batch

    async def _until_caught_up(self, idle_timeout: float) -> AsyncIterator[list[RawEntry]]:
        """A one-off read: everything on the filters up to the stream's last sequence as the read
        begins (`target`), and what follows while the consumer says more is pending. Pull requests
        are kept open (as `_follow`): `fetch()` paid a no-wait probe and a round trip per batch, and
        often came back with a fraction of it; a replay is a long stream of batches. The end is
        never the consumer's pending count alone (`_ends_here`). A hole in the stream is reported
        and read past; a gap its leader does not confirm is read again for at most GAP_FOR_S."""
        target = await self._last_seq()
        if await self._ends_here(self.next_seq, target, told=None):
            self._missing_up_to(target)
            return  # nothing to read: no consumer made, no request waited out
        backoff = Backoff(RETRY_FIRST_S, RETRY_MAX_S)
        reopened = 0
        skipped_at, skipping = 0, Backoff(RETRY_FIRST_S, RETRY_MAX_S)  # the gap read again, and since when
        while True:
            pull = None
            try:
                if self._sub is None:
                    try:
                        await self._open()
                    except APIError as exc:
                        if not isinstance(exc, NotFoundError):
                            self._refused(exc, backoff)
                        raise
                    backoff.reset()
                assert self._sub is not None
                pull = ContinuousPull(
                    connection_of(self._js),
                    self._stream,
                    self._sub._consumer,
                    batch=self._batch,
                    heartbeat_s=max(idle_timeout, 0.1),
                )
                async for batch in self._in_order(pull, live=False):
                    for end, entry in enumerate(batch):
                        try:
                            # an estimate corrected is routine: at info, as a re-open (a command's stderr is its own)
                            done = (entry.pending == 0 or entry.seq >= target) and await self._ends_here(
                                entry.seq + 1, target, told=logging.INFO
                            )
                        except Exception:
                            self.next_seq = batch[0].seq  # none of this batch was handed over: read it again
                            raise
                        if done:  # what came after it is not part of this read
                            self.next_seq = entry.seq + 1
                            self._missing_up_to(target)
                            yield batch[: end + 1]
                            return
                    yield batch
            except (ConnectionClosedError, PermissionDenied, ReadRefused):  # a denial does not pass by itself: say so
                raise
            except (NotFoundError, NoStreamResponseError, NoRespondersError):
                raise  # a one-off read of a stream that does not exist: say so, do not wait
            except _Skipped as exc:  # not a hole its leader confirms: read again, for at most GAP_FOR_S
                if exc.first != skipped_at:
                    skipped_at, skipping = exc.first, Backoff(RETRY_FIRST_S, RETRY_MAX_S)
                waited = skipping.failing_for()
                if waited >= GAP_FOR_S:
                    raise GapNotFilled(
                        f"reading {self._stream}: the consumer kept skipping seq {exc.first} for {waited:.0f} s ({exc})"
                    ) from None
                self._reopening(exc, logging.WARNING if reopened else logging.INFO)
                reopened += 1
                self._sub = None
                await skipping.wait()
            except Exception as exc:  # server restart, consumer gone: re-create where we were
                # once in a read is routine (a cluster's consumer changing leader) and a command's
                # output is its own: said at info; more often, a warning
                self._reopening(exc, logging.WARNING if reopened else logging.INFO)
                reopened += 1
                self._sub = None
                await backoff.wait()
            finally:
                if pull is not None:
                    await pull.close()

    def _reopening(self, exc: Exception, level: int) -> None:
        """One log line (an error's text may span lines: a status message's headers) saying why."""
        why = " ".join(str(exc).split()) or exc.__class__.__name__
        log.log(level, "reader on %s: %s; re-opening at seq %d", self._stream, why, self.next_seq)

    def _refused(self, exc: APIError, backoff: Backoff) -> None:
        """A one-off read's consumer refused by the server: raises ReadRefused once that has gone on
        for REFUSED_FOR_S (the consumer limit) or FAILING_FOR_S (anything else). An operator's command
        then says why in one line; a consumer limit used up (by runtimes' consumers, say) frees only as
        idle consumers expire, a minute after their last use."""
        waited = backoff.failing_for()
        if waited >= (REFUSED_FOR_S if exc.err_code == LIMIT_REACHED else FAILING_FOR_S):
            raise ReadRefused(
                f"the server refused a consumer to read {self._stream} for {waited:.0f} s:"
                f" {exc.description or exc.__class__.__name__} (error {exc.err_code})"
            ) from None

    async def _last_seq(self) -> int:
        """The stream's last sequence as a one-off read starts: what it must reach at least."""
        state = (await self._js.stream_info(self._stream)).state
        # every sequence from the first to the last stored: a read of every subject may count on it (`_ends_here`)
        self._whole = state.messages > 0 and not state.num_deleted
        return state.last_seq

    async def _leader_first(self, seq: int) -> int | None:
        """The first sequence from `seq` on our filters, as the stream's leader has it (`STREAM.MSG.GET`,
        leader only); None if there is none."""
        nc = connection_of(self._js)
        start = self._start_time if self._start_time is not None and seq <= 1 else None
        found = await asyncio.gather(  # one round trip for every filter (a runtime's: pointers, rotations)
            *(leader_next(nc, self._stream, subject, seq=seq, start_time=start) for subject in self._filters)
        )
        return min((f.seq for f in found if f is not None), default=None)

    async def _ends_here(self, next_seq: int, target: int, told: int | None = logging.WARNING) -> bool:
        """Whether nothing on our filters lies from `next_seq` to `target` (the stream's last sequence
        when the read began), as the stream's leader says (`STREAM.MSG.GET`, leader only).

        A consumer's pending count is the server's running estimate, not a count (nats-server's
        `checkNumPending` names races in it), so a read never ends on it alone. (The CI failure first
        blamed on it, a rolled-back release listed in flight, was the projector skipping an entry:
        services/reads/projector.py `_run`.) A consumer delivers in stream order, so what it delivered
        before `next_seq` is complete; only what follows is asked.
        Not for a last-per-subject read (it skips older messages by design: its count is trusted).
        A read of every subject skips the question as it begins if the stream held every sequence from
        its first to its last (no hole): a deleted last entry leaves the last sequence where it was, and
        waiting for it never ended.
        `told`: the level to log at when the consumer said nothing was pending but the leader holds more
        (None: the consumer was not asked)."""
        if next_seq > target or self._last_per_subject:
            return True
        if next_seq <= self._ahead:  # the leader named a later message already: no need to ask again
            return False
        found_at: int | None
        if self._contiguous and self._whole and told is None:  # every sequence is there: nothing to ask
            found_at = next_seq
        else:
            found_at = await self._leader_first(next_seq)
        if found_at is None or found_at > target:
            return True
        self._ahead = found_at
        if told is not None:
            log.log(
                told,
                "reader on %s: the consumer said nothing is pending after seq %d; the stream holds seq %d (of %d):"
                " reading on",
                self._stream,
                next_seq - 1,
                found_at,
                target,
            )
        return False

    async def _in_order(self, pull: ContinuousPull, *, live: bool) -> AsyncIterator[list[RawEntry]]:
        """The pull's messages as entries, a batch at a time: one already seen is skipped; at a gap
        (a read of every subject) the leader is asked (`_gap`), what was in order before it handed over first."""
        contiguous = self._contiguous
        async for msgs in pull.batches():
            batch: list[RawEntry] = []
            for msg in msgs:
                seq, stored_at, pending = _delivery(msg)
                if seq < self.next_seq:
                    continue  # already seen (re-created consumer overlapped)
                if seq > self.next_seq and contiguous:
                    if batch:
                        yield batch  # what was in order before the gap still counts
                        batch = []
                    await self._gap(self.next_seq, seq, live=live)  # a hole: read past it, or raised
                self.next_seq = seq + 1
                # the parser builds a fresh headers dict for each message: no copy needed
                batch.append(RawEntry(seq, msg.subject, msg.data, msg.headers or {}, stored_at, pending))
            if batch:
                yield batch

    async def _gap(self, first: int, delivered: int, *, live: bool) -> None:
        """The consumer delivered `delivered` where `first` was next. Returns if the stream's leader holds
        nothing of ours from `first` up to it (a hole: recorded, `_missing`), unless `live` (raises
        MissingEntries). Raises `_Skipped` (read again) if the leader holds one of them, or cannot say."""
        try:
            stored = await self._leader_first(first)
        except (ConnectionClosedError, asyncio.CancelledError):
            raise
        except Exception as exc:  # unconfirmed: read again, as any gap was
            raise _Skipped(first, f"gap {first} -> {delivered}; its leader not asked ({exc})") from None
        if stored is not None and stored < delivered:
            raise _Skipped(first, f"gap {first} -> {delivered}; its leader holds seq {stored}")
        if live:
            raise MissingEntries(self._stream, first, delivered - 1)
        self._missing(first, delivered - 1)

    def _missing_up_to(self, target: int) -> None:
        """A one-off read of every subject that ended before `target`: the leader holds nothing there (a hole)."""
        if self._contiguous and self.next_seq <= target:
            self._missing(self.next_seq, target)

    def _missing(self, first: int, last: int) -> None:
        """A hole a one-off read goes past: told to `on_missing`, else said in a warning."""
        self.missing.append((first, last))
        if self._on_missing is not None:
            self._on_missing(first, last)
        else:
            log.warning(
                "reader on %s: %s not stored (deleted: the stream's leader confirms it); reading on past the hole",
                self._stream,
                _span(first, last),
            )

    async def settled(self, entry: RawEntry) -> bool:
        """Following: whether `entry` is the newest on our filters the stream held when the read began
        or, past that, has nothing pending. Where a follower acts on the newest of its history only (a
        runtime's pointer at start), a "0 pending" estimate met early in the history is no reason to
        act on an older entry: the stream's leader is asked first (`_ends_here`); past the history, the count.
        The history's end is the stream's last sequence when this is first asked."""
        if entry.pending != 0:
            return False
        try:
            if self._history_end is None:
                self._history_end = await self._last_seq()
            return await self._ends_here(entry.seq + 1, self._history_end)
        except (ConnectionClosedError, asyncio.CancelledError):
            raise
        except Exception as exc:  # the count then decides, as it did before the leader was asked
            log.warning("reader on %s: the leader not asked after seq %d (%s)", self._stream, entry.seq, exc)
            return True

    async def _follow(self) -> AsyncIterator[list[RawEntry]]:
        """Live: open pull requests on an ephemeral consumer, re-created where we were when it goes
        (a follower never gives up: it waits longer between tries, up to RETRY_MAX_S), except at a hole
        the stream's leader confirms (`MissingEntries`: waiting never fills it)."""
        backoff = Backoff(RETRY_FIRST_S, RETRY_MAX_S)
        while True:
            pull = None
            try:
                config = self._config(await self._consumer_filters())
                # named in the subject (CONSUMER.CREATE.<stream>.<name>): the only create that
                # roles other than the service may send (services/permissions.py read_stream)
                config.name = secrets.token_hex(8)
                info = await self._js.add_consumer(self._stream, config=config)
                backoff.reset()
                pull = ContinuousPull(
                    connection_of(self._js), self._stream, info.name, batch=self._batch, heartbeat_s=self._heartbeat_s
                )
                async for batch in self._in_order(pull, live=True):
                    yield batch
            except (ConnectionClosedError, PermissionDenied, MissingEntries):  # a hole is not filled by waiting
                raise
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # gap, server restart, consumer gone, stream not there yet: again from next_seq
                self._reopening(exc, logging.WARNING)
                await backoff.wait()
            finally:
                # not deleted: roles may not delete consumers; without pull requests the
                # ephemeral consumer is removed after its inactivity threshold
                if pull is not None:
                    await pull.close()
