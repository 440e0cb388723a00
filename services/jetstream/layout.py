"""The JetStream layout of CONTRACT §2, created idempotently and checked on start.

An existing stream whose settings would break the log's guarantees (deletable,
purgeable, age- or size-limited, no atomic batches, short duplicate window) is a
reason to refuse to start, never something to silently "fix".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import TypeVar

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, BucketNotFoundError, NotFoundError

from events.subjects import Subjects

DUPLICATE_WINDOW_S = 300.0
MIN_DUPLICATE_WINDOW_S = 120.0
LOG_MAX_MSG_SIZE = 256 * 1024
# Every runtime follows its scope's pointer with its own ephemeral consumer on the log, and
# nats-server 2.15 caps a stream at 1000 consumers unless the stream sets its own limit
# (0 and -1 mean "the server's default"): the 1000th runtime would be refused.
LOG_MAX_CONSUMERS = 1_000_000


class LayoutError(RuntimeError):
    """The server's streams cannot give the guarantees the contract promises."""


@dataclass(frozen=True)
class LayoutSettings:
    health_max_age_s: float = 7 * 24 * 3600
    replicas: int = 1
    # Bounds on what runtimes can make the server store (issue 14: no role can exhaust it). Each
    # runtime reports on its own subject, so a cap per subject means a runtime flooding health
    # pushes out only its own oldest samples (a window that then lacks data is inconclusive: fail
    # closed). `health_max_bytes` (-1: none) caps the stream as a whole; it is off by default
    # because JetStream reserves a stream's max_bytes up front, and a figure larger than the
    # store's disk makes the server refuse the stream (err 10047) on a small machine.
    health_max_msgs_per_subject: int = 100_000
    health_max_bytes: int = -1


def release_log_config(subjects: Subjects, replicas: int) -> StreamConfig:
    return StreamConfig(
        name=subjects.releases_stream,
        description="Konnaxion Releases: the release log (source of truth)",
        subjects=subjects.log_subjects(),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=0,
        max_msg_size=LOG_MAX_MSG_SIZE,
        deny_delete=True,
        deny_purge=True,
        allow_atomic=True,
        duplicate_window=DUPLICATE_WINDOW_S,
        num_replicas=replicas,
        allow_direct=True,
        max_consumers=LOG_MAX_CONSUMERS,
    )


def internal_configs(subjects: Subjects, settings: LayoutSettings) -> list[StreamConfig]:
    return [
        StreamConfig(
            name=subjects.health_stream,
            description="Konnaxion Releases: runtime health samples",
            subjects=[subjects.health_all()],
            storage=StorageType.FILE,
            max_age=settings.health_max_age_s,
            max_msg_size=64 * 1024,
            max_msgs_per_subject=settings.health_max_msgs_per_subject,
            max_bytes=settings.health_max_bytes,
            discard=DiscardPolicy.OLD,
            num_replicas=settings.replicas,
            allow_direct=True,
        ),
        StreamConfig(
            name=subjects.timers_stream,
            description="Konnaxion Releases: scheduled timers (monitoring windows, pin expiry); internal",
            subjects=[subjects.timers_all()],
            storage=StorageType.FILE,
            allow_msg_schedules=True,
            duplicate_window=DUPLICATE_WINDOW_S,
            num_replicas=settings.replicas,
        ),
        StreamConfig(
            name=subjects.deadletter_stream,
            description="Konnaxion Releases: messages a consumer could not process; internal",
            subjects=[subjects.deadletter_all()],
            storage=StorageType.FILE,
            max_msg_size=1024 * 1024,
            num_replicas=settings.replicas,
        ),
    ]


def log_violations(cfg: StreamConfig, subjects: Subjects) -> list[str]:
    """Why an existing KX_RELEASES cannot be trusted as the source of truth (empty: it can)."""
    problems = []
    if not cfg.deny_delete:
        problems.append("deny_delete is off (messages could be deleted)")
    if not cfg.deny_purge:
        problems.append("deny_purge is off (the log could be purged)")
    if cfg.max_age:
        problems.append(f"max_age is {cfg.max_age}s (events would expire)")
    if cfg.max_msgs not in (None, -1, 0) or cfg.max_bytes not in (None, -1, 0):
        problems.append("message or byte limits are set (events would be discarded)")
    if cfg.max_msgs_per_subject not in (None, -1, 0):
        problems.append("max_msgs_per_subject is set (history would be discarded)")
    if not cfg.allow_atomic:
        problems.append("allow_atomic is off (activations could not be atomic)")
    if (cfg.duplicate_window or 0) < MIN_DUPLICATE_WINDOW_S:
        problems.append(f"duplicate window {cfg.duplicate_window}s is under {MIN_DUPLICATE_WINDOW_S:.0f}s")
    if cfg.retention not in (None, RetentionPolicy.LIMITS):
        problems.append(f"retention is {cfg.retention} (must be limits)")
    if cfg.storage != StorageType.FILE:
        problems.append("storage is not file")
    missing = set(subjects.log_subjects()) - set(cfg.subjects or [])
    if missing:
        problems.append(f"subjects {sorted(missing)} are not captured")
    return problems


