"""Guard: the pack a scope runs must keep passing the gates that can change after activation.

A pack passed every gate when it was activated. Three of those answers can change later
without the pack changing (seed rollback trigger "policy violation discovered post-activation"):
- the trust root: a rotation that drops every key that signed the active manifest
  (gate signature, `threshold_not_met`),
- time: the active manifest expires (gate expiry, `expired`; TUF's freeze attack),
- the channel: a new configuration whose compatibility or policy the active pack violates
  (gates compatibility and policy: schema/profile/runtime, allowed_sources, allowed_builders).

The guard re-runs the verifier's own gates (services/verification/gates.py) on the active
manifest, with the trust root, time and channel configuration in force now:
- not re-checked: integrity (the exact bytes were hashed when the pack was verified; the
  pointer names that digest, and runtimes hash what they fetch), and forbid_downgrade
  (it orders a rollout against what runs; the pack that runs is not a rollout, and a
  rollback or pin to an older pack is allowed on purpose) - the gates run with purpose
  `rollback`, which skips exactly that rule.
- what it does: for a scope whose pointer a release in flight set (a rollout still being
  monitored, expanded or held), `release.rollback_started` with trigger `policy_violation`
  and a reason naming the violation; the promoter's own target choice and the activator's
  target checks apply as to any rollback. For a settled scope (no release in flight moving
  it), `scope.flagged` on `<p>.scope.<env>.<channel>.<cohort>.flagged`: nothing moves, but
  the state is recorded (shown by `kxr status`, `kxr channel show`) and notified (webhook
  kind `flagged`), never silent. A release already heading for a rollback (failed, aborting,
  rolling back) or about to close is left to the consumers moving it; the next check sees
  where it landed.

When: on every `trust.rotated`, `channel.configured` and `scope.activated` (a configuration
that changed between a release's verification and its switch is caught at the switch), and
a sweep every `SWEEP_EVERY_S` for expiry and anything a trigger missed. Every output's id is
derived (from the release's last event, or the scope's pointer sequence and the code), and a
flag is appended with the scope's expected last sequence, so redeliveries and several
instances converge on one event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from events.channel import ChannelConfig
from events.codec import make_event
from events.ids import derived_event_id
from events.manifest import MANIFEST_MAX_BYTES
from events.model import Event, PackRef, RollbackStarted, Scope, ScopeFlagged
from events.signing import TrustRoot
from projections.releases import ReleaseState
from projections.rollback import rollback_targets
from projections.scopes import ScopeKey, ScopeState
from projections.world import World
from services.consumers.outputs import Chain, Ctx, Failed, Output, release_event
from services.consumers.port import Port
from services.consumers.reactor import ReleaseReactor, until_stored
from services.jetstream.log import Entry
from services.jetstream.pack_keeper import checked_with_restore, digest_of_object, recorded
from services.jetstream.packstore import ObjectTooLarge, PackStore, object_digest
from services.jetstream.worker import Worker
from services.verification.context import verify_context
from services.verification.gates import Verification, attestation_required, check_manifest, check_pack, check_policy
from services.verification.pipeline import read_attestation

NAME = "guard"
SWEEP_EVERY_S = 10.0
YIELD_EVERY = 100  # scopes checked between two turns of the event loop
log = logging.getLogger(__name__)

# A rollout in these phases is still being tried on its cohorts: the guard rolls it back.
ROLLBACK_PHASES = frozenset({"activated", "monitoring", "passed", "expanding", "held"})
# In these, another consumer is already moving the release (to a rollback or a close): wait.
MOVING_PHASES = frozenset({"failed", "activation_failed", "aborting", "rolling_back", "rolled_back", "promoted"})


@dataclass(frozen=True)
class Violation:
    """The gate the active pack (`digest`) fails now: code `<gate>/<gate code>` and the gate's sentence."""

    digest: str
    code: str
    message: str


# ---- pure: the check ------------------------------------------------------------------------------
def gates_now(
    manifest: bytes | None,
    key: ScopeKey,
    active: PackRef,
    config: ChannelConfig | None,
    trust_root: TrustRoot,
    now: datetime,
    attestation: bytes | None = None,
) -> Verification:
    """The verifier's gates on the active pack's manifest (and its attestation, where the channel
    requires one), under the root, time and channel in force now."""
    env, channel, cohort = key
    vctx = verify_context(
        active,
        trust_root,
        now,
        "rollback",  # rollback: no downgrade rule against what runs
        env=env,
        channel=channel,
        cohorts=(cohort,),
        channel_config=config,
        active={cohort: active},
        attestation=attestation,
    )
    v = check_manifest(manifest, vctx)  # trust root, manifest, signature, expiry, identity
    if v.failure is not None or v.manifest is None:
        return v
    # Integrity is not re-hashed (see the module docstring): the pack phase is given the identity
    # the verifier established, which the identity gate just tied to this manifest.
    return check_policy(check_pack(v, (v.manifest.digest, v.manifest.size), vctx), vctx)


