"""HTML for the dashboard: whole pages, and the sections the live stream replaces in place.

Pure functions of the view models (`model.py`) and the evidence record. Every value from
the log is escaped here (release notes and rationales are hostile input); the browser only
swaps in these server-rendered fragments, and the page's Content-Security-Policy refuses
inline scripts besides.
"""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import quote, urlencode

from projections.evidence import EvidenceRecord
from services.reads.audit import record_sections

READ_ONLY = (
    "Read-only: decisions (pause, promote, rollback, pin…) are made with kxr, "
    "so they carry the operator's identity and permissions."
)


NAV = "<a href='/fleet'>fleet</a> · <a href='/history'>release history</a> · "


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
            f"<td>{_e(s['active_kind'])}</td><td class='lkg'>{_e(s['lkg_version'])}</td>"
            f"<td>{_e(s['rollback_target'])}</td>"
            f"<td class='pin'>{_e(pinned)}</td></tr>"
        )
    return "<h2>Its scopes</h2>" + _table(
        ["scope", "active", "kind", "last-known-good", "rollback target", "pinned"], rows, "not planned yet"
    )


def release_sections(
    view: dict[str, Any], record: EvidenceRecord, series: dict[str, Any] | None = None
) -> dict[str, str]:
    """The release page: `live_view.release_view` (now), its windows over time (`model.window_series`),
    then the whole evidence record (timeline, gates, charts)."""
    return {
        "summary": summary_section(view),
        "window": window_section(view),
        "series": series_section(series),
        "release-scopes": scopes_of_release_section(view),
        "record": record_sections(record),
    }


def page(title: str, stream: str, sections: dict[str, str], *, back: bool = False, banner: str | None = None) -> str:
    """`banner`: HTML (escaped by its maker) in place of the read-only note (actions mode: `account_banner`)."""
    nav = ("<a href='/'>← all scopes and releases</a> · " if back else "") + NAV
    banner = f"<p class='readonly'>{_e(READ_ONLY)}</p>" if banner is None else banner
    body = "".join(f"<section id='{_e(name)}'>{fragment}</section>" for name, fragment in sections.items())
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{_e(title)}</title>"
        "<link rel='stylesheet' href='/assets/dashboard.css'><script src='/assets/dashboard.js' defer></script></head>"
        f"<body data-stream='{_e(stream)}'><header><h1>{_e(title)}</h1>"
        f"<p>{nav}<span id='live' class='muted'>connecting…</span></p>{banner}</header>"
        f"{body}</body></html>"
    )


def not_found_page(what: str) -> str:
    return page("Not found", "", {"missing": f"<p>{_e(what)}</p>"}, back=True)


# ---- the fleet (/fleet) --------------------------------------------------------------------------
FLEET_ROWS_SHOWN = 500  # rows on the page (those not ok first); the JSON has every one


