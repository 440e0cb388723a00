"""Terminal tables for `kxr`: status, evidence records, channels, dead letters (rich renderables).

The rows they show are built elsewhere (services/reads/status.py for scopes and releases,
the evidence record for timelines); this module only lays them out for a terminal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from services.reads.status import release_rows, scope_rows

if TYPE_CHECKING:
    from projections.evidence import EvidenceRecord
    from projections.world import World


def table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold")
    for c in columns:
        t.add_column(c, overflow="fold")
    for row in rows:
        t.add_row(*[("-" if row.get(c) is None else str(row.get(c))) for c in columns])
    if not rows:
        t.add_row(*(["(none)"] + [""] * (len(columns) - 1)))
    return t


def status_tables(world: World, all_releases: bool = False) -> list[Table]:
    scope_cols = ["scope", "version", "digest", "kind", "release", "since", "lkg", "pinned", "flag"]
    rows = scope_rows(world)
    for row in rows:
        if row["digest"]:
            row["digest"] = row["digest"][7:19] + "…"
    release_cols = ["release", "pack", "target", "phase", "stage", "outcome", "why"]
    return [
        table("Active packs by scope", rows, scope_cols),
        table(
            "Releases" if all_releases else "Releases in flight", release_rows(world, not all_releases), release_cols
        ),
    ]


def timeline_table(record: EvidenceRecord) -> Table:
    t = Table(title=f"Release {record.release_id} — timeline", title_justify="left", header_style="bold")
    for c in ("seq", "at", "event", "actor", "detail"):
        t.add_column(c, overflow="fold")
    for entry in record.timeline:
        t.add_row(str(entry["seq"]), entry["at"], entry["type"], entry["actor"], entry["summary"])
    return t


def gates_table(record: EvidenceRecord) -> Table:
    t = Table(title="Verification gates", title_justify="left", header_style="bold")
    for c in ("gate", "result", "code", "detail"):
        t.add_column(c, overflow="fold")
    for g in record.gates:
        t.add_row(g["gate"], "pass" if g["ok"] else "FAIL", g["code"], g.get("message", ""))
    if not record.gates:
        t.add_row("(not verified)", "", "", "")
    return t


def fields_table(title: str, record: dict[str, Any]) -> Table:
    """One document as field/value rows (nested values as compact JSON)."""
    import json

    t = Table(title=title, title_justify="left", header_style="bold", show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value", overflow="fold")
    for key in sorted(record):
        value = record[key]
        t.add_row(key, "-" if value is None else value if isinstance(value, str) else json.dumps(value, sort_keys=True))
    return t


def channel_tables(name: str, shown: dict[str, Any]) -> list[Any]:
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
    at = shown["configured_at"][:19].replace("T", " ")
    older = " (the last readable configuration, older than the problem above)" if problem else ""
    return [
        *warning,
        f"channel {name}: configured by {shown['configured_by']} at {at} (log seq {shown['seq']}){older}",
        table("Cohorts (first match wins)", cohorts, ["cohort", "tenants", "regions", "percent"]),
        fields_table("Plan, monitoring and policy", settings),
    ]


def windows_table(record: EvidenceRecord) -> Table:
    """Every monitoring window of a release: its verdict and each figure against its threshold."""
    t = Table(title="Monitoring windows", title_justify="left", header_style="bold")
    for c in ("stage", "result", "samples", "figures against thresholds", "reason"):
        t.add_column(c, overflow="fold")
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
    return (
        f"{c['metric']} {number_text(c['value'])} {op_text(c['op'])} {number_text(c['threshold'])} "
        f"{'ok' if c['ok'] else 'BREACH'}"
    )