def violation_of(v: Verification, active: PackRef) -> Violation | None:
    if v.failure is not None:
        return Violation(active.digest, f"{v.failure.gate}/{v.failure.code}", v.failure.message)
    if not v.ok:  # never a pass without every gate
        return Violation(active.digest, "internal/internal_error", "the gates ended without a verdict")
    return None


def check_active(
    manifest: bytes | None,
    key: ScopeKey,
    active: PackRef,
    config: ChannelConfig | None,
    trust_root: TrustRoot,
    now: datetime,
    attestation: bytes | None = None,
) -> Violation | None:
    """What the active pack violates now (None: it still passes every gate that can change)."""
    return violation_of(gates_now(manifest, key, active, config, trust_root, now, attestation), active)


# ---- pure: what to do about violations -----------------------------------------------------------
def _owner(world: World, state: ScopeState) -> ReleaseState | None:
    """The release in flight whose rollout the scope runs (None: the scope is settled)."""
    active = state.active
    if active is None or active.kind != "rollout" or not active.release_id:
        return None
    release = world.release(active.release_id)
    if release is None or not release.in_flight:
        return None
    return release


def _rollout_eligible(release: ReleaseState) -> bool:
    return release.phase in ROLLBACK_PHASES and release.rollback is None and not release.aborted


def _current(world: World, key: ScopeKey, violation: Violation) -> ScopeState | None:
    """The scope, if it still runs the pack the violation was found on."""
    state = world.scopes.get(key)
    if state is None or state.active_pack is None or state.active_pack.digest != violation.digest:
        return None
    return state


def decide_release(
    world: World, release: ReleaseState, violations: Mapping[ScopeKey, Violation], ctx: Ctx
) -> list[Output]:
    """`rollback_started` (trigger policy_violation) for a rollout in flight whose pack now fails a gate."""
    if release.prepared is None or not _rollout_eligible(release):
        return []
    env, channel = release.prepared.target.env, release.prepared.target.channel
    found = []
    for cohort in release.activated:
        key = (env, channel, cohort)
        violation = violations.get(key)
        state = _current(world, key, violation) if violation else None
        if violation and state is not None and _owner(world, state) is release:
            found.append(f"{env}/{channel}/{cohort}: {violation.code}: {violation.message}")
    if not found:
        return []
    pack = release.verified.pack.short() if release.verified else "the active pack"
    reason = f"policy violation discovered after activation of {pack}: " + "; ".join(found)
    targets = rollback_targets(world, release, ctx.now)
    started = RollbackStarted(trigger="policy_violation", reason=reason, targets=targets)
    return [Chain((release_event(ctx, release, "rollback_started", started, "guard/policy_violation"),))]


def flag_event(state: ScopeState, violation: Violation, ctx: Ctx) -> Event | None:
    """`scope.flagged` for a settled scope, unless the same flag is already recorded on this pointer."""
    active = state.active
    if active is None or active.pack.digest != violation.digest:
        return None
    if state.flag is not None and state.flag.pack.digest == violation.digest and state.flag.code == violation.code:
        return None
    env, channel, cohort = state.key
    data = ScopeFlagged(
        pack=active.pack,
        code=violation.code,
        detected_at=ctx.now,
        message=f"{active.pack.short()} active on {env}/{channel}/{cohort} "
        f"now fails gate {violation.code}: {violation.message}",
    )
    return make_event(
        "scope.flagged",
        data,
        actor=ctx.actor,
        scope=Scope(env=env, channel=channel, cohort=cohort),
        release_id=active.release_id,
        correlation_id=active.release_id,
        # one flag per pointer, flag before it and violation, whoever finds it and however often. Not per
        # pointer and violation alone: a violation back after another (a key dropped, restored while the
        # pack expired) derived the first flag's id again, which JetStream dropped as a duplicate (the
        # scope kept saying the other violation) or, past its window, stored twice (the lifecycle model)
        event_id=derived_event_id(
            f"{env}/{channel}/{cohort}@{state.active_seq}/{state.flag_seq}", ctx.service, f"flag/{violation.code}"
        ),
        occurred_at=ctx.now,
    )