def _short(digest: str | None) -> str | None:
    return digest[7:19] if digest and digest.startswith("sha256:") else digest


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def fleet_section(fleet: dict[str, Any]) -> str:
    """Every runtime seen (`reads/fleet.py` rows), or why none can be shown."""
    out = ["<h2>Fleet</h2>"]
    if fleet["problem"]:
        out.append(f"<p class='fail' id='fleet-problem'>{_e(fleet['problem'])}</p>")
        return "".join(out)
    if not fleet["ready"]:
        return out[0] + "<p class='muted'>reading the runtimes' health reports…</p>"
    rows = fleet["rows"]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "none"
    out.append(
        f"<p class='muted'>{len(rows)} runtime(s) seen: {_e(summary)}. Health: error rate and p95 latency of each "
        f"runtime's latest samples; last seen by the server's stored time.</p>"
    )
    cells = []
    shown = sorted(rows, key=lambda r: r["status"] == "ok")[:FLEET_ROWS_SHOWN]  # stable: by scope within each
    for r in shown:
        act = r["activation"]
        activation = (
            f"<span class='{'ok' if act['result'] == 'ok' else 'fail'}'>{_e(act['result'])}</span> "
            f"{_e(act['version'] or _short(act['digest']))}"
            + (f"<br><span class='muted'>{_e(act['reason'])}</span>" if act["reason"] else "")
            if act
            else "<span class='muted'>-</span>"
        )
        sync = {True: "in sync", False: f"scope on {r['scope_version']}", None: "no pointer"}[r["in_sync"]]
        h = r["health"]
        p95 = "-" if h["latency_p95_ms"] is None else f"{h['latency_p95_ms']:.4g} ms"
        invalid = (
            f"{r['invalid_reports']}: {_e(r['last_invalid'])}"
            if r["invalid_reports"]
            else "<span class='muted'>0</span>"
        )
        cells.append(
            f"<tr data-runtime='{_e(r['runtime'])}' class='status-{_e(r['status'])}'>"
            f"<td class='runtime'>{_e(r['runtime'])}</td>"
            f"<td>{_e(r['scope'])}</td><td class='version'>{_e(r['version'])}</td>"
            f"<td><code>{_e(_short(r['digest']))}</code></td><td class='sync'>{_e(sync)}</td>"
            f"<td class='activation'>{activation}</td><td class='seen'>{_e(r['last_seen'])} "
            f"<span class='muted'>({_e(r['age_s'])} s ago)</span></td>"
            f"<td class='health'>{_e(_rate(h['error_rate']))} · {_e(p95)} "
            f"<span class='muted'>({_e(h['samples'])} samples, {_e(h['requests'])} req)</span></td>"
            f"<td class='status {'ok' if r['status'] == 'ok' else 'fail'}'>{_e(r['status'])}</td>"
            f"<td>{invalid}</td></tr>"
        )
    out.append(
        _table(
            [
                "runtime",
                "scope",
                "version",
                "digest",
                "pointer",
                "last activation",
                "last seen",
                "health (errors · p95)",
                "status",
                "invalid reports",
            ],
            cells,
            "no runtime has reported health yet",
            " id='fleet-table'",
        )
    )
    if len(rows) > len(shown):
        out.append(
            f"<p class='muted'>{len(rows) - len(shown)} more runtime(s) not shown (those not ok come first): "
            "every row is in /api/fleet.</p>"
        )
    if fleet["unattributed"]:
        out.append(f"<p class='muted'>{_e(fleet['unattributed'])} report(s) on no runtime's health subject.</p>")
    return "".join(out)


# ---- release history (/history) ------------------------------------------------------------------
def _history_href(flt: dict[str, Any], **change: str | None) -> str:
    query = {k: v for k, v in {**flt, **change}.items() if v}
    return "/history" + ("?" + urlencode(query) if query else "")


def history_filters(flt: dict[str, Any], channels: list[str], outcomes: tuple[str, ...]) -> str:
    """Filters as links (the page's CSP allows no form submission and no script): channel, outcome, since.

    Each link changes one filter and keeps the others; any value works in the URL too
    (`/history?channel=canary&outcome=rolled_back&since=6h`).
    """

    def links(name: str, values: list[str]) -> str:
        current = flt.get(name)
        any_on = "" if current else " class='on'"
        items = [f"<a href='{_e(_history_href(flt, **{name: None}))}'{any_on}>any</a>"]
        for v in values:
            on = " class='on'" if current == v else ""
            items.append(f"<a href='{_e(_history_href(flt, **{name: v}))}'{on}>{_e(v)}</a>")
        return f"<p class='filters' data-filter='{_e(name)}'><b>{_e(name)}</b> " + " · ".join(items) + "</p>"

    since = ["1h", "24h", "7d", "30d"]
    if flt.get("since") and flt["since"] not in since:
        since.append(flt["since"])
    return links("channel", channels) + links("outcome", [*outcomes, "in_flight"]) + links("since", since)


def _outcome_class(outcome: str | None) -> str:
    return "" if outcome is None else "ok" if outcome == "success" else "fail"


