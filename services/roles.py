"""Which consumer classes make up `kxr serve`, by role name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.consumers.activator import Activator
from services.consumers.distributor import Distributor
from .consumers.guard import Guard
from services.consumers.monitoring.monitor import Monitor
from services.consumers.notifier.consumer import Notifier
from services.consumers.pinner import Pinner
from services.consumers.preparer import Preparer
from services.consumers.promoter import Promoter
from services.consumers.verifier.adapter import Verifier

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
