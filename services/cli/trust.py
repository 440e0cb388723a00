"""`kxr trust show|rotate`: the trust root in force (the KX_TRUST_ROOT anchor plus rotations in the log)."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import (
    JsonOpt,
    NatsUrl,
    TrustRootOpt,
    WideOpt,
    console,
    fail,
    operator_actor,
    output,
    read_json_file,
    read_key_file,
    run_async,
    session,
    settings_from,
)

app = typer.Typer(
    no_args_is_help=True, help="The trust root in force: the KX_TRUST_ROOT anchor plus rotations in the log."
)


@app.command("show")
def trust_show(
    trust_root: Path | None = TrustRootOpt,
    as_json: bool = JsonOpt,
    wide: bool = WideOpt,
    nats_url: str | None = NatsUrl,
) -> None:
    """The root in force, with every rotation accepted or refused."""
    from rich.text import Text

    from services.jetstream.log_reads import current_chain
    from services.reads.shapes import Builder, RefusedRotation, TrustKey, TrustShow, dump
    from services.settings import load_trust_root

    from .views import table

    anchor = load_trust_root(settings_from(trust_root=trust_root).trust_root_path)

    async def go():
        async with session(nats_url) as (_, js, log):
            return await current_chain(js, log.subjects, anchor)

    chain = run_async(go())
    root = chain.current

    doc = root.to_document()
    shown = dump(
        TrustShow(
            version=root.version,
            threshold=root.threshold,
            keys=[TrustKey(keyid=keyid, **k) for keyid, k in sorted(doc["keys"].items())],
            builders=[Builder(keyid=keyid, **b) for keyid, b in sorted(doc.get("builders", {}).items())],
            accepted_rotations=list(chain.accepted),
            refused_rotations=[RefusedRotation(seq=s, code=c, message=m) for s, c, m in chain.refused],
        )
    )

    def render():
        def short(keyid: str) -> str:
            return keyid if wide else keyid[:16] + "…"

        rows = [{"keyid": short(k["keyid"]), "name": k["name"], "trusted for": "manifests"} for k in shown["keys"]]
        rows += [
            {"keyid": short(b["keyid"]), "name": b["name"], "trusted for": "builds by " + ", ".join(b["ids"])}
            for b in shown["builders"]
        ]
        title = f"Trust root v{root.version} (threshold {root.threshold})"
        return [table(title, rows, ["keyid", "name", "trusted for"], wide)] + [
            Text(f"refused rotation at log seq {seq}: {code}: {message}", style="red")
            for seq, code, message in chain.refused
        ]

    output(as_json, shown, render, wide)


@app.command("rotate")
def trust_rotate(
    new_root: Path = typer.Argument(..., exists=True, dir_okay=False, help="the new root: {version, threshold, keys}"),
    key: list[Path] = typer.Option(
        ..., "--key", help="signing keys: a threshold of the current root's AND of the new root's"
    ),
    rationale: str = typer.Option(..., "--rationale"),
    trust_root: Path | None = TrustRootOpt,
    nats_url: str | None = NatsUrl,
) -> None:
    """Hand the trust root over to a new version (recorded in the log as trust.rotated)."""
    from events.trust import RotationError
    from services.actions.trust import rotate
    from services.settings import load_trust_root

    anchor = load_trust_root(settings_from(trust_root=trust_root).trust_root_path)
    doc = read_json_file(new_root, "new trust root")
    keys = [read_key_file(k) for k in key]

    async def go():
        async with session(nats_url) as (_, js, log):
            return await rotate(log, js, anchor, doc, keys, operator_actor(), rationale)

    try:
        seq, new = run_async(go())
    except RotationError as exc:
        fail(f"rotation refused: {exc.code}: {exc}")
    console.print(
        f"trust root v{new.version} in force (log seq {seq}), threshold {new.threshold}, {len(new.keys)} key(s)"
    )
