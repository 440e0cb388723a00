"""The runtime side of the contract: follow a scope's pointer, verify, switch, report.

A runtime resolves its cohort exactly as the service does (CONTRACT §7), and again whenever the
channel is reconfigured (`RuntimeClient.follow`), reads the
last `scope.activated` of its scope and follows new ones, re-verifies the pack
(manifest signature under its own trust root, identity, digest and size over the
exact bytes fetched) before switching, and reports an `activation` health message
either way, plus periodic `sample`s from start-up on.

A refusal is final (the pointer or its pack is bad: it is never retried) or transient (the
pack could not be read just now: the same pointer is retried with back-off until it
switches, a newer pointer supersedes it, or the runtime stops) — see `refusal_kind`.

Fast-track rollback: a runtime keeps a record of the last few packs it verified and ran
(`VerifiedPacks`, TUF-style: the pack's digest and its manifest's bytes are the identity).
A pointer back to one of them (a rollback to the LKG, a pin to an earlier pack) still has
its pointer checked (service signature, generation and `prev`) and the manifest's trust,
expiry and identity checked in memory, but neither the manifest nor the pack is fetched
from the store again. Every "no" goes back to the store: a record only ever says yes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, cast

import nats.errors
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from events.canonical import compact_bytes
from events.channel import DEFAULT_CHANNEL, ChannelConfig
from events.codec import DecodeError
from events.manifest import manifest_object_name
from events.model import PackRef, ScopeActivated
from events.service_signing import ServiceKeys
from events.signing import TrustRoot
from events.subjects import Subjects
from events.trust import TrustChain
from projections.pointer_chain import ChainMark, advance, chain_break, pointer_digest
from services.jetstream.direct import DirectGetError
from services.jetstream.log_reads import current_chain, decode_entry
from services.jetstream.packstore import PackStore
from services.jetstream.pull import ConsumerGone
from services.jetstream.reader import OrderedReader, RawEntry, ReadRefused
from services.observability import tracing
from services.tasks import cancel_and_wait
from services.verification.context import verify_context
from services.verification.gates import Verification, VerifyContext, check_manifest
from services.verification.pipeline import run_gates

log = logging.getLogger(__name__)
HISTORY_KEPT = 1000  # switches, refusals and ignored pointers a RuntimeClient remembers (`history`)
SampleFn = Callable[[str | None], dict]
NO_MESSAGE = 10037  # JetStream's err_code for "no message found" (the subject is empty; the stream exists)
RUNTIME_HEARTBEAT_S = 2.0  # the pointer reader's idle heartbeat (see `follow`): under the accounts' response threshold


class ChannelConfigUnavailable(RuntimeError):
    """The channel's configuration could not be read or decoded: the runtime cannot know its
    cohort, so it picks none (a guessed cohort would silently follow another cohort's pointer)."""


RefusalKind = Literal["final", "transient"]
# Gate failures that say "not there now", not "bad": a genuine pointer names a pack the service
# verified in the store before it wrote the pointer, so its objects missing is a store that is
# briefly unreadable (or being restored). Every other gate failure is about the bytes that were read.
TRANSIENT_FAILURES = frozenset({("manifest", "manifest_missing"), ("integrity", "pack_missing")})
# Errors of reading, not of what was read: the store or the log did not answer (nats.py's
# timeouts, closed or draining connections, no responders and JetStream API errors are all
# nats.errors.Error), or a socket failed — and our own readers' words for the same: the pack
# store streams through direct gets (`DirectGetError`: no answer in time, the leader silent, a 503;
# `Behind`: a replica not caught up), the trust chain's one-off read gives up on a server that keeps
# refusing its consumer (`ReadRefused`), and a pull whose consumer went (`ConsumerGone`). Each says
# "could not read now", never "what was read is bad", so none of them may make a genuine pointer final.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.Error,
    TimeoutError,
    OSError,
    DirectGetError,
    ReadRefused,
    ConsumerGone,
)


