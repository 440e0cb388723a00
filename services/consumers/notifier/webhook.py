"""What a webhook receives, and when to try again. No IO (the jitter draws at random unless told).

The body is compact JSON (the exact bytes the signatures cover) in the sink's `format`:
the notifier's own document (`json`), a Slack or Teams message built from it
(formats.py), or the triggering event as a CloudEvents 1.0 structured-mode event
(`cloudevents`, events/cloudevents.py: `data` is the envelope as logged, the notification's
kind and sink ride as the extensions `kxkind` and `kxsink`; Content-Type
`application/cloudevents+json`). `Idempotency-Key` and `webhook-id` are the id of the event notified about,
so a receiver can drop the copies a retry or a second notifier instance sends. With a
secret, each attempt is signed at its own time (Standard Webhooks, signing.py), and the
body alone is also signed in the legacy `Kx-Signature-256` header, unchanged since before
Standard Webhooks, so receivers written for it keep working.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

from events.canonical import compact_bytes
from events.cloudevents import CONTENT_TYPE as CLOUDEVENTS_TYPE
from events.cloudevents import source_of, to_cloudevent
from events.model import Event, ScopeFlagged, Target
from events.notifications import NotificationSink
from projections.evidence import summary
from projections.releases import ReleaseState
from services.consumers.notifier.formats import slack_payload, teams_payload
from services.consumers.notifier.signing import secret_key, secrets_of, signature_headers

SIGNATURE_HEADER = "Kx-Signature-256"  # legacy: HMAC of the body alone with the (first) secret's text
USER_AGENT = "kxr-notifier/1"


@dataclass(frozen=True)
class Webhook:
    url: str
    body: bytes
    headers: dict[str, str]  # the same on every attempt
    webhook_id: str = ""  # the Standard Webhooks id ("": no webhook-* headers)
    keys: list[bytes] = field(default_factory=list)  # Standard Webhooks keys, newest first
    shown: str = ""  # the URL as configured, for logs (`url` may carry a secret filled in from the environment)

    def attempt_headers(self, now: float) -> dict[str, str]:
        """The headers of one attempt made at `now` (unix seconds): each retry carries its own timestamp."""
        if not self.webhook_id:
            return dict(self.headers)
        return {**self.headers, **signature_headers(self.webhook_id, int(now), self.body, self.keys)}


def notification_doc(kind: str, sink: NotificationSink, event: Event, release: ReleaseState | None) -> dict[str, Any]:
    flag = event.data if isinstance(event.data, ScopeFlagged) else None
    pack = flag.pack if flag else (release.pack if release else None)
    requested = release.requested if release else None
    target = requested.target if requested else None
    if event.scope is not None and event.family == "scope":
        target = Target(env=event.scope.env, channel=event.scope.channel)
    extra = {"scope": event.scope.model_dump(mode="json"), "code": flag.code} if flag and event.scope else {}
    return {
        "kind": kind,
        "sink": sink.name,
        "release_id": event.release_id,
        "event_id": event.event_id,
        "event_type": event.type,
        "occurred_at": event.occurred_at.isoformat().replace("+00:00", "Z"),
        "target": target.model_dump(mode="json") if target else None,
        "pack": pack.model_dump(mode="json", exclude_none=True) if pack else None,
        "owner": requested.owner if requested else None,
        "escalation": requested.escalation if requested else None,
        "summary": flag.message if flag else summary(event),
        **extra,
    }


DEFAULT_SOURCE = source_of("kx")


def notification_body(
    kind: str, sink: NotificationSink, event: Event, release: ReleaseState | None, source: str = DEFAULT_SOURCE
) -> bytes:
    """The bytes posted to `sink`, in its format (`source`: the CloudEvents source, the log's)."""
    if sink.format == "cloudevents":
        return compact_bytes(to_cloudevent(event, source, extensions={"kxkind": kind, "kxsink": sink.name}))
    doc = notification_doc(kind, sink, event, release)
    if sink.format == "slack":
        return compact_bytes(slack_payload(doc))
    if sink.format == "teams":
        return compact_bytes(teams_payload(doc))
    return compact_bytes(doc)


def signature(secret: str, body: bytes) -> str:
    """The legacy `Kx-Signature-256` value."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook(
    kind: str,
    sink: NotificationSink,
    event: Event,
    release: ReleaseState | None,
    secret: str | None,
    source: str = DEFAULT_SOURCE,
) -> Webhook:
    """`secret`: the value of the sink's `secret_env` (one secret, or several separated by spaces,
    newest first, while a rotation is under way). Raises ValueError for a secret that is unusable.
    `source`: the CloudEvents source of the log the event is from (`cloudevents` format)."""
    body = notification_body(kind, sink, event, release, source)
    headers = {
        "Content-Type": CLOUDEVENTS_TYPE if sink.format == "cloudevents" else "application/json",
        "Idempotency-Key": event.event_id,
        "User-Agent": USER_AGENT,
        "Kx-Event-Type": event.type,
    }
    secrets = secrets_of(secret) if secret is not None else []
    if secret is not None and not secrets:
        raise ValueError("the secret is blank")
    keys = [secret_key(s) for s in secrets]
    if secrets:
        headers[SIGNATURE_HEADER] = signature(secrets[0], body)
    return Webhook(sink.url, body, headers, event.event_id, keys, shown=sink.url)


# ---- retry policy -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Backoff:
    first_s: float = 0.5
    cap_s: float = 30.0
    jitter: float = 0.5  # the share of each pause that is random: a pause lies in ((1 - jitter)·d, d]
    retry_after_cap_s: float = 60.0  # a receiver's Retry-After is honoured up to this

    def ceiling(self, failed_attempts: int) -> float:
        """The longest pause after the n-th failed attempt: first_s, 2·first_s, 4·first_s … never above cap_s."""
        return min(self.first_s * 2 ** (failed_attempts - 1), self.cap_s)

    def delay(self, failed_attempts: int, draw: float | None = None) -> float:
        """The pause after the n-th failed attempt, with jitter (`draw` in [0, 1); None: random), so
        notifiers that failed together do not come back together."""
        u = random.random() if draw is None else draw
        return self.ceiling(failed_attempts) * (1 - self.jitter * u)

    def pause(self, failed_attempts: int, retry_after: float | None = None, draw: float | None = None) -> float:
        """The pause before the next attempt: the jittered back-off, or the receiver's `Retry-After`
        when that is longer, never above `retry_after_cap_s`."""
        pause = self.delay(failed_attempts, draw)
        if retry_after is None:
            return pause
        return min(max(pause, retry_after), max(self.retry_after_cap_s, pause))


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or an HTTP date), or None (absent or unreadable)."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def worth_retrying(status: int | None) -> bool:
    """No answer, a timeout, throttling or a server error may pass; any other refusal will not."""
    return status is None or status in (408, 425, 429) or status >= 500
