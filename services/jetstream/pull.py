"""Continuous pull: a pull consumer whose messages arrive as soon as they are stored.

nats-py's `fetch()` asks for a batch, waits for it and returns; between two fetches no
pull request is open, and every fetch first probes with a no-wait request, so each hop
of a release paid one to two extra round trips. This keeps pull requests open all the
time instead (as the Go client's `Consume` does): it asks for `batch` messages, asks
again when half have arrived, and reads status messages as they come:

- `100` idle heartbeat: the request is alive. No message and no heartbeat for
  `3 × heartbeat` means the request was lost (server restart, reconnect): ask again.
- `408` request expired / `409` batch completed, max waiting, …: that request is over;
  its unfilled part (`Nats-Pending-Messages`) no longer counts as outstanding.
- `409 Consumer Deleted` / `Consumer is push based` and a missing consumer: raise
  `ConsumerGone`, so the owner re-creates the consumer where it was.
- `503` no responders: nobody took the request. In a cluster that is routine just after a
  consumer is created or changes leader (the interest of its new leader has not reached our
  server yet), so ask again, waiting longer each time; only when nobody answers for
  `NO_RESPONDERS_FOR_S` is the consumer gone.

Durable consumers stay exactly what they were (same names and configuration): only
how the client asks for messages changed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from services.tasks import Backoff

DEFAULT_BATCH = 64
DEFAULT_EXPIRES_S = 10.0
DEFAULT_HEARTBEAT_S = 1.0
NO_RESPONDERS_FOR_S = 2.0


class ConsumerGone(Exception):
    """The consumer this pull was reading from no longer exists (or is not a pull consumer)."""


def _status(msg: Msg) -> tuple[str | None, str]:
    headers = msg.headers or {}
    if msg.data or msg.reply:
        return None, ""  # a stored message (status messages have neither body nor reply)
    status = headers.get("Status")
    # nats.py reads a status line followed by headers (newer servers send `503` with Nats-Subject)
    # as a description spanning lines: only its first line is one
    description = str(headers.get("Description", "")).strip().split("\n", 1)[0].strip()
    return status, description


def _pending_messages(msg: Msg) -> int:
    try:
        return int((msg.headers or {}).get("Nats-Pending-Messages", 0))
    except ValueError:
        return 0


class ContinuousPull:
    """Messages of one pull consumer, in delivery order, with requests kept open."""

    def __init__(
        self,
        nc: Client,
        stream: str,
        consumer: str,
        *,
        api_prefix: str = "$JS.API",
        batch: int = DEFAULT_BATCH,
        expires_s: float = DEFAULT_EXPIRES_S,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
    ) -> None:
        self._nc = nc
        self._next_subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._batch = batch
        self._expires_ns = int(expires_s * 1e9)
        self._heartbeat_s = heartbeat_s
        # the subscription's own queue (below): until subscribed, an empty one nothing puts into
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._inbox = nc.new_inbox()
        self._sub: Subscription | None = None
        self._outstanding = 0
        self._unanswered = Backoff(0.05, 0.5)  # 503s in a row: the pause before asking again, and since when

    async def _subscribe(self) -> None:
        """Subscribe without a callback and read nats.py's own queue of the subscription: a callback
        runs in a task of its own that takes each message off that queue to hand it on, one more
        queue and one more task switch per message (1-6% of a runtime's CPU per pointer, A/B). What is
        taken off is marked done (`task_done`; `close` marks what was never taken, so a connection's
        `drain()` never waits on this queue) and leaves the pending count, as nats.py's own reader does."""
        self._sub = await self._nc.subscribe(self._inbox, pending_msgs_limit=-1, pending_bytes_limit=-1)
        self._queue = self._sub._pending_queue

    def _taken(self, msg: Msg) -> Msg:
        self._queue.task_done()
        if self._sub is not None:
            self._sub._pending_size -= len(msg.data)
        return msg

    async def _pull(self) -> None:
        want = self._batch - self._outstanding
        request = {"batch": want, "expires": self._expires_ns, "idle_heartbeat": int(self._heartbeat_s * 1e9)}
        await self._nc.publish(self._next_subject, json.dumps(request).encode(), reply=self._inbox)
        self._outstanding += want

    async def messages(self) -> AsyncIterator[Msg]:
        """Stored messages as they arrive; raises ConsumerGone when the consumer disappears.

        One at a time, asking for more as soon as half of what was asked for has arrived
        (a worker acks each before the next): `batches()` is for readers of long runs."""
        while True:
            msg = await self._next()
            if msg.data or msg.reply:  # a stored message (status messages have neither body nor reply)
                self._outstanding -= 1
                self._unanswered.reset()
                yield msg
            else:
                await self._on_status(msg)

    async def _next(self) -> Msg:
        """The next message or status, asking for more first when half of what was asked for came."""
        if self._sub is None:
            await self._subscribe()
        queue = self._queue
        silent = 0
        while True:
            if self._outstanding <= self._batch // 2:
                await self._pull()
            if not queue.empty():  # (asked first: an empty get_nowait raises, ~1 us a wait)
                return self._taken(queue.get_nowait())
            try:
                async with asyncio.timeout(3 * self._heartbeat_s):  # no task per wait, unlike wait_for
                    return self._taken(await queue.get())
            except TimeoutError:
                # not even a heartbeat: the open requests are gone (reconnect, server restart);
                # ask again, and if that stays silent too let the owner look the consumer up
                self._outstanding = 0
                silent += 1
                if silent >= 3:
                    raise ConsumerGone(f"no message or heartbeat for {9 * self._heartbeat_s:.0f}s") from None

    async def batches(self) -> AsyncIterator[list[Msg]]:
        """Stored messages in delivery order, as lists of whatever has arrived (never empty).

        A long read (a replay) gets thousands of messages queued at once: handing them over
        a list at a time costs one generator step per list instead of one per message.
        """
        while True:
            msg = await self._next()
            queue = self._queue  # (the subscription's, once `_next` has subscribed)
            batch: list[Msg] = []
            while True:
                if msg.data or msg.reply:  # a stored message (status messages have neither body nor reply)
                    batch.append(msg)
                else:
                    if batch:  # what came before a status is handed over first, in order
                        self._outstanding -= len(batch)
                        yield batch
                        batch = []
                    await self._on_status(msg)
                if not batch or queue.empty():
                    break  # after a status, or with nothing more queued: back to asking and waiting
                msg = self._taken(queue.get_nowait())
            if batch:
                self._outstanding -= len(batch)
                self._unanswered.reset()
                yield batch

    async def _on_status(self, msg: Msg) -> None:
        status, description = _status(msg)
        if status == "503":  # nobody took the request: none of it is outstanding; ask again after a pause
            self._outstanding = 0
            waited = self._unanswered.failing_for()
            if waited >= NO_RESPONDERS_FOR_S:
                raise ConsumerGone(f"no responders for {waited:.1f} s: the consumer is gone")
            await self._unanswered.wait()
            return
        self._unanswered.reset()  # the server answered: somebody took the request
        if status == "100":
            return  # idle heartbeat
        if status == "404" and "consumer" in description.lower():
            raise ConsumerGone(description)
        if status == "409" and ("deleted" in description.lower() or "push based" in description.lower()):
            raise ConsumerGone(description)
        if status in ("408", "409"):
            # this request ended; what it did not deliver is no longer on its way
            left = _pending_messages(msg)
            self._outstanding = max(0, self._outstanding - left) if left else 0
            if (
                status == "409"
                and "batch completed" not in description.lower()
                and "leadership" not in description.lower()
            ):
                await asyncio.sleep(0.1)  # e.g. max waiting exceeded: do not spin asking again
        # any other status (a 404 "No Messages" never comes: we do not send no-wait requests)

    async def close(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:  # a closed connection has no subscription left to remove
                pass
            self._sub = None
        while not self._queue.empty():  # what came and was never taken: done with (see `_subscribe`)
            self._queue.get_nowait()
            self._queue.task_done()
