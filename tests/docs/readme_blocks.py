"""README.md's shell blocks and their `readme-test` markers (pure: no IO beyond reading the text).

Every ```bash (or sh/shell) block carries an HTML comment on the line right before its fence:

    <!-- readme-test: story=NAME -->              run it, in README order, with the story's other blocks
    <!-- readme-test: story=NAME venv -->         the same, its `python3 -m venv .venv && .venv/bin/pip install … &&`
                                                  prefix replaced by the venv running the test (`.venv` links to it)
    <!-- readme-test: story=NAME copy=docs -->    the same, in a directory holding a copy of the repository's
                                                  `docs` (commands meant for a checkout, e.g. `--check`)
    <!-- readme-test: skip reason="why" -->       not run; the reason is printed with the test's skips

A block without a marker is an error, so a new command block cannot stay untested by accident.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

SHELL_LANGS = {"bash", "sh", "shell"}
MARKER = re.compile(r"^<!--\s*readme-test:(?P<body>.*?)-->\s*$")
FENCE = re.compile(r"^```(?P<lang>[\w+-]*)\s*$")
# the install prefix of the README's first commands (one pip install, or the locked install and then
# the project's: `pip install --require-hashes -r requirements/test.txt && pip install --no-deps -e .`):
# the test runs in an installed venv already
VENV_INSTALL = re.compile(r"python3 -m venv \.venv(?:\s*&&\s*\.venv/bin/pip install [^&]*)+&&\s*")


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: dict[str, str] | None = None  # None: no marker
    problems: tuple[str, ...] = field(default=())

    @property
    def story(self) -> str | None:
        return self.marker.get("story") if self.marker else None

    @property
    def skip_reason(self) -> str | None:
        return self.marker.get("reason") if self.marker and "skip" in self.marker else None

    @property
    def copies(self) -> list[str]:
        """Repository paths the story's directory gets a copy of before it runs."""
        return [c for c in (self.marker or {}).get("copy", "").split(",") if c]

    def runnable(self) -> str:
        """The code as the story runs it: verbatim, except a `venv` block's install prefix."""
        if self.marker and "venv" in self.marker:
            return VENV_INSTALL.sub("", self.code)
        return self.code


def parse_marker(body: str) -> tuple[dict[str, str], list[str]]:
    marker: dict[str, str] = {}
    problems: list[str] = []
    try:
        words = shlex.split(body)
    except ValueError as exc:
        return {}, [f"marker does not parse: {exc}"]
    for word in words:
        key, _, value = word.partition("=")
        marker[key] = value
    unknown = set(marker) - {"story", "skip", "reason", "venv", "copy"}
    if unknown:
        problems.append(f"unknown marker key(s) {sorted(unknown)}")
    if ("skip" in marker) == ("story" in marker):
        problems.append('a marker says either story=NAME or skip reason="…"')
    if "skip" in marker and not marker.get("reason"):
        problems.append('a skip needs reason="…"')
    if "story" in marker and not marker["story"]:
        problems.append("story= needs a name")
    return marker, problems


def shell_blocks(text: str) -> list[Block]:
    """Every fenced block in a shell language, with the marker on the line before its fence."""
    lines = text.split("\n")
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        start, lang = i, fence.group("lang")
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
        if lang in SHELL_LANGS:
            found = MARKER.match(lines[start - 1]) if start > 0 else None
            marker, problems = parse_marker(found.group("body")) if found else (None, [])
            blocks.append(Block(start + 1, lang, "\n".join(lines[start + 1 : end]) + "\n", marker, tuple(problems)))
        i = end + 1
    return blocks


def stories(blocks: list[Block]) -> dict[str, list[Block]]:
    """Story name -> its blocks, in README order."""
    out: dict[str, list[Block]] = {}
    for block in blocks:
        if block.story:
            out.setdefault(block.story, []).append(block)
    return out


def script_for(blocks: list[Block]) -> str:
    """One bash script for a story: strict mode, and the README line that failed named on error."""
    parts = ["set -euo pipefail", "trap 'echo \"readme-test: exit $? at: $BASH_COMMAND\" >&2' ERR"]
    for block in blocks:
        parts.append(f"# ---- README.md line {block.line}")
        parts.append(block.runnable())
    return "\n".join(parts) + "\n"
