"""HTML for the dashboard: whole pages, and the sections the live stream replaces in place.

Pure functions of the view models (`model.py`) and the evidence record. Every value from
the log is escaped here (release notes and rationales are hostile input); the browser only
swaps in these server-rendered fragments, and the page's Content-Security-Policy refuses
inline scripts besides.
"""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import quote

from projections.evidence import EvidenceRecord
from services.reads.audit import record_sections

READ_ONLY = (
    "Read-only: decisions (pause, promote, rollback, pin…) are made with kxr, "
    "so they carry the operator's identity and permissions."
)


def _e(value: Any) -> str:
    return html.escape("-" if value is None else str(value))


def release_link(release_id: str) -> str:
    return f"<a href='/releases/{quote(release_id, safe='')}'>{_e(release_id)}</a>"


def window_cell(window: dict[str, Any] | None) -> str:
    """A `live_view` window: its clock as a progress bar (ticking in the browser while open) and its state."""
    if window is None:
        return "<span class='muted'>no window yet</span>"
    state = (
        ("open, so far: " + _e(window["result"]) if window["result"] else "open")
        if window["open"]
        else _e(window["result"] or "ended")
    )
    ticking = f" data-starts='{_e(window['starts_at'])}' data-ends='{_e(window['ends_at'])}'" if window["open"] else ""
    fraction = float(window["fraction"])
    samples = f"; {window['samples']} of ≥{window['min_samples']} samples" if window["source"] != "unavailable" else ""
    return (
        f"<progress max='1' value='{fraction}'{ticking}></progress> <span class='pct'>{fraction * 100:.0f}%</span> "
        f"<span class='muted'>stage {window['stage']} ({_e(', '.join(window['cohorts']))}): {state}{_e(samples)}</span>"
    )


def figures_cell(window: dict[str, Any] | None) -> str:
    """Each figure against its threshold (live, or as the verdict recorded them)."""
    if not window:
        return "<span class='muted'>-</span>"
    if not window["figures"]:
        return f"<span class='muted'>{_e(window.get('note') or window.get('reason'))}</span>"
    items = []
    for f in window["figures"]:
        shown = "-" if f["value"] is None else f"{f['value']:.4g}"
        limit = "" if f["threshold"] is None else f" {f['op']} {f['threshold']:.4g}"
        items.append(f"<li class='{'ok' if f['ok'] else 'fail'}'>{_e(f['metric'])} {_e(shown)}{_e(limit)}</li>")
    return "<ul class='figs'>" + "".join(items) + "</ul>"