def history_section(history: dict[str, Any]) -> str:
    """`history["rows"]`: `kxr release list --json`'s summaries (services/reads/history.py), cells as it prints them."""
    from services.reads.history import table_row

    out = []
    for r in history["rows"]:
        cells = table_row(r)
        out.append(
            f"<tr data-release='{_e(r['release_id'])}'>"
            f"<td>{release_link(r['release_id'])}</td>"
            f"<td>{_e(cells['pack'])}</td><td>{_e(r['target'])}</td><td>{_e(r['requested_at'])}</td>"
            f"<td>{_e(cells['took'])}</td><td>{_e(r['owner'])}</td><td>{_e(cells['stages'])}</td>"
            f"<td class='outcome {_outcome_class(r['outcome'])}'>{_e(cells['outcome'])}</td>"
            f"<td>{_e(r['why'])}</td><td>{_e(r['promoted_to'])}</td></tr>"
        )
    shown = len(history["rows"])
    more = f" (the newest {shown} shown)" if history["total"] > shown else ""
    problem = f"<p class='fail'>{_e(history['problem'])}</p>" if history.get("problem") else ""
    return f"<h2>Releases</h2>{problem}<p class='muted'>{_e(history['total'])} match{_e(more)}</p>" + _table(
        ["release", "pack", "target", "requested", "took", "owner", "stages passed", "outcome", "why", "promoted to"],
        out,
        "no release matches",
        " id='history-table'",
    )


# ---- a release's windows as time series (/releases/<id>) -------------------------------------------
def series_section(series: dict[str, Any] | None) -> str:
    """One chart per metric (error rate, p95 latency): a line per runtime, the threshold, hard-breach windows."""
    from .charts import series_chart

    out = ["<h2>Windows over time, per runtime</h2>"]
    if series is None or not series["windows"]:
        return out[0] + "<p class='muted'>no monitoring window yet</p>"
    if series["note"]:
        out.append(f"<p class='muted'>{_e(series['note'])}; the verdicts' figures are in the record below.</p>")
    out.append(
        "<p class='muted'>Each runtime's samples that count for a window (its pack, inside the window), "
        "the threshold as a dashed line; a window with a hard breach (what fails it early) is shaded red.</p>"
    )
    for metric in series["metrics"]:
        threshold = "" if metric["threshold"] is None else f" (threshold {metric['threshold']:.4g})"
        out.append(
            f"<figure><figcaption>{_e(metric['label'])}{_e(threshold)}</figcaption>"
            f"{series_chart(metric, series['windows'])}</figure>"
        )
    return "".join(out)


def bad_filter(message: str) -> str:
    return f"<p class='fail'>{_e(message)}</p><p><a href='/history'>all releases</a></p>"


# ---- operator actions (services/dashboard/actions.py): only with `--actions`, only once signed in -----------

RELEASE_ACTIONS = ("pause", "resume", "abort", "promote", "extend", "rollback", "close", "annotate")


def _csrf_field(csrf: str) -> str:
    return f"<input type='hidden' name='csrf' value='{_e(csrf)}'>"


def account_banner(user: str | None, csrf: str | None, flash: str | None, here: str) -> str:
    """The header line in actions mode: who acts (or a login link), and the last action's one-line result."""
    if user is None or csrf is None:
        who = (
            "<p class='readonly'>Read-only until you log in with the operator's NATS user "
            f"(<a id='login' href='/login?next={quote(here, safe='/')}'>log in</a>).</p>"
        )
    else:
        who = (
            f"<div class='account'>Signed in as <b id='user'>{_e(user)}</b>: actions are recorded as "
            f"<code>{_e(user)}@dashboard</code>, with this NATS user's permissions. "
            f"<form class='inline' method='post' action='/logout'>{_csrf_field(csrf)}"
            "<button id='logout' type='submit'>log out</button></form></div>"
        )
    if flash:
        refused = flash.startswith("refused")
        who += f"<p id='flash' class='flash {'fail' if refused else 'ok'}' role='status'>{_e(flash)}</p>"
    return who


