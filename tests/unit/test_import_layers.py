"""What importing a room loads: the runtime SDK is embedded by runtimes, so it must not drag in the
service's consumer framework; the App is built on by the composition root, never the other way.

Each import runs in a fresh interpreter (`python -c`): this process has imported everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def loaded_by(module: str) -> list[str]:
    """The `services.*` modules a fresh interpreter holds after `import module`."""
    code = f"import json, sys, {module}; print(json.dumps(sorted(m for m in sys.modules if m.startswith('services'))))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(done.stdout)


def consumer_framework(modules: list[str], allowed: frozenset[str] = frozenset()) -> list[str]:
    return [
        m
        for m in modules
        if m not in allowed
        and (
            m == "services.consumers"
            or m.startswith("services.consumers.")
            or m == "services.jetstream.worker"
            or m == "services.bootstrap"
        )
    ]


@pytest.mark.parametrize(
    "module",
    [
        "services.runtime.sdk",
        "services.runtime.simulation",
        "services.runtime.process",
        "services.verification.context",
        "services.verification.pipeline",
        "services.actions.operator",
        "services.actions.offline",
    ],
)
def test_runtime_verification_and_actions_load_nothing_of_the_consumer_framework(module: str) -> None:
    assert consumer_framework(loaded_by(module)) == []


def test_the_app_loads_no_consumer_and_not_the_composition_root() -> None:
    # the decision vocabulary `App.emit` performs is the one consumer-side module it may load
    vocabulary = frozenset({"services.consumers", "services.consumers.outputs"})
    assert consumer_framework(loaded_by("services.app"), allowed=vocabulary) == []
