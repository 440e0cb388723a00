"""The dashboard's pure parts: the overview model, the escaped HTML, addresses and Host checks."""

from __future__ import annotations

from datetime import timedelta

import pytest

from projections.evidence import evidence_of
from services.dashboard import pages
from services.dashboard.model import overview
from services.dashboard.server import parse_addr
from services.reads.live_view import release_view, window_view
from services.settings import ConfigError
from services.web_hosts import host_only, is_loopback

from .test_decisions import history
from .test_projections import P1, Log

HOSTILE = "<script>alert(1)</script>"


def test_overview_groups_scopes_and_splits_in_flight_from_finished() -> None:
    log = history(Log())  # r0 closed success on both cohorts
    log.pin("internal", P1, log.clock + timedelta(days=2), rationale=HOSTILE)
    log.through_verified("r1")
    log.activate("r1", 0, ["internal"])
    log.started("r1", 0, ["internal"])
    world = log.world()
    window = window_view(world.release("r1"), evidence_of("r1", log.entries()), log.clock, None)
    model = overview(world, log.clock, {"r1": window})
    [group] = model["scopes"]
    assert (group["env"], group["channel"], [c["cohort"] for c in group["cohorts"]]) == (
        "prod",
        "canary",
        ["internal", "rest"],
    )
    internal = group["cohorts"][0]
    assert (internal["version"], internal["lkg"], internal["release"]) == ("1.0.0", "0.9.0", "r1")
    assert internal["pinned"].startswith("1.0.0 until ")
    assert [(r["release"], r["window"]["open"]) for r in model["releases"]] == [("r1", True)]
    assert [(r["release"], r["outcome"]) for r in model["recent"]] == [("r0", "success")]

    html = "".join(pages.overview_sections(model).values())
    assert "data-ends=" in html and "<progress" in html  # the open window ticks in the browser
    assert "health samples not readable here" in html  # no samples given: said, not guessed


def test_every_value_from_the_log_is_escaped() -> None:
    log = history(Log())
    log.pin("internal", P1, log.clock + timedelta(days=2), rationale=HOSTILE)
    log.through_verified("r1")
    log.note("r1", "annotated", rationale=HOSTILE, incident="javascript:alert(1)")
    view = release_view(log.world(), evidence_of("r1", log.entries()), now=log.clock)
    html = "".join(pages.release_sections(view, evidence_of("r1", log.entries())).values())
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "href='javascript" not in html and 'href="javascript' not in html
    row = {
        "release": "r1",
        "pack": HOSTILE,
        "target": "a/b",
        "phase": "monitoring",
        "stage": "1/2",
        "why": HOSTILE,
        "window": None,
    }
    assert "<script>" not in pages.releases_section([row]) and "<script>" not in pages.page(
        HOSTILE, "/api/stream", {"x": ""}
    )


@pytest.mark.parametrize(
    "text, addr",
    [
        ("8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:9000", ("0.0.0.0", 9000)),
        ("[::1]:8081", ("::1", 8081)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_dashboard_addresses(text, addr) -> None:
    assert parse_addr(text) == addr


@pytest.mark.parametrize("text", ["web", "host:", "host:99999", "1.2.3.4:-1"])
def test_bad_dashboard_addresses_are_one_clear_error(text) -> None:
    with pytest.raises(ConfigError, match="expected PORT or HOST:PORT"):
        parse_addr(text)


def test_loopback_and_host_headers() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and not is_loopback("0.0.0.0")
    assert [host_only(h) for h in ("localhost:8080", "127.0.0.1", "[::1]:8080", "evil.example:80")] == [
        "localhost",
        "127.0.0.1",
        "[::1]",
        "evil.example",
    ]


def test_the_dashboard_imports_nothing_from_the_cli() -> None:
    """Issue 15: the dashboard's rows are the status read model (services/reads/status.py), not the terminal's views."""
    import ast
    from pathlib import Path

    import services.dashboard

    borrowed = []
    for path in Path(services.dashboard.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            borrowed += [f"{path.name}: {n}" for n in names if n.startswith("services.cli")]
    assert not borrowed, borrowed
