"""The e2e scenarios again, unchanged, against the 3-node cluster with R3 streams.

The test functions are the e2e tier's own (imported); only `nats_url` (the cluster's
URLs) and the environment of every `kxr` (KX_REPLICAS=3) differ.
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import kx, nc  # noqa: F401  (fixtures)
from tests.e2e.test_contract_client import test_contract_only_client_releases_a_pack_end_to_end  # noqa: F401
from tests.e2e.test_operator_cli import test_operator_and_auditor_commands_end_to_end  # noqa: F401
from tests.e2e.test_serve import (  # noqa: F401
    rig,
    test_failing_window_rolls_back_to_last_known_good,
    test_healthy_release_closes_success_and_pointer_holds_new_pack,
    test_tampered_bytes_never_activate,
    test_two_serve_processes_activate_each_cohort_once,
)

pytestmark = pytest.mark.cluster


@pytest.fixture
def nats_url(cluster) -> str:
    return cluster.url  # all three nodes, comma-separated, as KX_NATS_URL would hold them


@pytest.fixture
def kx_env_extra() -> dict[str, str]:
    return {"KX_REPLICAS": "3"}


@pytest.fixture
def window_s() -> float:
    """The contract client's monitoring windows: in one CI run a 3-node cluster beside two other test
    workers on 2 cores kept one runtime past a 3 s window (its twin, given the same batch, made it)."""
    return 6
