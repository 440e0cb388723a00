"""`kxr pack verify`: the gates that need no service state, for producers' pipelines."""

from __future__ import annotations

from datetime import datetime

from events.signing import TrustRoot
from services.verification.context import verify_context
from services.verification.gates import PackDigester, PackOversized, Verification, check_manifest, check_pack


def verify_offline(pack: bytes, manifest: bytes, trust_root: TrustRoot, now: datetime) -> Verification:
    """Trust root, manifest, signature, expiry and integrity; identity is the manifest's own.

    Compatibility and policy depend on a channel and what is active there: the service checks those.
    """
    probe = check_manifest(manifest, verify_context(None, trust_root, now, "pin"))
    if probe.manifest is None:
        return probe
    m = probe.manifest
    ctx = verify_context(m, trust_root, now, "pin")
    v = check_manifest(manifest, ctx)
    if v.failure is not None:
        return v
    digester = PackDigester(m.size)
    try:
        digester.update(pack)
    except PackOversized:
        pass
    return check_pack(v, digester.result(), ctx, oversized=digester.oversized)
