"""Which consumer classes make up `kxr serve`, by role name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .activator import Activator
from .distributor import Distributor
from .consumers.guard import Guard
from .monitor import Monitor
from .notifier.consumer import Notifier
from .pinner import Pinner
from .preparer import Preparer
from .promoter import Promoter
from .verifier.adapter import Verifier

if TYPE_CHECKING:
    from .app import App

ROLE_CLASSES = {
    "preparer": Preparer,
    "distributor": Distributor,
    "verifier": Verifier,
    "activator": Activator,
    "monitor": Monitor,
    "promoter": Promoter,
    "notifier": Notifier,
    "guard": Guard,
}


def build_roles(app: "App", roles: tuple[str, ...]) -> list:
    runners = []
    for role in roles:
        runners.extend(ROLE_CLASSES[role](app).runners())
        if role == "activator":  # pins switch scope pointers, which only the activator role writes
            runners.extend(Pinner(app).runners())
    return runners
