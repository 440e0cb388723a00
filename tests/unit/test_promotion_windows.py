"""A promotion watches longer, and keeps the release's own success criteria (found by a spec audit).

The seed's minimum windows: "Canary: short but real; Stable: longer (enough to catch delayed
regressions)"; and "Define success criteria per release". Before: a promotion went to a next channel
watching no longer than the canary (nothing compared them), and the linked release dropped the
request's own `monitoring` (stricter thresholds, a longer window, more samples) for the next
channel's defaults while it carried `acknowledge_no_health` over.
"""

from __future__ import annotations

from typing import Any

import pytest

from events.channel import ChannelConfig, promotion_window_problems
from projections.invariants import check_safety
from projections.position import positions
from projections.world import World, apply
from services.consumers import preparer
from services.consumers.outputs import Promotion
from tests.unit.test_decisions import events_of, promote, single_event, state
from tests.unit.test_projections import CHANNEL_DOC, P0, Log


def _channel(window_s: int, **extra: Any) -> dict[str, Any]:
    return {**CHANNEL_DOC, "monitoring": {**CHANNEL_DOC["monitoring"], "window_s": window_s}, **extra}


def passed_everywhere(stable_window: int | None, monitoring: dict[str, Any] | None = None) -> Log:
    """canary (window 300, promote_to stable), stable configured with `stable_window` (None: not at all);
    r1 (its request asking `monitoring`) passed both stages of the canary on data."""
    log = Log()
    log.channel(_channel(300, promote_to="stable"))
    if stable_window is not None:
        log.channel(_channel(stable_window), channel="stable")
    log.two_stage_success("r0", P0)
    log.requested("r1", **({"monitoring": monitoring} if monitoring else {}))
    log.prepared("r1", window_s=300)
    log.distributed("r1")
    log.verified("r1")
    log.stage("r1", 0, ["internal"])
    log.expanded("r1", 0, 1, ["rest"])
    log.stage("r1", 1, ["rest"])
    return log


@pytest.mark.parametrize("stable_window", [300, 120])
def test_a_promotion_to_a_channel_that_watches_no_longer_is_withheld(stable_window: int) -> None:
    event = single_event(promote(passed_everywhere(stable_window)))
    assert (event.type, event.data.outcome) == ("release.closed", "success")
    assert event.data.summary == (
        f"all 2 stage(s) passed monitoring; promotion to stable withheld: prod/stable watches {stable_window}s, "
        "no longer than prod/canary's 300s (a wider channel must watch longer: raise prod/stable's monitoring.window_s)"
    )


@pytest.mark.parametrize("stable_window", [301, 3600, None])
def test_a_channel_that_watches_longer_or_is_not_configured_is_promoted_to(stable_window: int | None) -> None:
    """None: the linked release's pre-flight says the channel has no configuration (`target_exists`)."""
    out = promote(passed_everywhere(stable_window))
    assert [type(o).__name__ for o in out] == ["Promotion"]  # one atomic batch, `promoted` first
    assert [e.type for e in events_of(out)] == ["release.promoted", "release.requested"]


def test_the_linked_release_keeps_the_requests_criteria_the_stricter_of_it_and_the_next_channel() -> None:
    asked = {"window_s": 600, "min_samples": 5, "thresholds": {"error_rate_max": 0.01, "latency_p95_ms_max": 250}}
    out = promote(passed_everywhere(3600, asked))
    (new,) = [o.request for o in out if isinstance(o, Promotion)]
    m = new.data.monitoring
    assert (m.window_s, m.min_samples) == (3600, 5)  # stable's longer window; the request's larger sample count
    assert (m.thresholds.error_rate_max, m.thresholds.latency_p95_ms_max) == (0.01, 250)

    # and the linked release's pre-flight judges with them: tightened over stable's own (error_rate_max 0.05)
    log = passed_everywhere(3600, asked)
    log.events.append(new)
    world, linked = state(log, new.release_id)
    effective = preparer.effective_monitoring(linked.requested.monitoring, world.channel_config("prod", "stable"))
    assert (effective.window_s, effective.min_samples, effective.thresholds.error_rate_max) == (3600, 5, 0.01)


def test_a_request_window_longer_than_the_next_channels_is_kept() -> None:
    out = promote(passed_everywhere(3600, {"window_s": 7200, "min_samples": 1}))
    (new,) = [o.request for o in out if isinstance(o, Promotion)]
    assert (new.data.monitoring.window_s, new.data.monitoring.min_samples) == (7200, 2)  # stable's min_samples 2


def test_a_request_that_asked_nothing_leaves_the_next_channels_defaults() -> None:
    (new,) = [o.request for o in promote(passed_everywhere(3600)) if isinstance(o, Promotion)]
    assert new.data.monitoring is None


def test_the_safety_check_flags_a_promotion_no_longer_watched() -> None:
    """`kxr audit replay` (and the lifecycle model) see the rule broken in a log, whoever wrote it."""
    for stable_window, expected in ((300, ["promotion_not_watched_longer"]), (301, [])):
        log = passed_everywhere(stable_window)
        promoted = log.promoted("r1")
        world, found = World(), []
        for position, event in positions(log.events):
            if event is promoted:
                found = [v.code for v in check_safety(world, position, event)]
            world = apply(world, position, event)
        assert found == expected, stable_window


# ---- the same rule at `kxr channel set` (pure part; the CLI's read of the other channels: tests/e2e) ----


def _cfg(window_s: int, promote_to: str | None = None) -> ChannelConfig:
    return ChannelConfig.model_validate(_channel(window_s, **({"promote_to": promote_to} if promote_to else {})))


def test_a_configuration_must_watch_less_than_where_it_promotes_and_more_than_what_promotes_to_it() -> None:
    assert promotion_window_problems("canary", _cfg(300, "stable"), {"stable": _cfg(3600)}) == []
    assert promotion_window_problems("canary", _cfg(300, "stable"), {}) == []  # stable not configured yet
    assert promotion_window_problems("canary", _cfg(300, "stable"), {"stable": _cfg(300)}) == [
        "monitoring.window_s 300s: stable, which this channel promotes to, watches 300s; "
        "a promotion must watch longer (raise stable's window first)"
    ]
    assert promotion_window_problems("stable", _cfg(300, "lts"), {"canary": _cfg(600, "stable")}) == [
        "monitoring.window_s 300s: canary promotes to this channel and watches 600s; this channel must watch longer"
    ]
    # a chain canary -> stable -> lts, every link checked from the middle
    others = {"canary": _cfg(60, "stable"), "lts": _cfg(86400)}
    assert promotion_window_problems("stable", _cfg(3600, "lts"), others) == []
    assert len(promotion_window_problems("stable", _cfg(86400, "lts"), others)) == 1
    # a channel promoting elsewhere is no neighbour
    assert promotion_window_problems("stable", _cfg(60), {"canary": _cfg(600, "other")}) == []
