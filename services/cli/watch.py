"""`kxr watch RELEASE`: follow one release live until it ends; the exit status is its outcome.

Exit status (for scripts and pipelines):

| status | meaning |
|---|---|
| 0 | the release closed with outcome `success` |
| 1 | it closed otherwise: `rolled_back`, `aborted`, `rejected`, `failed` (or `pinned`) |
| 2 | it could not be watched: unknown release (without `--wait`), bad arguments, NATS unreachable (one line) |
| 3 | `--until-held` and it waits for an operator (a held window or escalation, or paused after a passed stage) |
| 4 | `--timeout` passed before it ended (with `--wait`: the time waiting for the request counts) |
| 130 | interrupted (Ctrl-C) |
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import typer

from .common import NatsUrl, console, err_console, fail, run_async, session

if TYPE_CHECKING:
    from rich.live import Live

EXIT_SUCCESS, EXIT_NOT_SUCCESS, EXIT_HELD, EXIT_TIMEOUT = 0, 1, 3, 4


def exit_status(view: dict[str, Any], until_held: bool) -> int | None:
    """The exit status this view ends the watch with, or None to keep watching."""
    if view["terminal"]:
        return EXIT_SUCCESS if view["outcome"] == "success" else EXIT_NOT_SUCCESS
    if until_held and view["waiting"]:
        return EXIT_HELD
    return None


def change_key(view: dict[str, Any]) -> str:
    """The view without its clock: a new line is printed only when something else moved."""
    window = view["window"]
    if window is not None:
        window = {k: v for k, v in window.items() if k not in ("elapsed_s", "fraction")}
    return json.dumps({**view, "at": None, "window": window}, sort_keys=True, default=str)


def watch(
    release_id: str = typer.Argument(..., help="the release to follow"),
    as_json: bool = typer.Option(
        False, "--json", help="one JSON object per line per change (docs/schemas/cli/watch.schema.json)"
    ),
    interval: float = typer.Option(
        1.0, "--interval", min=0.1, help="seconds between refreshes of the window's clock and figures"
    ),
    until_held: bool = typer.Option(False, "--until-held", help="exit 3 as soon as the release waits for an operator"),
    timeout: float | None = typer.Option(
        None, "--timeout", min=0.0, help="exit 4 if the release has not ended after this many seconds"
    ),
    events: int = typer.Option(8, "--events", min=0, help="how many of the last events to show"),
    wait: bool = typer.Option(
        False, "--wait", help="if the release is not requested yet, wait for it (bound it with --timeout)"
    ),
    nats_url: str | None = NatsUrl,
) -> None:
    """Follow a release live: stages, gates, the monitoring window against its thresholds, last events.

    Exits with the release's outcome: 0 success, 1 rolled back/aborted/rejected/failed,
    2 cannot watch it (unknown without --wait), 3 waiting for an operator (--until-held), 4 --timeout, 130 Ctrl-C.
    Without a terminal it prints a line per change and the final frame; --json prints
    one view object per line per change.
    """
    import asyncio

    from events.tokens import check_token
    from services.reads.watch import ReleaseWatch, UnknownRelease

    check_token(release_id, "release id")
    # The view is the output: the readers' retry warnings would tear the live frame apart.
    logging.getLogger().addHandler(logging.NullHandler())
    mode = "json" if as_json else ("live" if console.is_terminal else "lines")

    async def go() -> int:
        async with session(nats_url) as (nc, js, log):
            w = ReleaseWatch(
                nc,
                js,
                log.subjects,
                release_id,
                clock=lambda: datetime.now(UTC),
                interval=interval,
                events=events,
                wait=wait,
                on_waiting=lambda: err_console.print(f"waiting for release {release_id} to be requested…"),
            )
            out = _Output(mode)
            try:
                async with asyncio.timeout(timeout):
                    try:
                        async for view in w.views():
                            out.show(view)
                            code = exit_status(view, until_held)
                            if code is not None:
                                return code
                    except UnknownRelease as exc:
                        fail(str(exc))
            except TimeoutError:
                return EXIT_TIMEOUT
            finally:
                out.close()
        raise AssertionError("the watch ended without a terminal view")  # views() stops only on a terminal one

    raise typer.Exit(run_async(go()))


class _Output:
    """Where views go: a live frame (terminal), a line per change (logs), or JSON lines."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._last_key: str | None = None
        self._last_view: dict[str, Any] | None = None
        self._live: Live | None = None

    def show(self, view: dict[str, Any]) -> None:
        from .live_render import frame, summary_line

        self._last_view = view
        if self.mode == "live":
            if self._live is None:
                from rich.live import Live

                self._live = Live(frame(view), console=console, auto_refresh=False, transient=False)
                self._live.start()
            self._live.update(frame(view), refresh=True)
            return
        key = change_key(view)
        if key == self._last_key:
            return
        self._last_key = key
        if self.mode == "json":
            from services.reads.shapes import WatchFrame, dump

            # through its documented shape (docs/schemas/cli/watch.schema.json): a frame that drifted fails here
            frame_doc = dump(WatchFrame.model_validate(view))
            sys.stdout.write(json.dumps(frame_doc, sort_keys=True, separators=(",", ":")) + "\n")
        else:
            sys.stdout.write(f"{(view['at'] or '')[11:19]} {summary_line(view)}\n")
        sys.stdout.flush()

    def close(self) -> None:
        """The last frame stays on screen (live) or is printed once (lines)."""
        from .live_render import frame

        if self._live is not None:
            self._live.stop()
        elif self.mode == "lines" and self._last_view is not None:
            console.print(frame(self._last_view))
