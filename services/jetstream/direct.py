"""Batched direct gets: read stored messages without creating a consumer.

A consumer costs the server a create and the client two or three round trips before
the first byte; a batched direct get (`$JS.API.DIRECT.GET.<stream>` with `batch`, server
2.11+) answers one request with up to `batch` messages and an end-of-batch status, and
`multi_last` answers "the last message on each of these subjects" the same way. Used
for pack chunks (pipelined: the next batch is asked for as soon as the current one
ends, so hashing overlaps the transfer) and for the last health sample per runtime.
The stream must allow direct gets (ours and nats.py's object stores do).

A direct get is answered by whichever server holds the stream: its leader, any replica, or a
mirror of it (nats-server gives a mirror of a stream that allows direct gets the same
`mirror_direct`). Replicas and mirrors may lag behind the leader, and a lagging one ends a
read early, short of what is stored: a 3-node cluster under load once judged a monitoring
window on such a read and called it inconclusive. A replica holds a prefix of the leader's
log, so `SubjectStream` confirms each read that runs to its end with the leader (see there).
"""

from __future__ import annotations

import asyncio
import base64
import json
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from services.jetstream.client import relayed_answer


class DirectGetError(Exception):
    pass


class Behind(DirectGetError):
    """A direct get answered by a server whose copy of the stream does not reach the sequence the
    reader asked for (`last_per_subject`'s `at_least`): a lagging replica or a mirror. Ask again."""


@dataclass(frozen=True, slots=True)
class Stored:
    seq: int
    subject: str
    data: bytes
    stored_at: datetime | None
    pending: int  # messages on the requested subject(s) after this one
    relayed: str | None = None  # the stream JetStream relayed it from (jetstream/client.py): written by no client


def _stored(msg: Msg) -> Stored:
    h = msg.headers or {}
    stamp = h.get("Nats-Time-Stamp")
    return Stored(
        seq=int(h["Nats-Sequence"]),
        subject=h.get("Nats-Subject", ""),
        data=msg.data,
        stored_at=_parse_time(stamp) if stamp else None,
        pending=int(h.get("Nats-Num-Pending", 0)),
        relayed=relayed_answer(h),
    )


def _parse_time(value: str) -> datetime:
    # RFC 3339 with nanoseconds: Python takes at most microseconds
    head, _, frac = value.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")


