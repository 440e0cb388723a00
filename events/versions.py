"""Pack versions: PEP 440 or SemVer, compared as versions (CONTRACT §6)."""

from __future__ import annotations

import re
from functools import total_ordering

from packaging.version import InvalidVersion, Version

# SemVer 2.0.0 with a pre-release PEP 440 cannot read (e.g. 1.2.3-alpha.beta).
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)


@total_ordering
class PackVersion:
    """A comparable version: PEP 440 where it parses, else SemVer precedence rules."""

    __slots__ = ("text", "release", "final", "detail")

    def __init__(self, text: str) -> None:
        self.text = text
        try:
            v = Version(text)
        except InvalidVersion:
            m = _SEMVER.match(text)
            if not m:
                raise ValueError(f"version {text!r} is neither PEP 440 nor SemVer") from None
            pre = m[4]
            self.release = (int(m[1]), int(m[2]), int(m[3]))
            self.final = pre is None
            # SemVer §11: numeric identifiers sort below alphanumeric ones.
            self.detail: tuple = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in (pre or "").split(".") if p)
            return
        release = v.release + (0,) * max(0, 3 - len(v.release))
        self.release = release
        self.final = v.pre is None and v.dev is None
        self.detail = (v,)

    def _key(self) -> tuple:
        return (self.release, self.final)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PackVersion) and self._key() == other._key() and self.detail == other.detail

    def __lt__(self, other: "PackVersion") -> bool:
        if self._key() != other._key():
            return self._key() < other._key()
        try:
            return self.detail < other.detail
        except TypeError:  # a PEP 440 detail against a SemVer one: fall back to text order
            return self.text < other.text

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        return self.text


def parse_version(text: str) -> PackVersion:
    return PackVersion(text)
