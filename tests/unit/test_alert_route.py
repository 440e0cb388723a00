"""Pre-flight's `alert_route` item: a release that can roll back reaches someone, or the channel says why not."""

from __future__ import annotations

from typing import Any

import pytest

from events.channel import ChannelConfig
from services.actions.producer import parse_channel_config
from services.consumers import preparer
from services.consumers.outputs import Ctx

from .test_projections import CHANNEL_DOC, NOW, P0, P1, Log

SINK = {"name": "ops", "url": "https://hooks.example/kx"}


def prepared_or_rejected(channel: dict[str, Any], **request: Any):
    log = Log()
    log.channel(channel)
    log.two_stage_success("r0", P0)
    request.setdefault("acknowledge_no_health", True)
    log.requested("r1", P1, **request)
    world = log.world()
    release = world.release("r1")
    assert release is not None
    (out,) = preparer.decide(world, release, Ctx(now=NOW, service="preparer"), None)
    (event,) = out.events
    return event


def item(event) -> tuple[bool, str] | None:
    checklist = event.data.checklist if event.type == "release.prepared" else None
    if checklist is None:
        reasons = {r.code: r.message for r in event.data.reasons}
        return (False, reasons["alert_route"]) if "alert_route" in reasons else None
    found = [(i.ok, i.detail) for i in checklist if i.item == "alert_route"]
    return found[0] if found else None


def test_a_sink_on_rollbacks_and_escalations_is_the_route() -> None:
    doc = {**CHANNEL_DOC, "notifications": [{**SINK, "on": ["rolled_back", "escalated", "held"]}]}
    assert item(prepared_or_rejected(doc)) == (True, "rollbacks and escalations notify ops")


def test_no_route_is_a_recorded_warning_naming_what_is_missing() -> None:
    held_only = {**CHANNEL_DOC, "notifications": [{**SINK, "on": ["held", "escalated"]}]}
    event = prepared_or_rejected(held_only)
    assert event.type == "release.prepared"  # a warning: channels configured before issue 16 still release
    ok, detail = item(event) or (None, "")
    assert ok is True and detail.startswith("warning: no notification sink is subscribed to rolled_back,")
    assert "[policy] alert_waiver" in detail
    ok, detail = item(prepared_or_rejected(CHANNEL_DOC)) or (None, "")
    assert ok is True and "subscribed to rolled_back or escalated" in detail


def test_a_waiver_is_recorded_with_its_reason() -> None:
    doc = {**CHANNEL_DOC, "policy": {"alert_waiver": "paged by the SRE dashboard", "require_alert_route": True}}
    ok, detail = item(prepared_or_rejected(doc)) or (None, "")
    assert ok is True and detail.endswith("waived by the channel: paged by the SRE dashboard")


def test_a_channel_that_requires_a_route_rejects_a_release_without_one() -> None:
    doc = {**CHANNEL_DOC, "policy": {"require_alert_route": True}}
    event = prepared_or_rejected(doc)
    assert event.type == "release.rejected"
    assert [r.code for r in event.data.reasons] == ["alert_route"]
    assert "the channel requires an alert route" in event.data.reasons[0].message
    routed = {**doc, "notifications": [{**SINK, "on": ["rolled_back", "escalated"]}]}
    assert prepared_or_rejected(routed).type == "release.prepared"


def _first_release(channel: dict[str, Any]):
    log = Log()
    log.channel(channel)
    log.requested("r1", P1, acknowledge_no_health=True, rollback={"strategy": "none"})
    world = log.world()
    release = world.release("r1")
    assert release is not None
    return preparer.preflight(world, release, Ctx(now=NOW, service="preparer"), None)


def test_a_release_that_cannot_roll_back_needs_its_escalation_to_reach_someone() -> None:
    """Strategy none (a scope's first release: nothing to go back to) fails into `escalated`, the very
    alert the seed's pre-flight asks to confirm (the spec audit: the item was skipped for it). A route
    for escalations is enough; none is a warning, or a refusal where the channel requires a route."""
    items, prepared = _first_release(CHANNEL_DOC)
    found = [(i.ok, i.detail) for i in items if i.item == "alert_route"]
    assert prepared is not None and found == [
        (
            True,
            "warning: no notification sink is subscribed to escalated, so it would reach nobody "
            "(add a [[notifications]] sink, or record [policy] alert_waiver)",
        )
    ]
    escalations = {**CHANNEL_DOC, "notifications": [{**SINK, "on": ["escalated"]}]}
    items, prepared = _first_release(escalations)
    assert prepared is not None
    assert [(i.ok, i.detail) for i in items if i.item == "alert_route"] == [(True, "escalations notify ops")]
    items, prepared = _first_release({**CHANNEL_DOC, "policy": {"require_alert_route": True}})
    assert prepared is None and [i.ok for i in items if i.item == "alert_route"] == [False]


def test_the_policy_fields_are_optional_and_a_blank_waiver_is_refused() -> None:
    old = ChannelConfig.model_validate(CHANNEL_DOC)  # a configuration written before issue 16
    assert (old.policy.alert_waiver, old.policy.require_alert_route) == (None, False)
    with pytest.raises(ValueError, match="policy.alert_waiver must give a reason"):
        parse_channel_config({**CHANNEL_DOC, "policy": {"alert_waiver": "   "}}, "canary")
    with pytest.raises(ValueError, match="alert_waiver"):
        parse_channel_config({**CHANNEL_DOC, "policy": {"alert_waiver": ""}}, "canary")
