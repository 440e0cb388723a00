"""The release lifecycle as a pure model: the real decide functions and folds, no NATS.

`Lifecycle` stands in for JetStream and the adapters' IO: it keeps the log (with positions,
batches, per-subject sequences and duplicate ids), the health stream, the pack store and the
timers, and hands the decide functions the facts their adapters would read. Every event
appended goes through the auditor (`projections.invariants.audit_entry`), so the safety
invariants checked after each step are the ones `kxr audit replay` reports.

Used by tests/unit/test_lifecycle_model.py (random interleavings) and
tests/unit/test_model_regressions.py (the minimal counter-examples, replayed by hand).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from events.codec import make_event, scope_tuple
from events.health import HealthSample, accept_report
from events.ids import derived_event_id
from events.manifest import manifest_object_name, pack_object_name
from events.model import Actor, Event, PackRef, Scope, TrustRotated
from events.signing import SigningKey, TrustRoot, b64encode
from events.subjects import HealthParts, Subjects
from events.trust import follow_chain, sign_root
from events.versions import parse_version
from projections.invariants import Audit, Violation, audit_entry, contract_problem, is_override
from projections.position import Position
from projections.releases import ReleaseState
from projections.world import World
from services.actions import operator, pins
from services.actions.producer import build_signed, manifest_bytes
from services.consumers import activator, distributor, guard, monitor, pinner, preparer, promoter
from services.consumers import verifier as verifier_adapter
from services.consumers.fast_path import Part, extend, joined
from services.consumers.outputs import Atomic, Chain, Ctx, Failed, Output, Promotion, Timer, appended
from services.consumers.verifier import context_for
from services.jetstream.packstore import object_digest
from services.monitoring.judge import (
    Watch,
    counts_for,
    exposed_before,
    hard_breach,
    live_refusal,
    read_span,
    refusals_since,
    window_data,
)
from services.verification.gates import DEADLINE_GATE, TIMEOUT_CODE, VerifyContext, verify_bytes
from services.verification.readiness import Exposing, TargetCheck, judge_target

# ---- the known world: keys, trust roots, packs, channels ------------------------------------------

T0 = datetime(2031, 3, 1, 9, 0, tzinfo=UTC)
ENV = "prod"
CHANNELS = ("canary", "stable")
# each channel's windows a reconfiguration picks from: mostly stable watches longer than the canary (the
# seed's rule), and sometimes not, so the promoter's withholding is exercised too
WINDOWS = {"canary": (60, 120), "stable": (120, 60)}
# Every cohort a configuration of the model may name (`channel_doc`'s `cohorts`): "early" only in some.
COHORTS = ("internal", "early", "rest")
# Each runtime's tenant: which cohort it is in follows the channel's configuration as it stands (CONTRACT
# §7, the first match), so a reconfiguration moves runtimes between cohorts under a rollout.
RUNTIME_TENANTS = {"int-a": "t-int", "int-b": "t-int", "rest-a": "t-a", "rest-b": "t-b"}
COHORT_SETS = {  # the cohorts a channel's configuration may have, the catch-all last
    "two": [{"name": "internal", "tenants": ["t-int"]}, {"name": "rest"}],
    "three": [{"name": "internal", "tenants": ["t-int"]}, {"name": "early", "tenants": ["t-a"]}, {"name": "rest"}],
    "one": [{"name": "rest"}],  # internal's runtimes move to rest; scopes of internal keep their pointers
}
OPERATOR = Actor(kind="operator", id="ops")
PRODUCER = Actor(kind="producer", id="ci")
SUBJECTS = Subjects()

KEYS = [SigningKey.from_raw(bytes([n]) * 32) for n in (1, 2, 3)]


def _root(version: int, keys: list[SigningKey], threshold: int = 1) -> dict[str, Any]:
    return {
        "version": version,
        "threshold": threshold,
        "keys": {k.keyid: {"public": b64encode(k.public_raw), "name": f"k{KEYS.index(k) + 1}"} for k in keys},
    }


# The anchor trusts key 1; each rotation (signed by the old and the new root) moves trust on:
# v2 adds key 2, v3 drops key 1 (packs signed by it alone lose their trust) and adds key 3, v4 trusts
# key 1 again (a key restored), v5 drops it again: a run may see a signer dropped twice; v6 trusts all
# three keys but asks two signatures (every pack signed by one key alone loses trust), v7 asks one again.
ROOT_KEYS = [
    [KEYS[0]],
    [KEYS[0], KEYS[1]],
    [KEYS[1], KEYS[2]],
    [KEYS[0], KEYS[1], KEYS[2]],
    [KEYS[1], KEYS[2]],
    [KEYS[0], KEYS[1], KEYS[2]],
    [KEYS[0], KEYS[1], KEYS[2]],
]
ROOT_THRESHOLDS = [1, 1, 1, 1, 1, 2, 1]
ANCHOR = TrustRoot.from_document(_root(1, ROOT_KEYS[0]))
ROTATIONS = [
    sign_root(_root(v + 1, ROOT_KEYS[v], ROOT_THRESHOLDS[v]), ROOT_KEYS[v - 1] + ROOT_KEYS[v])
    for v in range(1, len(ROOT_KEYS))
]


@dataclass(frozen=True)
class ModelPack:
    version: str
    body: bytes
    manifest: bytes
    digest: str

    @property
    def ref(self) -> dict[str, Any]:
        return {"name": "kb", "version": self.version, "digest": self.digest}


def _pack(
    version: str, key: int | tuple[int, ...], expires: timedelta = timedelta(days=60), **fields: Any
) -> ModelPack:
    body = f"knowledge pack {version}\n".encode() * 4
    base = dict(
        name="kb",
        version=version,
        schema="kx-pack/1",
        profile="standard",
        runtime=">=2.3,<3",
        build_id=f"b-{version}",
        builder="kx-pipeline",
        run=f"run-{version}",
        source="https://git.example/kb/core",
        revision=f"rev-{version}",
    )
    signed = build_signed(body, expires=T0 + expires, **{**base, **fields})
    keys = [KEYS[k - 1] for k in (key if isinstance(key, tuple) else (key,))]
    return ModelPack(version, body, manifest_bytes(signed, keys), signed["digest"])


PACKS = [  # 1.0.0 (keys 1 and 2) is what the channels ran first: trusted by every root
    _pack("1.0.0", (1, 2)),
    _pack("1.1.0", 1),
    _pack("1.2.0", 1),
    _pack("1.3.0", 2),
    _pack("2.0.0", 3),
    _pack("0.9.0", 1),  # older: a downgrade wherever something newer ran
    _pack("1.4.0", 1, source="https://evil.example/kb"),  # fails policy (source)
    _pack("1.5.0", 1, expires=timedelta(hours=2)),  # expires while the model runs
]
PACK_BY_DIGEST = {p.digest: p for p in PACKS}

THRESHOLDS = [
    {"error_rate_max": 0.05},
    {"error_rate_max": 0.05, "latency_p95_ms_max": 250, "latency_p99_ms_max": 400},
    {"error_rate_max": 0.05, "activation_success_min": 1.0, "mismatch_rate_max": 0.01},
    {"latency_p99_ms_max": 400, "new_error_classes": "fail"},
]


def channel_doc(
    thresholds: int = 0,
    min_samples: int = 2,
    promote: bool = False,
    forbid_downgrade: bool = True,
    window_s: int = 60,
    runtime_version: str = "2.4.0",
    policy: str = "default",
    cohorts: str = "two",
) -> dict[str, Any]:
    """`cohorts`: one of COHORT_SETS ("two" the model's usual channel).
    `policy`: "default" admits every pack's origin; "builder" admits only another builder's packs
    (`policy/builder_forbidden` for all of them), "revision" asks for full commit ids (every pack names
    `rev-<version>`: `evidence/revision_not_commit`), "attestation" asks for a build attestation (no
    pack has one) — a channel whose policy turns against what runs."""
    return {
        "cohorts": COHORT_SETS[cohorts],
        "plan": [[rule["name"]] for rule in COHORT_SETS[cohorts]],  # one stage per cohort, in order
        "monitoring": {"window_s": window_s, "min_samples": min_samples, "thresholds": THRESHOLDS[thresholds]},
        # every pack asks for runtime >=2.3,<3: a channel moved to 3.0.0 no longer runs any of them
        "compatibility": {"schema": "kx-pack/1", "profiles": ["standard"], "runtime_version": runtime_version},
        "policy": {
            "allowed_sources": ["https://git.example/kb"],
            "allowed_builders": ["other-pipeline"] if policy == "builder" else ["kx-pipeline"],
            "forbid_downgrade": forbid_downgrade,
            "max_pin_days": 30,
            **({"require_commit_revision": True} if policy == "revision" else {}),
            **({"require_attestation": True} if policy == "attestation" else {}),
        },
        **({"promote_to": "stable"} if promote else {}),
    }


# ---- health samples a runtime may send ------------------------------------------------------------

SAMPLE_KINDS = (
    "good",
    "no_latency",
    "no_correctness",
    "errors",
    "idle",
    "refusal",
    "activation_ok",
    "old_digest",
    "extreme_latency",
    "huge_requests",
    "new_error_class",
)


def sample_body(kind: str, runtime_id: str, digest: str | None, at: datetime) -> dict[str, Any]:
    body: dict[str, Any] = {
        "runtime_id": runtime_id,
        "digest": digest,
        "at": at.isoformat(),
        "kind": "sample",
        "requests": 100,
        "errors": 1,
        "latency_ms": {"p95": 120.0, "p99": 210.0},
        "correctness": {"mismatches": 0, "checked": 50},
    }
    if kind == "no_latency":
        del body["latency_ms"]
    elif kind == "no_correctness":
        del body["correctness"]
    elif kind == "errors":
        body["errors"] = 60
    elif kind == "idle":
        body.update(requests=0, errors=0)
    elif kind in ("refusal", "activation_ok"):
        ok = kind == "activation_ok"
        body = {
            "runtime_id": runtime_id,
            "digest": digest,
            "at": at.isoformat(),
            "kind": "activation",
            "ok": ok,
            "took_ms": 40.0,
            **({} if ok else {"error": "switch raised: disk full"}),
        }
    elif kind == "extreme_latency":
        body["latency_ms"] = {"p95": 1e308, "p99": 1e308}
    elif kind == "huge_requests":
        body.update(requests=10**400, errors=0)
    elif kind == "new_error_class":
        body["error_classes"] = {"E_NEW_CLASS": 3}
    return body


# ---- the model -------------------------------------------------------------------------------------


@dataclass
class Lifecycle:
    """One JetStream, one service, one operator, four runtimes: everything pure and in memory."""

    now: datetime = T0
    audit: Audit = field(default_factory=Audit)
    log: list[tuple[Position, Event | None]] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    health: list[tuple[datetime, str, str, HealthSample]] = field(
        default_factory=list
    )  # stored_at, channel, cohort, sample
    store: dict[str, bytes] = field(default_factory=dict)
    timers: dict[str, Timer] = field(default_factory=dict)
    fired: list[Timer] = field(default_factory=list)
    problems: list[Violation] = field(default_factory=list)  # model-only findings (the auditor cannot see health)
    releases: int = 0
    # the path's consumers run in one process, as in a plain `kxr serve`: a step's decision goes on through
    # the next steps' and all of it is stored in one atomic batch (services/consumers/fast_path.py)
    fast: bool = True
    path_batches: int = 0  # decisions the fast path extended (and that stored): the model reaches them
    # the verifier cannot finish its reads within its deadline: it fails closed, saying so (its
    # `fail_closed`), on the fast path in the batch of the steps before it
    verify_stalls: bool = False
    stalled_in_batches: int = 0  # fast-path batches that stored such a fail-closed event: reached
    # the guard is behind (a consumer of its own: its sweep has not come yet); its explicit checks still run
    guard_lags: bool = False
    # consumers that are down (crashed, or slow to get their delivery): `settle` runs every other one
    down: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for p in PACKS:
            self.store[pack_object_name(p.digest)] = p.body
            self.store[manifest_object_name(p.digest)] = p.manifest

    # -- views -------------------------------------------------------------------------------------
    @property
    def world(self) -> World:
        return self.audit.world

    @property
    def seq(self) -> int:
        return len(self.log)

    def trust_root(self) -> TrustRoot:
        return follow_chain(ANCHOR, self.world.trust_rotations).current

    def ctx(self, service: str) -> Ctx:
        return Ctx(now=self.now, service=service)

    def violations(self) -> list[Violation]:
        return list(self.audit.violations) + self.problems

    def anomalies(self) -> list[Violation]:
        return [
            Violation(r.last_seq, "illegal_transition", f"{r.release_id}: {a}")
            for r in self.world.releases.values()
            for a in r.anomalies
        ]

    # -- the log -----------------------------------------------------------------------------------
    def _append(self, event: Event, batch_id: str | None = None) -> None:
        subject = SUBJECTS.expected_subject(event.type, event.release_id, scope_tuple(event))
        position = Position(self.seq + 1, subject, batch_id)
        problem = contract_problem(event, SUBJECTS)
        if problem is not None:
            # what JetStream would store and every consumer fail to decode (CONTRACT JSON has no Infinity)
            self.problems.append(
                Violation(position.seq, "invalid_contract_json", f"{event.type} by {event.actor.id}: {problem}")
            )
            self.audit = audit_entry(self.audit, position, None, SUBJECTS)
            self.log.append((position, None))
        else:
            self.audit = audit_entry(self.audit, position, event, SUBJECTS)
            self.log.append((position, event))
            self._check_refusals(position, event)
            self._check_pointer_bytes(position, event)
        self.ids.add(event.event_id)

    def append_expected(self, event: Event, expected: int, last_seq: int) -> bool:
        """One append guarded by the subject's expected last sequence (a stale decision stores nothing)."""
        if expected != last_seq or event.event_id in self.ids:
            return False
        self._append(event)
        return True

    def emit(self, outputs: list[Output], decided_on: World) -> bool:
        """Perform a decision as app.emit does: Chain, Atomic and Promotion with CAS, timers."""
        stored = False
        for out in outputs:
            if isinstance(out, Chain):
                rid = out.events[0].release_id
                was = decided_on.release(rid)
                now = self.world.release(rid)
                if was is None or now is None or was.last_seq != now.last_seq:
                    return stored  # wrong last sequence: the decision is made again on the newer state
                for e in out.events:
                    if e.event_id not in self.ids:
                        self._append(e)
                        stored = True
            elif isinstance(out, Atomic):
                events = [*out.lead, *out.release_events]  # the fast path's steps first, then the switch's record
                rid = events[0].release_id
                was, now = decided_on.release(rid), self.world.release(rid)
                scopes_ok = all(
                    self.world.scope(*scope_tuple(w.event)).active_seq == w.expected_seq for w in out.scope_writes
                )
                if was is None or now is None or was.last_seq != now.last_seq or not scopes_ok:
                    return stored
                if all(e.event_id in self.ids for e in events):
                    continue  # the batch was stored already (a redelivery)
                batch_id = out.batch_id or derived_event_id(events[0].event_id, "batch", str(len(events)))
                for e in out.lead:
                    self._append(e, batch_id)
                for w in out.scope_writes:
                    self._append(w.event, batch_id)
                for e in out.release_events:
                    self._append(e, batch_id)
                stored = True
            elif isinstance(out, Promotion):
                # one atomic batch: `promoted` on the source's last sequence, the request on an unused id
                rid = out.promoted.release_id or ""
                was, now = decided_on.release(rid), self.world.release(rid)
                if was is None or now is None or was.last_seq != now.last_seq:
                    return stored
                if out.promoted.event_id in self.ids or self.world.known(out.request.release_id or ""):
                    return stored  # stored already (a redelivery), or the id is taken: nothing of it lands
                batch_id = derived_event_id(out.promoted.event_id, "batch", "2")
                self._append(out.promoted, batch_id)
                self._append(out.request, batch_id)
                stored = True
            elif isinstance(out, Timer):
                self.timers[out.key] = out
        return stored

    # -- consumers -----------------------------------------------------------------------------------
    def decide(self, consumer: str, release_id: str) -> list[Output]:
        """What `consumer` decides on the release now, given the IO facts its adapter would read."""
        release = self.world.release(release_id)
        if release is None:
            return []
        try:
            return CONSUMERS[consumer](self, self.world, release, self.ctx(consumer))
        except Exception as exc:  # a decision that raises never answers: the release wedges
            self.problems.append(
                Violation(self.seq, "decide_raised", f"{consumer} on {release_id}: {exc.__class__.__name__}: {exc}")
            )
            return []

    def step(self, consumer: str, release_id: str) -> bool:
        world = self.world
        outputs = self.decide(consumer, release_id)
        fast = self.fast_path(consumer, world, release_id, outputs)
        stored = self.emit(fast or outputs, world)
        self.path_batches += bool(fast) and stored
        if fast and stored and any(e.type == "release.verification_failed" for e in appended(fast)):
            self.stalled_in_batches += self.verify_stalls
        return stored

    def fast_path(self, consumer: str, world: World, release_id: str, outputs: list[Output]) -> list[Output]:
        """`outputs` with the next steps' decisions joined into one batch, as the reactor does when the
        path's consumers share a process (the real `extend` and `joined`); [] when nothing went on."""
        release = world.release(release_id)
        if not self.fast or consumer not in PATH or not outputs or release is None:
            return []
        steps = [_PathStep(self, name) for name in PATH[PATH.index(consumer) + 1 :]]
        coro = extend(world, release, outputs, steps)
        try:  # nothing in the model awaits anything: the coroutine runs to its end at once
            coro.send(None)
        except StopIteration as done:
            parts = done.value
        else:  # pragma: no cover - a model step never suspends
            coro.close()
            raise RuntimeError("the fast path suspended in the model")
        return joined([Part(_PathStep(self, consumer), outputs), *parts]) if parts else []

    def settle(self, rounds: int = 40) -> None:
        """Every consumer on every release in flight until nothing changes (what `kxr serve` converges to)."""
        for _ in range(rounds):
            moved = False
            for rid in sorted(self.world.in_flight):
                for consumer in CONSUMERS:
                    if consumer not in self.down:
                        moved |= self.step(consumer, rid)
            if not moved:
                return

    # -- producer ------------------------------------------------------------------------------------
    def request(
        self,
        pack: ModelPack,
        channel: str = "canary",
        strategy: str = "lkg",
        acknowledge_no_health: bool = True,
        plan: list[list[str]] | None = None,
    ) -> str:
        self.releases += 1
        rid = f"r{self.releases}"
        data = {
            "pack": pack.ref,
            "target": {"env": ENV, "channel": channel},
            "owner": "kb-team",
            "escalation": "pager:kb",
            "rollback": {"strategy": strategy},
            "acknowledge_no_health": acknowledge_no_health,
            **({"plan": plan} if plan is not None else {}),
        }
        event = make_event("release.requested", data, actor=PRODUCER, release_id=rid, occurred_at=self.now)
        self.append_expected(event, 0, 0)
        return rid

    # -- health --------------------------------------------------------------------------------------
    def send_samples(
        self,
        kind: str,
        cohorts: tuple[str, ...] = COHORTS,
        channel: str = "canary",
        offset_s: int = 0,
        live: bool = True,
    ) -> None:
        """Each runtime of `cohorts` reports once; stored `offset_s` from now (late or early clocks)."""
        stored_at = self.now + timedelta(seconds=offset_s)
        for cohort in cohorts:
            scope = self.world.scope(ENV, channel, cohort)
            digest = scope.active_pack.digest if scope.active_pack else None
            if kind == "old_digest":
                digest = scope.active.previous.digest if scope.active and scope.active.previous else None
            for runtime_id in self.members(channel, cohort):
                raw = json.dumps(sample_body(kind, runtime_id, digest, stored_at)).encode()
                # the monitor's own acceptance: what it refuses is never evidence
                sample = accept_report(raw, HealthParts(ENV, channel, cohort, runtime_id))
                if not isinstance(sample, HealthSample):
                    continue
                self.health.append((stored_at, channel, cohort, sample))
                if live:
                    self._breach(channel, cohort, sample)

    def members(self, channel: str, cohort: str) -> list[str]:
        """The runtimes in `cohort` of `channel` under its configuration as it stands (as a runtime resolves)."""
        cfg = self.world.channel_config(ENV, channel)
        return [r for r, tenant in RUNTIME_TENANTS.items() if cfg.resolve(ENV, channel, tenant) == cohort]

    def _breach(self, channel: str, cohort: str, sample: HealthSample) -> None:
        """The monitor's live watch (Monitor.check_breach), on the world as it stands."""
        for rid in sorted(self.world.in_flight):
            release = self.world.release(rid)
            watch = Watch.of_release(release) if release is not None and release.phase == "monitoring" else None
            m = release.monitoring if release else None
            if watch is None or m is None or release is None:
                continue
            try:
                if counts_for(watch, sample, subject=HealthParts(ENV, channel, cohort, sample.runtime_id)):
                    reason = hard_breach(sample, m.monitoring)
                else:  # a refusal in a cohort an earlier stage exposed
                    found = (
                        live_refusal(release, cohort, sample) if channel == release.prepared.target.channel else None
                    )
                    reason = found.reason if found else None
            except Exception as exc:
                self.problems.append(Violation(self.seq, "decide_raised", f"monitor breach check on {rid}: {exc!r}"))
                continue
            if reason:
                figures = {
                    "breach_runtime": sample.runtime_id,
                    "breach_cohort": cohort,
                    "sample": sample.model_dump(mode="json"),
                }
                world = self.world
                self.emit(
                    self._guard(
                        "monitor",
                        rid,
                        lambda release=release, reason=reason, figures=figures: monitor.decide_breach(
                            release, reason, figures, self.ctx("monitor")
                        ),
                    ),
                    world,
                )

    def _guard(self, consumer: str, rid: str, decision: Callable[[], list[Output]]) -> list[Output]:
        try:
            return decision()
        except Exception as exc:
            self.problems.append(
                Violation(self.seq, "decide_raised", f"{consumer} on {rid}: {exc.__class__.__name__}: {exc}")
            )
            return []

    def reporters(self, channel: str, cohorts: list[str]) -> dict[str, int]:
        since = self.now - timedelta(seconds=preparer.HEALTH_LOOKBACK_S)
        return {
            c: len({s.runtime_id for at, ch, co, s in self.health if ch == channel and co == c and at >= since})
            for c in cohorts
        }

    def window_samples(self, release: ReleaseState):
        m = release.monitoring
        assert m is not None and release.prepared is not None
        # as the monitor reads (consumers/monitor.py `window_data`): back to the stage's activation, since
        # an extended window starts later and a refusal since the activation still fails it
        since = release.activated_at.get(m.stage)
        lo, hi = read_span(m, since)
        channel = release.prepared.target.channel
        stored = [(at, s) for at, ch, co, s in self.health if ch == channel and co in m.cohorts and lo <= at <= hi]
        data = window_data(stored, m, activated_at=since)
        new, baseline = data.samples, data.baseline
        for cohorts, since in exposed_before(release):  # the monitor's `earlier_refusals`
            earlier = [(at, s) for at, ch, co, s in self.health if ch == channel and co in cohorts and at <= hi]
            new.extend(refusals_since(earlier, m.digest, since))
        return new, baseline

    # -- timers --------------------------------------------------------------------------------------
    def fire(self, key: str) -> None:
        """A scheduled message arrives (at its time: the clock moves there if it has not yet)."""
        timer = self.timers.pop(key, None)
        if timer is None:
            return
        self.now = max(self.now, timer.at)
        self.fired.append(timer)
        self._deliver(timer)

    def redeliver(self) -> None:
        if self.fired:
            self._deliver(self.fired[-1])

    def _deliver(self, timer: Timer) -> None:
        if timer.key.startswith("pin."):
            _, env, channel, cohort, seq = timer.key.split(".")
            self.expire_pin(env, channel, cohort, int(seq))
            return
        world = self.world
        self.emit(self.window_verdict(timer), world)

    def window_verdict(self, timer: Timer) -> list[Output]:
        """What the monitor decides when a window's timer arrives, on the world as it stands ([] if the window
        is no longer open)."""
        rid, stage = monitor.parse_timer_key(timer.key.split("."))  # type: ignore[misc]
        release = self.world.release(rid)
        if (
            release is None
            or release.phase != "monitoring"
            or release.monitoring is None
            or release.monitoring.stage != stage
        ):
            return []
        world = self.world

        def verdict() -> list[Output]:
            new, baseline = self.window_samples(release)
            return monitor.decide_verdict(release, stage, new, baseline, self.ctx("monitor"), world)

        return self._guard("monitor", rid, verdict)

    def fire_slowly(self, key: str) -> list[Output]:
        """A window's timer arrives and the monitor decides, but its append is delayed (a slow instance): the
        verdict, to be stored later. The timer stays delivered-unacked (a redelivery decides again)."""
        timer = self.timers.pop(key)
        self.now = max(self.now, timer.at)
        self.fired.append(timer)
        return self.window_verdict(timer)

    def sweep(self) -> None:
        """The monitor's, the pinner's and the guard's sweeps: anything overdue is handled as if its timer
        fired; every active pack is judged by the gates that can change after activation."""
        for key, timer in sorted(self.timers.items()):
            if timer.at <= self.now:
                self.fire(key)
        if not self.guard_lags:
            self.guard()

    # -- the guard: services/consumers/guard.py's pure parts over the model's store and trust root ----
    def active_violations(self) -> dict[tuple[str, str, str], guard.Violation]:
        """What each scope's active pack fails now (`guard.check_active`: root, time, channel in force)."""
        root, found = self.trust_root(), {}
        for key, state in sorted(self.world.scopes.items()):
            if state.active is None:
                continue
            channel = self.world.channel_state(key[0], key[1])
            manifest = self.store.get(state.active.manifest)
            violation = guard.check_active(
                manifest, key, state.active.pack, channel.config if channel else None, root, self.now
            )
            if violation is not None:
                found[key] = violation
        return found

    def guard(self) -> None:
        """A trigger or sweep of the guard: the rollout in flight a violation hits rolls back, a settled scope is
        flagged (appended with the scope's expected last sequence, as the guard does). Then the guard's promise,
        checked: no violation it found is left silent."""
        world, violations, ctx = self.world, self.active_violations(), self.ctx("guard")
        plan = guard.decide(world, violations, ctx)
        for rid in plan.rollbacks:
            release = self.world.release(rid)
            if release is not None:
                self.emit(guard.decide_release(self.world, release, violations, ctx), self.world)
        for key, event in plan.flags:
            self.append_expected(event, world.scope(*key).last_seq, self.world.scope(*key).last_seq)
        for key, violation in sorted(violations.items()):
            state = self.world.scope(*key)
            owner = self.world.release(state.active.release_id or "") if state.active else None
            handled = (
                (state.active_pack is None or state.active_pack.digest != violation.digest)  # the pointer moved
                or (state.flag is not None and state.flag.code == violation.code)
                or (owner is not None and (owner.rollback is not None or owner.phase in guard.MOVING_PHASES))
            )
            if not handled:
                self.problems.append(
                    Violation(
                        self.seq, "violation_unattended", f"{'/'.join(key)}: {violation.code}: {violation.message}"
                    )
                )

    # -- operator --------------------------------------------------------------------------------------
    def operate(self, verb: str, release_id: str, **kw: Any) -> bool:
        """An operator verb through services/actions/operator.py, appended at the sequence it was decided on."""
        release = self.world.release(release_id)
        fn = getattr(operator, verb, None)
        if release is None or fn is None:
            return False
        try:
            if verb == "rollback":
                action = fn(
                    self.world, release_id, kw.get("trigger", "operator"), "operator judgement", OPERATOR, self.now
                )
            elif verb == "extend":
                action = fn(self.world, release_id, kw.get("window_s", 120), "gather more samples", OPERATOR, self.now)
            elif verb == "annotate":
                action = fn(self.world, release_id, "note", None, OPERATOR, self.now)
            elif verb == "close":  # `kxr release close ID --outcome failed` where a branch provides it
                action = fn(self.world, release_id, kw.get("outcome", "failed"), "closing by hand", OPERATOR, self.now)
            else:
                action = fn(self.world, release_id, f"operator {verb}", OPERATOR, self.now)
        except operator.OperatorError:
            return False
        return self.append_expected(action.event, action.expected_seq, release.last_seq)

    # -- pins --------------------------------------------------------------------------------------------
    def pin(self, channel: str, cohort: str, version: str, hours: int = 24) -> bool:
        scope = Scope(env=ENV, channel=channel, cohort=cohort)
        try:
            event, expected = pins.pin(
                self.world, scope, version, self.now + timedelta(hours=hours), "hold for audit", OPERATOR, self.now
            )
        except operator.OperatorError:
            return False
        if not self.append_expected(event, expected, self.world.scope(ENV, channel, cohort).last_seq):
            return False
        self._react_to_pin(scope)
        return True

    def _react_to_pin(self, scope: Scope) -> None:
        """Pinner.on_pinned: schedule expiry, re-verify the pinned pack (purpose pin), switch or refuse."""
        state = self.world.scope(scope.env, scope.channel, scope.cohort)
        assert state.pin is not None
        seq = state.pin_seq
        self.timers[f"pin.{scope.env}.{scope.channel}.{scope.cohort}.{seq}"] = Timer(
            key=f"pin.{scope.env}.{scope.channel}.{scope.cohort}.{seq}", at=state.pin.until, payload={"seq": seq}
        )
        actor = Actor(kind="service", id=pinner.NAME)
        pin_event_id = state.pin_event_id or f"{scope.env}/{scope.channel}/{scope.cohort}@{seq}"
        switch = pinner.switch_to_pin(state, scope, pin_event_id, actor, self.now)
        if switch is None:
            return
        pack = state.pin.pack
        channel_state = self.world.channel_state(scope.env, scope.channel)
        vctx = VerifyContext(
            request_name=pack.name,
            request_version=pack.version,
            request_digest=pack.digest,
            env=scope.env,
            channel=scope.channel,
            cohorts=(scope.cohort,),
            channel_config=channel_state.config if channel_state else None,
            active={scope.cohort: state.active_pack},
            trust_root=self.trust_root(),
            now=self.now,
            purpose="pin",
        )
        v = verify_bytes(
            self.store.get(manifest_object_name(pack.digest)), self.store.get(pack_object_name(pack.digest)), vctx
        )
        if v.failure is not None:
            refused = pinner.expire(
                state, scope, actor, self.now, reason="refused", rationale=f"pinned pack refused: {v.failure.code}"
            )
            if refused is not None and refused.event_id not in self.ids:
                self._append(refused)
            return
        switch = pinner.switch_to_pin(
            state, scope, pin_event_id, actor, self.now, list(v.signers)
        )  # as the adapter: with its evidence
        assert switch is not None
        if switch.event_id not in self.ids:
            self._append(switch, derived_event_id(pin_event_id, pinner.NAME, "batch"))

    def unpin(self, channel: str, cohort: str) -> bool:
        scope = Scope(env=ENV, channel=channel, cohort=cohort)
        try:
            event, expected = pins.unpin(self.world, scope, "audit done", OPERATOR, self.now)
        except operator.OperatorError:
            return False
        return self.append_expected(event, expected, self.world.scope(ENV, channel, cohort).last_seq)

    def expire_pin(self, env: str, channel: str, cohort: str, seq: int) -> None:
        state = self.world.scope(env, channel, cohort)
        if state.pin is None or state.pin_seq != seq or state.pin.until > self.now:
            return
        event = pinner.expire(
            state, Scope(env=env, channel=channel, cohort=cohort), Actor(kind="service", id=pinner.NAME), self.now
        )
        if event is not None and event.event_id not in self.ids:
            self._append(event)

    # -- trust and channels ------------------------------------------------------------------------------
    def next_rotation_drops_key_1(self) -> bool:
        """Whether key 1 is trusted now and the next rotation drops it (packs signed by it alone lose trust)."""
        done = len(self.world.trust_rotations)
        return done + 1 < len(ROOT_KEYS) and KEYS[0] in ROOT_KEYS[done] and KEYS[0] not in ROOT_KEYS[done + 1]

    def rotate_trust(self) -> bool:
        done = len(self.world.trust_rotations)
        if done >= len(ROTATIONS):
            return False
        doc = ROTATIONS[done]
        self._append(
            make_event(
                "trust.rotated",
                TrustRotated(root=doc, version=doc["signed"]["version"], rationale="key rotation"),
                actor=OPERATOR,
                occurred_at=self.now,
            )
        )
        return True

    def configure(self, channel: str, **doc: Any) -> None:
        self._append(
            make_event(
                "channel.configured",
                channel_doc(**doc),
                actor=OPERATOR,
                scope=Scope(env=ENV, channel=channel, cohort="all"),
                occurred_at=self.now,
            )
        )

    # -- whole stories -------------------------------------------------------------------------------
    def healthy_window(
        self, channel: str = "canary", kinds: tuple[str, ...] = ("activation_ok", "good", "good")
    ) -> None:
        """Every runtime of the channel reports (by default: switched fine, then serves well); the window ends."""
        for kind in kinds:
            self.send_samples(kind, COHORTS, channel)
        self.now += timedelta(seconds=self.world.channel_config(ENV, channel).monitoring.window_s + 1)
        self.sweep()
        self.settle()

    def bootstrap(self, channel: str, pack: ModelPack) -> str:
        """A first release on a fresh channel (strategy none) that passes every window: its pack becomes LKG."""
        rid = self.request(pack, channel, "none")
        self.settle()
        for _ in range(4):
            release = self.world.release(rid)
            if release is None or release.closed:
                break
            self.healthy_window(channel)
        return rid

    def admissible(self, channel: str) -> list[ModelPack]:
        """The packs a rollout on `channel` passes now, oldest first: in the store, admitted by the gates
        that can change (trust, expiry, the channel's configuration: `guard.check_active`), and newer than
        every pack its cohorts run."""
        world, root = self.world, self.trust_root()
        state = world.channel_state(ENV, channel)
        running = [s.active_pack for c in COHORTS if (s := world.scope(ENV, channel, c)).active_pack is not None]
        out = []
        for pack in sorted(PACKS, key=lambda p: parse_version(p.version)):
            if pack_object_name(pack.digest) not in self.store:
                continue
            if any(parse_version(r.version) >= parse_version(pack.version) for r in running):
                continue
            manifest = self.store.get(manifest_object_name(pack.digest))
            key = (ENV, channel, COHORTS[0])
            ref = PackRef.model_validate(pack.ref)
            if guard.check_active(manifest, key, ref, state.config if state else None, root, self.now) is None:
                out.append(pack)
        return out

    def lose_pack(self, digest: str) -> None:
        self.store.pop(pack_object_name(digest), None)

    def swap_pack(self, digest: str) -> None:
        """The pack's name re-pointed at other bytes of its size and its recorded chunks gone (an admin's purge,
        then a producer's put): the metadata's size still matches the manifest, its SHA-256 is the other bytes'."""
        name = pack_object_name(digest)
        if name in self.store:
            self.store[name] = bytes(b ^ 0x5A for b in self.store[name])

    # -- model-only invariant: a rollback or a pin points at a pack only while its bytes are stored ---------------
    def _check_pointer_bytes(self, position: Position, event: Event) -> None:
        """A rollback lands without hashing the pack again, a pin after hashing it: either way the pointer must
        not move to a digest whose stored bytes are not its own (runtimes would refuse them only after the
        pointer moved, and the scope's record would say a pack runs that none can load)."""
        if event.type != "scope.activated" or event.data.kind not in ("rollback", "pin"):  # type: ignore[union-attr]
            return
        digest = event.data.pack.digest  # type: ignore[union-attr]
        body = self.store.get(pack_object_name(digest))
        if body is None or "sha256:" + hashlib.sha256(body).hexdigest() != digest:
            self.problems.append(
                Violation(
                    position.seq,
                    "pointer_to_other_bytes",
                    f"{event.data.kind} pointer to {digest[:19]} while its stored bytes are "  # type: ignore[union-attr]
                    + ("gone" if body is None else "other bytes"),
                )
            )

    # -- model-only invariant: a refusal after the pointer moved is never a pass ---------------------
    def _check_refusals(self, position: Position, event: Event) -> None:
        if event.type != "release.monitoring_passed" or is_override(event.data):  # type: ignore[arg-type]
            return
        release = self.world.release(event.release_id or "")
        if release is None or release.prepared is None or release.verified is None:
            return
        stage = event.data.stage  # type: ignore[attr-defined]
        # every cohort exposed so far, this stage's and the earlier ones', each from its own stage's activation:
        # the pack still runs in the earlier ones (written apart from the monitor's `exposed_before` on purpose)
        exposed = {
            c: release.activated_at[k]
            for k, plan_stage in enumerate(release.stages[: stage + 1])
            if k in release.activated_at
            for c in plan_stage
            if c in release.activated
        }
        channel = release.prepared.target.channel
        refusals = [
            s.runtime_id
            for at, ch, co, s in self.health
            if ch == channel
            and co in exposed
            and s.kind == "activation"
            and s.ok is False
            and s.digest == release.verified.pack.digest
            and exposed[co] <= at <= event.occurred_at
        ]
        if refusals:
            self.problems.append(
                Violation(
                    position.seq,
                    "pass_despite_refusal",
                    f"{release.release_id} stage {stage + 1} passed although {sorted(set(refusals))} refused its pack",
                )
            )


# ---- what each consumer's adapter reads, then its pure decision -------------------------------------


def _prepare(m: Lifecycle, world: World, release: ReleaseState, ctx: Ctx) -> list[Output]:
    if release.phase != "requested" or release.requested is None:
        return []
    req = release.requested
    cohorts = [
        c
        for stage in (req.plan or world.channel_config(req.target.env, req.target.channel).effective_plan)
        for c in stage
    ]
    return preparer.decide(world, release, ctx, m.reporters(req.target.channel, cohorts))


def _distribute(m: Lifecycle, world: World, release: ReleaseState, ctx: Ctx) -> list[Output]:
    if release.phase != "prepared" or release.prepared is None:
        return []
    digest = release.prepared.pack.digest
    names = [pack_object_name(digest), manifest_object_name(digest)]
    return distributor.decide(release, ctx, {n: (len(m.store[n]) if n in m.store else None) for n in names})


def stalled_verification() -> Failed:
    """What the verifier observes when its gates do not finish within its deadline."""
    return Failed(TIMEOUT_CODE, "verification did not finish within 30s", DEADLINE_GATE)


def _verify(m: Lifecycle, world: World, release: ReleaseState, ctx: Ctx) -> list[Output]:
    if release.phase != "distributed" or release.prepared is None:
        return []
    if m.verify_stalls:  # the real verifier's fail-closed outputs on that observation
        return verifier_adapter.Verifier(_ModelPort(m)).fail_closed(world, release, stalled_verification(), ctx)
    vctx = context_for(world, release, ctx, m.trust_root())
    digest = release.prepared.pack.digest
    v = verify_bytes(m.store.get(manifest_object_name(digest)), m.store.get(pack_object_name(digest)), vctx)
    return verifier_adapter.decide(release, ctx, v, None)


def target_check(
    m: Lifecycle, target: PackRef, release: ReleaseState, ctx: Ctx, exposing: Exposing | None = None
) -> TargetCheck:
    """services/verification/readiness.py's pure judgement over the model's store and trust root."""
    assert release.prepared is not None
    manifest = m.store.get(manifest_object_name(target.digest))
    body = m.store.get(pack_object_name(target.digest))
    return judge_target(
        manifest,
        None if body is None else {"size": len(body), "digest": object_digest(body)},
        target,
        release.prepared.target.env,
        release.prepared.target.channel,
        tuple(release.activated),
        m.trust_root(),
        ctx.now,
        exposing,
    )


def _activate(m: Lifecycle, world: World, release: ReleaseState, ctx: Ctx) -> list[Output]:
    """The activator's adapter over the model: targets checked, the pack re-checked where it must be."""
    if release.phase == "rolling_back" and release.rollback is not None:
        targets = {t.digest: t for t in release.rollback.targets.values() if t is not None}
        lands = activator.rollback_landing(world, release)
        checks = {d: target_check(m, t, release, ctx, lands) for d, t in targets.items()}
        return activator.decide_rollback(
            world, release, ctx, {d: c.problem for d, c in checks.items()}, {d: c.signers for d, c in checks.items()}
        )
    if activator.needs_recheck(world, release, ctx.now) and release.verified is not None:
        exposing = activator.exposing(world, release, ctx.now)
        return activator.decide_rollout(
            world, release, ctx, target_check(m, release.verified.pack, release, ctx, exposing)
        )
    return activator.decide_rollout(world, release, ctx)


def _monitor(m: Lifecycle, world: World, release: ReleaseState, ctx: Ctx) -> list[Output]:
    return monitor.decide_start(release, ctx)


def _promote(m: Lifecycle, world: World, release: ReleaseState, ctx: Ctx) -> list[Output]:
    """The promoter's adapter over the model: before exposing more, every rollback target it relies on is
    checked (as `Promoter.observe` does: a problem holds the release, `escalated` `rollback_not_ready`)."""
    if release.phase != "passed" or release.paused or release.aborted or release.prepared is None:
        return promoter.decide(world, release, ctx)
    targets = {t.digest: t for t in promoter.readiness_targets(world, release, ctx).values() if t is not None}
    ready = {d: target_check(m, t, release, ctx).problem for d, t in targets.items()}
    return promoter.decide(world, release, ctx, ready)


PATH = ("preparer", "distributor", "verifier", "activator")
ACTS_IN = {
    "preparer": preparer.Preparer.acts_in,
    "distributor": distributor.Distributor.acts_in,
    "verifier": verifier_adapter.Verifier.acts_in,
    "activator": activator.Activator.acts_in,
}


class _PathStep:
    """A path consumer as the fast path sees it, deciding as the model's adapters below do."""

    def __init__(self, m: Lifecycle, name: str) -> None:
        self.m, self.name = m, name
        self.port: Any = _ModelPort(m)

    def may_act(self, release: ReleaseState | None) -> bool:
        return release is not None and release.phase in ACTS_IN[self.name]

    def joins(self, world: World, release: ReleaseState) -> bool:  # the real rule (the verifier's pack size)
        return verifier_adapter.Verifier(self.port).joins(world, release) if self.name == "verifier" else True

    async def observe(self, world: World, release: ReleaseState, ctx: Ctx) -> Failed | None:
        if self.name == "verifier" and self.m.verify_stalls:
            return stalled_verification()
        return None  # the model's adapters read their facts when deciding

    def decide(self, world: World, release: ReleaseState, facts: Any, ctx: Ctx) -> list[Output]:
        return CONSUMERS[self.name](self.m, world, release, ctx)

    def fail_closed(self, world: World, release: ReleaseState, failed: Failed, ctx: Ctx) -> list[Output]:
        return CONSUMERS[self.name](self.m, world, release, ctx)  # the adapter fails closed as the real one

    def emitted(self, outputs: list[Output]) -> None:
        pass


@dataclass(frozen=True)
class _ModelPort:
    m: Lifecycle

    @property
    def subjects(self) -> Subjects:
        return SUBJECTS

    def ctx(self, service: str) -> Ctx:
        return self.m.ctx(service)


CONSUMERS: dict[str, Callable[[Lifecycle, World, ReleaseState, Ctx], list[Output]]] = {
    "preparer": _prepare,
    "distributor": _distribute,
    "verifier": _verify,
    "activator": _activate,
    "monitor": _monitor,
    "promoter": _promote,
}
