"""Deferred imports for `kxr`: a module loaded on its first use, not when something imports it.

`main.run()` defers aiohttp before any command runs: nats-py imports it at start-up for its
WebSocket transport alone, and aiohttp builds SSL contexts as it loads (~200 ms of every
command that talks to NATS, over plain nats:// too; bench/cli_start.py). Only the `kxr`
process does this: importing services.cli (tests, the service) changes nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types


class _Deferred(types.ModuleType):
    """Stands in sys.modules for a module not loaded yet; the first attribute it lacks loads it.

    importlib's LazyLoader does not do here: an `import` of a module already in sys.modules
    reads its `__spec__`, which makes a lazy module load at once. This one carries the real
    spec, so `import aiohttp` only binds the stand-in; `aiohttp.X`, `from aiohttp import X`
    or importing a submodule loads the real module, which then replaces it in sys.modules."""

    def __getattr__(self, attribute: str):
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        real = importlib.import_module(name)
        self.__dict__.update(real.__dict__)
        return getattr(real, attribute)


def defer_import(name: str) -> None:
    """Load module `name` on its first use, not when something imports it.

    For aiohttp: nats-py imports it at start-up for its WebSocket transport alone, and
    aiohttp builds SSL contexts as it loads, paid by every command even over plain nats://.
    A ws:// connection, or the dashboard, loads it in full the first time it touches it."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None:
        return
    stand_in = _Deferred(name)
    stand_in.__spec__ = spec
    sys.modules[name] = stand_in
