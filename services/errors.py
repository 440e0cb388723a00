"""Refusals shared across rooms: kept below both the operator actions (services/actions/) and
the consumers whose pure rules build operator events (the pinner's pin/unpin), so neither
imports the other for them."""

from __future__ import annotations


class OperatorError(ValueError):
    """The action does not apply to the release (or scope) as it stands."""
