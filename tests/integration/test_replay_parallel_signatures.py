"""An audited replay verifies signatures in worker processes: the verdicts are the serial check's.

A signed history (bench/history.py), then copies of one signed service append with every kind of
bad signature, then more history signed by a second (rotated-in) service key: the replay with
workers and the serial one report the same problems at the same sequences, and fold the same world.
"""

from __future__ import annotations

import json
import logging

from bench.history import generate
from events.codec import decode_event
from events.service_signing import SIGNATURE_HEADER, SIGNER_HEADER, ServiceKey, ServiceKeys, signature_headers
from events.signing import SigningKey, b64encode
from events.subjects import Subjects
from services.jetstream.client import connect
from services.reads.audit import replay, summary

ROLES = ["preparer", "distributor", "verifier", "activator", "monitor", "promoter"]


async def test_workers_report_what_the_serial_check_reports(nats_url, prefix, caplog):
    subjects = Subjects(prefix)
    old, new, stranger, narrow = (SigningKey.generate() for _ in range(4))
    keys = ServiceKeys(
        {
            **ServiceKeys.of(old, ROLES).keys,
            **ServiceKeys.of(new, ROLES, name="rotated-in").keys,
            narrow.keyid: ServiceKey(narrow.keyid, narrow.public_raw, "notifier-only", frozenset({"notifier"})),
        }
    )
    nc = await connect(nats_url, name="test-replay-parallel")
    try:
        js = nc.jetstream(timeout=10)
        first = await generate(js, subjects, 1100, old, channels=2)
        # a signed service append to copy: the last release event a service wrote
        stream = subjects.releases_stream
        for seq in range(first.last_seq, 0, -1):
            msg = await js.get_msg(stream, seq)
            if SIGNER_HEADER in (msg.headers or {}) and ".release." in msg.subject:
                break
        subject, payload = msg.subject, msg.data
        event = decode_event(payload, subject, subjects)
        assert event.actor.kind == "service"
        tampered = payload.replace(event.event_id.encode(), event.event_id[:-1].encode() + b"x")
        signed_old = signature_headers(old, subject, payload)
        crafted = [
            ("unsigned", payload, {}),
            ("signed by unknown key", payload, signature_headers(stranger, subject, payload)),
            ("forged", tampered, signed_old),
            ("signature is not base64", payload, {**signed_old, SIGNATURE_HEADER: "not/base64!"}),
            ("not trusted for", payload, signature_headers(narrow, subject, payload)),
            ("forged", payload, {**signed_old, SIGNATURE_HEADER: b64encode(old.sign(b"x")[:63])}),
            (None, payload, signature_headers(new, subject, payload)),  # the rotated-in key: genuine
            (None, payload, signed_old),  # the old key is still trusted after the rotation
        ]
        expected = {}
        for problem, body, headers in crafted:
            ack = await js.publish(subject, body, headers=headers or None)
            if problem is not None:
                expected[ack.seq] = problem
        await generate(js, subjects, 1100, new, channels=2)  # more than two reads' batches in all

        with caplog.at_level(logging.WARNING, logger="services.reads.audit"):
            serial = await replay(js, subjects, service_keys=keys, parallel=False)
            ahead = await replay(js, subjects, service_keys=keys, parallel=True)
        assert not caplog.records, [r.getMessage() for r in caplog.records]  # the workers did the checks
    finally:
        await nc.close()

    forged = {v.seq: v.message for v in serial.violations if v.code == "unsigned_or_forged"}
    assert sorted(forged) == sorted(expected)
    for seq, problem in expected.items():
        assert problem in forged[seq], (seq, forged[seq])
    assert ahead.violations == serial.violations
    assert json.dumps(summary(ahead), sort_keys=True) == json.dumps(summary(serial), sort_keys=True)
    assert ahead.world == serial.world and ahead.events == serial.events > 2200
