"""Terminal tables for `kxr`: status, evidence records, channels, dead letters (rich renderables).

The rows they show are built elsewhere (services/reads/shapes.py for scopes and releases, the
same dicts `--json` prints; the evidence record for timelines); this module only lays them out.

At 80 columns (issue 16) no cell breaks inside a token: token columns never wrap (a cell too
long for its column ends in "…"), free-text columns wrap at spaces; digests are shown as
`sha256:<12 hex>…` and times without their fraction. `--wide` (`WIDE_WIDTH`) shows everything
in full on lines as long as they need.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from rich import box
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from projections.evidence import EvidenceRecord
    from projections.world import World

# Columns of free text: they wrap at spaces (a word longer than the column ends in "…");
# every other column holds tokens (ids, versions, digests, times) that never wrap.
FREE_TEXT = {
    "why",
    "flag",
    "pinned",
    "reason",
    "detail",
    "figures against thresholds",
    "value",
    "cohorts",
    "tenants",
    "regions",
    "verdict",
    "message",
    "trusted for",
}
WIDE_WIDTH = 100_000  # `--wide`: the console is as wide as the longest line
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
SHORT_HEX = 12


def short_digest(text: str) -> str:
    """Every `sha256:<64 hex>` in `text` as `sha256:<12 hex>…` (the full one with `--wide`)."""
    return _DIGEST.sub(lambda m: f"sha256:{m.group(1)[:SHORT_HEX]}…", text)


def short_time(value: str | None) -> str | None:
    """An RFC 3339 time as `YYYY-MM-DD HH:MM:SSZ` (a table's narrow form; `--wide` shows it whole)."""
    return None if value is None else value[:19].replace("T", " ") + "Z"


def cell(value: Any, wide: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict) and "digest" in value and "version" in value:  # a pack
        value = value["version"] if not wide else f"{value.get('name')}@{value['version']} {value['digest']}"
    text = str(value)
    return text if wide else short_digest(text)


def new_table(title: str | None, **kw: Any) -> Table:
    """Every kxr table: a title on the left, a rule under the header, no side borders (80 columns go far)."""
    return Table(
        title=title,
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
        **kw,
    )


def add_columns(t: Table, columns: list[str], wide: bool = False) -> None:
    for c in columns:
        if c in FREE_TEXT:
            t.add_column(c, overflow="fold" if wide else "ellipsis")
        else:
            t.add_column(c, no_wrap=True, overflow="ellipsis")


def table(title: str, rows: list[dict[str, Any]], columns: list[str], wide: bool = False) -> Table:
    t = new_table(title)
    add_columns(t, columns, wide)
    for row in rows:
        t.add_row(*[escape(cell(row.get(c), wide)) for c in columns])
    if not rows:
        t.add_row(*(["(none)"] + [""] * (len(columns) - 1)))
    return t


def scope_tables(title: str, scopes: list[dict[str, Any]], wide: bool = False, flag: bool = True) -> list[Table]:
    """Scopes (services/reads/shapes.py `Scope` dumps). Narrow, two tables that fit 80 columns: what is
    active where (version, short digest, release, since), then how it got there and where it would
    go back to (kind, LKG, pin, the guard's flag). `--wide`: one table, every field in full."""
    if wide:
        rows = [
            {
                **s,
                "lkg": s["lkg"]["version"] if s["lkg"] else None,
                "lkg digest": s["lkg"]["digest"] if s["lkg"] else None,
                "pinned": f"{s['pinned']['pack']['version']} until {s['pinned']['until']}" if s["pinned"] else None,
                "flag": f"{s['flag']['code']}: {s['flag']['message']}" if s["flag"] else None,
            }
            for s in scopes
        ]
        cols = ["scope", "version", "digest", "kind", "release", "since", "lkg", "lkg digest", "pinned"]
        return [table(title, rows, cols + (["flag"] if flag else []), wide=True)]
    rows = [
        {
            **s,
            "since": s["since"][:16].replace("T", " ") + "Z" if s["since"] else None,
            "lkg": s["lkg"]["version"] if s["lkg"] else None,
            "pinned": f"{s['pinned']['pack']['version']} until {short_time(s['pinned']['until'])}"
            if s["pinned"]
            else None,
            "flag": f"{s['flag']['code']}: {s['flag']['message']}" if s["flag"] else None,
        }
        for s in scopes
    ]
    return [
        table(title, rows, ["scope", "version", "digest", "release", "since"]),
        table("How they got there, and back", rows, ["scope", "kind", "lkg", "pinned"] + ["flag"] * flag),
    ]


def release_table(title: str, releases: list[dict[str, Any]], wide: bool = False) -> Table:
    rows = [
        {
            **r,
            "pack": (f"{r['pack']['name']}@{r['pack']['version']}" if r["pack"] else None),
            "digest": r["pack"]["digest"] if r["pack"] else None,
            "phase": f"{r['phase']}{' (paused)' if r['paused'] else ''}",
            "release": r["release_id"],
        }
        for r in releases
    ]
    cols = ["release", "pack", "target", "phase", "stage", "outcome", "why"]
    return table(title, rows, cols[:2] + ["digest"] + cols[2:] if wide else cols, wide)


def status_tables(world: World, all_releases: bool = False, wide: bool = False) -> list[Table]:
    from services.reads.shapes import dump, releases, scopes

    return status_tables_of(dump(scopes(world)), dump(releases(world, not all_releases)), all_releases, wide)


def status_tables_of(
    scopes: list[dict[str, Any]], releases: list[dict[str, Any]], all_releases: bool = False, wide: bool = False
) -> list[Table]:
    return [
        *scope_tables("Active packs by scope", scopes, wide),
        release_table("Releases" if all_releases else "Releases in flight", releases, wide),
    ]


def timeline_table(record: EvidenceRecord, wide: bool = False) -> Table:
    t = new_table(f"Release {record.release_id} — timeline")
    add_columns(t, ["seq", "at", "event", "actor", "detail"], wide)
    for entry in record.timeline:
        event = entry["type"] if wide else entry["type"].removeprefix("release.")
        at = entry["at"] if wide else entry["at"][5:19].replace("T", " ")
        actor = entry["actor"] if wide else entry["actor"].removeprefix("service:")  # consumers by their name
        t.add_row(str(entry["seq"]), at, event, escape(actor), escape(cell(entry["summary"], wide)))
    return t


def gates_table(record: EvidenceRecord, wide: bool = False) -> Table:
    t = new_table("Verification gates")
    add_columns(t, ["gate", "result", "code", "detail"], wide)
    for g in record.gates:
        t.add_row(g["gate"], "pass" if g["ok"] else "FAIL", g["code"], escape(cell(g.get("message", ""), wide)))
    if not record.gates:
        t.add_row("(not verified)", "", "", "")
    return t


def fields_table(title: str, record: dict[str, Any], wide: bool = False) -> Table:
    """One document as field/value rows (nested values as compact JSON)."""
    import json

    t = new_table(title, show_header=False)
    t.add_column("field", style="bold", no_wrap=True)
    add_columns(t, ["value"], wide)
    for key in sorted(record):
        value = record[key]
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        t.add_row(key, "-" if value is None else escape(cell(text, wide)))
    return t


def channel_tables(name: str, shown: dict[str, Any], wide: bool = False) -> list[Any]:
    """`kxr channel show`: who configured it, its cohorts and plan, then monitoring, compatibility and policy;
    first of all, if its newest configuration could not be read, that (see `channel.channel_shown`)."""
    problem = shown.get("problem")
    warning = (
        [
            f"[bold red]channel {name}: UNREADABLE CONFIGURATION[/]: {escape(problem['message'])}; "
            "requests are rejected until a valid one is set"
        ]
        if problem
        else []
    )
    cfg = shown["config"]
    if cfg is None:
        return warning
    cohorts = [
        {
            "cohort": c["name"],
            "tenants": ", ".join(c.get("tenants") or []) or None,
            "regions": ", ".join(c.get("regions") or []) or None,
            "percent": f"[{c['percent'][0]}, {c['percent'][1]})" if c.get("percent") else None,
        }
        for c in cfg["cohorts"]
    ]
    plan = " -> ".join("+".join(stage) for stage in cfg.get("plan") or [[c["name"]] for c in cfg["cohorts"]])
    monitoring = cfg["monitoring"]
    settings = {
        "plan": plan,
        "promote_to": cfg.get("promote_to"),
        "window_s": monitoring["window_s"],
        "min_samples": monitoring.get("min_samples"),
        **{f"threshold {k}": v for k, v in (monitoring.get("thresholds") or {}).items()},
        **{f"compatibility {k}": v for k, v in (cfg.get("compatibility") or {}).items()},
        **{f"policy {k}": v for k, v in (cfg.get("policy") or {}).items()},
    }
    at = shown["configured_at"] if wide else short_time(shown["configured_at"])
    older = " (the last readable configuration, older than the problem above)" if problem else ""
    return [
        *warning,
        f"channel {name}: configured by {shown['configured_by']} at {at} (log seq {shown['seq']}){older}",
        table("Cohorts (first match wins)", cohorts, ["cohort", "tenants", "regions", "percent"], wide),
        fields_table("Plan, monitoring and policy", settings, wide),
    ]


def windows_table(record: EvidenceRecord, wide: bool = False) -> Table:
    """Every monitoring window of a release: its verdict and each figure against its threshold."""
    t = new_table("Monitoring windows")
    add_columns(t, ["stage", "result", "samples", "figures against thresholds", "reason"], wide)
    for w in record.windows:
        v = w["verdict"] or {}
        figures = "; ".join(figure_text(c) for c in v.get("comparisons") or [])
        t.add_row(str(w["stage"] + 1), v.get("result", "open"), str(v.get("samples", "")), figures, v.get("reason", ""))
    if not record.windows:
        t.add_row("(none)", "", "", "", "")
    return t


def number_text(value) -> str:
    return "n/a" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def op_text(op: str) -> str:
    return "no new" if op == "none_new" else op


def figure_text(c: dict[str, Any]) -> str:
    """A verdict's comparison as `error_rate 0.02 <= 0.05 ok` (or BREACH)."""
    verdict = "ok" if c["ok"] else "BREACH"
    return f"{c['metric']} {number_text(c['value'])} {op_text(c['op'])} {number_text(c['threshold'])} {verdict}"