def _rfc3339(at: datetime) -> str:
    """A time as the server reads it in a request (RFC 3339, UTC; a naive time is taken as UTC)."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if at.tzinfo else at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Replies:
    """One wildcard inbox per connection for every direct get: no subscribe, task and
    unsubscribe per request (as nats.py's request mux does for single replies)."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self.prefix = nc.new_inbox()
        self._routes: dict[str, asyncio.Queue] = {}
        self._sub: Subscription | None = None
        self._token = 0

    async def _on_msg(self, msg: Msg) -> None:
        queue = self._routes.get(msg.subject.rsplit(".", 1)[-1])
        if queue is not None:  # replies to a request nobody waits for any more are dropped
            queue.put_nowait(msg)

    async def open(self, queue: asyncio.Queue) -> str:
        if self._sub is None:
            self._sub = await self._nc.subscribe(
                f"{self.prefix}.*", cb=self._on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1
            )
        self._token += 1
        token = str(self._token)
        self._routes[token] = queue
        return f"{self.prefix}.{token}"

    def close(self, inbox: str) -> None:
        self._routes.pop(inbox.rsplit(".", 1)[-1], None)


_MUXES: weakref.WeakKeyDictionary[Client, _Replies] = weakref.WeakKeyDictionary()


def _replies_for(nc: Client) -> _Replies:
    mux = _MUXES.get(nc)
    if mux is None:
        mux = _MUXES[nc] = _Replies(nc)
    return mux


class _Batch:
    """The replies to one direct-get request, in order, ending at the end-of-batch status."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._mux = _replies_for(nc)
        self._inbox: str | None = None

    async def send(self, subject: str, request: dict) -> None:
        self._inbox = await self._mux.open(self._queue)
        await self._nc.publish(subject, json.dumps(request).encode(), reply=self._inbox)

    async def replies(self, timeout: float) -> AsyncIterator[tuple[Stored | None, dict]]:
        """(message, {}) per stored message, then (None, the end-of-batch headers) at the end."""
        try:
            while True:
                try:
                    msg = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    try:
                        async with asyncio.timeout(timeout):  # no task per reply, unlike wait_for
                            msg = await self._queue.get()
                    except TimeoutError:
                        raise DirectGetError(f"no answer to a direct get within {timeout:.0f}s") from None
                status = (msg.headers or {}).get("Status")
                if status is None:
                    yield _stored(msg), {}
                elif status == "204":  # end of batch
                    yield None, dict(msg.headers or {})
                    return
                elif status == "404":  # nothing matched
                    yield None, {}
                    return
                else:
                    raise DirectGetError(
                        f"direct get failed: {status} {(msg.headers or {}).get('Description', '')}".strip()
                    )
        finally:
            await self.close()

    async def close(self) -> None:
        if self._inbox is not None:
            self._mux.close(self._inbox)
            self._inbox = None


def _api(stream: str, api_prefix: str) -> str:
    return f"{api_prefix}.DIRECT.GET.{stream}"


async def leader_next(
    nc: Client,
    stream: str,
    subject: str,
    *,
    seq: int = 1,
    start_time: datetime | None = None,
    timeout: float = 5.0,
    api_prefix: str = "$JS.API",
) -> Stored | None:
    """The first message on `subject` (wildcards allowed) from `seq`, or stored at or after
    `start_time`, as the stream's leader has it (`STREAM.MSG.GET`, which only the leader
    answers): the check on what a direct get's answerer may lack. None if there is none."""
    request: dict = {"start_time": _rfc3339(start_time)} if start_time is not None else {"seq": seq}
    try:
        msg = await nc.request(
            f"{api_prefix}.STREAM.MSG.GET.{stream}",
            json.dumps({**request, "next_by_subj": subject}).encode(),
            timeout=timeout,
        )
    except (NatsTimeoutError, NoRespondersError) as exc:
        raise DirectGetError(f"the leader of {stream} did not answer within {timeout:.0f}s ({exc!r})") from None
    try:
        doc = json.loads(msg.data or b"{}")
        error = doc.get("error")
        if error:
            if error.get("err_code") == 10037:  # no message found
                return None
            raise DirectGetError(f"reading {stream} from its leader failed: {error.get('description', error)}")
        found = doc["message"]
        return Stored(
            seq=int(found["seq"]),
            subject=found["subject"],
            data=base64.b64decode(found.get("data") or ""),
            stored_at=_parse_time(found["time"]),
            pending=0,  # not counted by this API
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # an answer that is not one: named, as any
        raise DirectGetError(f"the leader of {stream} answered what is not a message: {exc!r}") from None


async def last_per_subject(
    nc: Client,
    stream: str,
    subjects: list[str],
    *,
    timeout: float = 5.0,
    page: int = 1024,
    api_prefix: str = "$JS.API",
    at_least: int = 0,
) -> AsyncIterator[Stored]:
    """The last stored message on every subject matching `subjects` (wildcards allowed).

    `at_least`: only as answered by a server whose copy of the stream reaches that sequence, else
    `Behind` (nothing of that page is yielded). A multi_last page ends with the answerer's last
    sequence (`Nats-UpTo-Sequence`, when the request names no `up_to_seq`), and a replica holds a
    prefix of the leader's log, so an answerer that reaches `at_least` answers as of then or later.
    Its pages are then not pinned to the first one's moment (a pinned page's end names the pin, not
    its answerer), and "nothing matched" cannot be checked: ask for a subject that must be there.
    (A filtered mirror is not a prefix: it passes this check for what it holds; a mirror of the
    read models' bucket is no deployment of ours, and roles may not create streams.)
    """
    start_seq = 0
    up_to: int | None = None
    while True:
        request: dict = {"multi_last": subjects, "batch": page}
        if start_seq:
            request["seq"] = start_seq
        if up_to and not at_least:
            request["up_to_seq"] = up_to  # later pages see the same moment as the first
        batch = _Batch(nc)
        await batch.send(_api(stream, api_prefix), request)
        last = 0
        end: dict = {}
        held: list[Stored] = []
        async for item, headers in batch.replies(timeout):
            end = headers  # the final (None, headers) reply carries the end-of-batch headers
            if item is not None:
                last = item.seq
                if at_least:
                    held.append(item)  # handed over once the answerer is known to be far enough
                else:
                    yield item
        if at_least:
            reaches = int(end.get("Nats-UpTo-Sequence", 0) or 0)
            if reaches < at_least:
                raise Behind(f"{stream}: answered up to seq {reaches}, {at_least} asked for")
            for item in held:
                yield item
        if not int(end.get("Nats-Num-Pending", 0) or 0) or not last:
            return
        up_to = up_to or int(end.get("Nats-UpTo-Sequence", 0) or 0) or None
        start_seq = last + 1


class SubjectStream:
    """Every message on one subject (wildcards allowed) from `start_seq`, or from the first stored
    at or after `start_time`, in order, a batch at a time.

    `start()` sends the first request (so the transfer can begin while the caller does
    something else); each next batch is requested as soon as the previous one has
    arrived, so at most two batches are held. `close()` releases what is open.

    `confirm`: when the read runs to its end (not when the caller stops early), the stream's
    leader is asked for the next message after the last one read. A lagging replica or mirror
    that answered the direct gets holds a prefix of the log, so what the leader has beyond it
    is taken and the read goes on from there (by direct gets again, confirmed again): the read
    is then as complete as the leader was when asked. One request per read; off only where
    the reader may not ask the leader (the read models' bucket, eventually consistent anyway).
    """

    def __init__(
        self,
        nc: Client,
        stream: str,
        subject: str,
        *,
        start_seq: int = 1,
        start_time: datetime | None = None,
        batch: int = 16,
        timeout: float = 10.0,
        api_prefix: str = "$JS.API",
        confirm: bool = True,
    ) -> None:
        self._nc = nc
        self._stream = stream
        self._api_prefix = api_prefix
        self._confirm = confirm
        self._api = _api(stream, api_prefix)
        self._subject = subject
        self._start_seq = start_seq
        self._start_time = start_time
        self._batch = batch
        self._timeout = timeout
        self._open: list[_Batch] = []

    async def _request(self, seq: int, start_time: datetime | None = None) -> _Batch:
        b = _Batch(self._nc)
        self._open.append(b)
        request: dict = {"next_by_subj": self._subject, "batch": self._batch}
        if start_time is not None:  # the server finds the first message stored at or after it
            request["start_time"] = _rfc3339(start_time)
        else:
            request["seq"] = seq
        await b.send(self._api, request)
        return b

    async def start(self) -> SubjectStream:
        if not self._open:
            await self._request(self._start_seq, self._start_time)
        return self

    async def __aiter__(self) -> AsyncIterator[Stored]:
        await self.start()
        current: _Batch | None = self._open[-1]
        held: list[Stored] = []
        last = 0  # the last sequence read
        try:
            while current is not None:
                following = None
                async for item, end in current.replies(self._timeout):
                    if item is not None:
                        held.append(item)
                    elif int(end.get("Nats-Num-Pending", 0) or 0) and held:
                        following = await self._request(held[-1].seq + 1)
                if held:
                    last = held[-1].seq
                for item in held:
                    yield item
                held.clear()
                if following is None and self._confirm:
                    beyond = await self._leader_next(last)
                    if beyond is not None:  # the answer came from behind the leader: go on
                        last = beyond.seq
                        yield beyond
                        following = await self._request(beyond.seq + 1)
                current = following
        finally:
            await self.close()

    async def _leader_next(self, last: int) -> Stored | None:
        return await leader_next(
            self._nc,
            self._stream,
            self._subject,
            seq=last + 1 if last else self._start_seq,
            start_time=None if last else self._start_time,
            timeout=self._timeout,
            api_prefix=self._api_prefix,
        )

    async def close(self) -> None:
        for b in self._open:
            await b.close()
        self._open.clear()


def connection_of(js) -> Client:
    """The connection a JetStream context publishes on (nats.py keeps it as `_nc`)."""
    return js._nc
