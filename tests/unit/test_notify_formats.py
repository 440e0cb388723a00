"""Slack and Teams bodies built from the notifier's document: their shape, and hostile text kept as text."""

from __future__ import annotations

import json
import re

from services.actions.producer import parse_channel_config
from services.consumers.notifier.formats import slack_escape, slack_payload, teams_escape, teams_payload
from services.consumers.notifier.webhook import notification_doc, webhook
from tests.unit.test_notifications import HOOK, _rolled_back_release, channel

HOSTILE = "<!channel> <https://evil.example|click me> & *bold* [x](https://evil.example) ![i](https://e/i.png)"
DOC = {
    "kind": "rolled_back",
    "sink": "ops",
    "release_id": "r2",
    "event_id": "ev-rb",
    "event_type": "release.rolled_back",
    "occurred_at": "2030-01-01T00:00:00Z",
    "target": {"env": "prod", "channel": "canary"},
    "pack": {"name": "kb<b>", "version": "1.1.0&", "digest": "sha256:" + "a" * 64},
    "owner": "<@U123> team",
    "escalation": "- pager\n# heading\n> quote {{DATE(2030-01-01T00:00:00Z)}}",
    "summary": HOSTILE + "\n1. list\n<script>alert(1)</script>",
}


def all_text(value: object) -> list[str]:
    """Every string in a JSON document (keys left out)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in all_text(v)]
    if isinstance(value, list):
        return [t for v in value for t in all_text(v)]
    return []


def test_slack_escapes_the_three_characters_so_no_mention_or_link_is_forged() -> None:
    assert slack_escape("<!here> a&b <x|y>") == "&lt;!here&gt; a&amp;b &lt;x|y&gt;"
    payload = slack_payload(DOC)
    assert set(payload) == {"text", "blocks"} and payload["text"].startswith("Rolled back: kb&lt;b&gt; 1.1.0&amp;")
    texts = all_text(payload)
    assert not any("<" in t or ">" in t for t in texts)  # no <!channel>, no <url|label>, no <@user>
    assert not any(re.search(r"&(?!amp;|lt;|gt;)", t) for t in texts)  # every & an entity
    joined = "\n".join(texts)
    assert "&lt;!channel&gt;" in joined and "&lt;@U123&gt; team" in joined
    kinds = [b["type"] for b in payload["blocks"]]
    assert kinds == ["section", "section", "context"]
    fields = {f["text"].split("\n", 1)[0]: f["text"].split("\n", 1)[1] for f in payload["blocks"][1]["fields"]}
    assert (
        fields["*Release*"] == "r2"
        and fields["*Target*"] == "prod/canary"
        and fields["*Pack*"] == "kb&lt;b&gt; 1.1.0&amp;"
    )


def test_slack_respects_its_size_limits_with_a_huge_summary() -> None:
    payload = slack_payload({**DOC, "summary": "<" * 100_000})
    assert all(len(t) <= 3000 for t in all_text(payload)) and len(payload["blocks"][1]["fields"]) <= 10


def test_teams_is_an_adaptive_card_whose_text_has_no_markdown_structure_html_or_template() -> None:
    payload = teams_payload(DOC)
    assert payload["type"] == "message"
    (attachment,) = payload["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert (card["type"], card["version"]) == ("AdaptiveCard", "1.4")
    assert [b["type"] for b in card["body"]] == ["TextBlock", "TextBlock", "FactSet", "TextBlock"]
    for text in all_text(card["body"]):
        if text in ("TextBlock", "FactSet", "Bolder", "Medium", "Small", "Attention"):
            continue
        assert "\n" not in text  # a line break could start a list, heading or quote
        # every Markdown/HTML/template character is backslash-escaped (CommonMark: shown as itself)
        assert not re.search(r"(?<!\\)[<>\[\]()*_`{}#!|&~]", text.replace("\\\\", "")), text
    facts = {f["title"]: f["value"] for f in card["body"][2]["facts"]}
    assert facts["Escalation"].startswith("\\- pager \\# heading \\> quote \\{\\{DATE")
    assert facts["Owner"] == "\\<@U123\\> team"
    assert teams_escape("1. one") == "1\\. one" and teams_escape("a - b 2. c") == "a - b 2. c"


def test_a_sink_format_picks_the_body_and_json_stays_the_notifiers_document() -> None:
    release, rolled = _rolled_back_release()
    bodies = {}
    for fmt in ("json", "slack", "teams"):
        sink = parse_channel_config(channel({**HOOK, "format": fmt}), "canary").notifications[0]
        bodies[fmt] = json.loads(webhook("rolled_back", sink, rolled, release, None).body)
    doc = notification_doc("rolled_back", sink, rolled, release)
    assert bodies["json"] == doc
    assert bodies["slack"] == slack_payload(doc) and bodies["teams"] == teams_payload(doc)
    assert "kb 1.1.0 on prod/canary" in bodies["slack"]["text"]
