"""`kxr deadletter list|show`: messages a consumer could not process, kept with why."""

from __future__ import annotations

import base64
import json

import typer

from .common import JsonOpt, NatsUrl, WideOpt, fail, output, run_async, session

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
def deadletter_list(as_json: bool = JsonOpt, wide: bool = WideOpt, nats_url: str | None = NatsUrl) -> None:
    """Every dead letter: which consumer gave up on which message, and why."""
    from services.reads.shapes import DeadLetterRow, dump, rfc3339

    from .views import table

    records = run_async(_records(nats_url))
    rows = dump(
        [
            DeadLetterRow(
                id=seq,
                consumer=r.get("consumer"),
                stream_seq=r.get("seq"),
                stream_seq_old=r.get("seq"),  # "stream seq": tests and scripts read that spelling
                subject=r.get("subject"),
                deliveries=r.get("deliveries"),
                reason=r.get("reason"),
                at=rfc3339(r.get("recorded_at")),
            )
            for seq, r in records
        ]
    )

    def render():
        if wide:
            columns = ["id", "consumer", "stream seq", "subject", "deliveries", "at", "reason"]
            return [table("Dead letters", rows, columns, wide)]
        shown = [  # the reason's first clause ("malformed JSON"): in full with --wide or `deadletter show`
            {
                **r,
                "at": r["at"][5:19].replace("T", " ") if r["at"] else None,
                "reason": (r["reason"] or "").split(": ")[0],
            }
            for r in rows
        ]
        return [table("Dead letters", shown, ["id", "consumer", "subject", "at", "reason"])]

    output(as_json, rows, render, wide)


@app.command("show")
def deadletter_show(
    dead_letter_id: int = typer.Argument(..., min=1, help="the id from `kxr deadletter list`"),
    as_json: bool = JsonOpt,
    wide: bool = WideOpt,
    nats_url: str | None = NatsUrl,
) -> None:
    """One dead letter in full, with the original bytes (as text when they are UTF-8)."""
    from services.reads.shapes import DeadLetterShow, dump, rfc3339

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
    shown = dump(
        DeadLetterShow(
            id=dead_letter_id,
            **{k: record.get(k) for k in ("consumer", "stream", "seq", "subject", "reason", "deliveries")},
            recorded_at=rfc3339(record.get("recorded_at")),
            data_b64=record.get("data_b64", ""),
            data_text=record["data_text"],
        )
    )
    output(as_json, shown, lambda: [fields_table(f"Dead letter {dead_letter_id}", shown, wide)], wide)
