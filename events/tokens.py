"""Subject tokens (CONTRACT §1): checked before anything reaches NATS.

A token becomes one segment of a subject, so anything that could change the
subject's shape (dots, wildcards, whitespace) or blow up its length is refused.
"""

from __future__ import annotations

import re

TOKEN_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_TOKEN = re.compile(TOKEN_PATTERN)


class InvalidToken(ValueError):
    """A subject token that does not match CONTRACT §1."""


def is_token(value: object) -> bool:
    return isinstance(value, str) and _TOKEN.fullmatch(value) is not None


def check_token(value: object, what: str = "token") -> str:
    if is_token(value):
        return value  # type: ignore[return-value]
    shown = repr(value) if not isinstance(value, str) or len(value) <= 80 else repr(value[:77] + "...")
    raise InvalidToken(f"{what} {shown} is not a valid token (must match {TOKEN_PATTERN})")
