"""Simulated runtimes for the demo, tests and benchmarks: real RuntimeClients, fake traffic."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from nats.aio.client import Client

from events.service_signing import ServiceKeys
from events.signing import TrustRoot
from services.runtime.sdk import Identity, RuntimeClient


@dataclass
class Behaviour:
    """Traffic a runtime reports for a pack digest (unknown digests are healthy)."""

    error_rate: float = 0.0
    p95_ms: float = 80.0
    p99_ms: float = 120.0
    error_classes: dict[str, int] = field(default_factory=dict)
    requests: int = 200
    tickets: int = 0  # tenant-impact signals per sample (CONTRACT §8 `signals`)
    escalations: int = 0
    trace_coverage: float = 1.0  # share of answers traced to their sources


def sampler(behaviours: dict[str, Behaviour], seed: int, default: Behaviour | None = None):
    rng = random.Random(seed)

    def sample(digest: str | None) -> dict:
        b = behaviours.get(digest or "", default or Behaviour())
        errors = round(b.requests * b.error_rate)
        jitter = rng.uniform(0.9, 1.1)
        return {
            "requests": b.requests,
            "errors": errors,
            "latency_ms": {"p95": round(b.p95_ms * jitter, 1), "p99": round(b.p99_ms * jitter, 1)},
            "error_classes": dict(b.error_classes),
            "correctness": {"mismatches": 0, "checked": 50, "trace_coverage": b.trace_coverage},
            "signals": {"tickets": b.tickets, "escalations": b.escalations},
        }

    return sample


def simulated_runtime(
    nc: Client,
    identity: Identity,
    trust_root: TrustRoot,
    behaviours: dict[str, Behaviour],
    *,
    prefix: str = "kx",
    interval: float = 0.25,
    seed: int = 0,
    service_keys: ServiceKeys | None = None,
    default: Behaviour | None = None,
) -> RuntimeClient:
    return RuntimeClient(
        nc,
        identity,
        trust_root,
        prefix=prefix,
        sample=sampler(behaviours, seed, default),
        sample_interval=interval,
        service_keys=service_keys,
    )
