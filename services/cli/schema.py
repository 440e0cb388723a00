"""`kxr schema export DIR`: the JSON Schemas other languages build against (see docs/schemas/)."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import console, fail

app = typer.Typer(
    no_args_is_help=True, help="Machine-readable contracts: JSON Schemas of events, manifest, channel config, health."
)


@app.command("export")
def schema_export(
    directory: Path = typer.Argument(..., help="where to write the schemas (docs/schemas in this repository)"),
    check: bool = typer.Option(
        False, "--check", help="write nothing; exit 1 if DIR differs from what the code generates"
    ),
) -> None:
    """Write one JSON Schema per event type, the manifest, channel config, health sample, evidence record and index.json."""  # noqa: E501 (help text)
    from services.contracts.export import drift, write
    from services.contracts.schemas import schema_files

    if directory.exists() and not directory.is_dir():
        fail(f"{directory} is not a directory")
    files = schema_files()
    if check:
        found = drift(directory, files)
        for path in found.changed:
            console.print(f"differs: {directory / path}", highlight=False)
        for path in found.stale:
            console.print(f"stale:   {directory / path}", highlight=False)
        if found.changed or found.stale:
            console.print(f"{directory} is out of date: run `kxr schema export {directory}`", highlight=False)
            raise typer.Exit(1)
        console.print(f"{directory}: {len(files)} files up to date", highlight=False)
        return
    try:
        found = write(directory, files)
    except OSError as exc:
        fail(f"cannot write schemas to {directory}: {exc.strerror or exc}")
    console.print(
        f"{directory}: {len(files)} files, {len(found.changed)} written, {len(found.stale)} stale removed",
        highlight=False,
    )
