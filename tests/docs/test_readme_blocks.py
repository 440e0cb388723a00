"""The README block parser (pure): what counts as marked, skipped, and how a story is assembled."""

from __future__ import annotations

from .readme_blocks import script_for, shell_blocks, stories

FENCE = "```"


def doc(*parts: str) -> str:
    return "\n".join(parts) + "\n"


def test_an_unmarked_shell_block_has_no_marker_and_other_languages_are_ignored() -> None:
    blocks = shell_blocks(
        doc("text", f"{FENCE}bash", "kxr status", FENCE, f"{FENCE}toml", "a = 1", FENCE, f"{FENCE}", "plain", FENCE)
    )
    assert [(b.line, b.marker) for b in blocks] == [(2, None)]


def test_markers_name_a_story_or_a_skip_with_its_reason() -> None:
    blocks = shell_blocks(
        doc(
            "<!-- readme-test: story=one -->",
            f"{FENCE}bash",
            "echo a",
            FENCE,
            '<!-- readme-test: skip reason="needs Docker" -->',
            f"{FENCE}sh",
            "docker compose up",
            FENCE,
            "<!-- readme-test: story=one -->",
            f"{FENCE}bash",
            "echo b",
            FENCE,
        )
    )
    assert [b.story for b in blocks] == ["one", None, "one"]
    assert blocks[1].skip_reason == "needs Docker"
    assert all(not b.problems for b in blocks)
    assert [b.code for b in stories(blocks)["one"]] == ["echo a\n", "echo b\n"]


def test_bad_markers_are_problems() -> None:
    for marker in (
        "<!-- readme-test: skip -->",
        "<!-- readme-test: story=a skip reason=x -->",
        "<!-- readme-test: stroy=a -->",
        '<!-- readme-test: skip reason="unclosed -->',
    ):
        (block,) = shell_blocks(doc(marker, f"{FENCE}bash", "true", FENCE))
        assert block.problems, marker


def test_a_marker_must_sit_right_before_the_fence() -> None:
    (block,) = shell_blocks(doc("<!-- readme-test: story=a -->", "", f"{FENCE}bash", "true", FENCE))
    assert block.marker is None


def test_a_venv_block_drops_the_locked_install_and_the_project_install_alike() -> None:
    (block,) = shell_blocks(
        doc(
            "<!-- readme-test: story=demo venv -->",
            f"{FENCE}bash",
            "python3 -m venv .venv && .venv/bin/pip install -q --require-hashes -r requirements/test.txt"
            " && .venv/bin/pip install -q --no-deps -e . && .venv/bin/kxr demo",
            FENCE,
        )
    )
    assert block.runnable() == ".venv/bin/kxr demo\n"


def test_a_venv_block_runs_in_the_installed_venv_and_a_story_is_one_strict_script() -> None:
    (block,) = shell_blocks(
        doc(
            "<!-- readme-test: story=demo venv -->",
            f"{FENCE}bash",
            "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/kxr demo",
            FENCE,
        )
    )
    assert block.runnable() == ".venv/bin/kxr demo\n"
    script = script_for([block])
    assert (
        script.startswith("set -euo pipefail\n")
        and "README.md line 2" in script
        and script.endswith(".venv/bin/kxr demo\n\n")
    )