def release_actions_section(release_id: str, csrf: str) -> str:
    """One form: a rationale (required, except for an annotation with an incident link) and a button per action."""
    buttons = "".join(
        f"<button type='submit' name='action' value='{a}' id='do-{a}'>{a}</button> " for a in RELEASE_ACTIONS
    )
    from services.actions.operator import CLOSE_OUTCOMES, ROLLBACK_TRIGGERS  # the values kxr takes

    triggers = "".join(f"<option value='{t}'>{t}</option>" for t in ROLLBACK_TRIGGERS)
    outcomes = "".join(f"<option value='{o}'>{o}</option>" for o in CLOSE_OUTCOMES)
    return (
        "<h2>Act on this release</h2>"
        f"<form method='post' action='/actions/releases/{quote(release_id, safe='')}' class='actions'>"
        f"{_csrf_field(csrf)}"
        "<p><label>rationale (recorded with the decision) <textarea name='rationale' id='rationale' rows='2' "
        "cols='70' maxlength='2000'></textarea></label></p>"
        f"<p><label>rollback trigger <select name='trigger'>{triggers}</select></label> "
        "<label>incident link (annotate) <input name='incident' type='url' size='40' maxlength='500'></label></p>"
        "<p><label>new window, seconds (extend a held stage) <input name='window' id='window' type='number' min='1' "
        "max='31536000' size='8'></label> "
        f"<label>close a held release as <select name='outcome' id='outcome'>{outcomes}</select></label></p>"
        f"<p>{buttons}</p>"
        "<p class='muted'>The same decisions as <code>kxr release "
        "pause|resume|abort|promote|extend|rollback|close|annotate</code>; "
        "one that does not apply to the release as it stands now is refused with the reason.</p></form>"
    )


def scope_actions_section(scopes: list[str], csrf: str) -> str:
    """Pin a cohort to a version until a time (RFC 3339 or 12h, 7d), or lift its pin."""
    options = "".join(f"<option value='{_e(s)}'>{_e(s)}</option>" for s in scopes)
    return (
        "<h2>Pin or unpin a cohort</h2>"
        f"<form method='post' action='/actions/scopes' class='actions'>{_csrf_field(csrf)}"
        f"<p><label>cohort <select name='scope'>{options}</select></label> "
        "<label>version <input name='version' size='12' maxlength='128'></label> "
        "<label>until <input name='until' size='22' maxlength='64' placeholder='12h, 7d or RFC 3339'></label></p>"
        "<p><label>rationale <textarea name='rationale' rows='2' cols='70' maxlength='2000'></textarea></label></p>"
        "<p><button type='submit' name='action' value='pin' id='do-pin'>pin</button> "
        "<button type='submit' name='action' value='unpin' id='do-unpin'>unpin</button></p></form>"
    )


def login_page(csrf: str, next_path: str, message: str | None = None) -> str:
    refused = f"<p id='flash' class='flash fail' role='alert'>{_e(message)}</p>" if message else ""
    form = (
        f"{refused}<form method='post' action='/login' class='login'>{_csrf_field(csrf)}"
        f"<input type='hidden' name='next' value='{_e(next_path)}'>"
        "<p><label>NATS user <input name='user' id='user' autocomplete='username' required maxlength='256'></label></p>"
        "<p><label>password <input name='password' id='password' type='password' autocomplete='current-password' "
        "required maxlength='1024'></label></p><p><button type='submit' id='sign-in'>log in</button></p>"
        "<p class='muted'>The operator's user and password, as <code>kxr creds show operator</code> prints them "
        "(nats://USER:PASSWORD@…). The dashboard connects to NATS as that user for your actions, so NATS allows "
        "exactly what it allows <code>kxr</code>; the password stays in that connection only.</p></form>"
    )
    return page("Log in to act", "", {"login": form}, back=True, banner="")
