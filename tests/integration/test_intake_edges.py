"""Unusual requests a producer in another language may write, through the real preparer: each ends
`prepared` or `rejected` with a reason, at once (never silent, never retried until it gives up).

Longest tokens, multi-byte text at its caps, extra fields, nulls where allowed, an offset timestamp,
integers written with a zero fraction (JSON Schema's `integer`), numbers past a double's range, a
payload over the event cap, another schema version, and bytes that are not JSON."""

from __future__ import annotations

import json

from events.canonical import compact_bytes
from tests.harness import CHANNEL, make_pack, running_service

LONG = "E" * 64
CH64 = "c" * 64


async def test_unusual_requests_are_each_answered(nats_url, prefix) -> None:
    async with running_service(nats_url, prefix, roles=("preparer",)) as svc:
        await svc.configure(env=LONG, channel=CH64)
        await svc.configure()
        strict = {**CHANNEL, "monitoring": {**CHANNEL["monitoring"], "window_s": 2, "min_samples": 3}}
        await svc.configure(channel="strict", config=strict)
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
            # a threshold is a JSON number: a string, a boolean or "Infinity" is refused at once, naming the field
            # (a request holding "Infinity" once failed the preparer's append on each of 10 deliveries)
            "infthreshold": {
                **base,
                "monitoring": {"window_s": 3600, "thresholds": {"latency_p95_ms_max": "Infinity"}},
            },
            "strthreshold": {**base, "monitoring": {"window_s": 3600, "thresholds": {"error_rate_max": "0.01"}}},
            "boolthreshold": {**base, "monitoring": {"window_s": 3600, "thresholds": {"error_rate_max": True}}},
            # CONTRACT §5: `monitoring` is optional and §7 calls the channel's "defaults": what a request
            # leaves out is the channel's, what it states is held to the channel's minimum
            "windowonly": {**base, "target": {"env": "prod", "channel": "strict"}, "monitoring": {"window_s": 3600}},
            "thresholdsonly": {
                **base,
                "target": {"env": "prod", "channel": "strict"},
                "monitoring": {"thresholds": {"error_rate_max": 0.01}},
            },
            "fewsamples": {
                **base,
                "target": {"env": "prod", "channel": "strict"},
                "monitoring": {"window_s": 3600, "min_samples": 1},
            },
            "unixtime": None,
            "v2": None,
            "junk": None,
        }
        for rid, data in cases.items():
            subject = s.release(rid, "requested")
            if rid == "v2":
                raw = json.dumps({**json.loads(envelope(rid, base)), "schema_version": 2}).encode()
            elif rid == "junk":
                raw = b"\x00\xff{not json"
            elif rid == "unixtime":  # CONTRACT §3: occurred_at is RFC 3339, never seconds since the epoch
                raw = json.dumps({**json.loads(envelope(rid, base)), "occurred_at": 1714564800}).encode()
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
            "infthreshold": "rejected",
            "strthreshold": "rejected",
            "boolthreshold": "rejected",
            "windowonly": "prepared",
            "thresholdsonly": "prepared",
            "fewsamples": "rejected",
            "unixtime": "rejected",
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
        for rid, field in [
            ("infthreshold", "latency_p95_ms_max"),
            ("strthreshold", "error_rate_max"),
            ("boolthreshold", "error_rate_max"),
            ("unixtime", "occurred_at"),
        ]:
            assert field in svc.world.release(rid).failure, (rid, svc.world.release(rid).failure)
        assert "min_samples 1 (channel minimum 3)" in svc.world.release("fewsamples").failure
        got = {rid: svc.world.release(rid).prepared.monitoring for rid in ("windowonly", "thresholdsonly")}
        assert (got["windowonly"].window_s, got["windowonly"].min_samples) == (3600, 3), got
        assert (got["thresholdsonly"].window_s, got["thresholdsonly"].min_samples) == (2, 3), got
        assert got["thresholdsonly"].thresholds.error_rate_max == 0.01, got
        assert got["thresholdsonly"].thresholds.latency_p95_ms_max == 250, got  # the channel's, kept