def refusal_kind(gate: str | None = None, code: str | None = None, error: BaseException | None = None) -> RefusalKind:
    """Is a refused switch worth trying again with the same pointer? Pure.

    `gate`/`code`: the verification gate that failed and its reason code; `error`: what the
    verification raised instead of answering. "final": the pointer or pack is bad (a signature,
    key, expiry, identity, digest or size over bytes read in full) or the failure is not known
    to be passing (an unexpected error): never retried. "transient": an input could not be
    read: the same pointer is retried. Either way nothing switches until verification passes.
    """
    if error is not None:
        return "transient" if isinstance(error, TRANSIENT_ERRORS) else "final"
    return "transient" if (gate, code) in TRANSIENT_FAILURES else "final"


def retry_pause(failed_attempts: int, draw: float, *, first_s: float = 0.5, cap_s: float = 30.0) -> float:
    """The pause after the n-th failed attempt (n >= 1): a ceiling of first_s, 2·first_s, 4·first_s …
    never above cap_s, jittered into (ceiling/2, ceiling] by `draw` in [0, 1), so runtimes that
    failed together do not come back together. Pure."""
    ceiling = min(first_s * 2 ** min(max(failed_attempts, 1) - 1, 32), cap_s)
    return ceiling * (1 - 0.5 * draw)


def manifest_named_otherwise(pointer: ScopeActivated) -> str | None:
    """Why `pointer`'s `manifest` is not its pack's manifest object (None: it is). Pure.

    CONTRACT §4 names the manifest a pointer's runtime reads: `sha256-<hex>.manifest` of the pack.
    This SDK reads the manifest of `pack.digest`, a runtime built from the contract the object the
    pointer names; a pointer where the two differ would be run here and refused there (or run
    under another pack's manifest there), so it is refused here too: the fleet does not split on it."""
    expected = manifest_object_name(pointer.pack.digest)
    if pointer.manifest == expected:
        return None
    return f"identity/manifest_mismatch: the pointer names manifest {pointer.manifest!r}, its pack's is {expected!r}"


def size_named_otherwise(pack: PackRef, manifest_size: int) -> str | None:
    """Why the size `pack` names is not the size of the bytes verified (None: it is, or it names none). Pure.

    The integrity gate holds the bytes to the manifest's size; the pointer's own `size` is part of
    the identity it names (as `VerifiedPack.answers` holds it), so a pointer naming another size is
    not this pack, whatever the store holds."""
    if pack.size is None or pack.size == manifest_size:
        return None
    return f"identity/size_mismatch: the pointer names size {pack.size}, the pack's manifest {manifest_size}"


@dataclass(frozen=True)
class Refusal:
    """Why a switch did not happen, and whether the same pointer is worth another attempt."""

    problem: str
    kind: RefusalKind = "final"

    @property
    def transient(self) -> bool:
        return self.kind == "transient"


@dataclass(frozen=True)
class Identity:
    env: str
    channel: str
    tenant: str
    runtime_id: str
    region: str | None = None


@dataclass(frozen=True)
class VerifiedPack:
    """A pack this runtime verified in full (its manifest and every byte of it) and switched to.

    The pack's digest (the SHA-256 of the bytes that were hashed) and the manifest's exact
    bytes (`manifest_digest`: their SHA-256) are what it is; `trust_root` is the root its
    signatures were last checked under."""

    digest: str
    size: int
    manifest_bytes: bytes
    manifest_digest: str
    verification: Verification  # the passing record: the typed manifest, the keys that signed
    trust_root: TrustRoot

    def answers(self, pack: PackRef, ctx: VerifyContext) -> bool:
        """True when this record alone proves `pack` good under `ctx`, without the store: the same
        trust root (signatures were checked under it), not expired at `ctx.now`, the identity the
        pointer names (name, version, digest, and size where the pointer gives one). Pure."""
        m = self.verification.manifest
        return (
            m is not None
            and (ctx.trust_root is self.trust_root or ctx.trust_root == self.trust_root)
            and ctx.now < m.expires
            and (pack.name, pack.version, pack.digest)
            == (m.name, m.version, m.digest)
            == (m.name, m.version, self.digest)
            and (pack.size is None or pack.size == self.size)
        )


