"""Rollback readiness: can the pack a rollback would go back to still be activated?

The check (the manifest verifies under the trust root in force and has not expired, the
pack object is present with the manifest's size and its metadata names the pack's bytes)
runs where a rollback is about to happen (the activator) and wherever a release is about
to expose more: pre-flight (preparer) and before each expansion or promotion (promoter).
One implementation for all three, so "ready" means the same thing at every step. Where a
pack is about to be switched to (`Exposing`: a rollout's next cohorts, a rollback's landing),
the activator also judges it against the channel's configuration now, as a verification would.

`target_problems` is the IO (its answer is a fact handed to a pure decide);
`readiness_problems` is the pure judgement over those facts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from events.channel import ChannelConfig
from events.manifest import MANIFEST_MAX_BYTES, manifest_object_name, pack_object_name
from events.model import PackRef, StoredObject
from projections.world import World
from services.jetstream.pack_keeper import checked_with_restore, recorded
from services.jetstream.packstore import PackStore, as_stored_object, recorded_sha256
from services.verification.context import configured_channel, verify_context
from services.verification.gates import CHANNEL_GATES, attestation_required, check_manifest, recheck_channel
from services.verification.pipeline import read_attestation


@dataclass(frozen=True)
class Exposing:
    """Where a pack is about to be switched to, judged as a verification would (compatibility, policy,
    evidence under the channel's configuration now): the channel's configuration (None: never
    configured), the cohorts about to switch and the pack each runs. `purpose` "rollout": a release
    exposing its pack to more cohorts; "rollback": a rollback landing on its target (no downgrade rule:
    a rollback goes back to an older pack on purpose)."""

    config: ChannelConfig | None
    cohorts: tuple[str, ...]
    active: Mapping[str, PackRef | None]
    purpose: Literal["rollout", "rollback"] = "rollout"
    problem: str | None = None  # why the channel's newest configuration cannot be read (`configured_channel`)


@dataclass(frozen=True)
class TargetCheck:
    """A pack's fitness to be switched to now: why not (None: fit), the gate that said so (None: no
    gate, e.g. an object missing), and the trusted keys whose signatures on its manifest verified under
    the root in force (the pointer's `signers`)."""

    problem: str | None
    signers: tuple[str, ...] = ()
    gate: str | None = None

    @property
    def channel_refuses(self) -> bool:
        """The pack is sound (trusted, unexpired, present) but the channel's configuration no longer admits it."""
        return self.problem is not None and self.gate in CHANNEL_GATES


def landing(world: World, env: str, channel: str, cohorts: tuple[str, ...]) -> Exposing:
    """Where a rollback of `cohorts` would land: their packs now and the channel's configuration now
    (judged as a verification would, without the downgrade rule: `purpose` rollback)."""
    active = {c: world.scope(env, channel, c).active_pack for c in cohorts}
    config, unreadable = configured_channel(world, env, channel)
    return Exposing(config, cohorts, active, "rollback", unreadable)


def judge_target(
    manifest: bytes | None,
    pack_meta: dict | None,
    target: PackRef,
    env: str,
    channel: str,
    cohorts: tuple[str, ...],
    trust_root,
    now: datetime,
    exposing: Exposing | None = None,
    attestation: bytes | None = None,
    recorded: StoredObject | None = None,
) -> TargetCheck:
    """Pure: the manifest must verify under `trust_root` and not be expired, the pack object be
    present with the manifest's size and read as its bytes (`pack_object_problem`: `pack_meta` is its
    metadata as stored, `recorded` what distribution recorded of it). Fast-track, not a full
    re-verification: the bytes are not hashed again. With `exposing` (a rollout about to switch more
    cohorts, or a rollback about to land), also the channel's gates as they stand now (`recheck_channel`:
    `attestation` is the object, where it requires one)."""
    if trust_root is None:
        return TargetCheck("no trust root configured")
    if pack_meta is None:
        return TargetCheck("pack object missing")
    size, problem = pack_object_problem(pack_meta, target, recorded)
    if problem is not None:
        return TargetCheck(problem)
    vctx = verify_context(target, trust_root, now, "rollback", env=env, channel=channel, cohorts=cohorts)
    check = check_manifest(manifest[: MANIFEST_MAX_BYTES + 1] if manifest else None, vctx)
    if check.failure is None and check.manifest is not None and check.manifest.size != size:
        return TargetCheck(f"pack object is {size} bytes, manifest says {check.manifest.size}")
    if check.failure is None and exposing is not None:
        switching = verify_context(
            target,
            trust_root,
            now,
            exposing.purpose,
            env=env,
            channel=channel,
            cohorts=exposing.cohorts,
            channel_config=exposing.config,
            channel_problem=exposing.problem,
            active=exposing.active,
            attestation=attestation,
        )
        check = recheck_channel(check, switching)
    if check.failure is not None:
        failure = check.failure
        return TargetCheck(f"{failure.gate}/{failure.code}: {failure.message}", gate=failure.gate)
    return TargetCheck(None, tuple(check.signers))


def pack_object_problem(meta: dict, target: PackRef, recorded: StoredObject | None = None) -> tuple[int, str | None]:
    """The pack object's size and why it does not hold the pack's bytes (None: nothing says so).

    A rollback lands without hashing the bytes again, so its metadata must at least name them: the
    SHA-256 it records must be the pack's digest (a name re-pointed at other chunks of the same size
    passes a size check, and only the runtimes' hash would notice, after the pointer moved), and, where
    distribution recorded the object, it must read as recorded (the caller restores it from the record
    first, so a difference left means the recorded chunks are gone). A metadata digest no client
    format we know names is not judged: the size and the runtimes' hash still are."""
    try:
        size = int(meta.get("size", 0))
    except (TypeError, ValueError):
        return 0, f"pack object metadata unreadable: size {meta.get('size')!r}"
    sha = recorded_sha256(meta.get("digest"))
    if sha is not None and target.digest.startswith("sha256:") and sha.hex() != target.digest.removeprefix("sha256:"):
        return size, f"pack object holds other bytes: its metadata's SHA-256 is {sha.hex()[:12]}…, not the pack's"
    if recorded is not None and as_stored_object(meta) != recorded:
        return size, (
            f"pack object does not read as distributed (chunks {meta.get('nuid')!r}, recorded {recorded.nuid!r}) "
            "and the recorded chunks are gone"
        )
    return size, None


async def target_check(
    app,
    target: PackRef,
    env: str,
    channel: str,
    cohorts: tuple[str, ...],
    now: datetime,
    exposing: Exposing | None = None,
) -> TargetCheck:
    """`judge_target` on the objects in the pack store; a target it distributed that a producer
    deleted or re-pointed is restored from the log's record first (services/jetstream/pack_keeper.py).
    Never raises: any failure of the check is its problem (fail closed: the activator then records
    `activation_failed` or `escalated` saying why, the promoter holds)."""

    record: dict[str, StoredObject] = {}

    async def read_and_judge() -> TargetCheck:
        store = PackStore(app.js, app.subjects)
        attest = exposing is not None and attestation_required(exposing.config)
        try:  # the reads at once: a rollback waits on this check (bench.rollback)
            manifest, pack_meta, attestation = await asyncio.gather(
                store.read(manifest_object_name(target.digest), MANIFEST_MAX_BYTES),
                store.live_meta(pack_object_name(target.digest)),
                read_attestation(store, target.digest) if attest else _none(),
            )
        except Exception as exc:  # fail closed: an unreadable target is not a target
            return TargetCheck(f"cannot read target objects: {exc}")
        root = app.current_trust_root()
        pack_record = record.get(pack_object_name(target.digest))
        return judge_target(
            manifest, pack_meta, target, env, channel, cohorts, root, now, exposing, attestation, pack_record
        )

    try:
        if app.current_trust_root() is None:
            return TargetCheck("no trust root configured")
        # the record the restore works from is the one the pack object is judged against: looked up once
        # (a pack with none is a scan of every release and scope, ~1 ms with a thousand scopes)
        record.update(await recorded(app, target.digest))
        return await checked_with_restore(
            app, target.digest, read_and_judge, lambda check: check.problem is not None, objects=record
        )
    except Exception as exc:
        return TargetCheck(f"readiness check failed: {exc.__class__.__name__}: {exc}")


async def _none() -> None:
    return None


async def target_checks(
    app,
    targets: Iterable[PackRef | None],
    env: str,
    channel: str,
    cohorts: tuple[str, ...],
    now: datetime,
    exposing: Exposing | None = None,
) -> dict[str, TargetCheck]:
    """`target_check` for each distinct target digest (an exception is a problem, never a pass)."""
    return {
        target.digest: await target_check(app, target, env, channel, cohorts, now, exposing)
        for target in {t.digest: t for t in targets if t is not None}.values()
    }


async def target_problems(
    app, targets: Iterable[PackRef | None], env: str, channel: str, cohorts: tuple[str, ...], now: datetime
) -> dict[str, str | None]:
    """Why each distinct target can no longer be activated (None: it can), by digest."""
    checks = await target_checks(app, targets, env, channel, cohorts, now)
    return {digest: check.problem for digest, check in checks.items()}


def readiness_problems(
    targets: Mapping[str, PackRef | None], strategy: str, checked: Mapping[str, str | None]
) -> list[str]:
    """One sentence per cohort whose rollback would not land (empty: every one would).

    A missing target is only acceptable under strategy `none` (pre-flight allowed it because
    the scope never ran a pack: there is nothing to go back to). A target the caller did not
    check is a problem: absence of evidence is not readiness.
    """
    problems = []
    for cohort, target in targets.items():
        if target is None:
            if strategy != "none":
                problems.append(f"{cohort}: no {strategy} rollback target")
        elif target.digest not in checked:
            problems.append(f"{cohort}: target {target.short()} was not checked")
        elif checked[target.digest]:
            problems.append(f"{cohort}: target {target.short()} is not usable: {checked[target.digest]}")
    return problems
