"""The metrics fold, structured log lines and their context, and the settings that turn them on (pure)."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime, timedelta

import pytest

from events.codec import make_event
from events.model import Actor
from services.observability.endpoint import parse_listen_address
from services.observability.logs import JsonFormatter, TextFormatter, log_context, log_format, message_ids
from services.observability.release_metrics import ReleaseMetrics
from services.settings import ConfigError

T0 = datetime(2030, 1, 1, tzinfo=UTC)
SERVICE = Actor(kind="service", id="test")
PACK = {"name": "kb", "version": "1.0.0", "digest": "sha256:" + "1" * 64}


def ev(event_type: str, release_id: str, data: dict, at: float = 0.0):
    return make_event(event_type, data, actor=SERVICE, release_id=release_id, occurred_at=T0 + timedelta(seconds=at))


def requested(release_id: str, at: float = 0.0):
    return ev(
        "release.requested",
        release_id,
        {"pack": PACK, "target": {"env": "prod", "channel": "canary"}, "owner": "o", "escalation": "e"},
        at,
    )


def activated(release_id: str, at: float, stage: int = 0):
    return ev(
        "release.activated", release_id, {"stage": stage, "cohorts": ["internal"], "pack": PACK, "batch_id": "b"}, at
    )


def test_the_fold_counts_outcomes_gates_rollbacks_holds_and_first_activation_latency() -> None:
    m = ReleaseMetrics()
    events = [
        requested("r1"),
        activated("r1", 4.0),
        activated("r1", 50.0, stage=1),  # only the first activation counts
        ev("release.closed", "r1", {"outcome": "success"}, 60),
        requested("r2", 100),
        ev(
            "release.verification_failed",
            "r2",
            {
                "gate": "signature",
                "code": "threshold_not_met",
                "message": "no",
                "reference_time": "2030-01-01T00:00:00Z",
            },
            101,
        ),
        ev("release.closed", "r2", {"outcome": "failed"}, 102),
        requested("r3", 200),
        activated("r3", 290.0),
        ev("release.monitoring_inconclusive", "r3", {"stage": 0}, 300),
        ev("release.rollback_started", "r3", {"trigger": "operator", "reason": "why", "targets": {}}, 310),
        ev("release.escalated", "r3", {"code": "c", "message": "m", "escalation": "e"}, 320),
        ev(
            "notification.sent",
            "r3",
            {"sink": "ops", "kind": "escalated", "trigger": "x", "trigger_type": "release.escalated", "attempts": 1},
            321,
        ),
    ]
    for seq, event in enumerate(events, 1):
        m.apply(seq, event)
    m.apply(len(events) + 1, None)  # an entry that did not decode still moves the position
    m.apply(3, activated("r9", 1.0))  # already applied: ignored
    view = m.view()
    assert view.applied_seq == len(events) + 1
    assert view.outcomes == {"success": 1, "failed": 1}
    assert view.gate_failures == {("signature", "threshold_not_met"): 1}
    assert view.rollbacks == {"operator": 1} and view.holds == 1 and view.escalations == 1
    assert view.notifications == {("escalated", "sent"): 1}
    assert view.events_by_type["release.requested"] == 3 and "release.activated" in view.events_by_type
    latency = view.activation_latency
    assert (latency.count, latency.total) == (2, 94.0)
    assert dict(latency.buckets)[5.0] == 1 and dict(latency.buckets)[60.0] == 1 and dict(latency.buckets)[120.0] == 2
    assert dict(latency.buckets)[float("inf")] == 2


def _line(formatter: logging.Formatter, message: str = "hello", **extra) -> str:
    record = logging.LogRecord("services.x", logging.INFO, __file__, 1, message, None, None)
    record.__dict__.update(extra)
    return formatter.format(record)


def test_json_lines_carry_the_context_of_the_event_being_handled() -> None:
    outside = json.loads(_line(JsonFormatter()))
    assert set(outside) == {"ts", "level", "logger", "message", "release_id", "event_id"}
    assert (outside["release_id"], outside["event_id"], outside["level"], outside["logger"]) == (
        None,
        None,
        "INFO",
        "services.x",
    )
    with log_context("r1", "ev-1"):
        inside = json.loads(_line(JsonFormatter()))
        with log_context("r2"):
            nested = json.loads(_line(JsonFormatter()))
        assert "[release=r1 event=ev-1]" in _line(TextFormatter())
        explicit = json.loads(_line(JsonFormatter(), release_id="r7"))
    assert (inside["release_id"], inside["event_id"]) == ("r1", "ev-1")
    assert (nested["release_id"], nested["event_id"]) == ("r2", None)
    assert explicit["release_id"] == "r7"
    assert json.loads(_line(JsonFormatter()))["release_id"] is None  # reset on the way out
    assert "[release" not in _line(TextFormatter())


def test_a_message_names_its_release_and_event() -> None:
    assert message_ids("kx.release.r1.verified", {"Nats-Msg-Id": "ev-1"}) == ("r1", "ev-1")
    assert message_ids("kx.release.r1.notification.sent", None) == ("r1", None)
    assert message_ids("kx.scope.prod.canary.all.pinned", {"Nats-Msg-Id": "ev-2"}) == (None, "ev-2")
    assert message_ids("kx.timer.fire.r1.0", {}) == (None, None)


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_log_format_defaults_to_json_unless_a_person_is_watching() -> None:
    assert log_format(None, _Stream(tty=False)) == "json"
    assert log_format(None, _Stream(tty=True)) == "text"
    assert log_format("json", _Stream(tty=True)) == "json"
    with pytest.raises(ConfigError, match="KX_LOG_FORMAT must be one of json, text"):
        log_format("yaml", _Stream(tty=False))


@pytest.mark.parametrize(
    "raw, expected", [("127.0.0.1:9464", ("127.0.0.1", 9464)), ("[::1]:0", ("::1", 0)), ("0.0.0.0:80", ("0.0.0.0", 80))]
)
def test_metrics_address(raw: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(raw) == expected


@pytest.mark.parametrize("raw", ["9464", ":9464", "host:", "host:port", "host:70000", ""])
def test_a_bad_metrics_address_is_one_clear_error(raw: str) -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_listen_address(raw)


def test_json_lines_keep_the_extra_fields_of_a_log_call() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("tests.extra")
    log.addHandler(handler)
    log.propagate = False
    try:
        marker = object()
        log.warning(
            "redelivered",
            extra={
                "durable": "kxr-verifier",
                "delivery": 3,
                "lag": {"pending": 2, 7: [1.5, float("nan")]},
                "obj": marker,
                "ts": "mine",  # a field of the line itself: kept beside it, never over it
                "release_id": "r9",
                "_private": 1,
            },
        )
    finally:
        log.removeHandler(handler)
    line = json.loads(stream.getvalue())
    assert line["message"] == "redelivered" and line["level"] == "WARNING"
    assert (line["durable"], line["delivery"]) == ("kxr-verifier", 3)
    assert line["lag"] == {"pending": 2, "7": [1.5, "nan"]}  # JSON-safe: str keys, NaN as text
    assert line["obj"] == str(marker)
    assert line["extra_ts"] == "mine" and line["ts"] != "mine"
    assert line["release_id"] == "r9" and "extra_release_id" not in line
    assert "_private" not in line
    # a plain record has exactly the line's own fields (nothing of LogRecord's internals leaks)
    assert set(json.loads(_line(JsonFormatter()))) == {"ts", "level", "logger", "message", "release_id", "event_id"}