class VerifiedPacks:
    """The last `limit` packs a runtime verified and ran, newest last (a runtime follows one scope,
    so this is per scope). A pointer back to one of them is answered in memory; a record is
    dropped when it stops answering (`answers` False) or fails a new trust root's signature check."""

    def __init__(self, limit: int = 3) -> None:
        self.limit = limit
        self._packs: OrderedDict[str, VerifiedPack] = OrderedDict()

    def __len__(self) -> int:
        return len(self._packs)

    def __contains__(self, digest: object) -> bool:
        return digest in self._packs

    def get(self, digest: str) -> VerifiedPack | None:
        return self._packs.get(digest)

    def add(self, record: VerifiedPack) -> None:
        self._packs[record.digest] = record
        self._packs.move_to_end(record.digest)
        while len(self._packs) > self.limit:
            self._packs.popitem(last=False)

    def drop(self, digest: str) -> None:
        self._packs.pop(digest, None)

    def rekey(self, trust_root: TrustRoot, now: datetime) -> list[str]:
        """After a trust rotation: each record's manifest checked again under `trust_root` (in memory,
        from its recorded bytes: envelope, signatures, expiry); kept under the new root if it passes,
        dropped otherwise. The digests dropped."""
        dropped = []
        for digest, record in list(self._packs.items()):
            if record.trust_root is trust_root or record.trust_root == trust_root:
                continue
            m = record.verification.manifest
            v = check_manifest(record.manifest_bytes, verify_context(m, trust_root, now, "pin")) if m else None
            if v is None or v.failure is not None or v.manifest != m:
                self._packs.pop(digest)
                dropped.append(digest)
            else:
                self._packs[digest] = VerifiedPack(
                    record.digest,
                    record.size,
                    record.manifest_bytes,
                    record.manifest_digest,
                    record.verification,
                    trust_root,
                )
        return dropped


class _RecordingStore(PackStore):
    """The pack store, keeping the manifest bytes of `digest` that the gates read (to record them)."""

    def __init__(self, js, subjects: Subjects, digest: str) -> None:
        super().__init__(js, subjects)
        self._manifest_name = manifest_object_name(digest)
        self.manifest: bytes | None = None

    async def read(self, name: str, max_bytes: int) -> bytes | None:
        data = await super().read(name, max_bytes)
        if name == self._manifest_name:
            self.manifest = data
        return data


def rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


