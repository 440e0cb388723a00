"""The pack keeper reads a closed release's distribution record from the log once (services/jetstream/pack_keeper.py).

A closed release never distributes again, so what its own events say is kept — that it never
distributed too. Before, a pack with no record (a closed release named it but never distributed
it, or its manifest was gone) folded every candidate release from the log at each look: the
guard's sweep and every scope event did it again (bench.scaling, 100k events: +12 ms p50).
"""

from __future__ import annotations

from types import SimpleNamespace

from events.model import PackRef, StoredObject
from projections.scopes import KnownGood
from services.jetstream.pack_keeper import recorded

DIGEST = "sha256:" + "ab" * 32


def _scope(release_id: str) -> SimpleNamespace:
    active = SimpleNamespace(pack=SimpleNamespace(digest=DIGEST), release_id=release_id)
    return SimpleNamespace(lkg=None, lkg_release=None, lkg_prior=None, active=active)


class _App:
    def __init__(self, releases: dict, whole: dict) -> None:
        self.follower = SimpleNamespace(world=SimpleNamespace(releases=releases, scopes={"k": _scope("r-old")}))
        self._whole = whole
        self.reads: list[str] = []

    async def release_whole(self, release_id: str):
        self.reads.append(release_id)
        return self._whole.get(release_id)


def _closed(distributed) -> SimpleNamespace:
    return SimpleNamespace(closed=True, distributed=distributed)


async def test_a_closed_release_that_never_distributed_is_read_from_the_log_once() -> None:
    app = _App({}, {"r-old": _closed(None)})
    for _ in range(5):
        assert await recorded(app, DIGEST) == {}
    assert app.reads == ["r-old"]


async def test_a_closed_release_record_is_found_once_and_kept() -> None:
    obj = StoredObject(nuid="n1", size=3, chunks=1, digest="SHA-256=" + "A" * 43 + "=")
    distributed = SimpleNamespace(pack=SimpleNamespace(digest=DIGEST), stored={"sha256-x": obj})
    app = _App({}, {"r-old": _closed(distributed)})
    assert await recorded(app, DIGEST) == {"sha256-x": obj}
    assert await recorded(app, DIGEST) == {"sha256-x": obj}
    assert app.reads == ["r-old"]


async def test_a_release_in_flight_is_taken_from_the_world_and_never_kept() -> None:
    """In flight, it may still distribute: the world's state of it, read again at each look."""
    in_flight = SimpleNamespace(closed=False, distributed=None)
    app = _App({"r-old": in_flight}, {})
    assert await recorded(app, DIGEST) == {}
    obj = StoredObject(nuid="n2", size=3, chunks=1, digest="SHA-256=" + "B" * 43 + "=")
    in_flight.distributed = SimpleNamespace(pack=SimpleNamespace(digest=DIGEST), stored={"sha256-y": obj})
    assert await recorded(app, DIGEST) == {"sha256-y": obj}
    assert app.reads == []


class _CountingReleases(dict):
    """The world's releases, counting the scans over them (`items()`)."""

    scans = 0

    def items(self):
        type(self).scans += 1
        return super().items()


async def test_a_hint_in_hand_skips_the_scan_of_every_release_and_scope() -> None:
    """The guard names the release whose pointer it checks: its record, no scan (~1 ms per new
    pack with a thousand scopes). A hint that does not hold the record falls back to the scan."""
    obj = StoredObject(nuid="n3", size=3, chunks=1, digest="SHA-256=" + "C" * 43 + "=")
    mine = SimpleNamespace(
        closed=False, distributed=SimpleNamespace(pack=SimpleNamespace(digest=DIGEST), stored={"o": obj})
    )
    other = SimpleNamespace(closed=False, distributed=None)
    releases = _CountingReleases({"r-other": other, "r-mine": mine})
    app = _App(releases, {})
    assert await recorded(app, DIGEST, "r-mine") == {"o": obj}
    assert _CountingReleases.scans == 0
    app2 = _App(_CountingReleases({"r-other": other, "r-mine": mine}), {})
    assert await recorded(app2, DIGEST, "r-other") == {"o": obj}  # the hint has no record: scanned
    assert _CountingReleases.scans == 1


