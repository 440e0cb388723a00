"""What a webhook receives, and when to try again. Pure: no IO.

The body is compact JSON (the exact bytes the HMAC covers); `Idempotency-Key` is the id
of the event notified about, so a receiver can drop the copies a retry or a second
notifier instance sends.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from events.canonical import compact_bytes
from events.model import Event, ScopeFlagged, Target
from events.notifications import NotificationSink
from projections.evidence import summary
from projections.releases import ReleaseState

SIGNATURE_HEADER = "Kx-Signature-256"
USER_AGENT = "kxr-notifier/1"


@dataclass(frozen=True)
class Webhook:
    url: str
    body: bytes
    headers: dict[str, str]


def notification_body(kind: str, sink: NotificationSink, event: Event, release: ReleaseState | None) -> bytes:
    flag = event.data if isinstance(event.data, ScopeFlagged) else None
    pack = flag.pack if flag else (release.pack if release else None)
    requested = release.requested if release else None
    target = requested.target if requested else None
    if event.scope is not None and event.family == "scope":
        target = Target(env=event.scope.env, channel=event.scope.channel)
    extra = {"scope": event.scope.model_dump(mode="json"), "code": flag.code} if flag and event.scope else {}
    return compact_bytes(
        {
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
    )


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook(
    kind: str, sink: NotificationSink, event: Event, release: ReleaseState | None, secret: str | None
) -> Webhook:
    body = notification_body(kind, sink, event, release)
    headers = {
        "Content-Type": "application/json",
        "Idempotency-Key": event.event_id,
        "User-Agent": USER_AGENT,
        "Kx-Event-Type": event.type,
    }
    if secret is not None:
        headers[SIGNATURE_HEADER] = signature(secret, body)
    return Webhook(sink.url, body, headers)


# ---- retry policy -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Backoff:
    first_s: float = 0.5
    cap_s: float = 30.0

    def delay(self, failed_attempts: int) -> float:
        """Pause after the n-th failed attempt: first_s, 2·first_s, 4·first_s … never above cap_s."""
        return min(self.first_s * 2 ** (failed_attempts - 1), self.cap_s)


def worth_retrying(status: int | None) -> bool:
    """No answer, a timeout, throttling or a server error may pass; any other refusal will not."""
    return status is None or status in (408, 425, 429) or status >= 500
