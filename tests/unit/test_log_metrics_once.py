"""The log-derived series are exported by one process of a deployment (KX_METRICS_LOG), so that
Prometheus' sum() over a compose deployment counts each release once, not once per container."""

from __future__ import annotations

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from events.subjects import Subjects
from projections.world import World
from services.observability.metrics import LOG_DERIVED, LagSampler, ServiceCollector
from services.observability.release_metrics import ReleaseMetrics
from services.settings import ConfigError, Settings, parse_switch
from tests.unit.test_deployment import ROOT


def families(releases: ReleaseMetrics | None) -> set[str]:
    registry = CollectorRegistry()
    registry.register(ServiceCollector(World, releases, LagSampler(None, Subjects("t"))))  # type: ignore[arg-type]
    return {f.name for f in text_string_to_metric_families(generate_latest(registry).decode())}


def test_a_process_with_the_log_series_exports_every_one_and_without_none():
    on, off = families(ReleaseMetrics()), families(None)
    assert set(LOG_DERIVED) <= on, f"missing: {set(LOG_DERIVED) - on}"
    assert off & set(LOG_DERIVED) == set(), f"exported with KX_METRICS_LOG=off: {off & set(LOG_DERIVED)}"
    lag = {"kx_consumer_pending_messages", "kx_consumer_ack_pending_messages", "kx_consumer_redelivered_messages"}
    assert lag <= off and lag <= on, "the consumers' lag is per process: exported either way"
    assert on - off == set(LOG_DERIVED), "every family that only the log process exports is in LOG_DERIVED"


def test_kx_metrics_log_is_on_or_off_and_on_by_default(monkeypatch):
    monkeypatch.delenv("KX_METRICS_LOG", raising=False)
    assert Settings.from_env().metrics_log is True  # one kxr serve alone exports everything
    monkeypatch.setenv("KX_METRICS_LOG", "off")
    assert Settings.from_env().metrics_log is False
    assert parse_switch("X", " ON ") is True and parse_switch("X", "off") is False
    with pytest.raises(ConfigError, match="KX_METRICS_LOG takes on or off, not 'yes'"):
        parse_switch("KX_METRICS_LOG", "yes")


def test_compose_exports_the_log_series_from_exactly_one_service():
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    exporting = []
    for name, svc in services.items():
        env = svc.get("environment") or {}
        if env.get("KX_METRICS_ADDR"):
            if parse_switch("KX_METRICS_LOG", env.get("KX_METRICS_LOG") or "on"):
                exporting.append(name)
    assert exporting == ["activator"], f"the log-derived series come from {exporting}: one service, or sum() lies"
