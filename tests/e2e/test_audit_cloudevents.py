"""`kxr audit export RELEASE --format cloudevents`: the release's events from a real log, one
CloudEvents 1.0 JSON object per line, each `data` the envelope exactly as stored."""

from __future__ import annotations

import json

import pytest

from events.codec import make_event
from events.model import Actor
from events.notifications import NotificationOutcome
from events.subjects import Subjects
from services.jetstream.layout import ensure_layout
from services.jetstream.log import Entry, EventLog
from tests.unit.test_cloudevents import problems

from .support import assert_one_line_error

pytestmark = pytest.mark.e2e
PRODUCER = Actor(kind="producer", id="ci")
SERVICE = Actor(kind="service", id="activator")
REQUEST = {
    "pack": {"name": "kb", "version": "1.1.0", "digest": "sha256:" + "a" * 64},
    "target": {"env": "prod", "channel": "canary"},
    "owner": "kb-team",
    "escalation": "pager:kb",
}


def ok(result) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result.stdout


async def test_a_release_exports_as_cloudevents_ndjson_in_log_order(kx, nc):
    js = nc.jetstream()
    subjects = Subjects(kx.prefix)
    await ensure_layout(js, subjects)
    log = EventLog(nc, js, subjects)
    requested = make_event("release.requested", REQUEST, actor=PRODUCER, release_id="r1")
    other = make_event("release.requested", REQUEST, actor=PRODUCER, release_id="r2")
    rolled = make_event(
        "release.rolled_back",
        {"cohorts": ["internal"], "targets": {"internal": None}},
        actor=SERVICE,
        release_id="r1",
        causation_id=requested.event_id,
    )
    sent = make_event(
        "notification.sent",
        NotificationOutcome(
            sink="ops", kind="rolled_back", trigger=rolled.event_id, trigger_type=rolled.type, attempts=1, status=200
        ),
        actor=SERVICE,
        release_id="r1",
        causation_id=rolled.event_id,
    )
    seq = await log.append(log.release_entry(requested, 0))
    await log.append(log.release_entry(other, 0))
    await log.append(log.release_entry(rolled, seq))
    await log.append(Entry(sent, 0, subjects.notification_filter("r1")))

    lines = ok(await kx.arun("audit", "export", "r1", "--format", "cloudevents")).splitlines()
    docs = [json.loads(line) for line in lines]
    assert [d["id"] for d in docs] == [requested.event_id, rolled.event_id, sent.event_id]  # r2's is not there
    for doc in docs:
        assert problems(doc) == [], problems(doc)
        assert doc["source"] == f"urn:konnaxion:releases:{kx.prefix}" and doc["subject"] == "r1"
        family, suffix = doc["data"]["type"].split(".", 1)
        subject = subjects.release("r1", suffix) if family == "release" else subjects.notification("r1", suffix)
        stored = await js.get_last_msg(subjects.releases_stream, subject)
        assert doc["data"] == json.loads(stored.data)  # the log's bytes, parsed
    assert docs[1]["type"] == "io.konnaxion.releases.release.rolled_back"
    assert (docs[1]["causationid"], docs[1]["correlationid"]) == (requested.event_id, "r1")

    out = kx.workdir / "r1.ndjson"
    ok(await kx.arun("audit", "export", "r1", "--format", "cloudevents", "--out", str(out)))
    assert out.read_text().splitlines() == lines
    assert_one_line_error(await kx.arun("audit", "export", "r9", "--format", "cloudevents"), "no release r9")
