"""The one way to say what a verification may rely on besides the pack's own bytes.

Every caller (verifier, pinner, guard, rollback readiness, runtime SDK, `kxr pack verify`)
builds its `VerifyContext` here: the request's identity comes from the pack it names, the
purpose is always stated (it decides the downgrade rule), and a caller with no channel to
check against (a runtime, an offline check) leaves the channel fields empty, which the
compatibility and policy gates treat as "not configured".
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Protocol

from events.channel import ChannelConfig
from events.model import PackRef
from events.signing import TrustRoot
from projections.world import World
from services.verification.gates import Purpose, VerifyContext


class PackIdentity(Protocol):
    """What names a pack: a `PackRef`, or a manifest's own `signed` part."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def digest(self) -> str: ...


def verify_context(
    pack: PackIdentity | None,
    trust_root: TrustRoot,
    now: datetime,
    purpose: Purpose,
    *,
    env: str = "",
    channel: str = "",
    cohorts: tuple[str, ...] = (),
    channel_config: ChannelConfig | None = None,
    channel_problem: str | None = None,
    active: Mapping[str, PackRef | None] | None = None,
    attestation: bytes | None = None,
) -> VerifyContext:
    """The context for verifying `pack` (None: a probe that names no pack, e.g. to read a manifest's
    own identity) for `purpose` at `now`, under `trust_root`.

    `channel_config` None: the channel was never configured, or (`channel_problem` says why) its newest
    entry does not decode (see `configured_channel`);
    `active`: cohort -> the pack it runs (None: never activated); `attestation`: the raw DSSE
    envelope, read only where the channel requires one.
    """
    return VerifyContext(
        request_name=pack.name if pack else "",
        request_version=pack.version if pack else "",
        request_digest=pack.digest if pack else "",
        env=env,
        channel=channel,
        cohorts=cohorts,
        channel_config=channel_config,
        channel_problem=channel_problem,
        active=active if active is not None else {},
        trust_root=trust_root,
        now=now,
        purpose=purpose,
        attestation=attestation,
    )


def configured_channel(world: World, env: str, channel: str) -> tuple[ChannelConfig | None, str | None]:
    """The channel's configuration as the gates take it, and why it cannot be read (None: it can). The
    configuration is None when it was never configured, or when its newest entry does not decode (the
    compatibility gate then fails closed, saying which), never the contract's default nor an older
    configuration in its place (the verifier, the activator's recheck, a rollback's landing and the pinner
    once took the older one: a fail-closed audit, session 26; pre-flight and the monitor already held)."""
    problem = world.channel_problem(env, channel)
    if problem is not None:
        return None, problem.describe()
    state = world.channel_state(env, channel)
    return (state.config if state else None), None
