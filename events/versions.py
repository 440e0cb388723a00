"""Pack versions: PEP 440 or SemVer, compared as versions (CONTRACT §6).

Both spellings map onto one key so that any two versions compare consistently:
(epoch, release, stage, pre-release identifiers, post, dev). A string that is strict
SemVer (x.y.z[-pre][+build]) is read as SemVer — so `1.0.0-1` is a pre-release, as
SemVer says — and anything else as PEP 440. PEP 440 `a`/`b`/`rc` map to the SemVer
identifiers `alpha`/`beta`/`rc`, so `1.0.0a1` equals `1.0.0-alpha.1`.
"""

from __future__ import annotations

import re
from functools import total_ordering

from packaging.version import InvalidVersion, Version

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)
_PEP440_PRE = {"a": "alpha", "b": "beta", "rc": "rc"}
_STAGE_DEV, _STAGE_PRE, _STAGE_FINAL = 0, 1, 2
_NO_DEV = (1, 0)  # sorts after any (0, n): a dev release comes before its non-dev twin


def _identifier(part: str) -> tuple[int, int, str]:
    # SemVer §11: numeric identifiers compare numerically and sort below alphanumeric ones.
    return (0, int(part), "") if part.isdigit() else (1, 0, part)


def _pad(release: tuple[int, ...]) -> tuple[int, ...]:
    trimmed = list(release)
    while len(trimmed) > 1 and trimmed[-1] == 0:
        trimmed.pop()
    return tuple(trimmed)  # 1.0 == 1.0.0


@total_ordering
class PackVersion:
    __slots__ = ("text", "key")

    def __init__(self, text: str) -> None:
        self.text = text
        m = _SEMVER.match(text)
        if m:
            pre = m[4]
            ids = tuple(_identifier(p) for p in pre.split(".")) if pre else ()
            stage = _STAGE_PRE if pre else _STAGE_FINAL
            self.key = (0, _pad((int(m[1]), int(m[2]), int(m[3]))), stage, ids, -1, _NO_DEV)
            return
        try:
            v = Version(text)
        except InvalidVersion:
            raise ValueError(f"version {text!r} is neither PEP 440 nor SemVer") from None
        if v.pre is not None:
            stage, ids = _STAGE_PRE, ((1, 0, _PEP440_PRE[v.pre[0]]), (0, v.pre[1], ""))
        elif v.dev is not None and v.post is None:
            stage, ids = _STAGE_DEV, ()
        else:
            stage, ids = _STAGE_FINAL, ()
        post = v.post if v.post is not None else -1
        dev = (0, v.dev) if v.dev is not None else _NO_DEV
        self.key = (v.epoch, _pad(v.release), stage, ids, post, dev)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PackVersion) and self.key == other.key

    def __lt__(self, other: "PackVersion") -> bool:
        return self.key < other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"PackVersion({self.text!r})"


def parse_version(text: str) -> PackVersion:
    return PackVersion(text)
