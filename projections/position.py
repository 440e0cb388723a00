"""Where an event sits in the log: stream sequence, subject and batch (if any)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Position:
    seq: int
    subject: str
    batch_id: str | None = None
    stored_at: str | None = None  # server timestamp, RFC 3339
    digest: str | None = None  # sha256 of the stored bytes, for pointers (the next pointer's `prev`)


def positions(events, start: int = 1, subjects=None):
    """Give a plain list of events synthetic positions (for tests and replays from fixtures)."""
    from events.codec import scope_tuple
    from events.subjects import Subjects

    subjects = subjects or Subjects()
    for offset, event in enumerate(events):
        subject = subjects.expected_subject(event.type, event.release_id, scope_tuple(event))
        yield Position(seq=start + offset, subject=subject), event