def _table(headers: list[str], rows: list[str], empty: str, attrs: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(rows) or f"<tr><td colspan='{len(headers)}' class='muted'>{_e(empty)}</td></tr>"
    return f"<table{attrs}><tr>{head}</tr>{body}</table>"


def releases_section(releases: list[dict[str, Any]]) -> str:
    rows = [
        f"<tr data-release='{_e(r['release'])}'><td>{release_link(r['release'])}</td>"
        f"<td>{_e(r['pack'])}</td><td>{_e(r['target'])}</td>"
        f"<td class='phase'>{_e(r['phase'])}</td><td>{_e(r['stage'])}</td><td>{window_cell(r['window'])}</td>"
        f"<td>{figures_cell(r['window'])}</td><td>{_e(r['why'])}</td></tr>"
        for r in releases
    ]
    return "<h2>Releases in flight</h2>" + _table(
        ["release", "pack", "target", "phase", "stage", "window", "figures vs thresholds", "why"],
        rows,
        "no release in flight",
    )


def scopes_section(groups: list[dict[str, Any]]) -> str:
    out = ["<h2>Scopes</h2>"]
    if not groups:
        out.append("<p class='muted'>No scope has an active pack yet.</p>")
    for g in groups:
        rows = [
            f"<tr data-scope='{_e(c['scope'])}'><td>{_e(c['cohort'])}</td><td class='version'>{_e(c['version'])}</td>"
            f"<td><code>{_e((c['digest'] or '')[7:19] or None)}</code></td><td>{_e(c['kind'])}</td>"
            f"<td>{release_link(c['release']) if c['release'] else '-'}</td><td>{_e(c['since'])}</td>"
            f"<td class='pin'>{_e(c['pinned'])}</td><td class='lkg'>{_e(c['lkg'])}</td></tr>"
            for c in g["cohorts"]
        ]
        out.append(f"<h3>{_e(g['env'])} / {_e(g['channel'])}</h3>")
        out.append(
            _table(
                ["cohort", "active", "digest", "kind", "release", "since", "pinned (until)", "last-known-good"],
                rows,
                "",
            )
        )
    return "".join(out)


def recent_section(recent: list[dict[str, Any]]) -> str:
    rows = [
        f"<tr><td>{release_link(r['release'])}</td><td>{_e(r['pack'])}</td><td>{_e(r['target'])}</td>"
        f"<td class='{'ok' if r['outcome'] == 'success' else 'fail'}'>{_e(r['outcome'])}</td>"
        f"<td>{_e(r['why'])}</td></tr>"
        for r in recent
    ]
    return "<h2>Recently finished</h2>" + _table(["release", "pack", "target", "outcome", "why"], rows, "none yet")


def overview_sections(model: dict[str, Any]) -> dict[str, str]:
    return {
        "releases": releases_section(model["releases"]),
        "scopes": scopes_section(model["scopes"]),
        "recent": recent_section(model["recent"]),
    }


def summary_section(view: dict[str, Any]) -> str:
    pack = view["pack"]
    state = (
        view["phase"] + (" (paused)" if view["paused"] else "") + (" — held for an operator" if view["held"] else "")
    )
    facts = [
        ("pack", f"{pack['name']}@{pack['version']}" if pack else None),
        ("digest", pack["digest"] if pack else None),
        ("target", view["target"]),
        ("owner", view["owner"]),
        ("escalation", view["escalation"]),
        ("phase", state),
        ("outcome", view["outcome"] or "in flight"),
        ("why", view["why"]),
        ("promoted to", view["promoted_to"]),
    ]
    rows = "".join(
        f"<tr><th>{_e(k)}</th><td class='{_e(k.replace(' ', '-'))}'>{_e(v)}</td></tr>"
        for k, v in facts
        if v is not None or k == "why"
    )
    stages = [
        f"<tr><td>{s['stage']}</td><td>{_e(', '.join(s['cohorts']))}</td>"
        f"<td class='{_e(s['state'])}'>{_e(s['state'])}</td><td>{_e(s['verdict'])}</td>"
        f"<td>{_e('; '.join(f'{c}: {why}' for c, why in s['skipped'].items()) or None)}</td></tr>"
        for s in view["stages"]
    ]
    return f"<h2>Now</h2><table class='facts'>{rows}</table><h3>Stages</h3>" + _table(
        ["stage", "cohorts", "state", "verdict", "skipped"], stages, "not planned yet", " id='stages'"
    )


def window_section(view: dict[str, Any]) -> str:
    window = view["window"]
    source = (
        {
            "live": "figures so far, judged as the monitor would judge them now",
            "verdict": "the verdict the monitor recorded",
            "unavailable": "",
        }.get(window["source"], "")
        if window
        else ""
    )
    return (
        f"<h2>Monitoring window</h2><p>{window_cell(window)}</p>"
        f"<p class='muted'>{_e(source or None)}</p>{figures_cell(window)}"
    )


def scopes_of_release_section(view: dict[str, Any]) -> str:
    rows = []
    for s in view["scopes"]:
        pin = s["pinned"]
        pinned = f"{pin['version']} until {pin['until']} by {pin['by']}: {pin['rationale']}" if pin else None
        rows.append(
            f"<tr data-scope='{_e(s['scope'])}'><td>{_e(s['scope'])}</td><td class='version'>{_e(s['active'])}</td>"
            f"<td>{_e(s['active_kind'])}</td><td class='lkg'>{_e(s['lkg'])}</td><td>{_e(s['rollback_target'])}</td>"
            f"<td class='pin'>{_e(pinned)}</td></tr>"
        )
    return "<h2>Its scopes</h2>" + _table(
        ["scope", "active", "kind", "last-known-good", "rollback target", "pinned"], rows, "not planned yet"
    )


def release_sections(view: dict[str, Any], record: EvidenceRecord) -> dict[str, str]:
    """The release page: `live_view.release_view` (now), then the whole evidence record (timeline, gates, charts)."""
    return {
        "summary": summary_section(view),
        "window": window_section(view),
        "release-scopes": scopes_of_release_section(view),
        "record": record_sections(record),
    }


def page(title: str, stream: str, sections: dict[str, str], *, back: bool = False) -> str:
    nav = "<a href='/'>← all scopes and releases</a> · " if back else ""
    body = "".join(f"<section id='{_e(name)}'>{fragment}</section>" for name, fragment in sections.items())
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{_e(title)}</title>"
        "<link rel='stylesheet' href='/assets/dashboard.css'><script src='/assets/dashboard.js' defer></script></head>"
        f"<body data-stream='{_e(stream)}'><header><h1>{_e(title)}</h1>"
        f"<p>{nav}<span id='live' class='muted'>connecting…</span></p><p class='readonly'>{_e(READ_ONLY)}</p></header>"
        f"{body}</body></html>"
    )


def not_found_page(what: str) -> str:
    return page("Not found", "", {"missing": f"<p>{_e(what)}</p>"}, back=True)
