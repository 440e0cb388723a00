"""The fold's own state of a scope and of a channel, as the read models carry it beside their shapes.

`kxr pin` and `kxr unpin` decide on these (services/cli/pin.py) instead of folding the log: a scope's
pointer events grow with every release to it, a few seconds of signature checks at 1M events.
JSON through pydantic, as snapshots store them (projections/snapshot.py). Kept apart from
read_models.py: `kxr status` reads the models with plain JSON and never imports pydantic.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from projections.scopes import ScopeState
from projections.world import ChannelState

_SCOPE = TypeAdapter(ScopeState)
_CHANNEL = TypeAdapter(ChannelState)


def dump_scope(state: ScopeState) -> dict[str, Any]:
    return _SCOPE.dump_python(state, mode="json")


def load_scope(doc: Any) -> ScopeState:
    return _SCOPE.validate_python(doc)


def dump_channel(state: ChannelState | None) -> dict[str, Any] | None:
    return _CHANNEL.dump_python(state, mode="json") if state is not None else None


def load_channel(doc: Any) -> ChannelState | None:
    return _CHANNEL.validate_python(doc) if doc is not None else None
