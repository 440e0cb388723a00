"""Where each message of the contract lives and who may write it.

Subjects come from the same builders the service uses (`events.subjects.Subjects`),
writers from the least-privilege NATS permissions (`services.permissions`): the catalog
only adds the sentence that describes each event type.
"""

from __future__ import annotations

from dataclasses import dataclass

from events.model import PAYLOADS
from events.subjects import Subjects
from services import permissions

WRITER_ROLES = ("service", "producer", "operator", "runtime")  # the auditor publishes nothing

# Subject tokens become AsyncAPI parameters: built with placeholder tokens, then renamed.
_PLACEHOLDERS = {
    "P-release_id": "{release_id}",
    "P-env": "{env}",
    "P-channel": "{channel}",
    "P-cohort": "{cohort}",
    "P-runtime_id": "{runtime_id}",
}

DESCRIPTIONS: dict[str, str] = {
    "release.requested": (
        "A producer asks for a signed pack to be rolled out to a channel (CONTRACT §5); "
        "the promoter also requests the linked release on `promote_to`."
    ),
    "release.prepared": "Pre-flight passed: stages, monitoring, rollback target per cohort and the checklist.",
    "release.rejected": (
        "The request is malformed, ineligible or failed pre-flight; `reasons` lists every problem. "
        "Nothing is activated."
    ),
    "release.distributed": "The pack and its manifest are present in the pack store.",
    "release.verified": "Every verification gate passed, at one reference time.",
    "release.verification_failed": "A gate refused (fail closed): which gate, a reason code and a sentence.",
    "release.activated": "A stage's cohorts switched to the pack in one atomic batch (or a rollback/pin switch).",
    "release.activation_failed": "The activator could not switch a stage.",
    "release.monitoring_started": "A monitoring window opened for a stage (or an operator extended a held one).",
    "release.monitoring_passed": (
        "The window's figures met every threshold (or an operator passed a held window, recorded as an override)."
    ),
    "release.monitoring_failed": "A threshold was breached (at the window's end or early on a hard breach).",
    "release.monitoring_inconclusive": "Too few samples: the release holds for an operator and is never promoted.",
    "release.expanded": "The next stage of the plan starts.",
    "release.promoted": "The last stage passed; a linked release on the next channel was requested.",
    "release.rollback_started": "A rollback began: trigger, reason and the target of every cohort.",
    "release.rolled_back": "Every cohort of the release is back on its target, in one atomic batch.",
    "release.paused": "An operator paused the release: no new stage, no promotion.",
    "release.resumed": "An operator resumed a paused release.",
    "release.aborted": "An operator aborted the release: activated cohorts return to their targets.",
    "release.annotated": "An operator's note or incident link.",
    "release.escalated": "No valid rollback target: the release holds and names its escalation path.",
    "release.closed": "The release ended: success, rolled_back, pinned, aborted, rejected or failed.",
    "scope.activated": (
        "THE active-pack pointer of a scope: the newest message on this subject is the pack active there. "
        "Written only by the activator inside an atomic batch. "
        "Runtimes read the last one (deliver_policy=last_per_subject) and follow new ones."
    ),
    "scope.pinned": "An operator pinned a scope to a pack until a time, with a rationale.",
    "scope.unpinned": "A pin ended: by an operator, on expiry, or refused because the pinned pack failed verification.",
    "scope.flagged": (
        "The guard found that the pack active in a settled scope now fails a gate it passed at activation "
        "(a trust rotation dropped its signers, its manifest expired, or the channel's compatibility or policy "
        "changed): `code` is `<gate>/<gate code>`. "
        "Nothing moves; the flag is notified (webhook kind `flagged`) and shown until the pointer moves."
    ),
    "channel.configured": (
        "A channel's configuration (CONTRACT §7): cohorts, plan, monitoring, compatibility, policy. "
        "The newest one is in force."
    ),
    "trust.rotated": "A new trust root, signed by thresholds of the previous root's keys and of its own.",
    "notification.sent": (
        "The notifier delivered a webhook for a rollback, hold or escalation of this release (attempts, sink, status). "
        "Outside the release's lifecycle filter: it never changes the release."
    ),
    "notification.failed": (
        "The notifier gave up on a webhook for this release (attempts, last error). "
        "Recorded, never blocking: the release goes on as it would."
    ),
}
HEALTH_DESCRIPTION = (
    "A runtime's health report (CONTRACT §8): `activation` after each switch it attempted, "
    "periodic `sample`s from start-up on (digest null while it has no active pack)."
)


@dataclass(frozen=True)
class Channel:
    """One subject of the contract: the messages on it, their stream, and who may publish them."""

    name: str  # the event type, or "health.sample"
    subject: str  # with {parameters} for the tokens
    stream: str
    writers: tuple[str, ...]
    description: str


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: `*` is one token, a trailing `>` one or more.

    NATS's own semantics over any two subjects (permission patterns against concrete
    subjects), not our layout: no `Subjects` parser applies, so the tokens are split here.
    """
    want, have = pattern.split("."), subject.split(".")
    for index, token in enumerate(want):
        if token == ">":
            return len(have) > index
        if index >= len(have) or (token != "*" and token != have[index]):
            return False
    return len(want) == len(have)


def writers_of(subject: str, subjects: Subjects) -> tuple[str, ...]:
    out = []
    for role in WRITER_ROLES:
        perms = permissions.role_permissions(subjects, role)
        if any(subject_matches(p, subject) for p in perms.publish) and not any(
            subject_matches(p, subject) for p in perms.publish_deny
        ):
            out.append(role)
    return tuple(out)


def _template(subject: str) -> str:
    for token, parameter in _PLACEHOLDERS.items():
        subject = subject.replace(token, parameter)
    return subject


def channels(prefix: str = "kx") -> list[Channel]:
    """Every subject of the contract, sorted by name (event types, then health)."""
    s = Subjects(prefix)
    out = []
    for event_type in sorted(PAYLOADS):
        concrete = s.expected_subject(event_type, "P-release_id", ("P-env", "P-channel", "P-cohort"))
        out.append(
            Channel(
                event_type, _template(concrete), s.releases_stream, writers_of(concrete, s), DESCRIPTIONS[event_type]
            )
        )
    health = s.health("P-env", "P-channel", "P-cohort", "P-runtime_id")
    out.append(Channel("health.sample", _template(health), s.health_stream, writers_of(health, s), HEALTH_DESCRIPTION))
    return out
