"""Notification sinks in the channel configuration, the webhook request and the retry policy (pure)."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime

import pytest

from events.codec import decode_event, encode_event, make_event
from events.model import Actor
from events.notifications import KIND_OF_EVENT, expand_url
from events.subjects import Subjects
from projections.releases import ReleaseState, apply_release_event
from services.actions.producer import parse_channel_config
from services.consumers.notifier.webhook import SIGNATURE_HEADER, Backoff, retry_after, webhook, worth_retrying

HOOK = {"name": "ops", "url": "https://hooks.example/kx", "on": ["rolled_back"]}
PRODUCER = Actor(kind="producer", id="ci")
SERVICE = Actor(kind="service", id="activator")
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def channel(*sinks: dict) -> dict:
    return {"cohorts": [{"name": "all"}], "notifications": list(sinks)}


def problems_of(doc: dict) -> str:
    with pytest.raises(ValueError) as info:
        parse_channel_config(doc, "canary")
    return str(info.value)


def test_a_sound_sink_is_kept_with_its_defaults() -> None:
    cfg = parse_channel_config(
        channel({**HOOK, "on": ["rolled_back", "held", "escalated"], "secret_env": "KX_HOOK_SECRET"}), "canary"
    )
    (sink,) = cfg.notifications
    assert (sink.name, sink.on, sink.secret_env, sink.attempts, sink.format) == (
        "ops",
        ["rolled_back", "held", "escalated"],
        "KX_HOOK_SECRET",
        5,
        "json",  # a configuration written before formats existed posts what it always posted
    )
    slack = parse_channel_config(channel({**HOOK, "format": "slack"}), "canary").notifications[0]
    assert slack.format == "slack"
    assert parse_channel_config({"cohorts": [{"name": "all"}]}, "canary").notifications == []


@pytest.mark.parametrize(
    "sink, expected",
    [
        ({**HOOK, "retries": 3}, "notifications[0].retries: unknown field"),
        ({**HOOK, "url": "ftp://hooks.example/kx"}, "must be an http:// or https:// URL"),
        ({**HOOK, "url": "https://user:pw@hooks.example/kx"}, "must not carry credentials"),
        ({**HOOK, "url": "https:///kx"}, "must name a host"),
        ({**HOOK, "url": "https://hooks.example:70000/kx"}, "is not a URL"),
        ({**HOOK, "url": "https://hooks.example/ kx"}, "must not contain whitespace"),
        ({**HOOK, "on": []}, "notifications.0.on"),
        ({**HOOK, "on": ["rolled_back", "rolled_back"]}, "names a kind twice"),
        ({**HOOK, "on": ["promoted"]}, "notifications.0.on.0"),
        ({**HOOK, "secret_env": "not a name"}, "is not an environment variable name"),
        # Python's `$` also matches before a final newline: the name is checked whole (as the schema's
        # pattern is read by ECMA-262, which found it: tests/unit/test_schema_acceptance.py)
        ({**HOOK, "secret_env": "KX_HOOK_SECRET\n"}, "is not an environment variable name"),
        ({**HOOK, "attempts": 0}, "notifications.0.attempts"),
        ({**HOOK, "attempts": 11}, "notifications.0.attempts"),
        ({**HOOK, "name": "a.b"}, "notifications.0.name"),
        ({**HOOK, "format": "discord"}, "notifications.0.format"),
    ],
)
def test_a_bad_sink_is_one_clear_problem(sink: dict, expected: str) -> None:
    assert expected in problems_of(channel(sink))


def test_sink_names_are_unique() -> None:
    assert "notification sink names must be unique" in problems_of(
        channel(HOOK, {**HOOK, "url": "https://other.example/"})
    )


def test_each_kind_comes_from_one_event() -> None:
    assert set(KIND_OF_EVENT.values()) == {"rolled_back", "held", "escalated", "flagged"}
    assert KIND_OF_EVENT["release.monitoring_inconclusive"] == "held"
    assert KIND_OF_EVENT["scope.flagged"] == "flagged"  # the guard's flag on a settled scope


def _rolled_back_release() -> tuple[ReleaseState, object]:
    requested = make_event(
        "release.requested",
        {
            "pack": {"name": "kb", "version": "1.1.0", "digest": "sha256:" + "a" * 64},
            "target": {"env": "prod", "channel": "canary"},
            "owner": "kb-team",
            "escalation": "pager:kb",
        },
        actor=PRODUCER,
        release_id="r2",
        occurred_at=NOW,
    )
    rolled = make_event(
        "release.rolled_back",
        {"cohorts": ["internal"], "targets": {"internal": None}},
        actor=SERVICE,
        release_id="r2",
        event_id="ev-rb",
        occurred_at=NOW,
    )
    release = apply_release_event(ReleaseState(release_id="r2"), 1, requested)
    return release, rolled


def test_the_webhook_names_the_event_and_is_signed_over_its_exact_bytes() -> None:
    release, rolled = _rolled_back_release()
    cfg = parse_channel_config(channel({**HOOK, "secret_env": "S"}), "canary")
    hook = webhook("rolled_back", cfg.notifications[0], rolled, release, "s3cret")
    assert hook.url == HOOK["url"] and hook.headers["Idempotency-Key"] == "ev-rb"
    expected = "sha256=" + hmac.new(b"s3cret", hook.body, hashlib.sha256).hexdigest()
    assert hook.headers[SIGNATURE_HEADER] == expected
    body = json.loads(hook.body)
    assert (body["kind"], body["release_id"], body["event_id"], body["event_type"]) == (
        "rolled_back",
        "r2",
        "ev-rb",
        "release.rolled_back",
    )
    assert body["target"] == {"env": "prod", "channel": "canary"} and body["pack"]["version"] == "1.1.0"
    assert body["owner"] == "kb-team" and body["escalation"] == "pager:kb"
    unsigned = webhook("rolled_back", cfg.notifications[0], rolled, release, None)
    assert SIGNATURE_HEADER not in unsigned.headers and unsigned.body == hook.body


def test_backoff_doubles_up_to_its_cap_with_jitter_and_only_transient_failures_are_retried() -> None:
    backoff = Backoff(first_s=0.5, cap_s=3.0)
    assert [backoff.ceiling(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert [backoff.delay(n, draw=0.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert [backoff.delay(n, draw=0.999) for n in range(1, 4)] == pytest.approx([0.25, 0.5, 1.0], abs=0.01)
    # the dice are really thrown: jittered pauses spread over ((1 - jitter)·d, d]
    pauses = {backoff.delay(3) for _ in range(50)}
    assert len(pauses) > 40 and all(1.0 < p <= 2.0 for p in pauses)
    assert all(worth_retrying(s) for s in (None, 408, 425, 429, 500, 503))
    assert not any(worth_retrying(s) for s in (301, 400, 401, 404, 410))


def test_notification_outcomes_live_under_the_release_outside_its_lifecycle_filter() -> None:
    subjects = Subjects()
    event = make_event(
        "notification.failed",
        {
            "sink": "ops",
            "kind": "held",
            "trigger": "ev-1",
            "trigger_type": "release.monitoring_inconclusive",
            "attempts": 2,
            "error": "HTTP 503",
        },
        actor=Actor(kind="service", id="notifier"),
        release_id="r1",
    )
    subject = subjects.expected_subject(event.type, event.release_id, None)
    assert subject == "kx.release.r1.notification.failed" == subjects.notification("r1", "failed")
    assert decode_event(encode_event(event), subject, subjects) == event
    # one token deeper than kx.release.r1.*: never part of the release's optimistic concurrency
    assert subjects.notification_filter("r1") == "kx.release.r1.notification.*"
    assert subject.count(".") == subjects.release_filter("r1").count(".") + 1


def test_retry_after_is_honoured_as_seconds_or_an_http_date_and_capped() -> None:
    now = NOW.timestamp()
    assert retry_after("7", now) == 7.0
    assert retry_after("Tue, 01 Jan 2030 00:00:30 GMT", now) == 30.0
    assert retry_after("Mon, 31 Dec 2029 23:00:00 GMT", now) == 0.0  # a date past: no wait asked
    assert retry_after(None, now) is None and retry_after("soon", now) is None and retry_after("-3", now) is None
    backoff = Backoff(first_s=0.5, cap_s=3.0, retry_after_cap_s=20.0)
    assert backoff.pause(1, 7.0, draw=0.0) == 7.0  # longer than the back-off: the receiver's word
    assert backoff.pause(3, 0.5, draw=0.0) == 2.0  # shorter: the back-off still applies
    assert backoff.pause(1, 3600.0, draw=0.0) == 20.0  # capped: an hour's pause would stall the notifier
    assert backoff.pause(1, None, draw=0.0) == 0.5


def test_a_url_may_take_its_secret_part_from_the_notifiers_environment() -> None:
    url = "https://hooks.slack.example/services/${KX_HOOK_SLACK_PATH}?x=${KX_HOOK_Q}"
    (sink,) = parse_channel_config(channel({**HOOK, "url": url, "format": "slack"}), "canary").notifications
    assert expand_url(sink.url, {"KX_HOOK_SLACK_PATH": "T0/B0/s3cret", "KX_HOOK_Q": "1"}) == (
        "https://hooks.slack.example/services/T0/B0/s3cret?x=1"
    )
    with pytest.raises(ValueError) as unset:
        expand_url(sink.url, {"KX_HOOK_Q": "1", "KX_HOOK_SLACK_PATH": ""})
    assert str(unset.value) == "url names ${KX_HOOK_SLACK_PATH}, not set in the notifier's environment"
    for value, why in (("a#frag", "must not have a #fragment"), ("a b", "must not contain whitespace")):
        with pytest.raises(ValueError, match=why) as bad:
            expand_url(sink.url, {"KX_HOOK_SLACK_PATH": value, "KX_HOOK_Q": "1"})
        assert value not in str(bad.value)  # the secret never reaches the recorded error
    for url, why in (
        ("https://${KX_HOST}/hook", "only in its path or query"),
        ("https://u${KX_PW}@hooks.example/", "only in its path or query"),
        ("https://hooks.example/${lower-case}", "not ${ENV_VAR_NAME}"),
        ("https://hooks.example/${KX", "not ${ENV_VAR_NAME}"),
    ):
        assert why in problems_of(channel({**HOOK, "url": url}))


@pytest.mark.parametrize(
    "name", ["KX_NATS_URL", "OTEL_EXPORTER_OTLP_HEADERS", "AWS_SECRET_ACCESS_KEY", "KX_OPS_SECRET"]
)
def test_only_variables_named_kx_hook_are_filled_into_a_url(name) -> None:
    """Whoever configures a channel chooses the URL's host: any other variable of the service's
    environment (its NATS password in KX_NATS_URL, tracing headers, cloud keys) would go there. Such a
    sink still decodes (a configuration written before the rule keeps working); its posts fail, saying
    why and naming the variable, never its value, nor whether it is set."""
    url = "https://collector.example/c?x=${" + name + "}&p=${KX_HOOK_PATH}"
    (sink,) = parse_channel_config(channel({**HOOK, "url": url}), "canary").notifications
    secret = "nats://kx-service:s3cret-password@nats:4222"
    for env in ({name: secret, "KX_HOOK_PATH": "p"}, {"KX_HOOK_PATH": "p"}):  # set or not: the same answer
        with pytest.raises(ValueError) as refused:
            expand_url(sink.url, env)
        assert str(refused.value) == (
            "url names ${" + name + "}: only variables named KX_HOOK_* are filled into a webhook URL"
        )
        assert secret not in str(refused.value)
