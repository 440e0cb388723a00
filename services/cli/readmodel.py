"""Answering from the service's read models (services/reads/model_reads.py), or saying why not.

`kxr status`, `kxr release list`, `kxr channel show` and `kxr pin` ask here first; when the
read models cannot answer for the log's last sequence (no service keeps them, they lag by more
than a second, other service keys, this user may not read them) they print one line on stderr
and fold the log as before. `--fold` skips them: the auditor's path stays a full replay.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import typer

from .common import connect_settings, err_console, settings_from

FoldOpt = typer.Option(
    False, "--fold", help="fold the whole log instead of reading the service's read models (the auditor's way)"
)


class Folding:
    """The read models did not answer: `reason` says why (printed on stderr unless `quiet`)."""

    def __init__(self, reason: str, quiet: bool = False) -> None:
        self.reason = reason
        self.quiet = quiet


def from_model(nats_url: str | None, keys, use: Callable[[Any], Awaitable[Any]]) -> Any:
    """`await use(view)` on the read models at the log's last sequence; `Folding` when they cannot say."""
    from events.subjects import Subjects
    from services.jetstream.client import PermissionDenied
    from services.reads.model_reads import NoView, keys_id, read_view

    from .common import run_async

    settings = settings_from(nats_url)
    subjects = Subjects(settings.prefix)

    async def go() -> Any:
        nc = await connect_settings(settings)
        try:
            return await read_view(nc, subjects.releases_stream, subjects.read_bucket, keys_id(keys), use)
        except NoView as exc:
            return Folding(str(exc), exc.quiet)
        except (
            PermissionDenied
        ) as exc:  # not the bucket's rights (its replies, say): the fold meets it too, and says so
            return Folding(f"{exc} (the read models)", quiet=exc.action != "publish to")
        finally:
            await nc.close()

    answer = run_async(go())
    if isinstance(answer, Folding) and not answer.quiet:
        err_console.print(f"kxr: folding the log: {answer.reason}", highlight=False, markup=False, soft_wrap=True)
    return answer
