"""Rendering the live view of a release (services/reads/live_view.py) for a terminal: a frame or a line."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .views import add_columns, figure_text, new_table, number_text, op_text, table

STATE_STYLE = {
    "passed": "green",
    "success": "green",
    "monitoring": "cyan",
    "activated": "cyan",
    "activating": "cyan",
    "held": "yellow",
    "rolling_back": "magenta",
    "rolled_back": "magenta",
    "failed": "red",
    "pending": "dim",
}


def headline(view: dict[str, Any]) -> str:
    pack = view["pack"]
    what = f"{pack['name']}@{pack['version']}" if pack else "?"
    state = view["outcome"] or view["phase"] or "?"
    extras = [x for x in ("paused" if view["paused"] else None, "held for an operator" if view["held"] else None) if x]
    return f"release {view['release_id']}: {what} -> {view['target'] or '?'} — {state}" + (
        f" ({', '.join(extras)})" if extras else ""
    )


def window_line(window: dict[str, Any] | None) -> str:
    """`stage 1 window 15s/60s (25%) live: 12 samples (min 20) from 3 runtimes, would pass`."""
    if window is None:
        return "no monitoring window yet"
    clock = f"{window['elapsed_s']:.0f}s/{window['window_s']}s ({window['fraction']:.0%})"
    head = f"stage {window['stage']} window {clock} {window['source']}"
    if window["source"] == "unavailable":
        return f"{head}: {window['note']}"
    if window["early"]:
        return f"{head}: {window['result']} early: {window['reason']}"
    result = window["result"]
    verdict = f"would be {result} now" if window["open"] else result
    runtimes = f" from {window['runtimes']} runtime(s)" if window["runtimes"] is not None else ""
    return f"{head}: {window['samples']} sample(s) (min {window['min_samples']}){runtimes}, {verdict}"


def summary_line(view: dict[str, Any]) -> str:
    """One line per change, for logs and pipelines (no terminal)."""
    stages = " ".join(f"{s['stage']}:{s['state']}" for s in view["stages"]) or "-"
    parts = [headline(view), f"stages {stages}"]
    if view["window"] is not None:
        parts.append(window_line(view["window"]))
        parts += [figure_text(f) for f in view["window"]["figures"]]
    if view["why"]:
        parts.append(f"why: {view['why']}")
    return " | ".join(parts)


def _styled(state: str | None) -> Text:
    return Text(state or "-", style=STATE_STYLE.get(state or "", ""))


def frame(view: dict[str, Any]) -> Group:
    """The whole picture: stages, gates, the window against its thresholds, scopes, last events."""
    parts: list[Any] = [
        Text(headline(view), style="bold " + STATE_STYLE.get(view["outcome"] or view["phase"] or "", ""))
    ]
    stages = new_table("Stages")
    add_columns(stages, ["stage", "cohorts", "state", "verdict"])
    for s in view["stages"]:
        cohorts = ", ".join(c + (" (skipped)" if c in s["skipped"] else "") for c in s["cohorts"])
        stages.add_row(str(s["stage"]), cohorts, _styled(s["state"]), s["verdict"] or "")
    if not view["stages"]:
        stages.add_row("-", "(not prepared yet)", "", "")
    parts.append(stages)
    gates = view["gates"]
    if gates:
        parts.append(
            Text(
                "gates: " + "  ".join(f"{g['gate']} {'pass' if g['ok'] else 'FAIL ' + g['code']}" for g in gates),
                style="green" if all(g["ok"] for g in gates) else "red",
            )
        )
    else:
        parts.append(Text("gates: not verified yet", style="dim"))
    parts += _window_parts(view["window"])
    scopes = [
        {
            "scope": r["scope"],
            "active": r["active"],
            "release": r["active_release"],
            "lkg": r["lkg_version"],
            "pinned": f"{r['pinned']['version']} until {r['pinned']['until'][:16]}Z" if r["pinned"] else None,
            "rollback to": r["rollback_target"],
        }
        for r in view["scopes"]
    ]
    parts.append(table("Scopes", scopes, ["scope", "active", "release", "lkg", "pinned", "rollback to"]))
    events = [
        {"seq": e["seq"], "at": e["at"][11:23], "event": e["type"].removeprefix("release."), "detail": e["summary"]}
        for e in view["events"]
    ]
    parts.append(table("Last events", events, ["seq", "at", "event", "detail"]))
    if view["why"]:
        parts.append(Text(f"why: {view['why']}", style="yellow"))
    return Group(*parts)


def _window_parts(window: dict[str, Any] | None) -> list[Any]:
    if window is None:
        return [Text("no monitoring window yet", style="dim")]
    bar = ProgressBar(
        total=1.0,
        completed=window["fraction"],
        width=40,
        complete_style="cyan" if window["open"] else ("green" if window["result"] == "passed" else "red"),
    )
    gauge = Table.grid(padding=(0, 1))
    gauge.add_row(bar, Text(f"{window['fraction']:.0%} of {window['window_s']}s"))
    out: list[Any] = [Text(window_line(window)), gauge]
    if window["figures"]:
        t = new_table("Window figures against thresholds")
        for c in ("metric", "value", "threshold", "result"):
            t.add_column(c, no_wrap=True, overflow="ellipsis")
        for f in window["figures"]:
            t.add_row(
                f["metric"],
                number_text(f["value"]),
                f"{op_text(f['op'])} {number_text(f['threshold'])}",
                Text("ok", style="green") if f["ok"] else Text("BREACH", style="bold red"),
            )
        out.append(t)
    if window["reason"]:
        out.append(Text(window["reason"], style="dim"))
    return out
