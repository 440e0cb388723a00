"""`kxr status`: the active pack per scope and the releases in flight (main.py registers it top-level)."""

from __future__ import annotations

import typer

from .common import JsonOpt, NatsUrl, WideOpt, err_console, output, run_async, service_keys, session
from .readmodel import Folding, FoldOpt, from_model


def status(
    as_json: bool = JsonOpt,
    all_releases: bool = typer.Option(False, "--all", help="list closed releases too"),
    wide: bool = WideOpt,
    fold: bool = FoldOpt,
    nats_url: str | None = NatsUrl,
) -> None:
    """Active pack per scope, and releases in flight with their stage (signed state only, with KX_SERVICE_KEYS).

    Read from the service's read models when they are at the log's last sequence, else (or with
    --fold) folded from the log."""
    keys = service_keys()
    signatures = "checked" if keys is not None else "not checked (set KX_SERVICE_KEYS or KX_DATA_DIR)"
    shown = None if fold else from_model(nats_url, keys, lambda view: model_status(view, all_releases))
    if shown is None or isinstance(shown, Folding):
        shown = folded_status(nats_url, keys, all_releases)
    shown["signatures"] = signatures

    def tables():
        from .views import status_tables_of

        for item in shown["ignored"]:
            err_console.print(f"[red]ignored log seq {item['seq']}: {item['why']}[/red]")
        if shown["ignored_total"] > len(shown["ignored"]):
            more = shown["ignored_total"] - len(shown["ignored"])
            err_console.print(f"[red]… and {more} older ignored entries (kxr audit replay lists every one)[/red]")
        return status_tables_of(shown["scopes"], shown["releases"], all_releases, wide)

    output(as_json, shown, tables, wide)


async def model_status(view, all_releases: bool) -> dict:
    from services.reads.model_reads import status as from_view

    return await from_view(view, all_releases)


def folded_status(nats_url: str | None, keys, all_releases: bool) -> dict:
    """`kxr status --json` from a fold of the whole log."""
    from services.jetstream.log_reads import load_signed_world
    from services.reads.shapes import status_of

    async def go():
        async with session(nats_url) as (_, js, log):
            return await load_signed_world(js, log.subjects, keys)

    world, ignored = run_async(go())
    return status_of(world, ignored, all_releases)