async def test_a_sweep_scans_the_world_once_whatever_the_number_of_packs(monkeypatch) -> None:
    """Each active pack's record is looked up in one index built as the sweep starts. Before, each
    pack not yet kept scanned every release and scope again: quadratic in the packs running (the
    end-to-end bench with 3,000 distinct packs spent 8% of the service's CPU there)."""
    from events.manifest import pack_object_name
    from services.jetstream import pack_keeper

    digests = [f"sha256:{i:064x}" for i in range(40)]
    releases: dict = {}
    scopes: dict = {}
    for i, digest in enumerate(digests):
        obj = StoredObject(nuid=f"n{i}", size=3, chunks=1, digest="SHA-256=" + "D" * 43 + "=")
        pack = SimpleNamespace(digest=digest)
        releases[f"r{i}"] = SimpleNamespace(
            closed=False, distributed=SimpleNamespace(pack=pack, stored={pack_object_name(digest): obj})
        )
        scopes[f"s{i}"] = SimpleNamespace(
            lkg=None, lkg_release=None, lkg_prior=None, active=SimpleNamespace(pack=pack, release_id=f"r{i}")
        )
    counting = _CountingReleases(releases)
    app = SimpleNamespace(follower=SimpleNamespace(world=SimpleNamespace(releases=counting, scopes=scopes)))
    app.js, app.subjects = None, SimpleNamespace(packs_bucket="kx_packs")
    restored: list[str] = []

    async def restore(_app, objects):
        restored.extend(objects)
        return list(objects)

    monkeypatch.setattr(pack_keeper, "restore", restore)
    _CountingReleases.scans = 0
    assert sorted(await pack_keeper.PackKeeper(app).sweep()) == sorted(pack_object_name(d) for d in digests)
    assert _CountingReleases.scans == 1
    assert sorted(restored) == sorted(pack_object_name(d) for d in digests)


def test_the_index_keeps_releases_in_flight_first_then_those_scopes_name_each_once() -> None:
    from services.jetstream.pack_keeper import candidate_index

    pack = SimpleNamespace(digest=DIGEST)
    world = SimpleNamespace(
        releases={
            "r-new": SimpleNamespace(distributed=SimpleNamespace(pack=pack)),
            "r-none": SimpleNamespace(distributed=None),
        },
        scopes={
            "a": SimpleNamespace(
                lkg=pack, lkg_release="r-lkg", lkg_prior=None, active=SimpleNamespace(pack=pack, release_id="r-new")
            ),
            "b": SimpleNamespace(
                lkg=None, lkg_release=None, lkg_prior=None, active=SimpleNamespace(pack=pack, release_id="r-lkg")
            ),
            "c": SimpleNamespace(lkg=pack, lkg_release="", lkg_prior=None, active=None),
            # the LKG before the current one: where pulling the current one sends a rollback
            "d": SimpleNamespace(
                lkg=None,
                lkg_release=None,
                lkg_prior=KnownGood(PackRef(name="kb", version="1.0.0", digest=DIGEST), None, "r-prior"),
                active=None,
            ),
        },
    )
    assert candidate_index(world) == {DIGEST: ["r-new", "r-lkg", "r-prior"]}
    # one lookup indexes that digest alone (the readiness check's, on the activation path)
    other = SimpleNamespace(digest="sha256:" + "cd" * 32)
    world.releases["r-other"] = SimpleNamespace(distributed=SimpleNamespace(pack=other))
    assert candidate_index(world, frozenset({DIGEST})) == {DIGEST: ["r-new", "r-lkg", "r-prior"]}
    assert set(candidate_index(world)) == {DIGEST, other.digest}
