"""`kxr pack verify`: the gates that need no service state, for producers' pipelines."""

from __future__ import annotations

from datetime import datetime

from events.signing import TrustRoot
from services.consumers.verifier.gates import Verification, VerifyContext, check_manifest, check_pack, PackDigester, PackOversized


def verify_offline(pack: bytes, manifest: bytes, trust_root: TrustRoot, now: datetime) -> Verification:
    """Trust root, manifest, signature, expiry and integrity; identity is the manifest's own.

    Compatibility and policy depend on a channel and what is active there: the service checks those.
    """
    probe = check_manifest(manifest, VerifyContext(
        request_name="", request_version="", request_digest="", env="", channel="", cohorts=(),
        channel_config=None, active={}, trust_root=trust_root, now=now, purpose="pin",
    ))
    if probe.manifest is None:
        return probe
    m = probe.manifest
    ctx = VerifyContext(
        request_name=m.name, request_version=m.version, request_digest=m.digest, env="", channel="", cohorts=(),
        channel_config=None, active={}, trust_root=trust_root, now=now, purpose="pin",
    )
    v = check_manifest(manifest, ctx)
    if v.failure is not None:
        return v
    digester = PackDigester(m.size)
    try:
        digester.update(pack)
    except PackOversized:
        pass
    return check_pack(v, digester.result(), ctx, oversized=digester.oversized)
