"""Inline SVG charts: a metric over time, one line per runtime, against its threshold (pure).

Input is one metric of `model.window_series`. Every text is escaped (runtime ids and
reasons come from the log and from runtimes), every coordinate is a finite number (a value
that is not one is dropped, an empty or flat series still has a scale), and the SVG uses
presentation attributes only: the page's Content-Security-Policy allows no inline style.
"""

from __future__ import annotations

import html
import math
from datetime import UTC, datetime
from typing import Any

WIDTH, HEIGHT = 760, 230
LEFT, RIGHT, TOP, BOTTOM = 64, 170, 14, 30  # plot margins; the legend sits on the right
COLORS = (
    "#0969da",
    "#8250df",
    "#bf8700",
    "#1a7f37",
    "#57606a",
    "#e16f24",
    "#1b7c83",
    "#a475f9",
    "#4d2d00",
    "#0550ae",
    "#6e7781",
    "#953800",
)
BREACH = "#cf222e"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _time(text: Any) -> float | None:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError, TypeError):
        return None
    return value if math.isfinite(value) else None


def _finite(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _num(value: float) -> str:
    return f"{value:.4g}"


def series_chart(metric: dict[str, Any], windows: list[dict[str, Any]]) -> str:
    """One metric (`window_series(...)["metrics"][i]`) over its windows, as an inline SVG."""
    label = str(metric.get("label") or metric.get("metric") or "")
    threshold = _finite(metric.get("threshold"))
    spans = [
        (s, e, w)
        for w in windows
        if (s := _time(w.get("starts_at"))) is not None and (e := _time(w.get("ends_at"))) is not None
    ]
    lines: list[tuple[str, list[tuple[float, float, str | None]]]] = []
    for runtime, points in (metric.get("runtimes") or {}).items():
        kept = []
        for p in points:
            t, v = _time(p.get("at")), _finite(p.get("value"))
            if t is not None and v is not None:
                kept.append((t, v, p.get("breach")))
        if kept:
            lines.append((str(runtime), sorted(kept)))

    times = [t for _, pts in lines for t, _, _ in pts] + [x for s, e, _ in spans for x in (s, e)]
    t0, t1 = (min(times), max(times)) if times else (0.0, 1.0)
    if t1 - t0 <= 0:
        t1 = t0 + 1.0
    values = [v for _, pts in lines for _, v, _ in pts] + ([threshold] if threshold is not None else [])
    top = max(values, default=0.0) * 1.15
    if top <= 0:
        top = 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(t: float) -> str:
        return f"{LEFT + (t - t0) / (t1 - t0) * plot_w:.1f}"

    def y(v: float) -> str:
        return f"{TOP + plot_h - min(max(v / top, 0.0), 1.0) * plot_h:.1f}"

    title = f"{label} per runtime against its threshold"
    out = [
        f'<svg class="series" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{_e(title)}" data-metric="{_e(metric.get("metric", ""))}"><title>{_e(title)}</title>'
    ]
    for s, e, w in spans:  # each window as a band; a hard-breach window in red
        hard = bool(w.get("hard_breach"))
        fill, opacity = (BREACH, "0.12") if hard else ("#0969da", "0.05")
        mark = "hard breach" if hard else str(w.get("result") or "open")
        out.append(
            f'<rect class="window{" hard-breach" if hard else ""}" x="{x(s)}" y="{TOP}" '
            f'width="{max(float(x(e)) - float(x(s)), 1.0):.1f}" height="{plot_h}" '
            f'fill="{fill}" fill-opacity="{opacity}">'
            f"<title>stage {_e(w.get('stage'))}: {_e(mark)}"
            f"{': ' + _e(w['reason']) if w.get('reason') else ''}</title></rect>"
        )
        out.append(
            f'<text x="{float(x(s)) + 3:.1f}" y="{TOP + 11}" font-size="10" fill="{BREACH if hard else "#57606a"}">'
            f"stage {_e(w.get('stage'))}{' · hard breach' if hard else ''}</text>"
        )
    # axes: zero, the top value, the start and end times
    out.append(
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}" stroke="#8c959f"/>'
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="#8c959f"/>'
        f'<text x="{LEFT - 4}" y="{TOP + plot_h}" font-size="10" text-anchor="end">0</text>'
        f'<text x="{LEFT - 4}" y="{TOP + 8}" font-size="10" text-anchor="end">{_num(top)}</text>'
        f'<text x="{LEFT}" y="{HEIGHT - 8}" font-size="10">{_e(_clock(t0))}</text>'
        f'<text x="{LEFT + plot_w}" y="{HEIGHT - 8}" font-size="10" text-anchor="end">{_e(_clock(t1))}</text>'
    )
    if threshold is not None:
        out.append(
            f'<line class="threshold" x1="{LEFT}" y1="{y(threshold)}" x2="{LEFT + plot_w}" y2="{y(threshold)}" '
            f'stroke="{BREACH}" stroke-dasharray="5,3"><title>threshold {_num(threshold)}</title></line>'
            f'<text x="{LEFT + plot_w - 2}" y="{float(y(threshold)) - 3:.1f}" font-size="10" text-anchor="end" '
            f'fill="{BREACH}">threshold {_num(threshold)}</text>'
        )
    if not lines:
        out.append(
            f'<text x="{LEFT + plot_w / 2:.1f}" y="{TOP + plot_h / 2:.1f}" font-size="12" text-anchor="middle" '
            f'fill="#57606a">no samples</text>'
        )
    for i, (runtime, pts) in enumerate(lines):
        color = COLORS[i % len(COLORS)]
        coords = " ".join(f"{x(t)},{y(v)}" for t, v, _ in pts)
        out.append(
            f'<polyline class="runtime" points="{coords}" fill="none" stroke="{color}" stroke-width="1.5">'
            f"<title>{_e(runtime)}</title></polyline>"
        )
        for t, v, breach in pts:
            if breach or len(pts) == 1:
                out.append(
                    f'<circle class="{"breach" if breach else "point"}" cx="{x(t)}" cy="{y(v)}" '
                    f'r="{3.5 if breach else 2.5}" '
                    f'fill="{BREACH if breach else color}"><title>{_e(runtime)} {_num(v)}'
                    f"{': ' + _e(breach) if breach else ''}</title></circle>"
                )
        ly = TOP + 12 + 14 * i
        shown = runtime if len(runtime) <= 22 else runtime[:21] + "…"
        out.append(
            f'<line x1="{WIDTH - RIGHT + 10}" y1="{ly - 4}" x2="{WIDTH - RIGHT + 24}" y2="{ly - 4}" stroke="{color}" '
            f'stroke-width="2"/>'
            f'<text class="legend" x="{WIDTH - RIGHT + 28}" y="{ly}" font-size="11">{_e(shown)}</text>'
        )
    more = int(_finite(metric.get("more_runtimes")) or 0)
    if more:
        ly = TOP + 12 + 14 * len(lines)
        out.append(f'<text x="{WIDTH - RIGHT + 10}" y="{ly}" font-size="11" fill="#57606a">and {more} more</text>')
    out.append("</svg>")
    return "".join(out)


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%SZ") if ts > 86400 else "-"
