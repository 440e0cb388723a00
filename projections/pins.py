"""Rules about pins over the world, pure: one for both sides of a pin.

`kxr pin` and the dashboard refuse to write a pin the channel does not allow
(services/actions/pins.py); the pinner consumer refuses one that reached the log anyway
(records `scope.unpinned`, reason `refused`).
"""

from __future__ import annotations

from datetime import datetime

from events.model import Scope
from projections.world import World


def pin_too_long(world: World, scope: Scope, until: datetime, pinned_at: datetime) -> str | None:
    """Why a pin breaks the channel's `max_pin_days` (None: it does not).

    One rule for both sides: the CLI refuses to write such a pin, and the pinner refuses
    (records `unpinned` reason `refused`) one that reached the log anyway.
    """
    max_days = world.channel_config(scope.env, scope.channel).policy.max_pin_days
    if (until - pinned_at).total_seconds() > max_days * 86400:
        return (
            f"pins on {scope.env}/{scope.channel} may last at most {max_days} days (max_pin_days); "
            f"this one runs until {until.isoformat()}"
        )
    return None
