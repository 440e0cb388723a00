"""What the docs point at exists: links, anchors, repository paths, bench results.

README.md and docs/*.md name files (`tests/unit/test_x.py`, `bench/results/x.json`), link to each
other and to their own headings. A rename that leaves a doc behind turns it into a wrong map; this
fails instead.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.docs

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# a path into the repository, as the docs write them (`events/s` is a rate, not a path)
PATH = re.compile(r"(?<![\w/.-])((?:events|projections|services|tests|bench|docs|\.ci)/[\w/.-]*\w)(?![\w/])")
NOT_PATHS = {"events/s"}


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, each space a hyphen."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.DOTALL)  # (a `#` in a code block is no heading)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, flags=re.MULTILINE)}


def _ids(doc: Path) -> str:
    return doc.relative_to(REPO).as_posix()


@pytest.mark.parametrize("doc", DOCS, ids=_ids)
def test_every_relative_link_and_anchor_resolves(doc: Path) -> None:
    broken = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not ours to check offline
        path, _, anchor = target.partition("#")
        where = (doc.parent / path).resolve() if path else doc
        if not where.is_relative_to(REPO):
            continue  # (../shared/CONTRACT.md: beside a checkout, not in it; a clean clone has no such file)
        if not where.exists():
            broken.append(f"{target}: no such file")
        elif anchor and where.suffix == ".md" and anchor not in anchors(where):
            broken.append(f"{target}: no heading #{anchor} in {where.name}")
    assert not broken, f"{_ids(doc)}: " + "; ".join(broken)


@pytest.mark.parametrize("doc", DOCS, ids=_ids)
def test_every_repository_path_named_exists(doc: Path) -> None:
    named = {m for m in PATH.findall(doc.read_text()) if m not in NOT_PATHS and not set(m) & set("*<>{}")}
    missing = sorted(p for p in named if not (REPO / p).exists())
    assert not missing, f"{_ids(doc)} names what the repository does not hold: {missing}"


def test_every_bench_result_named_is_a_json_document() -> None:
    named = {p for doc in DOCS for p in PATH.findall(doc.read_text()) if re.match(r"bench/results/.+\.json$", p)}
    assert named, "the docs name no bench result: the pattern no longer finds them"
    for path in sorted(named):
        json.loads((REPO / path).read_text())


def test_slug_follows_github() -> None:
    assert slug("Post-activation policy violations (the guard)") == "post-activation-policy-violations-the-guard"
    assert slug("Auditor — a guide") == "auditor--a-guide"
    assert slug("Where we stand (issue 18's targets)") == "where-we-stand-issue-18s-targets"
