"""The subject parsers are the inverses of the builders (issue 15: no hand-splitting of subjects).

A parser returns None for anything its builder could not have produced, so a consumer never
indexes into a subject of the wrong shape or takes a hostile token for a scope or a runtime.
"""

from __future__ import annotations

import pytest

from events.subjects import HealthParts, ScopeParts, Subjects

S = Subjects()
OTHER = Subjects("t1")


@pytest.mark.parametrize("subjects", [S, OTHER])
def test_health_parts_round_trip_the_builder(subjects: Subjects) -> None:
    parts = HealthParts("prod", "canary", "internal", "rt-1_a")
    assert subjects.health_parts(subjects.health(*parts)) == parts
    assert subjects.health_parts(subjects.health(*parts)).cohort == "internal"


@pytest.mark.parametrize("subjects", [S, OTHER])
def test_scope_of_round_trips_every_scope_event(subjects: Subjects) -> None:
    for suffix in ("activated", "pinned", "unpinned", "rolled_back"):
        assert subjects.scope_of(subjects.scope("prod", "stable", "all", suffix)) == ScopeParts(
            "prod", "stable", "all", suffix
        )


@pytest.mark.parametrize("subjects", [S, OTHER])
def test_release_id_of_round_trips_lifecycle_and_notification_subjects(subjects: Subjects) -> None:
    assert Subjects.release_id_of(subjects.release("r-42", "verified")) == "r-42"
    assert Subjects.release_id_of(subjects.notification("r-42", "sent")) == "r-42"


@pytest.mark.parametrize(
    "subject",
    [
        "kx.health.prod.canary.internal",  # a token short (the cohort filter's shape without the wildcard)
        "kx.health.prod.canary.internal.rt-1.extra",  # a token too many
        "kx.health.prod.canary.internal.*",  # a wildcard is not a runtime
        "kx.health.prod.canary.>.rt-1",
        "kx.health.prod..internal.rt-1",  # an empty token
        "kx.health.prod.canary.internal.rt 1",
        "kx.health.prod.canary.internal.rt$1",
        "kx.health.prod.canary.internal." + "r" * 65,  # longer than a token may be
        "kx.health.prod.canary.internal.rt-\u00e9",  # not ASCII
        "t1.health.prod.canary.internal.rt-1",  # another installation's prefix
        "kx.scope.prod.canary.internal.activated",  # another family
        "",
        "kx",
    ],
)
def test_health_parts_refuses_what_the_builder_cannot_produce(subject: str) -> None:
    assert S.health_parts(subject) is None


@pytest.mark.parametrize(
    "subject",
    [
        "kx.scope.prod.canary.all",
        "kx.scope.prod.canary.all.pinned.x",
        "kx.scope.prod.canary.*.pinned",
        "kx.scope.prod.canary..pinned",
        "kx.health.prod.canary.all.rt-1",
        "t1.scope.prod.canary.all.pinned",
        "kx.release.r1.pinned",
    ],
)
def test_scope_of_refuses_what_the_builder_cannot_produce(subject: str) -> None:
    assert S.scope_of(subject) is None


@pytest.mark.parametrize(
    "subject",
    [
        "kx.release.r1",  # no event suffix
        "kx.release.*.verified",  # a wildcard, not a release
        "kx.release..verified",
        "kx.scope.prod.canary.all.pinned",
        "kx.timer.fire.r1.0",
        "kx.trust.rotated",
        "",
    ],
)
def test_release_id_of_is_none_for_anything_else(subject: str) -> None:
    assert Subjects.release_id_of(subject) is None


def test_release_id_of_reads_any_prefix() -> None:
    """The log context is taken where the installation's prefix is not at hand (services/observability/logs.py)."""
    assert Subjects.release_id_of(Subjects("other").release("r1", "paused")) == "r1"
