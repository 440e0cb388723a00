"""Where an event sits in the log: stream sequence, subject and batch (if any)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when called: events is not needed to name a position
    from events.model import Event
    from events.subjects import Subjects


@dataclass(frozen=True, slots=True)
class Position:
    seq: int
    subject: str
    batch_id: str | None = None
    # the server's timestamp, as read (no fold reads it: an RFC 3339 string made for every entry of
    # a replay was ~2% of its time; `.isoformat()` where one is wanted)
    stored_at: datetime | None = None
    digest: str | None = None  # sha256 of the stored bytes, for pointers (the next pointer's `prev`)


def positions(
    events: Iterable[Event], start: int = 1, subjects: Subjects | None = None
) -> Iterator[tuple[Position, Event]]:
    """Give a plain list of events synthetic positions (for tests and replays from fixtures)."""
    from events.codec import scope_tuple
    from events.subjects import Subjects

    subjects = subjects or Subjects()
    for offset, event in enumerate(events):
        subject = subjects.expected_subject(event.type, event.release_id, scope_tuple(event))
        yield Position(seq=start + offset, subject=subject), event
