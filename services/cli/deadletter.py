"""`kxr deadletter list|show`: messages a consumer could not process, kept with why."""

from __future__ import annotations

import base64
import json

import typer

from .common import JsonOpt, NatsUrl, fail, output, run_async, session

app = typer.Typer(no_args_is_help=True, help="Messages consumers could not process (kept, never retried).")


async def _records(nats_url: str | None) -> list[tuple[int, dict]]:
    from services.jetstream.reader import OrderedReader

    async with session(nats_url) as (_, js, log):
        reader = OrderedReader(js, log.subjects.deadletter_stream, [log.subjects.deadletter_all()])
        try:
            return [(e.seq, json.loads(e.data)) async for e in reader.read(follow=False, idle_timeout=0.5)]
        finally:
            await reader.close()


@app.command("list")
def deadletter_list(as_json: bool = JsonOpt, nats_url: str | None = NatsUrl) -> None:
    """Every dead letter: which consumer gave up on which message, and why."""
    from .views import table

    records = run_async(_records(nats_url))
    rows = [
        {
            "id": seq,
            "consumer": r.get("consumer"),
            "stream seq": r.get("seq"),
            "subject": r.get("subject"),
            "deliveries": r.get("deliveries"),
            "reason": r.get("reason"),
            "at": r.get("recorded_at"),
        }
        for seq, r in records
    ]
    output(
        as_json,
        rows,
        lambda: [
            table("Dead letters", rows, ["id", "consumer", "stream seq", "subject", "deliveries", "reason", "at"])
        ],
    )


@app.command("show")
def deadletter_show(
    dead_letter_id: int = typer.Argument(..., help="the id from `kxr deadletter list`"),
    as_json: bool = JsonOpt,
    nats_url: str | None = NatsUrl,
) -> None:
    """One dead letter in full, with the original bytes (as text when they are UTF-8)."""
    from .views import fields_table

    records = dict(run_async(_records(nats_url)))
    record = records.get(dead_letter_id)
    if record is None:
        fail(f"no dead letter {dead_letter_id}")
    raw = base64.b64decode(record.get("data_b64", ""))
    try:
        record["data_text"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        record["data_text"] = None
    output(as_json, record, lambda: [fields_table(f"Dead letter {dead_letter_id}", record)])
