"""Pack and runtime versions: one model for ordering and for compatibility (CONTRACT §6).

The rule, used everywhere a version is ordered (downgrade gate, activator) or matched
against a specifier (compatibility gate):

1. **PEP 440 where it parses.** `1.0.0-1` is `1.0.0.post1` (a post-release, newer than
   1.0.0), `1.0.0-rc.1` is `1.0.0rc1`, `v1.0` is `1.0`, `1.0` equals `1.0.0`.
2. **Else SemVer 2.0.0.** Only pre-releases whose identifiers PEP 440 cannot spell get
   here (`1.0.0-alpha.beta`, `1.0.0-x.7.z.92`); they order by SemVer §11 among the PEP 440
   pre-releases, because PEP 440's `a`/`b`/`rc` map onto the identifiers `alpha`/`beta`/`rc`.
3. **Local labels / build metadata never order.** `1.0.0+build` is the same version as
   1.0.0 (SemVer §10, and what PEP 440's `>=`, `<=`, `>`, `<` and `==1.0.0` do when matching),
   so a second pack `1.0.0+other` with other bytes is "same version, other bytes".

Specifiers are PEP 440 (`packaging`), so they match exactly the versions that parse as
PEP 440; a SemVer-only version cannot be matched and `matches` says so (fail closed)
instead of guessing. Matching keeps PEP 440's own rules (`<2.0` does not admit `2.0rc1`,
`>1.0` does not admit `1.0.post1`): that is how a specifier selects, not what a version means.
"""

from __future__ import annotations

import re
from functools import total_ordering

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

__all__ = ["PackVersion", "SpecifierError", "UnmatchableVersion", "matches", "parse_specifier", "parse_version"]

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)
_PEP440_PRE = {"a": "alpha", "b": "beta", "rc": "rc"}
# Same stage order as packaging: a dev-only release < its pre-releases < the release itself.
_STAGE_DEV, _STAGE_PRE, _STAGE_FINAL = 0, 1, 2
_NO_POST = -1
_NO_DEV = (1, 0)  # sorts after any (0, n): a dev release comes before its non-dev twin


class SpecifierError(ValueError):
    """A specifier that is not PEP 440."""


class UnmatchableVersion(ValueError):
    """A version that parses (SemVer only) but no PEP 440 specifier can be matched against."""


# (epoch, release, stage, pre-release identifiers, post, dev): compared element by element
_Identifier = tuple[int, int, str]
_Key = tuple[int, tuple[int, ...], int, tuple[_Identifier, ...], int, tuple[int, int]]


def _identifier(part: str) -> _Identifier:
    # SemVer §11: numeric identifiers compare numerically and sort below alphanumeric ones.
    return (0, int(part), "") if part.isdigit() else (1, 0, part)


def _pad(release: tuple[int, ...]) -> tuple[int, ...]:
    trimmed = list(release)
    while len(trimmed) > 1 and trimmed[-1] == 0:
        trimmed.pop()
    return tuple(trimmed)  # 1.0 == 1.0.0


def _pep440_key(v: Version) -> _Key:
    ids: tuple[_Identifier, ...]
    if v.pre is not None:
        stage, ids = _STAGE_PRE, ((1, 0, _PEP440_PRE[v.pre[0]]), (0, v.pre[1], ""))
    elif v.dev is not None and v.post is None:
        stage, ids = _STAGE_DEV, ()
    else:
        stage, ids = _STAGE_FINAL, ()
    post = v.post if v.post is not None else _NO_POST
    dev = (0, v.dev) if v.dev is not None else _NO_DEV
    return (v.epoch, _pad(v.release), stage, ids, post, dev)  # v.local is left out on purpose (rule 3)


@total_ordering
class PackVersion:
    __slots__ = ("text", "key", "pep440")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pep440: Version | None = None  # set when the text is PEP 440: only then can it be matched
        try:
            self.pep440 = Version(text)
        except (InvalidVersion, TypeError):
            pass
        else:
            self.key = _pep440_key(self.pep440)
            return
        m = _SEMVER.match(text) if isinstance(text, str) else None
        if m is None:
            raise ValueError(f"version {text!r} is neither PEP 440 nor SemVer")
        # Every SemVer string without a pre-release (or with one PEP 440 spells) parsed above,
        # so this is a pre-release with identifiers only SemVer has.
        ids = tuple(_identifier(p) for p in m[4].split("."))
        self.key = (0, _pad((int(m[1]), int(m[2]), int(m[3]))), _STAGE_PRE, ids, _NO_POST, _NO_DEV)

    @property
    def scheme(self) -> str:
        return "pep440" if self.pep440 is not None else "semver"

    @property
    def canonical(self) -> str:
        """What the model reads the text as (PEP 440's normal form, or the SemVer text)."""
        return str(self.pep440) if self.pep440 is not None else self.text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PackVersion) and self.key == other.key

    def __lt__(self, other: PackVersion) -> bool:
        return self.key < other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"PackVersion({self.text!r})"


def parse_version(text: str) -> PackVersion:
    return PackVersion(text)


def parse_specifier(text: str) -> SpecifierSet:
    """A PEP 440 specifier that states at least one constraint."""
    try:
        spec = SpecifierSet(text)
    except InvalidSpecifier as exc:
        raise SpecifierError(f"{text!r} is not a version specifier: {exc}") from None
    if len(spec) == 0:
        raise SpecifierError(f"{text!r} states no constraint")
    return spec


def matches(version: PackVersion | str, specifier: SpecifierSet | str) -> bool:
    """Does `version` (read by this module's rule) satisfy the PEP 440 `specifier`?

    Raises ValueError for an unparsable version, SpecifierError for a bad specifier and
    UnmatchableVersion for a SemVer-only version.
    """
    v = version if isinstance(version, PackVersion) else parse_version(version)
    spec = specifier if isinstance(specifier, SpecifierSet) else parse_specifier(specifier)
    if v.pep440 is None:
        raise UnmatchableVersion(
            f"version {v.text!r} is SemVer with pre-release identifiers PEP 440 cannot spell; "
            "a PEP 440 specifier cannot be matched against it"
        )
    # prereleases=True: this is a concrete installed version, not a pick among releases, and it
    # keeps the answer independent of the packaging release installed.
    return spec.contains(v.pep440, prereleases=True)
