"""Pins: hold a scope on a pack for a bounded time, with a rationale (part of the activator role).

- The operator's `pin`/`unpin` events are built in services/actions/pins.py (kxr, the dashboard).
- On `scope.pinned`, a pack other than the active one is re-verified (every gate, purpose
  "pin": downgrades allowed, everything else enforced) and switched atomically
  (`scope.activated` kind `pin`); a pack that fails is refused with `scope.unpinned`
  (reason `refused`) naming the gate, and the pointer does not move.
- Expiry is a JetStream scheduled message at `until` that records `scope.unpinned`
  (reason `expired`); a sweep catches any timer that was lost with a process.
- Only a pin in force moves a pointer: one whose `until` has passed by the time the pinner
  decides (it was down or lagging, or the pin was short) is only recorded expired.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime

from events.codec import decode_event, make_event
from events.ids import derived_event_id
from events.manifest import manifest_object_name
from events.model import Actor, Event, Scope, ScopeUnpinned, VersionDigest
from projections.pins import pin_too_long
from projections.pointer_chain import chained_pointer
from projections.scopes import ScopeState
from projections.world import World
from services.consumers.outputs import Timer
from services.consumers.port import Port
from services.consumers.reactor import until_stored
from services.jetstream.log import Entry
from services.jetstream.pack_keeper import checked_with_restore
from services.jetstream.packstore import PackStore
from services.jetstream.worker import Poison, Worker
from services.verification.context import configured_channel, verify_context
from services.verification.pipeline import run_gates

NAME = "pinner"
log = logging.getLogger(__name__)


def switch_to_pin(
    state: ScopeState, scope: Scope, pin_event_id: str, service: Actor, now: datetime, signers: list[str] | None = None
) -> Event | None:
    """The pointer switch a pin needs (None when the scope already runs the pinned pack);
    `signers`: who signed the pinned pack under the root in force (the verification's)."""
    assert state.pin is not None
    if state.active_pack is not None and state.active_pack.digest == state.pin.pack.digest:
        return None
    previous = (
        VersionDigest(version=state.active_pack.version, digest=state.active_pack.digest) if state.active_pack else None
    )
    data = chained_pointer(
        state.chain_mark,
        pack=state.pin.pack,
        manifest=manifest_object_name(state.pin.pack.digest),
        release_id=None,
        kind="pin",
        previous=previous,
        signers=signers,
    )
    return make_event(
        "scope.activated",
        data,
        actor=service,
        scope=scope,
        event_id=derived_event_id(pin_event_id, NAME, "switch"),
        occurred_at=now,
    )


def expire(
    state: ScopeState, scope: Scope, service: Actor, now: datetime, reason: str = "expired", rationale: str = ""
) -> Event | None:
    pin_ = state.pin
    if pin_ is None:
        return None
    data = ScopeUnpinned(
        pack=pin_.pack,
        until=pin_.until,
        rationale=rationale or f"pin until {pin_.until.isoformat()} expired",
        by=service.id,
        reason=reason,
    )
    return make_event(
        "scope.unpinned",
        data,
        actor=service,
        scope=scope,
        event_id=derived_event_id(
            state.pin_event_id or f"{scope.env}/{scope.channel}/{scope.cohort}@{state.pin_seq}", NAME, reason
        ),
        occurred_at=now,
    )


@dataclass(frozen=True)
class PinStep:
    """What the pinner does with a pin: record `unpinned` (the pin ends there and moves nothing),
    or hold it (`hold`: schedule its expiry, then switch to it once its pack is re-verified);
    neither: nothing (a later pin or unpin superseded it)."""

    unpinned: Event | None = None
    hold: bool = False


def decide_pin(world: World, scope: Scope, seq: int, written: datetime, service: Actor, now: datetime) -> PinStep:
    """The pinner's decision on the pin stored at `seq`, at `now`. Pure.

    Only a pin in force moves a pointer. One whose `until` has passed by the time the pinner
    decides (it was down or lagging, the pin was short, or its re-verification outlasted it)
    is recorded expired and moves nothing: the activator and every other reader already take
    it as absent, so a late switch would put the scope on a pack nothing holds it to, or
    clobber a release rolled out there since. A pin longer than the channel's `max_pin_days`
    (measured from when it was written: the earlier of its own time and ours, so a pin dated
    ahead gains nothing) is refused, as is one whose rationale is blank (another client's: `kxr pin`
    and the dashboard refuse it before writing; the auditor flags it, `pin_without_rationale_or_bound`).
    """
    state = world.scope(scope.env, scope.channel, scope.cohort)
    if state.pin is None or state.pin_seq != seq:
        return PinStep()  # superseded by a later pin or unpin: nothing to do for this one
    if state.pinned_at(now) is None:
        return PinStep(unpinned=expire(state, scope, service, now))
    if not state.pin.rationale.strip():  # pins are recorded with a rationale (the seed); kxr pin asks for one
        why = "pin refused: it gives no rationale"
        return PinStep(unpinned=expire(state, scope, service, now, reason="refused", rationale=why))
    too_long = pin_too_long(world, scope, state.pin.until, min(written, now))
    if too_long:
        return PinStep(
            unpinned=expire(state, scope, service, now, reason="refused", rationale=f"pin refused: {too_long}")
        )
    return PinStep(hold=True)


class Pinner:
    """Adapter: reacts to pins, switches pinned scopes, expires pins.

    Not a `ReleaseReactor`: a pin acts on a scope, not on a release, so there is no release
    phase to guard and no release event to fail closed with (a pin that cannot be checked is
    refused with `scope.unpinned`, reason `refused`). What it shares with the reactor is the
    conflict retry (`until_stored`): a lost race on the scope is decided again on its new state.
    """

    def __init__(self, port: Port) -> None:
        self.port = port
        self.actor = Actor(kind="service", id=NAME)

    def runners(self) -> list:
        s = self.port.subjects
        pins = Worker(
            self.port.js,
            s.releases_stream,
            "kxr-pinner",
            [f"{s.prefix}.scope.*.*.*.pinned"],
            self.on_pinned,
            self.port.deadletters,
        )
        timers = Worker(
            self.port.js,
            s.timers_stream,
            "kxr-pinner-timers",
            [s.timer_fire("pin.*.*.*.*")],
            self.on_timer,
            self.port.deadletters,
        )
        return [pins.run(), timers.run(), self.sweep()]

    def scope_entry(self, event: Event, scope: Scope, state: ScopeState) -> Entry:
        return Entry(event, state.last_seq, self.port.subjects.scope_filter(scope.env, scope.channel, scope.cohort))

    def _scope(self, env: str, channel: str, cohort: str) -> tuple[Scope, ScopeState]:
        return Scope(env=env, channel=channel, cohort=cohort), self.port.follower.world.scope(env, channel, cohort)

    async def on_pinned(self, msg) -> None:
        seq = msg.metadata.sequence.stream
        await self.port.follower.wait_for(seq)
        parts = self.port.subjects.scope_of(msg.subject)
        if parts is None or seq in self.port.follower.undecodable:
            raise Poison(f"not a valid pin: {msg.subject}")
        # max_pin_days, enforced here and not only by the CLI: measured from when the pin was
        # written (the earlier of its own time and ours, so a pin dated ahead gains nothing)
        written = decode_event(msg.data, msg.subject, self.port.subjects).occurred_at
        key = (parts.env, parts.channel, parts.cohort)
        await until_stored(
            lambda: self._settle_pin(key, seq, written), f"pinner: pin of {'/'.join(key)}", self.port.follower.catch_up
        )

    async def _settle_pin(self, key: tuple[str, str, str], seq: int, written: datetime) -> None:
        """On the scope's current state (`decide_pin`): record the pin's end, or schedule its expiry and switch."""
        world = self.port.follower.world  # one state for the whole decision (and the CAS values)
        scope, state = Scope(env=key[0], channel=key[1], cohort=key[2]), world.scope(*key)
        step = decide_pin(world, scope, seq, written, self.actor, self.port.clock())
        if step.unpinned is not None:
            await self.port.log.append(self.scope_entry(step.unpinned, scope, state))
            return
        if not step.hold:
            return
        assert state.pin is not None  # held: the pin is in force (decide_pin)
        until = state.pin.until
        await self.port.schedule(
            Timer(
                key=f"pin.{scope.env}.{scope.channel}.{scope.cohort}.{seq}",
                at=until,
                payload={"seq": seq},
                msg_id=f"pin-expiry:{scope.env}/{scope.channel}/{scope.cohort}@{seq}",
            )
        )
        pin_event_id = state.pin_event_id or f"{scope.env}/{scope.channel}/{scope.cohort}@{seq}"
        switch = switch_to_pin(state, scope, pin_event_id, self.actor, self.port.clock())
        if switch is None:
            return
        problem, signers = await self.verify_pin(scope, state)
        if problem:
            refused = expire(
                state,
                scope,
                self.actor,
                self.port.clock(),
                reason="refused",
                rationale=f"pinned pack refused: {problem}",
            )
            if refused is not None:  # the pin is in force (checked above): expire() answers an event
                await self.port.log.append(self.scope_entry(refused, scope, state))
            return
        # the verification took time: decided again at the switch, on the same state, the pin may have run out
        now = self.port.clock()
        late = decide_pin(world, scope, seq, written, self.actor, now)
        if late.unpinned is not None:
            await self.port.log.append(self.scope_entry(late.unpinned, scope, state))
            return
        switch = switch_to_pin(state, scope, pin_event_id, self.actor, now, signers)  # with its evidence
        assert switch is not None  # the scope ran another pack a moment ago (checked above), on the same state
        await self.port.log.commit_batch(
            [Entry(switch, state.active_seq)], derived_event_id(pin_event_id, NAME, "batch")
        )

    async def verify_pin(self, scope: Scope, state: ScopeState) -> tuple[str | None, list[str]]:
        """Why the pinned pack may not be switched to (None: it may), and who signed it."""
        assert state.pin is not None
        pack = state.pin.pack
        world = self.port.follower.world
        trust_root = self.port.current_trust_root()
        if trust_root is None:
            return "no trust root configured", []
        config, unreadable = configured_channel(world, scope.env, scope.channel)
        ctx = verify_context(
            pack,
            trust_root,
            self.port.clock(),
            "pin",
            env=scope.env,
            channel=scope.channel,
            cohorts=(scope.cohort,),
            channel_config=config,
            channel_problem=unreadable,
            active={scope.cohort: state.active_pack},
        )
        try:
            # a pack distributed before and deleted or re-pointed since is restored from the log's record
            v = await asyncio.wait_for(
                checked_with_restore(
                    self.port,
                    pack.digest,
                    lambda: run_gates(PackStore(self.port.js, self.port.subjects), pack.digest, ctx),
                    lambda v: v.failure is not None,
                ),
                self.port.settings.verify_timeout_s,
            )
        except TimeoutError:
            return "deadline/timeout", []
        except Exception as exc:  # fail closed
            return f"internal/internal_error: {exc!r}", []
        return (f"{v.failure.gate}/{v.failure.code}: {v.failure.message}" if v.failure else None), list(v.signers)

    async def on_timer(self, msg) -> None:
        parts = msg.subject.split(".")  # <prefix>.timer.fire.pin.<env>.<channel>.<cohort>.<seq>
        if len(parts) != 8 or not parts[7].isdigit():
            raise Poison(f"not a pin timer: {msg.subject}")
        await self.port.follower.catch_up()
        await self._expire_if_due(parts[4], parts[5], parts[6], int(parts[7]))

    async def _expire_if_due(self, env: str, channel: str, cohort: str, seq: int) -> None:
        async def once() -> None:
            scope, state = self._scope(env, channel, cohort)
            now = self.port.clock()
            if state.pin is None or state.pin_seq != seq or state.pin.until > now:
                return
            event = expire(state, scope, self.actor, now)
            if event is not None:
                await self.port.log.append(self.scope_entry(event, scope, state))

        await until_stored(once, f"pinner: expiry of {env}/{channel}/{cohort}", self.port.follower.catch_up)

    async def sweep(self, every: float = 2.0) -> None:
        """Expire pins whose timer was lost (e.g. fetched by a process that died)."""
        while True:
            await asyncio.sleep(every)
            now = self.port.clock()
            for key, state in list(self.port.follower.world.scopes.items()):
                if state.pin is not None and state.pin.until <= now:
                    try:
                        await self._expire_if_due(*key, state.pin_seq)
                    except Exception as exc:
                        log.warning("pinner: expiry of %s not recorded yet: %s", "/".join(key), exc)
