"""Ready-made bodies for chat incoming webhooks: Slack and Microsoft Teams. Pure: no IO.

Each takes the notifier's own document (the `json` format's body, see webhook.py) and
returns the JSON the chat service expects. Everything that came from a request, a pack or
a runtime (summary, owner, escalation, pack name and version, ids) is user-controlled and
escaped for the target's markup, so a summary cannot mention `@channel`, forge a link or
break the layout.
"""

from __future__ import annotations

import re
from typing import Any

TITLES = {
    "rolled_back": "Rolled back",
    "held": "Held (monitoring window inconclusive)",
    "escalated": "Escalated",
    "flagged": "Flagged (active pack fails a gate)",
}
SLACK_EMOJI = {"rolled_back": ":rewind:", "held": ":double_vertical_bar:", "escalated": ":rotating_light:"}
SLACK_SECTION_MAX = 3000  # a section's text (Slack's limit)
SLACK_FIELD_MAX = 2000
MAX_TEXT = 1500  # user text kept per field, before escaping


def _clip(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack_escape(text: str) -> str:
    """Slack mrkdwn: `&`, `<`, `>` become entities (so `<!channel>` or `<https://x|y>` stay text)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# CommonMark lets a backslash escape any ASCII punctuation; these are the characters that make
# structure in the Markdown subset Teams renders (emphasis, links, images, code, headings,
# quotes, tables) or start an Adaptive Card template expression (`{{...}}`).
_TEAMS_SPECIAL = re.compile(r"([\\`*_~\[\]()<>#!|{}&])")
_LIST_START = re.compile(r"^(\s*)([-+]|\d+[.)])")


def teams_escape(text: str) -> str:
    """Adaptive Card TextBlock/FactSet text: one line, no Markdown structure, no HTML."""
    flat = " ".join(text.split())  # a newline could start a list, a heading or a quote
    escaped = _TEAMS_SPECIAL.sub(r"\\\1", flat)
    # a leading "- ", "+ " or "1. " would still make a list: escape its marker's last character
    return _LIST_START.sub(lambda m: m.group(1) + m.group(2)[:-1] + "\\" + m.group(2)[-1], escaped)


def _facts(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, raw user text) pairs, in display order; absent ones left out."""
    pack, target = doc.get("pack") or {}, doc.get("target") or {}
    facts = [
        ("Release", doc.get("release_id")),
        ("Pack", f"{pack.get('name')} {pack.get('version')}" if pack else None),
        ("Digest", pack.get("digest")),
        ("Target", f"{target.get('env')}/{target.get('channel')}" if target else None),
        ("Scope", "/".join(str(v) for v in (doc.get("scope") or {}).values()) or None),
        ("Code", doc.get("code")),
        ("Owner", doc.get("owner")),
        ("Escalation", doc.get("escalation")),
    ]
    return [(label, _clip(str(value))) for label, value in facts if value]


def _headline(doc: dict[str, Any]) -> str:
    pack, target = doc.get("pack") or {}, doc.get("target") or {}
    what = f" {pack.get('name')} {pack.get('version')}" if pack else ""
    where = f" on {target.get('env')}/{target.get('channel')}" if target else ""
    return _clip(f"{TITLES.get(doc['kind'], doc['kind'])}:{what}{where}", 300)


def slack_payload(doc: dict[str, Any]) -> dict[str, Any]:
    """`{"text", "blocks"}` for a Slack incoming webhook (text: the notification's fallback)."""
    headline = slack_escape(_headline(doc))
    summary = slack_escape(_clip(str(doc.get("summary") or "")))
    emoji = SLACK_EMOJI.get(doc["kind"], ":warning:")
    fields = [
        {"type": "mrkdwn", "text": f"*{label}*\n{slack_escape(value)}"[:SLACK_FIELD_MAX]}
        for label, value in _facts(doc)[:10]  # Slack takes at most 10 fields per section
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"{emoji} *{headline}*\n{summary}"[:SLACK_SECTION_MAX]}}
    ]
    if fields:
        blocks.append({"type": "section", "fields": fields})
    blocks.append(
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": slack_escape(f"{doc.get('event_type')} · {doc.get('event_id')} · {doc.get('occurred_at')}"),
                }
            ],
        }
    )
    return {"text": f"{headline}: {summary}"[:SLACK_SECTION_MAX], "blocks": blocks}


def teams_payload(doc: dict[str, Any]) -> dict[str, Any]:
    """An Adaptive Card (1.4) message, as a Teams Workflows "post to a channel when a webhook
    request is received" flow (the successor of the retired Office 365 connectors) accepts it."""
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "msteams": {"width": "Full"},
        "body": [
            {
                "type": "TextBlock",
                "text": teams_escape(_headline(doc)),
                "weight": "Bolder",
                "size": "Medium",
                "wrap": True,
                "color": "Warning" if doc["kind"] == "held" else "Attention",
            },
            {"type": "TextBlock", "text": teams_escape(str(doc.get("summary") or "")), "wrap": True},
            {
                "type": "FactSet",
                "facts": [{"title": label, "value": teams_escape(value)} for label, value in _facts(doc)],
            },
            {
                "type": "TextBlock",
                "text": teams_escape(f"{doc.get('event_type')} · {doc.get('event_id')} · {doc.get('occurred_at')}"),
                "isSubtle": True,
                "size": "Small",
                "wrap": True,
            },
        ],
    }
    return {
        "type": "message",
        "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}
        ],
    }