@dataclass(frozen=True)
class Plan:
    rollbacks: tuple[str, ...]  # releases to decide a rollback on (decide_release, on their current state)
    flags: tuple[tuple[ScopeKey, Event], ...]  # scope.flagged events to append


def decide(world: World, violations: Mapping[ScopeKey, Violation], ctx: Ctx) -> Plan:
    """Per violating scope: roll back the rollout in flight that put the pack there, or flag the scope."""
    rollbacks: list[str] = []
    flags: list[tuple[ScopeKey, Event]] = []
    for key in sorted(violations):
        state = _current(world, key, violations[key])
        if state is None:
            continue  # the pointer moved since the check: the next check judges the new pack
        release = _owner(world, state)
        if release is not None and _rollout_eligible(release):
            if decide_release(world, release, violations, ctx) and release.release_id not in rollbacks:
                rollbacks.append(release.release_id)
            continue
        if release is not None and release.phase in MOVING_PHASES:
            continue  # already heading for a rollback or a close: judged again where it lands
        event = flag_event(state, violations[key], ctx)
        if event is not None:
            flags.append((key, event))
    return Plan(tuple(rollbacks), tuple(flags))


# ---- adapter ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PolicyRollback:
    """The reactor step of a rollout whose pack now fails a gate: the violations are the facts (the
    guard observed them per scope, with the scopes it checks), `decide_release` the decision."""

    violations: Mapping[ScopeKey, Violation]

    async def observe(self, world: World, release: ReleaseState, ctx: Ctx) -> None:
        return None

    def decide(self, world: World, release: ReleaseState, facts: None, ctx: Ctx) -> list[Output]:
        return decide_release(world, release, self.violations, ctx)

    def fail_closed(self, world: World, release: ReleaseState, failed: Failed, ctx: Ctx) -> list[Output]:
        return []  # never observed to fail; the trigger's retry and the sweep check again