class RuntimeClient:
    def __init__(
        self,
        nc: Client,
        identity: Identity,
        trust_root: TrustRoot,
        *,
        prefix: str = "kx",
        sample: SampleFn | None = None,
        sample_interval: float = 1.0,
        on_switch: Callable[[PackRef], Awaitable[None]] | None = None,
        service_keys: ServiceKeys | None = None,
        retry_first_s: float = 0.5,
        retry_cap_s: float = 30.0,
        verified_packs: int = 3,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=10)
        self.id = identity
        self.trust_root = trust_root
        self.subjects = Subjects(prefix)
        self.sample = sample
        self.sample_interval = sample_interval
        self.on_switch = on_switch
        self.service_keys = service_keys  # when set, only pointers signed by a trusted activator count
        self.chain: ChainMark | None = None  # the newest pointer accepted: a next one must be newer and name it
        self.cohort: str | None = None
        self.active: PackRef | None = None
        # (digest, "activated" | "refused: why" | "ignored pointer …"), the newest HISTORY_KEPT: a runtime
        # lives for months, and a stream of junk on its scope's subject must not grow its memory
        self.history: deque[tuple[str, str]] = deque(maxlen=HISTORY_KEPT)
        self.switched = asyncio.Event()
        self.retry_first_s = retry_first_s  # a transient refusal is retried after this, doubling up to retry_cap_s
        self.retry_cap_s = retry_cap_s
        self._jitter = random.Random()
        self._trust: tuple[int, TrustChain] | None = None  # (seq of the last rotation read, the chain)
        # the packs verified and run: a pointer back to one (a rollback) is checked without the store
        self.verified = VerifiedPacks(verified_packs)
        # while `follow` runs, its reader also delivers the log's trust rotations, in log order with
        # the pointers: the newest one's seq, so the chain is read again only after a rotation
        self._rotations_followed = False
        self._rotation_seen = 0
        self._health_subject: tuple[str, str] | None = None  # (cohort, the subject it reports on)
        # The channel configuration the cohort was resolved from: its log sequence (0: the log held none,
        # the contract's default), so `follow` acts only on a newer one. `cohort_problem`: why the newest
        # configuration names no cohort for this runtime (then it follows no pointer until one does).
        self._config_seq = 0
        self.cohort_problem: str | None = None
        self.on_cohort: Callable[[str], None] | None = None  # told each cohort `follow` moves this runtime to

    async def resolve_cohort(self) -> str:
        seq, config = await self._channel_config()
        self.cohort = config.resolve(self.id.env, self.id.channel, self.id.tenant, self.id.region)
        self._config_seq, self.cohort_problem = seq, None
        return self.cohort

    async def channel_config(self) -> ChannelConfig:
        """The channel's configuration; the contract's default only when the log holds none.

        Anything else (a denied or timed-out read, a missing log, an entry that does not
        decode) raises `ChannelConfigUnavailable`: absence of an answer is not absence of a
        configuration.
        """
        return (await self._channel_config())[1]

    async def _channel_config(self) -> tuple[int, ChannelConfig]:
        """`channel_config` and the log sequence it was read at (0: the log holds none)."""
        where = f"{self.id.env}/{self.id.channel}"
        try:
            msg = await self.js.get_last_msg(
                self.subjects.releases_stream, self.subjects.channel(self.id.env, self.id.channel)
            )
        except NotFoundError as exc:
            if exc.err_code == NO_MESSAGE:  # the log exists and holds no configuration for this channel
                return 0, DEFAULT_CHANNEL
            raise ChannelConfigUnavailable(
                f"channel config of {where} could not be read: {exc.description or exc!r}"
            ) from None
        except Exception as exc:
            raise ChannelConfigUnavailable(
                f"channel config of {where} could not be read: {exc.__class__.__name__}: {exc}"
            ) from None
        try:
            # (a STREAM.MSG.GET answer holds the stored headers only: relayed ones show as delivered)
            entry = RawEntry(msg.seq or 0, msg.subject or "", msg.data or b"", dict(msg.headers or {}), None, 0)
            event = decode_entry(entry, self.subjects)
        except DecodeError as exc:
            raise ChannelConfigUnavailable(
                f"channel config of {where} at seq {msg.seq} could not be decoded: {exc}"
            ) from None
        return msg.seq or 0, event.data  # type: ignore[return-value]

    @property
    def health_subject(self) -> str:
        """Where this runtime reports: built (and its tokens checked) once per cohort, not per report."""
        cohort = self.cohort
        assert cohort is not None
        if self._health_subject is None or self._health_subject[0] != cohort:
            subject = self.subjects.health(self.id.env, self.id.channel, cohort, self.id.runtime_id)
            self._health_subject = (cohort, subject)
        return self._health_subject[1]

    async def report(self, body: dict) -> None:
        """One health message (CONTRACT §8), published without waiting for JetStream's acknowledgement.

        Reports are telemetry, and the acknowledgement bought nothing: a report that failed was
        never sent again (the retry of a switch finds the pack active and reports nothing), while
        waiting for it cost every switch a request (a reply inbox, a future, a timer, the ack's
        JSON) — about 100 us of CPU per report, a third of a runtime's whole work on a rollback
        pointer (bench.rollback `runtime_cpu`). The message is stored all the same (KX_HEALTH
        captures the subject); a closed connection still raises; a publish the server denies
        is reported by the connection's error callback.
        """
        body = {
            "runtime_id": self.id.runtime_id,
            "digest": self.active.digest if self.active else None,
            "at": rfc3339(datetime.now(UTC)),
            **body,
        }
        await self.nc.publish(self.health_subject, compact_bytes(body))

    async def run(self) -> None:
        if self.cohort is None:
            await self.resolve_cohort()
        tasks = [asyncio.create_task(self.follow())]
        if self.sample is not None:
            tasks.append(asyncio.create_task(self.report_samples()))
        try:
            await asyncio.gather(*tasks)
        finally:
            await cancel_and_wait(tasks)

    async def report_samples(self) -> None:
        while True:
            try:
                body = self.sample(self.active.digest if self.active else None)  # type: ignore[misc]
                await self.report({"kind": "sample", **body})
            except Exception as exc:  # telemetry must never stop the runtime
                log.warning("runtime %s: sample not sent: %s", self.id.runtime_id, exc)
            await asyncio.sleep(self.sample_interval)

    async def follow(self) -> None:
        """Follow this runtime's scope until stopped: its pointers, the trust rotations and the
        channel's configuration, through one reader, in log order.

        The cohort is the FIRST of the channel configuration's rules that matches (CONTRACT §7),
        and an operator may replace the configuration at any time (a runtime started before
        `kxr channel set` began on the default cohort `all`). So a `channel.configured` newer than
        the one the cohort was resolved from is read here (`_reconfigured`): when it puts this
        runtime in another cohort, following starts again on that cohort's scope, from its history
        (as at start), with a fresh chain (a chain orders one scope's pointers; another scope's
        `generation` says nothing about this one's), and health is reported under the new cohort.
        The pack it runs stays active until a pointer of the new scope is verified and switched to.

        A newer configuration that does not decode (or matches no cohort for this runtime) is no
        answer: the runtime keeps the pack it runs and reports where it did, but follows no new
        pointer (`cohort_problem` says why) until a configuration that decodes arrives. Fail
        closed, as at start (`ChannelConfigUnavailable`): the configuration in force is unknown,
        so is the cohort, and a pointer of a scope this runtime may no longer belong to is not one
        it may switch to.
        """
        assert self.cohort is not None
        self._rotations_followed = True
        try:
            while True:
                await self._follow_scope()  # returns when the configuration moved this runtime
        finally:
            self._rotations_followed = False

    async def _follow_scope(self) -> None:
        """One pass of `follow` over the scope of the cohort in force (none while `cohort_problem`):
        returns when a newer channel configuration changed what this runtime follows."""
        assert self.cohort is not None
        env, channel = self.id.env, self.id.channel
        subject = None if self.cohort_problem else self.subjects.scope(env, channel, self.cohort, "activated")
        # Every pointer of the scope, oldest first, not only the newest stored: the chain is
        # checked from the start, so an old pointer replayed last (a rollback or freeze
        # attack) is not what a (re)starting runtime runs. Of the history read at start only
        # the newest pointer that keeps the chain is considered. A fleet of runtimes follows:
        # a 2 s heartbeat keeps the server's idle cost per runtime low (a lost pull request
        # is noticed within 6 s; a new pointer still arrives at once), and keeps renewing the
        # pull's way back across the runtime account's import (its response threshold, 5 s:
        # services/permissions.py AccountLimits.response_threshold_s) while nothing happens.
        # The trust rotations come through the same reader: a rotation logged before a pointer is
        # seen before it, so the trust root a pointer is verified under needs no read of its own.
        # So does the channel's configuration: one reconfigured before a pointer is seen before it.
        rotations = self.subjects.trust_rotated()
        configured = self.subjects.channel(env, channel)
        filters = [f for f in (subject, rotations, configured) if f is not None]
        reader = OrderedReader(self.js, self.subjects.releases_stream, filters, heartbeat_s=RUNTIME_HEARTBEAT_S)
        newest: ScopeActivated | None = None
        newest_headers: dict[str, str] | None = None  # the pointer message's (its trace context)
        # the pointer being applied (retried while its refusals are transient), and how to tell it
        # a newer pointer superseded it
        applying: asyncio.Task | None = None
        superseded = asyncio.Event()
        # what arrived together, a list at a time (`read` is one more generator step per entry); closed
        # on return, so the pass's pull stops before the next one opens
        batches = cast(AsyncGenerator[list[RawEntry], None], reader.read_batches(follow=True))
        try:
            async for batch in batches:
                for entry in batch:
                    if entry.subject == rotations:
                        self._rotation_seen = max(self._rotation_seen, entry.seq)
                    elif entry.subject == configured:
                        if self._reconfigured(entry):
                            if applying is not None:
                                superseded.set()  # no longer this runtime's scope: it stops retrying
                                await applying
                                applying = None
                            return
                    elif (accepted := self.accept_pointer(entry)) is not None:
                        newest, newest_headers = accepted, entry.headers
                    if newest is not None and await reader.settled(entry):
                        pointer, newest = newest, None
                        if applying is not None:
                            superseded.set()  # it stops retrying; an attempt under way ends first, as before
                            await applying
                        superseded = asyncio.Event()
                        applying = asyncio.create_task(self.apply(pointer, entry.seq, superseded, newest_headers))
        finally:
            if applying is not None:
                await cancel_and_wait([applying])
            await batches.aclose()
            await reader.close()

    def _reconfigured(self, entry: RawEntry) -> bool:
        """Whether the channel configuration in `entry` changes what this runtime follows: a cohort
        other than the one it follows, or no cohort at all (it does not decode, or no rule matches),
        or a cohort again after none. One the cohort was resolved from, or older, changes nothing."""
        if entry.seq <= self._config_seq:
            return False
        self._config_seq = entry.seq
        where = f"{self.id.env}/{self.id.channel}"
        try:
            config: ChannelConfig = decode_entry(entry, self.subjects).data  # type: ignore[assignment]
            cohort = config.resolve(self.id.env, self.id.channel, self.id.tenant, self.id.region)
        except (DecodeError, LookupError) as exc:
            why = "could not be decoded" if isinstance(exc, DecodeError) else "names no cohort for this runtime"
            problem = f"channel config of {where} at seq {entry.seq} {why}: {exc}"
            log.error(
                "runtime %s: %s; keeping %s and following no new pointer until a configuration decodes",
                self.id.runtime_id,
                problem,
                self.active.short() if self.active else "no pack",
            )
            self.history.append(("?", f"follows no cohort: {problem}"))
            following = self.cohort_problem is None
            self.cohort_problem = problem
            return following  # stop following the scope; already stopped: nothing changes
        if self.cohort_problem is None and cohort == self.cohort:
            return False
        log.info(
            "runtime %s: channel config of %s at seq %d: cohort %s (was %s)",
            self.id.runtime_id,
            where,
            entry.seq,
            cohort,
            self.cohort if self.cohort_problem is None else f"{self.cohort}, followed no pointer",
        )
        self.history.append(("?", f"cohort {cohort} from the channel config at seq {entry.seq}"))
        self.cohort, self.cohort_problem = cohort, None
        self.chain = None  # the new scope's pointers are read from its start: a chain of their own
        if self.on_cohort is not None:
            try:
                self.on_cohort(cohort)
            except Exception as exc:  # the host's callback must not stop the runtime following
                log.warning("runtime %s: on_cohort failed: %r", self.id.runtime_id, exc)
        return True

    async def apply(
        self, pointer: ScopeActivated, seq: int, superseded: asyncio.Event, headers: dict[str, str] | None = None
    ) -> None:
        """Consider `pointer` until it is switched to or finally refused; a transient refusal is
        tried again after a jittered, doubling pause (reported once per attempt), until
        `superseded` is set by a newer pointer or the runtime stops. With tracing, one span
        under the pointer's trace context (`headers`: its message's)."""
        event_id = (headers or {}).get("Nats-Msg-Id")
        with tracing.decision_span("runtime switch", pointer.release_id, event_id, headers) as span:
            if span is not None:
                span.set_attribute("kx.runtime_id", self.id.runtime_id)
                span.set_attribute("kx.pack_digest", pointer.pack.digest)
            await self._apply(pointer, seq, superseded)

    async def _apply(self, pointer: ScopeActivated, seq: int, superseded: asyncio.Event) -> None:
        failed = 0
        while True:
            try:
                refusal = await self.consider(pointer, failed)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one pointer that went wrong must not stop the runtime following
                self.history.append((pointer.pack.digest, f"error: {exc!r}"))
                log.error("runtime %s: pointer at seq %d not handled: %r", self.id.runtime_id, seq, exc)
                # a report that could not be sent (a closed connection) is IO too: tried again — but a
                # switch that happened is neither redone nor reported again: the next attempt finds
                # the pack active and returns (see `report`)
                refusal = Refusal(f"error: {exc!r}", refusal_kind(error=exc))
            if refusal is None or not refusal.transient:
                return
            failed += 1
            pause = retry_pause(failed, self._jitter.random(), first_s=self.retry_first_s, cap_s=self.retry_cap_s)
            log.info(
                "runtime %s: retrying %s in %.1f s (attempt %d failed: %s)",
                self.id.runtime_id,
                pointer.pack.short(),
                pause,
                failed,
                refusal.problem,
            )
            try:
                await asyncio.wait_for(superseded.wait(), pause)
                return  # a newer pointer is what this runtime should run now
            except TimeoutError:
                continue

    def accept_pointer(self, entry) -> ScopeActivated | None:
        """The pointer in `entry` if it counts: signed by a trusted activator (with service keys),
        a valid event, and newer than the chain so far (projections/pointer_chain.py). A refused
        one is logged and kept in `history` with why; it never moves `chain`."""
        if self.service_keys is not None:
            problem = self.service_keys.check("activator", entry.subject, entry.data, entry.headers)
            if problem:
                self.history.append(("?", f"ignored pointer at seq {entry.seq}: {problem}"))
                log.warning("runtime %s: ignoring pointer at seq %d: %s", self.id.runtime_id, entry.seq, problem)
                return None
        try:
            event = decode_entry(entry, self.subjects)
        except DecodeError as exc:
            log.warning("runtime %s: ignoring undecodable pointer at seq %d: %s", self.id.runtime_id, entry.seq, exc)
            return None
        pointer: ScopeActivated = event.data  # type: ignore[assignment]
        # knowing no pointer yet (the first one read) is not knowing the scope had none: accept it
        broken = chain_break(self.chain, pointer) if self.chain is not None else None
        if broken is not None:
            self.history.append((pointer.pack.digest, f"refused pointer at seq {entry.seq}: {broken[0]}: {broken[1]}"))
            log.warning(
                "runtime %s: refused pointer at seq %d to %s: %s",
                self.id.runtime_id,
                entry.seq,
                pointer.pack.short(),
                broken[1],
            )
            return None
        self.chain = advance(self.chain, pointer, pointer_digest(entry.data))
        return pointer

    async def consider(self, pointer: ScopeActivated, failed_before: int = 0) -> Refusal | None:
        """Verify and switch to `pointer`'s pack; None when it is the active pack now, else why not
        (already reported). `failed_before`: transient refusals of this pointer so far."""
        if self.active is not None and self.active.digest == pointer.pack.digest:
            return None
        started = time.perf_counter()
        if (named := manifest_named_otherwise(pointer)) is not None:  # final: the pointer itself is wrong
            wrong = Refusal(named)
            await self.refused(pointer.pack, wrong, (time.perf_counter() - started) * 1000, failed_before)
            return wrong
        refusal, record = await self._verify_with_record(pointer.pack)
        took_ms = (time.perf_counter() - started) * 1000
        if refusal is not None:
            await self.refused(pointer.pack, refusal, took_ms, failed_before)
            return refusal
        if self.on_switch is not None:
            try:
                await self.on_switch(pointer.pack)
            except Exception as exc:  # the host did not switch: the old pack is still the active one
                refusal = Refusal(f"switch failed: {exc.__class__.__name__}: {exc}")
                await self.refused(pointer.pack, refusal, (time.perf_counter() - started) * 1000)
                return refusal
            took_ms = (time.perf_counter() - started) * 1000
        self.active = pointer.pack
        if record is not None:
            self.verified.add(record)
        self.history.append((pointer.pack.digest, "activated"))
        await self.report({"kind": "activation", "ok": True, "took_ms": took_ms, "error": None})
        self.switched.set()
        return None

    async def refused(self, pack: PackRef, refusal: Refusal, took_ms: float, failed_before: int = 0) -> None:
        """Not switched to `pack`: recorded, logged, and reported as an `ok: false` activation of it.
        A transient refusal says so in its error (one stable text, whatever the attempt)."""
        problem = f"transient, retrying: {refusal.problem}" if refusal.transient else refusal.problem
        self.history.append((pack.digest, f"refused: {problem}"))
        log.warning(
            "runtime %s refused %s: %s%s",
            self.id.runtime_id,
            pack.short(),
            problem,
            f" (attempt {failed_before + 1})" if refusal.transient else "",
        )
        await self.report(
            {"kind": "activation", "digest": pack.digest, "ok": False, "took_ms": took_ms, "error": problem}
        )

    async def trust_root_now(self) -> TrustRoot:
        """The runtime's own anchor advanced by the rotations in the log it can verify itself.

        The chain is read again only when a rotation was appended since the last read. While
        `follow` runs, its reader delivers the rotations in log order with the pointers, so a
        switch costs no read at all (bench.rollback: one last-message get per switch was 4 ms of
        a 9 ms switch with 5 runtimes, 0.4 s with 1,000); without it (a caller verifying on its
        own), one last-message get per call. Rotations only append, so an unchanged last
        sequence is an unchanged chain. When the root changes, the verified packs are checked
        again under it (`VerifiedPacks.rekey`).
        """
        if self._rotations_followed:
            last = self._rotation_seen
            stale = self._trust is None or last > self._trust[0]
        else:
            try:
                last = (
                    await self.js.get_last_msg(self.subjects.releases_stream, self.subjects.trust_rotated())
                ).seq or 0
            except NotFoundError:
                last = 0  # no rotation in the log: the anchor is the root
            stale = self._trust is None or self._trust[0] != last
        if stale:
            self._trust = (last, await current_chain(self.js, self.subjects, self.trust_root))
            dropped = self.verified.rekey(self._trust[1].current, datetime.now(UTC))
            for digest in dropped:
                log.info("runtime %s: %s no longer verifies under the new trust root", self.id.runtime_id, digest)
        assert self._trust is not None
        return self._trust[1].current

    async def verify(self, pack: PackRef) -> Refusal | None:
        """Defence in depth: the runtime re-checks what the service verified. None means good."""
        return (await self._verify_with_record(pack))[0]

    async def _verify_with_record(self, pack: PackRef) -> tuple[Refusal | None, VerifiedPack | None]:
        """(None, the record of the pack) when it verifies, else (why not, None).

        A pack this runtime verified and ran before is answered from its record when the record
        proves it under the trust root in force now (`VerifiedPack.answers`): nothing is read
        from the store. Anything else, a record's "no" included, verifies from the store: the
        manifest read and checked, the pack's bytes hashed as they stream.
        """
        try:
            # the runtime's own anchor, advanced by the rotations in the log it can verify itself
            trust_root = await self.trust_root_now()
            ctx = verify_context(
                pack,
                trust_root,
                datetime.now(UTC),
                "pin",
                env=self.id.env,
                channel=self.id.channel,
                cohorts=(self.cohort or "",),
            )
            record = self.verified.get(pack.digest)
            if record is not None:
                if record.answers(pack, ctx):
                    return None, record
                self.verified.drop(pack.digest)  # expired, or named otherwise: the store decides
            store = _RecordingStore(self.js, self.subjects, pack.digest)
            v = await run_gates(store, pack.digest, ctx, policy=False)
            if v.failure is not None:
                f = v.failure
                return Refusal(f"{f.gate}/{f.code}: {f.message}", refusal_kind(f.gate, f.code)), None
            # the gates compare the request's name, version and digest, not a size (a request names none)
            if v.manifest is not None and (named := size_named_otherwise(pack, v.manifest.size)) is not None:
                return Refusal(named), None  # final: bytes read in full, of another size than the pointer's
            return None, self._record(v, store.manifest, trust_root)
        except Exception as exc:  # fail closed: anything unexpected refuses the switch
            return Refusal(f"verification error: {exc!r}", refusal_kind(error=exc)), None

    @staticmethod
    def _record(v: Verification, manifest: bytes | None, trust_root: TrustRoot) -> VerifiedPack | None:
        """The record of a passing verification (None: not one every gate up to integrity passed)."""
        m = v.manifest
        if m is None or manifest is None or v.failure is not None or "integrity" not in v.passed:
            return None
        return VerifiedPack(m.digest, m.size, manifest, "sha256:" + hashlib.sha256(manifest).hexdigest(), v, trust_root)
