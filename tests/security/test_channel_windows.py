"""`kxr channel set`'s check of the promotion windows, as the operator user runs it (real per-role users).

The check reads the newest configuration of every channel of the environment (one multi-last direct get
on the log), which the operator role must be allowed; a configuration that does not decode is named,
never taken for "no configuration".
"""

from __future__ import annotations

import uuid

import pytest

from events.channel import ChannelConfig
from services.actions.producer import configure_channel, promotion_window_conflicts
from services.jetstream.log import EventLog
from tests.harness import CHANNEL, OPERATOR

pytestmark = pytest.mark.security


def _cfg(window_s: int, promote_to: str | None = None) -> ChannelConfig:
    return ChannelConfig.model_validate(
        {**CHANNEL, "monitoring": {**CHANNEL["monitoring"], "window_s": window_s}, "promote_to": promote_to}
    )


async def test_the_operator_checks_the_windows_against_every_channel_and_names_what_it_cannot_read(authed, as_role):
    s = authed.subjects
    operator = await as_role("operator")
    env = "pw" + uuid.uuid4().hex[:6]  # an environment of its own: the module's server is shared
    log = EventLog(operator.nc, operator.js, s)
    await configure_channel(log, operator.js, env, "stable", _cfg(300), OPERATOR)
    await configure_channel(log, operator.js, env, "lts", _cfg(86400), OPERATOR)

    assert await promotion_window_conflicts(operator.js, s, env, "canary", _cfg(60, "stable")) == ([], [], [])
    conflicts, unchecked, _ = await promotion_window_conflicts(operator.js, s, env, "canary", _cfg(300, "stable"))
    assert (
        conflicts
        == [
            "monitoring.window_s 300s: stable, which this channel promotes to, watches 300s; "
            "a promotion must watch longer (raise stable's window first)"
        ]
        and unchecked == []
    )
    await configure_channel(log, operator.js, env, "canary", _cfg(60, "stable"), OPERATOR)
    conflicts, _, _ = await promotion_window_conflicts(operator.js, s, env, "stable", _cfg(30, "lts"))
    assert conflicts == [
        "monitoring.window_s 30s: canary promotes to this channel and watches 60s; this channel must watch longer"
    ]

    # a writer's junk on a channel's subject: reported by name and sequence, never read as "not configured"
    ack = await operator.js.publish(s.channel(env, "junk"), b'{"type": "channel.configured", "data": 7}')
    conflicts, unchecked, _ = await promotion_window_conflicts(operator.js, s, env, "stable", _cfg(3600, "lts"))
    assert conflicts == []
    assert len(unchecked) == 1 and unchecked[0].startswith(f"{env}/junk: its configuration (seq {ack.seq}) does not")


async def test_a_read_that_fails_is_said_and_checks_nothing(authed, as_role):
    """The check is the operator's early warning (the promoter enforces the rule): a read that fails is
    named, never taken for "no other channel", and it does not stop the write."""
    operator = await as_role("operator")
    await operator.nc.close()
    conflicts, unchecked, notes = await promotion_window_conflicts(
        operator.js, authed.subjects, "prod", "canary", _cfg(60)
    )
    assert conflicts == [] and notes == [] and len(unchecked) == 1
    assert unchecked[0].startswith("prod/*: the other channels' configurations could not be read: ")
