"""`kxr watch`'s pure parts: exit status from a view, what counts as a change, the rendered frame and line."""

from __future__ import annotations

import io
from datetime import timedelta

from rich.console import Console

from projections.evidence import evidence_of
from services.cli.live_render import frame, summary_line
from services.cli.watch import EXIT_HELD, EXIT_NOT_SUCCESS, EXIT_SUCCESS, change_key, exit_status
from services.reads.live_view import release_view

from .test_decisions import history, sample
from .test_live_view import open_window, window_of
from .test_projections import Log


def view_of(log: Log, **kwargs):
    kwargs.setdefault("now", log.clock)
    return release_view(log.world(), evidence_of("r1", log.entries()), **kwargs)


def rendered(view) -> str:
    console = Console(width=120, record=True, file=io.StringIO())
    console.print(frame(view))
    return console.export_text()


def test_exit_status_encodes_the_outcome() -> None:
    log = history(Log())
    log.two_stage_success("r1")
    assert exit_status(view_of(log), until_held=False) == EXIT_SUCCESS
    for outcome in ("rolled_back", "aborted", "rejected", "failed"):
        closed = {**view_of(log), "outcome": outcome}
        assert exit_status(closed, until_held=False) == EXIT_NOT_SUCCESS


def test_a_held_or_paused_after_a_pass_release_ends_the_watch_only_with_until_held() -> None:
    log = open_window(history(Log()))
    assert exit_status(view_of(log, stored_samples=[]), until_held=True) is None  # monitoring: keep watching
    log.verdict("r1", "passed", 0)
    log.note("r1", "paused", "look at a graph")
    paused = view_of(log)
    assert paused["waiting"] and not paused["held"]
    assert exit_status(paused, until_held=True) == EXIT_HELD and exit_status(paused, until_held=False) is None
    log.note("r1", "resumed", "ok")
    assert exit_status(view_of(log), until_held=True) is None


def test_a_change_is_anything_but_the_clock() -> None:
    log = open_window(history(Log()))
    m = window_of(log)
    a = view_of(log, now=m.starts_at + timedelta(seconds=1), stored_samples=[])
    b = view_of(log, now=m.starts_at + timedelta(seconds=2), stored_samples=[])
    assert a != b and change_key(a) == change_key(b)
    c = view_of(log, now=m.starts_at + timedelta(seconds=2), stored_samples=[(m.starts_at, sample())])
    assert change_key(c) != change_key(b)


def test_the_frame_and_the_line_show_stages_gates_window_figures_scopes_and_events() -> None:
    log = open_window(history(Log()))
    m = window_of(log)
    v = view_of(log, now=m.starts_at + timedelta(seconds=30), stored_samples=[(m.starts_at, sample(errors=20))])
    text = rendered(v)
    for needle in (
        "release r1: kb@1.0.0 -> prod/canary — monitoring",
        "Stages",
        "monitoring",
        "pending",
        "gates: signature pass  digest pass",
        "stage 1 window 30s/60s (50%) live",
        "would be failed now",
        "error_rate",
        "0.2",
        "<= 0.05",
        "BREACH",
        "Scopes",
        "prod/canary/internal",
        "Last events",
        "monitoring_started",
    ):
        assert needle in text, f"{needle!r} not in:\n{text}"
    line = summary_line(v)
    assert "stages 1:monitoring 2:pending" in line and "error_rate 0.2 <= 0.05 BREACH" in line and "\n" not in line
    unavailable = rendered(view_of(log, stored_samples=None))
    assert "health samples not readable here" in unavailable
