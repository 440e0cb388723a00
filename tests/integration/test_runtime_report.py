"""A runtime's health reports (services/runtime/sdk.py `RuntimeClient.report`), against real JetStream.

A report is stored in the health stream on the runtime's own subject with the contract's fields
(CONTRACT §8), and is published without a reply subject: no JetStream acknowledgement is asked
for, so a switch never waits on the store (bench.rollback: the ack was a third of a runtime's CPU
on a rollback pointer). Its subject follows the runtime's cohort.
"""

from __future__ import annotations

import asyncio
import json
import warnings

from nats.js.errors import NotFoundError

from events.signing import SigningKey
from services.jetstream.client import connect
from services.runtime.sdk import Identity, RuntimeClient
from tests.harness import trust_root_for, wait_for


async def test_a_report_is_stored_on_its_own_subject_and_asks_for_no_acknowledgement(log, nats_url, prefix):
    subjects = log.subjects  # (the fixture laid out the streams under this prefix)
    nc = await connect(nats_url, name=f"test-{prefix}-rt")
    watcher = await connect(nats_url, name=f"test-{prefix}-watcher")
    try:
        rt = RuntimeClient(
            nc, Identity("prod", "canary", "t-1", "rt-1"), trust_root_for(SigningKey.generate()), prefix=prefix
        )
        assert await rt.resolve_cohort() == "all"  # no channel configuration: the contract's default cohort
        subject = rt.health_subject
        assert subject == subjects.health("prod", "canary", "all", "rt-1")
        on_the_wire = []

        async def wire(msg) -> None:
            on_the_wire.append(msg)

        watch = await watcher.subscribe(subject, cb=wire)  # another connection sees the message as sent
        await watcher.flush()
        await rt.report({"kind": "activation", "ok": True, "took_ms": 1.5, "error": None})

        await nc.flush()
        msg = None
        for _ in range(100):  # stored by the server's stream, moments after the publish
            try:
                msg = await watcher.jetstream().get_last_msg(subjects.health_stream, subject)
                break
            except NotFoundError:
                await asyncio.sleep(0.05)
        assert msg is not None, "the report was not stored in the health stream"
        body = json.loads(msg.data)
        assert body.pop("at").endswith("Z")
        assert body == {
            "runtime_id": "rt-1",
            "digest": None,
            "kind": "activation",
            "ok": True,
            "took_ms": 1.5,
            "error": None,
        }
        try:
            await wait_for(lambda: on_the_wire, 5, "the report seen on the wire")
        except AssertionError:
            # Twice in one session's CI runs the report was stored (read back above) yet never reached this
            # core subscription; not reproduced here. Say what the watcher saw, then judge a second report:
            # what is tested is the reply subject a report carries, which any report shows.
            warnings.warn(f"first report not seen on the wire: {_connection_facts(watcher, watch)}", stacklevel=1)
            await rt.report({"kind": "activation", "ok": True, "took_ms": 1.5, "error": None})
            await wait_for(
                lambda: on_the_wire, 5, "a second report seen on the wire", lambda: _connection_facts(watcher, watch)
            )
        # a JetStream publish carries an inbox for the server's acknowledgement; a report carries none
        assert on_the_wire[0].reply == ""
        await watch.unsubscribe()

        rt.cohort = "internal"  # (re)resolved into another cohort: it reports there from then on
        assert rt.health_subject == subjects.health("prod", "canary", "internal", "rt-1")
    finally:
        await watcher.close()
        await nc.close()


def _connection_facts(nc, sub) -> str:
    """What a connection and one subscription of it went through (a report missed on the wire: why?)."""
    return (
        f"connected={nc.is_connected} reconnects={nc.stats.get('reconnects')} in_msgs={nc.stats.get('in_msgs')} "
        f"last_error={nc.last_error!r} pending={sub.pending_msgs} delivered={sub.delivered}"
    )
