"""The auditor's replay under its own least-privilege user, reading a closed release back.

`kxr audit replay` keeps each closed release as a tombstone and, before an entry touches it
again, reads it back from its own subjects (a stream info with a subject filter, then a filtered
consumer: projections/audit_archive.py, services/jetstream/log_reads.py `release_history`). The
auditor's user must be allowed exactly that, or a replay of a log where an operator rolled back
a closed release would fail at the rollback. Here it reads one entry at a time, so the read back
is certain to happen, and the server records no permissions violation.
"""

from __future__ import annotations

from services.jetstream.direct import connection_of
from services.jetstream.log import Entry, EventLog
from services.reads.audit import replay, summary
from tests.unit.archive_support import record_read_backs
from tests.unit.test_tombstones import story_with_life_after_close


async def test_the_auditor_replays_and_reads_a_closed_release_back_with_its_own_user(
    authed, as_role, monkeypatch
) -> None:
    service, operator = await as_role("service"), await as_role("operator")
    logs = {conn.role: EventLog(connection_of(conn.js), conn.js, authed.subjects) for conn in (service, operator)}
    for event in story_with_life_after_close().events:  # r1: closed, then annotated, rolled back, closed again
        await logs["operator" if event.actor.kind == "operator" else "service"].append(Entry(event))

    reads = record_read_backs(monkeypatch)
    auditor = await as_role("auditor")
    archived = await replay(auditor.js, authed.subjects)
    whole = await replay(auditor.js, authed.subjects, archive=False)
    assert [release_id for release_id, _ in reads] == ["r1"]  # before the annotation after close (whole from then on)
    assert summary(archived) == summary(whole) and archived.violations == whole.violations
    assert auditor.permission_errors() == []
