"""Timestamps on the wire (CONTRACT §3 `occurred_at`, §4 `until`, §6 `expires`, §8 `at`): RFC 3339.

RFC 3339 §5.6 `date-time` and nothing else of ISO 8601 (week or ordinal dates, the basic format,
hours-only times or offsets, a comma before the fraction, a space for the `T`) and no number of
seconds since the epoch — all of which pydantic's lax datetime and `datetime.fromisoformat` read. A
reader in another language refuses those, so taking one here would split the readers of one log: a
pin this service honours that a contract-built auditor calls undecodable, a signed pack verified here
and refused by the runtimes. `T` and `Z` in either case (§5.6 allows it), a fraction of any length
(Go's RFC3339Nano writes nine digits; past six they are dropped), any offset (an event's `occurred_at`
is then read in UTC). A leap second (`23:59:60`, which §5.6 allows and Python cannot hold) is read
as the last microsecond before the next second. ASCII digits only (`\\d` is any Unicode digit).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import AwareDatetime, BeforeValidator

RFC3339_DATE_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?P<offset>[Zz]|[+-][0-9]{2}:[0-9]{2})"
)
SECOND = slice(17, 19)  # where a matched value's seconds are: YYYY-MM-DDTHH:MM:SS
EXAMPLE = "2030-01-01T00:00:00Z"


def parse_rfc3339(value: Any) -> Any:
    """`value` as the aware datetime it writes, if it is an RFC 3339 string; a datetime (built in
    Python, never read from the wire) as it is; anything else refused, saying what is expected."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValueError(f"an RFC 3339 date-time string is required (e.g. {EXAMPLE}), not {type(value).__name__}")
    match = RFC3339_DATE_TIME.fullmatch(value)  # fullmatch: `$` would let a trailing newline through
    if match is None:
        raise ValueError(f"{value[:64]!r} is not an RFC 3339 date-time (e.g. {EXAMPLE})")
    if value[SECOND] == "60":
        value = f"{value[: SECOND.start]}59.999999{match['offset']}"
    if value[-1] == "z":  # fromisoformat takes any separator and `Z`, but not `z`
        value = value[:-1] + "Z"
    try:
        return datetime.fromisoformat(value)  # (every event's occurred_at: no more work than this)
    except ValueError as exc:  # month 13, February 30, hour 24...
        raise ValueError(f"{value[:64]!r} is not a date-time: {exc}") from None


Rfc3339 = Annotated[AwareDatetime, BeforeValidator(parse_rfc3339)]
