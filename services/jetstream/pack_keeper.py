"""Pack keeper: the service restores a distributed pack's metadata from the log's evidence.

Producers may put objects in `kx_packs` but never purge (docs/permissions.md), so a pack's
chunks stay in the stream once written. Its metadata, though, is one message per name with
a rollup header, which subject permissions cannot tell from a put: whoever may put can mark
a pack deleted or re-point its name to other chunks. The distributor therefore records, in
`release.distributed` (`stored`), each object's nuid, size, chunk count and digest; where
the service needs a pack it distributed before (rollback readiness, the activator's target
check, the pinner, the guard's manifest read; and every 15 s for the packs scopes run, so
restarting runtimes find them: `PackKeeper`) and finds it unusable, it re-publishes that
metadata (the service user may publish `$O.<packs>.M.>`), once the chunks it names hash to
the recorded digest again. Only when those bytes are gone does the caller fail closed.

What it did is a log line and the `kx_pack_objects_restored_total` counter, not an event:
a restore decides nothing about a release (the caller's own decision, taken on the
restored bytes, is the event), it is idempotent and may run from several consumers at
once, and an event per restore would let a producer who deletes metadata in a loop grow
the log at will.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from prometheus_client import Counter

from events.manifest import pack_object_name
from events.model import StoredObject
from services.jetstream.packstore import PackStore
from services.tasks import every

log = logging.getLogger(__name__)

RESTORED = Counter(
    "kx_pack_objects_restored",
    "Objects of distributed packs whose metadata the service checked after a failed "
    "read, by outcome (restored, bytes_gone).",
    ["outcome"],
)

T = TypeVar("T")


def digest_of_object(name: str) -> str | None:
    """The pack digest an object of `kx_packs` belongs to (`sha256-<hex>[.manifest|.attestation]`)."""
    base = name.split(".", 1)[0]
    algo, sep, hexdigest = base.partition("-")
    return f"{algo}:{hexdigest}" if sep and algo and hexdigest else None


def candidate_index(world, only: frozenset[str] | None = None) -> dict[str, list[str]]:
    """Pack digest -> the releases that may have distributed it: those in flight with it, then the
    ones that made it active or last-known-good somewhere, or the last-known-good before that (the releases a
    rollback or restart needs), each once, in that order. One pass over every release and scope: a sweep of the pack
    keeper looks up each active pack in one index instead of scanning once per pack (e2e bench,
    3,000 distinct packs: 8% of the service's CPU went to those scans). `only`: index just these
    digests (one lookup: a membership test per release and scope, no list for every pack)."""
    index: dict[str, list[str]] = {}

    def add(digest: str, release_id: str) -> None:  # (releases first, then scopes: the order above)
        if only is None or digest in only:
            index.setdefault(digest, []).append(release_id)

    for rid, r in world.releases.items():
        if r.distributed is not None:
            add(r.distributed.pack.digest, rid)
    for state in world.scopes.values():
        if state.lkg is not None and state.lkg_release:
            add(state.lkg.digest, state.lkg_release)
        if state.lkg_prior is not None and state.lkg_prior.release_id:  # where pulling the LKG sends it back
            add(state.lkg_prior.pack.digest, state.lkg_prior.release_id)
        if state.active is not None and state.active.release_id:
            add(state.active.pack.digest, state.active.release_id)
    return {digest: list(dict.fromkeys(ids)) for digest, ids in index.items()}


def _candidates(
    world, digest: str, closed: dict, hint: str | None = None, index: dict[str, list[str]] | None = None
) -> list[str]:
    """The releases that may have distributed `digest` (`candidate_index`; `index`: one built already).

    `hint` (the release the caller has in hand, e.g. the one whose pointer names the pack) alone
    when its record is at hand (in flight, or a closed one already read): the scan of every
    release and scope is ~1 ms per new pack with a thousand scopes, on each activation."""
    if hint is not None and (hint in closed or hint in world.releases):
        known = world.releases.get(hint)
        distributed = known.distributed if known is not None else closed[hint]
        if distributed is not None and distributed.pack.digest == digest and distributed.stored:
            return [hint]
    return (index if index is not None else candidate_index(world, frozenset((digest,)))).get(digest, [])


# app -> digest -> its record: a release's `distributed` event never changes (as `PackKeeper`'s cache).
# Without it, each rollback to a closed release's pack folded that release from the log again and
# checked every event's signature: most of the activator's readiness check (bench.rollback).
_RECORDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
RECORDS_CACHED = 4096
# app -> closed release id -> its `distributed` (None: it never distributed). A closed release never
# distributes again, so what its own events say is kept, a "none" too: without it, a pack with no
# record (one a closed release named but never distributed, a manifest gone) folded every candidate
# release from the log at each look, the guard's sweep and each scope event included (bench.scaling:
# 1,774 release reads in a 100-release run on a 100k-event log, +12 ms p50 to time to activate).
_CLOSED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _kept(caches: weakref.WeakKeyDictionary, app) -> dict:
    try:
        return caches.setdefault(app, {})
    except TypeError:  # an app that cannot be weakly referenced: nothing kept
        return {}


async def recorded(
    app, digest: str | None, hint: str | None = None, index: dict[str, list[str]] | None = None
) -> dict[str, StoredObject]:
    """What distribution recorded (object name -> StoredObject) of the pack with `digest`, as
    the service signed it in the log (`App.release_whole` folds a closed release's own
    subjects under the service keys); empty when no such release recorded it (events from
    before the record, or a pack that is neither in flight, active nor last-known-good).
    A record found is kept per app: it never changes. `hint`, `index`: see `_candidates`."""
    if digest is None:
        return {}
    cache, closed = _kept(_RECORDS, app), _kept(_CLOSED, app)
    if digest in cache:
        return dict(cache[digest])
    world = app.follower.world
    for release_id in _candidates(world, digest, closed, hint, index):
        in_flight = world.releases.get(release_id)
        if in_flight is not None:
            distributed = in_flight.distributed
        elif release_id in closed:
            distributed = closed[release_id]
        else:
            release = await app.release_whole(release_id)
            distributed = release.distributed if release is not None else None
            if release is not None and release.closed:
                if len(closed) >= RECORDS_CACHED:
                    closed.clear()
                closed[release_id] = distributed
        if distributed is not None and distributed.pack.digest == digest and distributed.stored:
            if len(cache) >= RECORDS_CACHED:
                cache.clear()
            cache[digest] = dict(distributed.stored)
            return dict(distributed.stored)
    return {}


async def restore(app, objects: Mapping[str, StoredObject]) -> list[str]:
    """Re-publish the metadata of every object of `objects` that no longer reads as recorded
    (whose chunks still hash to the record); returns the names restored."""
    store = PackStore(app.js, app.subjects)
    restored = []
    for name, obj in objects.items():
        outcome = await store.restore(name, obj)
        if outcome == "intact":
            continue
        RESTORED.labels(outcome).inc()
        if outcome == "restored":
            restored.append(name)
            log.warning(
                "pack keeper: %s no longer read as distributed (deleted or re-pointed in kx_packs); "
                "restored its metadata to nuid %s (%d bytes, %s)",
                name,
                obj.nuid,
                obj.size,
                obj.digest,
            )
        else:
            log.error(
                "pack keeper: %s no longer reads as distributed and its recorded chunks (nuid %s) are gone "
                "or altered: not restored",
                name,
                obj.nuid,
            )
    return restored


async def checked_with_restore(
    app,
    digest: str | None,
    check: Callable[[], Awaitable[T]],
    failed: Callable[[T], bool],
    hint: str | None = None,
    objects: Mapping[str, StoredObject] | None = None,
) -> T:
    """`check()` on the pack with `digest`, its recorded objects restored where needed.

    The pack object itself is named by its digest, so its metadata has no legitimate reason
    to differ from the record: it is put back first, whatever the check would say (a pack
    re-pointed at other chunks of the same size passes a size check, and only a runtime's
    hash would notice, too late). The manifest and attestation may be re-signed by their
    owners, so they are restored only if `failed` says the check failed, then checked again
    (the second answer stands, pass or fail). `objects`: the record (`recorded`), when the caller has it.
    """
    try:
        objects = objects if objects is not None else await recorded(app, digest, hint)
        pack = {name: obj for name, obj in objects.items() if digest is not None and name == pack_object_name(digest)}
        if pack:
            await restore(app, pack)
    except Exception as exc:  # a restore that cannot run changes nothing: the check decides
        log.warning("pack keeper: restoring %s failed: %s: %s", digest, exc.__class__.__name__, exc)
        objects = {}
    result = await check()
    if not failed(result) or not objects:
        return result
    try:
        restored = await restore(app, objects)
    except Exception as exc:  # a restore that cannot run changes nothing: the first answer stands
        log.warning("pack keeper: restoring %s failed: %s: %s", digest, exc.__class__.__name__, exc)
        return result
    return await check() if restored else result


KEEP_EVERY_S = 15.0


class PackKeeper:
    """Keeps every active pack fetchable for runtimes that (re)start, between the checks above.

    Every `every_s`, for each pack some scope runs: its pack object is put back to the record,
    and its manifest or attestation too if marked deleted (a re-signed manifest is its owners'
    to write, so a present one is left to the checks that verify it). Records come from
    `recorded`, which keeps each one found: a release's `distributed` event never changes.
    """

    def __init__(self, app, every_s: float = KEEP_EVERY_S) -> None:
        self.app = app
        self.every_s = every_s

    async def sweep(self) -> list[str]:
        """Restore what the active packs lack now; the names restored."""
        store = PackStore(self.app.js, self.app.subjects)
        world = self.app.follower.world
        digests = {state.active.pack.digest for state in world.scopes.values() if state.active is not None}
        index = candidate_index(world)  # as the sweep starts: what changes meanwhile, the next one sees
        restored: list[str] = []
        for digest in sorted(digests):
            objects = await recorded(self.app, digest, index=index)  # kept per app once found (`recorded`)
            due = {
                name: obj
                for name, obj in objects.items()
                if name == pack_object_name(digest) or await store.stored_object(name) is None
            }
            restored += await restore(self.app, due)
        return restored

    async def run(self) -> None:
        await every(self.every_s, self.sweep, "pack keeper: sweep", log)