class Guard(ReleaseReactor[None]):
    """Checks active packs on trust, channel and pointer changes and on a sweep; appends the plan.

    Its triggers name scopes, not releases (a rotation, a channel, a pointer), so it has its
    own worker and handler; a rollback it decides on runs through the reactor (`settle` with
    `PolicyRollback`: phase guard `acts_in`, conflict retry), and a flag through the same
    conflict retry (`until_stored`).
    """

    name = NAME
    acts_in = ROLLBACK_PHASES

    def __init__(self, port: Port, sweep_every: float = SWEEP_EVERY_S) -> None:
        super().__init__(port)
        self.sweep_every = sweep_every
        self._manifests: dict[str, bytes] = {}  # manifest object name (named by digest) -> bytes as first read
        # (digest, env, channel, channel seq, rotations) -> (violation, expires): a pass holds until expiry
        self._verdicts: dict[tuple, tuple[Violation | None, datetime | None]] = {}

    def runners(self) -> list:
        s = self.port.subjects
        triggers = [s.trust_rotated(), f"{s.prefix}.channel.*.*.configured", s.all_activations()]
        # NEW: on a fresh deployment the first sweep checks every scope; the log's past is not replayed
        worker = Worker(
            self.port.js,
            s.releases_stream,
            f"kxr-{NAME}",
            triggers,
            self.handle,
            self.port.deadletters,
            ack_wait=self.port.settings.ack_wait_s,
            deliver_new=True,
        )
        return [worker.run(), self.sweep()]

    async def handle(self, msg) -> None:
        await self.port.follower.wait_for(msg.metadata.sequence.stream)
        family, tokens = self.port.subjects.parse(msg.subject)
        world = self.port.follower.world
        if family == "channel" and len(tokens) == 3:
            keys = [k for k in world.scopes.keys() if (k[0], k[1]) == (tokens[0], tokens[1])]
        elif family == "scope" and len(tokens) == 4:
            keys = [(tokens[0], tokens[1], tokens[2])]
        else:  # a trust rotation (or anything unexpected): every scope
            keys = list(world.scopes.keys())
        await self.guard(keys)

    async def sweep(self) -> None:
        while True:
            try:
                await self.guard(list(self.port.follower.world.scopes.keys()))
            except Exception as exc:  # the next sweep tries again
                log.warning("guard: sweep incomplete: %s", exc)
            await asyncio.sleep(self.sweep_every)

    async def guard(self, keys: Iterable[ScopeKey]) -> None:
        violations, unchecked = await self.check(keys)
        if violations:
            plan = decide(self.port.follower.world, violations, self.port.ctx(NAME))
            for release_id in plan.rollbacks:
                await self.settle(release_id, PolicyRollback(violations))
            for key, _ in plan.flags:
                await self.flag(key, violations[key])  # decided again on the state at the append
        if unchecked:  # not judged is not passed: the worker retries the trigger, the sweep comes again
            raise RuntimeError(f"guard: {len(unchecked)} scope(s) not checked: {'; '.join(unchecked[:5])}")

    async def check(self, keys: Iterable[ScopeKey]) -> tuple[dict[ScopeKey, Violation], list[str]]:
        """Violations by scope, and the scopes whose manifest could not be read (with why)."""
        trust_root = self.port.current_trust_root()
        if trust_root is None:
            raise RuntimeError("the guard has no trust root (KX_TRUST_ROOT)")  # never a pass, never a guess
        world = self.port.follower.world
        now = self.port.clock()
        out: dict[ScopeKey, Violation] = {}
        unchecked: list[str] = []
        for n, key in enumerate(keys):
            if n % YIELD_EVERY == YIELD_EVERY - 1:  # a sweep of thousands of scopes lets activations through
                await asyncio.sleep(0)
            state = world.scopes.get(key)
            if state is None or state.active is None:
                continue
            channel_state = world.channel_state(key[0], key[1])
            memo = (
                state.active.pack.digest,
                key[0],
                key[1],
                channel_state.seq if channel_state else 0,
                len(world.trust_rotations),
            )
            known = self._verdicts.get(memo)
            if known is not None and known[0] is None and known[1] is not None and now < known[1]:
                continue  # passed under this root and configuration, and not expired yet
            config = channel_state.config if channel_state else None
            try:
                manifest = await self.manifest(state.active.manifest, state.active.release_id)
                # a channel that requires attestations requires one of what runs, too (a policy change
                # can add the requirement after activation): read it only then, as the verifier does
                attestation = (
                    await read_attestation(PackStore(self.port.js, self.port.subjects), state.active.pack.digest)
                    if attestation_required(config)
                    else None
                )
            except Exception as exc:  # one unreadable manifest must not keep the others unchecked
                unchecked.append(f"{'/'.join(key)}: {exc.__class__.__name__}: {exc}")
                continue
            v = gates_now(manifest, key, state.active.pack, config, trust_root, now, attestation)
            violation = violation_of(v, state.active.pack)
            self._verdicts[memo] = (violation, v.manifest.expires if violation is None and v.manifest else None)
            if violation is not None:
                out[key] = violation
        return out, unchecked

    async def manifest(self, name: str, release_id: str | None = None) -> bytes | None:
        """The manifest's bytes (None: absent, which the manifest gate refuses); IO errors propagate.
        `release_id`: the release that activated it (its record is looked up first)."""
        if name not in self._manifests:

            async def read() -> bytes | None:
                try:
                    return await PackStore(self.port.js, self.port.subjects).read(name, MANIFEST_MAX_BYTES)
                except ObjectTooLarge:
                    return b"x" * (MANIFEST_MAX_BYTES + 1)  # refused by the manifest gate's cap, by name

            # The manifest the pack was distributed with, as the cache keeps the first read: one a
            # producer deleted or re-pointed since is restored from the log's record (pack_keeper),
            # so tampering with metadata cannot make the guard flag (and roll back) a settled scope.
            digest = digest_of_object(name)
            kept = (await recorded(self.port, digest, release_id)).get(name)
            data = await checked_with_restore(
                self.port,
                digest,
                read,
                lambda d: d is None or (kept is not None and object_digest(d) != kept.digest),
                release_id,
            )
            if data is None:
                return None  # not cached: a manifest pushed again later is read then
            if len(self._manifests) > 4096:
                self._manifests.clear()
            self._manifests[name] = data
        return self._manifests[name]

    async def flag(self, key: ScopeKey, violation: Violation, attempts: int = 5) -> None:
        async def once() -> None:
            state = _current(self.port.follower.world, key, violation)
            event = flag_event(state, violation, self.port.ctx(NAME)) if state is not None else None
            if state is None or event is None:
                return
            await self.port.log.append(Entry(event, state.last_seq, self.port.subjects.scope_filter(*key)))
            log.warning("guard: %s", event.data.message)  # type: ignore[attr-defined]

        # the scope moved: decide on what it is now
        await until_stored(once, f"guard: flag on {'/'.join(key)}", self.port.follower.catch_up, attempts)