async def consumer_room(js: JetStreamContext) -> int:
    """LOG_MAX_CONSUMERS, or the account's JetStream consumer limit if lower: a stream may not
    ask for more than its account allows (embedded `kxr serve` caps it, services/permissions.py)."""
    try:
        limit = (await js.account_info()).limits.max_consumers
    except Exception:  # no answer is no evidence of a limit: the server refuses an excess itself
        return LOG_MAX_CONSUMERS
    return min(LOG_MAX_CONSUMERS, limit) if limit and limit > 0 else LOG_MAX_CONSUMERS


log = logging.getLogger(__name__)
T = TypeVar("T")
PLACEMENT_WAIT_S = 30.0
NO_SUITABLE_PEERS = 10005  # JetStream's err_code for "no suitable peers for placement"


async def placed(create: Callable[[], Awaitable[T]], what: str, wait_s: float = PLACEMENT_WAIT_S) -> T:
    """`create()` (a stream or bucket), waiting out a cluster that cannot place its replicas yet.

    A peer that is still starting, or missed a heartbeat under load, makes the meta leader answer
    "no suitable peers for placement" for a moment; a loaded cluster may also not answer the create
    request within its timeout while the replicas agree. The layout is created once, at start:
    waiting a bounded time for the peers beats failing the start (both seen on the 3-node test
    cluster under load). Asking again is safe: creating a stream or bucket with the config it
    already has answers with it. Any other error, or the same one after `wait_s`, is raised as it is.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return await create()
        except APIError as exc:
            if exc.err_code != NO_SUITABLE_PEERS or time.monotonic() >= deadline:
                raise
            log.info("%s: %s; waiting for the cluster's peers", what, exc.description)
        except TimeoutError:  # nats-py's TimeoutError is one (asyncio.TimeoutError is the builtin on 3.11)
            if time.monotonic() >= deadline:
                raise
            log.info("%s: no answer in time; asking again", what)
        await asyncio.sleep(0.5)


async def ensure_layout(js: JetStreamContext, subjects: Subjects, settings: LayoutSettings | None = None) -> None:
    """Create the streams and the packs bucket if absent; refuse a log that breaks guarantees."""
    settings = settings or LayoutSettings()
    room = await consumer_room(js)
    try:
        info = await js.stream_info(subjects.releases_stream)
    except NotFoundError:
        log_config = replace(release_log_config(subjects, settings.replicas), max_consumers=room)
        await placed(partial(js.add_stream, log_config), f"stream {subjects.releases_stream}")
    else:
        cfg = info.config
        added = [s for s in subjects.log_subjects() if s.endswith(".trust.rotated") and s not in (cfg.subjects or [])]
        # a log created under the server's default consumer cap, or asking more than the account allows
        short = (cfg.max_consumers or 0) <= 0 or (cfg.max_consumers or 0) > room
        if added or short:  # additive: one more subject captured, room for more runtimes
            cfg.subjects = list(cfg.subjects or []) + added
            if short:
                cfg.max_consumers = room
            cfg = (await js.update_stream(cfg)).config
        problems = log_violations(cfg, subjects)
        if problems:
            raise LayoutError(f"stream {subjects.releases_stream} exists but " + "; ".join(problems))
    for internal in internal_configs(subjects, settings):
        assert internal.name is not None  # internal_configs names every stream
        try:
            await js.stream_info(internal.name)
        except NotFoundError:
            await placed(partial(js.add_stream, internal), f"stream {internal.name}")
    for bucket, description in (
        (subjects.packs_bucket, "Konnaxion Runtime Packs, named by digest"),
        (subjects.snapshots_bucket, "Konnaxion Releases: projection snapshots (internal, never the source of truth)"),
    ):
        try:
            await js.object_store(bucket)
        except (BucketNotFoundError, NotFoundError):
            create = partial(
                js.create_object_store,
                bucket,
                storage=StorageType.FILE,
                replicas=settings.replicas,
                description=description,
            )
            await placed(create, f"bucket {bucket}")
    await ensure_read_bucket(js, subjects, settings)


def read_bucket_config(subjects: Subjects, replicas: int) -> KeyValueConfig:
    """The read models' bucket: the last value per key only (history 1), on file, direct gets
    allowed (the operator and auditor read it with `$JS.API.DIRECT.GET`, never a consumer)."""
    return KeyValueConfig(
        bucket=subjects.read_bucket,
        description="Konnaxion Releases: read models for operators (kept by the service; the log is the truth)",
        history=1,
        storage=StorageType.FILE,
        replicas=replicas,
        direct=True,
    )


async def ensure_read_bucket(js: JetStreamContext, subjects: Subjects, settings: LayoutSettings) -> None:
    """Create the read models' bucket if absent; refuse one whose config readers cannot rely on."""
    try:
        await js.key_value(subjects.read_bucket)
    except (BucketNotFoundError, NotFoundError):
        config = read_bucket_config(subjects, settings.replicas)
        try:
            await placed(partial(js.create_key_value, config), f"bucket {subjects.read_bucket}")
        except APIError as exc:  # another process created it meanwhile (checked below, like any existing one)
            if exc.err_code != 10058:  # stream name already in use
                raise
    cfg = (await js.stream_info(f"KV_{subjects.read_bucket}")).config
    problems = [
        why
        for bad, why in (
            (cfg.max_msgs_per_subject != 1, f"keeps {cfg.max_msgs_per_subject} values per key, not 1"),
            (not cfg.allow_direct, "does not allow direct gets (how operators read it)"),
        )
        if bad
    ]
    if problems:
        raise LayoutError(f"bucket {subjects.read_bucket} exists but " + "; ".join(problems))
