"""Garbage collection while folding a long log: young generations only.

A replay builds a world that grows by some twenty objects an entry and holds all of
them to the end. CPython (3.11) runs a full collection whenever the objects that
survived into the oldest generation grew by a quarter, so over a long fold it walks
the whole growing world again and again: a third of a replay's time went there
(30k entries: ~50 us an entry), for no garbage, since the fold makes no cycles.

Within `young_collections_only()` the automatic collector is off and the owner calls
`step()` (once per batch of entries): that collects the young generations, where any
cyclic garbage made meanwhile (asyncio futures, exceptions) is found as before. Full
collections resume on leaving. Nested or concurrent uses leave the collector as the
outermost found it.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

_holders = 0  # folds running now (several tasks may replay at once)
_was_enabled = False


def step() -> None:
    """Collect the young generations (cheap: only what was allocated since the last step)."""
    if _holders:
        gc.collect(1)


@contextmanager
def young_collections_only() -> Iterator[None]:
    global _holders, _was_enabled
    if _holders == 0:
        _was_enabled = gc.isenabled()
        gc.disable()
    _holders += 1
    try:
        yield
    finally:
        _holders -= 1
        if _holders == 0 and _was_enabled:
            gc.enable()
