"""`evolve` is `dataclasses.replace` for the projections' slotted state classes, only cheaper."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from projections.evolve import evolve
from projections.invariants import Audit, SafetyMemory
from projections.releases import ReleaseState
from projections.scopes import ScopeState
from projections.world import World


@pytest.mark.parametrize(
    ("obj", "changes"),
    [
        (ReleaseState(release_id="r1"), {"phase": "prepared", "last_seq": 7, "anomalies": ("x",)}),
        (ReleaseState(release_id="r1", stage=2, paused=True), {}),
        (ScopeState(key=("prod", "canary", "all")), {"active_seq": 3, "generation": 4, "flag": None}),
        (World(applied_seq=5), {"applied_seq": 6, "trust_rotations": ((1, {}),)}),
        (Audit(), {"events": 1, "safety": SafetyMemory()}),
    ],
)
def test_evolve_is_replace(obj, changes) -> None:
    got, want = evolve(obj, changes), dataclasses.replace(obj, **changes)
    assert got == want and type(got) is type(want)
    assert all(getattr(got, f.name) is getattr(want, f.name) for f in dataclasses.fields(want))
    assert got is not obj


def test_evolve_refuses_unknown_fields_and_unslotted_classes() -> None:
    with pytest.raises(TypeError, match="no field"):
        evolve(ReleaseState(release_id="r1"), {"nope": 1})

    @dataclass(frozen=True)
    class Plain:
        a: int = 0

    with pytest.raises(TypeError, match="slotted"):
        evolve(Plain(), {"a": 1})


def test_evolve_writes_a_field_that_is_no_slot() -> None:
    @dataclass(frozen=True, slots=True)
    class Base:
        a: int = 0

    @dataclass(frozen=True)
    class Child(Base):  # its own field lives in the instance's __dict__, not in a slot
        b: int = 0

    got = evolve(Child(1, 2), {"b": 3})
    assert got == Child(1, 3) and got.__dict__ == {"b": 3}
