"""Unusual requests a producer in another language may write, through the real preparer: each ends
`prepared` or `rejected` with a reason, at once (never silent, never retried until it gives up).

Longest tokens, multi-byte text at its caps, extra fields, nulls where allowed, an offset timestamp,
integers written with a zero fraction (JSON Schema's `integer`), numbers past a double's range, a
payload over the event cap, another schema version, and bytes that are not JSON."""

from __future__ import annotations

import json

from events.canonical import compact_bytes
from tests.harness import make_pack, running_service

LONG = "E" * 64
CH64 = "c" * 64


async def test_unusual_requests_are_each_answered(nats_url, prefix) -> None:
    async with running_service(nats_url, prefix, roles=("preparer",)) as svc:
        await svc.configure(env=LONG, channel=CH64)
        await svc.configure()
        pack = make_pack("1.0.0", svc.key)
        await svc.publish(pack)
        js, s = svc.app.js, svc.app.subjects

        def envelope(rid: str, data: dict, **top) -> bytes:
            doc = {
                "event_id": f"ev-{rid}",
                "type": "release.requested",
                "schema_version": 1,
                "occurred_at": "2030-01-01T00:00:00+02:00",
                "actor": {"kind": "producer", "id": "ü" * 256},
                "causation_id": None,
                "correlation_id": None,
                "release_id": rid,
                "scope": None,
                "data": data,
                **top,
            }
            return compact_bytes(doc)

        base = {
            "pack": {"name": "kb", "version": pack.version, "digest": pack.digest},
            "target": {"env": "prod", "channel": "canary"},
            "owner": "👩‍💻" * 64,
            "escalation": "é" * 512,
            "reason": "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 " * 300,
            "acknowledge_no_health": True,
            "rollback": {"strategy": "none"},
        }
        cases = {
            "r" * 64: {**base, "target": {"env": LONG, "channel": CH64}},  # max tokens everywhere
            "extra": {**base, "x_new_field": {"nested": [1, 2.5, None]}, "plan": None, "monitoring": None},
            "nochan": {**base, "target": {"env": "prod", "channel": "nothing"}},
            "bigint": {**base, "monitoring": {"window_s": 3600, "min_samples": 10**30}},
            "floatint": {**base, "monitoring": {"window_s": 3600.0, "min_samples": 2.0}},
            # a request's own threshold past a double's range cannot judge: refused at pre-flight, not dropped
            "hugethreshold": {**base, "monitoring": {"window_s": 3600, "thresholds": {"queue_depth_max": 10**400}}},
            "big": {**base, "reason": "x" * 70_000},  # over the 64 KiB event cap, under the log's 256 KiB
            "v2": None,
            "junk": None,
        }
        for rid, data in cases.items():
            subject = s.release(rid, "requested")
            if rid == "v2":
                raw = json.dumps({**json.loads(envelope(rid, base)), "schema_version": 2}).encode()
            elif rid == "junk":
                raw = b"\x00\xff{not json"
            else:
                raw = envelope(rid, data, extra_top_level={"k": 1})
            await js.publish(
                subject,
                raw,
                headers={
                    "Nats-Expected-Last-Subject-Sequence": "0",
                    "Nats-Expected-Last-Subject-Sequence-Subject": s.release_filter(rid),
                },
            )
        from tests.harness import wait_for

        expect = {
            "r" * 64: "prepared",
            "extra": "prepared",
            "bigint": "prepared",
            "floatint": "prepared",
            "hugethreshold": "rejected",
            "nochan": "rejected",
            "big": "rejected",
            "v2": "rejected",
            "junk": "rejected",
        }
        for rid, phase in expect.items():
            r = await wait_for(
                lambda rid=rid: (lambda x: x if x is not None and x.phase not in (None, "requested") else None)(
                    svc.world.release(rid)
                ),
                10,  # at once: a request that made pre-flight raise was answered after 10 deliveries (~52 s)
                f"{rid} answered",
            )
            assert r.phase == phase, (rid, r.phase, (r.failure or "")[:300])
            if phase == "rejected":
                assert r.failure, rid
        assert "threshold 'queue_depth_max' names no Prometheus query" in svc.world.release("hugethreshold").failure
