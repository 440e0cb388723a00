"""One version model for ordering and for compatibility (events/versions.py).

Each tricky spelling is run through both paths that use versions: the downgrade rule of
the policy gate (ordering) and the compatibility gate (a channel's runtime_version matched
against a pack's specifier). Both must read it as the same version.
"""

from __future__ import annotations

import itertools

import pytest

from events.channel import ChannelConfig
from events.versions import UnmatchableVersion, matches, parse_version
from services.verification.gates import verify_bytes

from .gate_vectors import Case, channel_doc, pack_ref

# spelling, what it means (a PEP 440 normal form or the SemVer text), its relation to 1.0.0
TRICKY = [
    ("1.0.0-1", "1.0.0.post1", ">"),  # PEP 440 parses it first: a post-release, not a SemVer pre-release
    ("1.0.0-rc.1", "1.0.0rc1", "<"),
    ("1.0.0+build", "1.0.0", "="),  # build metadata / local label never orders
    ("1.0", "1.0.0", "="),
    ("v1.0", "1.0.0", "="),
    ("1.0.0-alpha.1", "1.0.0a1", "<"),
    ("1.0.0-alpha.beta", "1.0.0-alpha.beta", "<"),  # SemVer only: PEP 440 cannot spell it
]
IDS = [t for t, _, _ in TRICKY]
BASE = "1.0.0"


def policy_outcome(new: str, active: str) -> tuple[str, str]:
    """The gate and code a rollout of `new` over `active` (other bytes) ends at."""
    c = Case()
    c.signed["version"] = new
    c.active = {"internal": pack_ref(active, b"the active pack"), "rest": None}
    v = verify_bytes(*c.build())
    return ("pass", "ok") if v.ok else (v.failure.gate, v.failure.code)


def compatibility_outcome(runtime_version: str, spec: str) -> tuple[str, str]:
    """The gate and code a pack needing `spec` ends at on a channel running `runtime_version`."""
    c = Case()
    c.signed["compatibility"]["runtime"] = spec
    body = channel_doc()
    body["compatibility"]["runtime_version"] = runtime_version
    c.channel_config = ChannelConfig.model_validate(body)
    v = verify_bytes(*c.build())
    return ("pass", "ok") if v.ok else (v.failure.gate, v.failure.code)


@pytest.mark.parametrize(("text", "meaning", "relation"), TRICKY, ids=IDS)
def test_ordering_path_reads_the_version_as_its_meaning(text: str, meaning: str, relation: str) -> None:
    # Same version as its meaning: a rollout of it over its meaning is "same version, other bytes".
    assert policy_outcome(text, meaning) == ("policy", "same_version_other_digest")
    expected = {">": ("pass", "ok"), "<": ("policy", "downgrade"), "=": ("policy", "same_version_other_digest")}
    assert policy_outcome(text, BASE) == expected[relation]


@pytest.mark.parametrize(
    ("text", "meaning", "relation"),
    [t for t in TRICKY if parse_version(t[0]).scheme == "pep440"],
    ids=[t for t in IDS if parse_version(t).scheme == "pep440"],
)
def test_compatibility_path_reads_the_version_as_its_meaning(text: str, meaning: str, relation: str) -> None:
    assert compatibility_outcome(text, f"=={meaning}") == ("pass", "ok")
    # >= and <= select purely by order: they agree with the downgrade rule's relation to 1.0.0.
    mismatch = ("compatibility", "runtime_mismatch")
    assert compatibility_outcome(text, f">={BASE}") == (("pass", "ok") if relation in ">=" else mismatch)
    assert compatibility_outcome(text, f"<={BASE}") == (("pass", "ok") if relation in "<=" else mismatch)


def test_semver_only_runtime_version_is_refused_not_guessed() -> None:
    assert compatibility_outcome("2.5.0-alpha.beta", ">=2.3,<3") == ("compatibility", "runtime_version_invalid")
    with pytest.raises(UnmatchableVersion):
        matches("2.5.0-alpha.beta", ">=2.3")


@pytest.mark.parametrize(("text", "meaning", "relation"), TRICKY, ids=IDS)
def test_the_model_itself(text: str, meaning: str, relation: str) -> None:
    v = parse_version(text)
    assert v == parse_version(meaning) and hash(v) == hash(parse_version(meaning))
    assert v.canonical in (meaning, text) if v.scheme == "semver" else parse_version(v.canonical) == v
    base = parse_version(BASE)
    assert {">": v > base, "<": v < base, "=": v == base}[relation]


ORDER_SET = [
    "1.0.dev0",
    "1.0.0a1",
    "1.0.0-rc.1",
    "1.0",
    "v1.0",
    "1.0.0+build",
    "1.0.0-1",
    "1.0.0.post2.dev1",
    "1.0.0.post2",
    "1.0.1",
    "2.0",
    "1!0.1",
]
PUBLIC = [v for v in ORDER_SET if "+" not in v]  # a local label is only allowed in == / != specifiers


@pytest.mark.parametrize(("a", "b"), list(itertools.product(ORDER_SET, PUBLIC)), ids=lambda x: x)
def test_order_and_inclusive_specifiers_agree(a: str, b: str) -> None:
    pa, pb = parse_version(a), parse_version(b)
    assert (pa <= pb) == matches(a, f"<={b}")
    assert (pa >= pb) == matches(a, f">={b}")
