"""`kxr status`: the active pack per scope and the releases in flight (main.py registers it top-level)."""

from __future__ import annotations

import typer

from .common import JsonOpt, NatsUrl, WideOpt, err_console, output, run_async, service_keys, session


def status(
    as_json: bool = JsonOpt,
    all_releases: bool = typer.Option(False, "--all", help="list closed releases too"),
    wide: bool = WideOpt,
    nats_url: str | None = NatsUrl,
) -> None:
    """Active pack per scope, and releases in flight with their stage (signed state only, with KX_SERVICE_KEYS)."""
    from services.jetstream.log_reads import load_signed_world
    from services.reads.shapes import Ignored, Status, dump, releases, scopes

    from .views import status_tables_of

    keys = service_keys()

    async def go():
        async with session(nats_url) as (_, js, log):
            return await load_signed_world(js, log.subjects, keys)

    world, ignored = run_async(go())
    shown = dump(
        Status(
            scopes=scopes(world),
            releases=releases(world, not all_releases),
            log_seq=world.applied_seq,
            signatures="checked" if keys is not None else "not checked (set KX_SERVICE_KEYS or KX_DATA_DIR)",
            ignored=[Ignored(seq=seq, why=why) for seq, why in sorted(ignored.items())],
        )
    )

    def tables():
        for seq, why in sorted(ignored.items()):
            err_console.print(f"[red]ignored log seq {seq}: {why}[/red]")
        return status_tables_of(shown["scopes"], shown["releases"], all_releases, wide)

    output(as_json, shown, tables, wide)
