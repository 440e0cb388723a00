"""services/jetstream/fold_gc.py: the collector is paused for full collections only while folds run, then restored."""

from __future__ import annotations

import gc

from services.jetstream.fold_gc import step, young_collections_only


def _cycle() -> None:
    a: list = []
    a.append(a)


def test_pause_restores_the_collector_as_found_even_nested_and_on_error() -> None:
    assert gc.isenabled()
    try:
        with young_collections_only():
            assert not gc.isenabled()
            with young_collections_only():
                assert not gc.isenabled()
            assert not gc.isenabled()  # the outer fold still runs
            raise RuntimeError("fold failed")
    except RuntimeError:
        pass
    assert gc.isenabled()
    gc.disable()
    try:
        with young_collections_only():
            pass
        assert not gc.isenabled()  # a collector the caller had turned off stays off
    finally:
        gc.enable()


def test_a_step_collects_young_cyclic_garbage_while_paused() -> None:
    gc.collect()
    with young_collections_only():
        for _ in range(100):
            _cycle()
        before = gc.get_count()[0]
        assert before >= 100  # nothing collected automatically
        step()
        assert gc.get_count()[0] < before  # the step did


def test_a_step_outside_a_fold_does_nothing() -> None:
    gc.disable()  # no automatic collection in between: the count only moves if step() collects
    try:
        _cycle()
        count = gc.get_count()[0]
        step()
        assert gc.get_count()[0] == count
    finally:
        gc.enable()
