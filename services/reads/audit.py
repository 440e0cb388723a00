"""The auditor's reads: replay the whole log, rebuild a moment, render a release's record."""

from __future__ import annotations

import asyncio
import gc
import html
import json
import logging
import os
import pickle
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from events.model import Event
from events.service_signing import Prechecked, ServiceKeys
from events.subjects import Subjects
from projections.audit_archive import bury, closed_in, release_outcomes, restored, to_restore
from projections.evidence import EvidenceRecord
from projections.invariants import (
    SAFETY_CODES,
    Audit,
    Violation,
    audit_entry,
    audit_signed_entry,
    finish,
    needs_signature,
)
from projections.position import Position
from projections.world import World
from services.jetstream.fold_gc import young_collections_only
from services.jetstream.log_reads import READ_BACK_TRIES, load_world, log_batches, read_back
from services.jetstream.reader import RawEntry
from services.reads.verify_worker import HEADER

try:
    import fcntl
except ImportError:  # not on Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (entries read, entries left)
Batch = list[tuple[RawEntry, Position, Event | None]]
Job = tuple[bytes, str, str, bytes]

# A replay with signature checks verifies in worker processes once this many entries are left to read:
# below it, starting a process (an interpreter, ~0.5 s of a core) costs more than it saves.
PARALLEL_MIN_ENTRIES = 20_000
AHEAD_ENTRIES = 4096  # how far (in entries) the verifications may run ahead of the fold
READ_BACKS_AT_ONCE = 16  # closed releases read back side by side for one read batch (a reader each)
PIPE_BYTES = 1 << 20  # a worker's stdin: room for about five batches' requests
MISSING_ENTRY = "missing_entry"  # a violation: sequences of the log that are not stored (a hole)


def missing_entry(stream: str, first: int, last: int) -> Violation:
    """The violation for a hole in the log (sequences `first` to `last` not stored: deleted, as the
    stream's leader confirms), at its first sequence. Whatever those entries held (a pointer, a verdict,
    a close) is unknown, so nothing the replay says about what they touched is vouched for."""
    span = f"seq {first} is" if first == last else f"seqs {first} to {last} ({last - first + 1} entries) are"
    return Violation(
        first,
        MISSING_ENTRY,
        f"{span} not stored in {stream} (deleted: the stream's leader confirms it): the log's history has a hole, "
        "so this replay cannot vouch for what it held",
    )


async def replay(
    js,
    subjects: Subjects,
    progress: Progress | None = None,
    until: datetime | None = None,
    service_keys: ServiceKeys | None = None,
    *,
    parallel: bool | None = None,
    archive: bool = True,
) -> Audit:
    """Read KX_RELEASES from sequence 1, checking every invariant (and, given keys, every signature).

    With `archive` (the default), a release that closed is kept as a tombstone and read back whole
    from its own subjects before an entry touches it again (projections/audit_archive.py): the same
    violations and summary as the whole fold, in a tenth of the memory. Without, the returned world
    holds every release whole.

    With keys, the Ed25519 verifications (most of such a replay's time) run in worker processes,
    a batch ahead of the fold (`parallel`: None decides by the log's length). The fold stays here,
    in log order, and takes each entry's outcome as `ServiceKeys.check` would find it: the same
    problems at the same sequences as the serial check.

    A hole in the log (an entry deleted from the stream, which its leader confirms) is reported as
    `missing_entry` at its first sequence, in log order, and the replay reads on past it.
    """
    audit = Audit()
    holes: deque[tuple[int, int]] = deque()  # told by the read before the batch after them, not folded yet

    def report_holes(before: int | None) -> None:
        """The holes below sequence `before` (all: None) as violations, where the fold has got to."""
        nonlocal audit
        found = []
        while holes and (before is None or holes[0][0] < before):
            found.append(missing_entry(subjects.releases_stream, *holes.popleft()))
        if found:
            audit = replace(audit, violations=audit.violations + tuple(found))

    checker = Prechecked(service_keys) if service_keys is not None else None
    ahead: _Ahead | None = None
    pending: deque[tuple[Batch, asyncio.Future[list[bool | None]]]] = deque()  # submitted, not folded yet
    in_flight = 0  # entries in `pending`

    async def fold(batch: Batch, outcomes: list[bool | None] | None) -> None:
        nonlocal audit
        report_holes(batch[0][0].seq)
        read_back_ids = to_restore(audit, (event for _, _, event in batch)) if archive else []
        for state in await _read_backs(js, subjects, read_back_ids, batch[0][0].seq, service_keys):
            audit = restored(audit, state)
        state = audit
        if checker is None:
            for _, position, event in batch:
                state = audit_entry(state, position, event, subjects)
        else:  # then only what a service key signed counts (see audit_signed_entry)
            for i, (entry, position, event) in enumerate(batch):
                checker.expect(entry.subject, entry.data, outcomes[i] if outcomes is not None else None)
                state = audit_signed_entry(state, checker, position, event, entry.data, entry.headers, subjects)
        if archive:  # (one read back stays whole until it closes again: a read back per touch would let
            # a log that keeps touching closed releases, annotations say, cost a log read each time)
            state = bury(state, closed_in(event for _, _, event in batch))
        audit = state
        if progress is not None:  # once a batch (a few hundred entries): a progress line is all it feeds
            progress(state.events + state.undecodable, batch[-1][0].pending)

    async def fold_oldest() -> None:
        nonlocal in_flight
        batch, outcomes = pending.popleft()
        in_flight -= len(batch)
        await fold(batch, await outcomes)

    # Garbage collection: none while the world grows (young_collections_only), and after each batch
    # everything alive is frozen (gc.freeze: O(1), a list splice) rather than collected. A replay is
    # the auditor's own command; it holds what it folds (a buried release's evidence is freed by
    # reference counting), and makes next to no cyclic garbage (9 objects over a 100k-entry replay,
    # measured), while a young collection per batch
    # walked each batch's decoded entries and the world's new objects once: ~5-10 us an entry,
    # the largest single cost left in the fold (issue 18's profile). Frozen objects are still freed
    # by reference counting; only a cycle made meanwhile stays until the process ends.
    try:
        with young_collections_only():  # the world only grows: no full collections over it while it does
            async for batch in log_batches(
                js, subjects, until=until, on_missing=lambda first, last: holes.append((first, last))
            ):
                if service_keys is not None and ahead is None and parallel is not False:
                    left = batch[-1][0].pending
                    if parallel or left >= PARALLEL_MIN_ENTRIES:
                        ahead = _Ahead(service_keys)
                        if parallel:
                            await ahead.wait_ready()  # asked for: no batch verified here while they start
                if ahead is None or not ahead.ready():  # (verified here while the workers start)
                    while pending:
                        await fold_oldest()
                    await fold(batch, None)
                else:
                    pending.append((batch, ahead.submit(batch)))
                    in_flight += len(batch)
                    # the workers stay up to AHEAD_ENTRIES ahead: a worker that lost its core for a
                    # moment (a shared machine) catches up without the fold waiting for it
                    while in_flight > AHEAD_ENTRIES:
                        await fold_oldest()
                gc.freeze()  # what was read and folded so far: out of the collector's walks (see above)
            while pending:
                await fold_oldest()
            report_holes(None)  # a hole at the log's end: no entry after it
    finally:
        for _, outcomes in pending:
            outcomes.cancel()
        if ahead is not None:
            await ahead.close()
    return finish(audit)


async def _read_backs(
    js, subjects: Subjects, release_ids: list[str], before_seq: int, keys: ServiceKeys | None
) -> list:
    """The buried releases one read batch touches, read back side by side (at most READ_BACKS_AT_ONCE
    at a time), each as its own events before `before_seq` say: a batch naming many closed releases
    (an operator annotating old ones, say) costs a few round trips, not one per release. Each read is
    of one release's own subjects, so the answer is the one-by-one reads'. The first read that fails
    fails the replay (`ReadBackFailed`, as one by one); the reads still going are cancelled."""
    if len(release_ids) <= 1:
        return [await _read_back(js, subjects, release_id, before_seq, keys) for release_id in release_ids]
    slots = asyncio.Semaphore(READ_BACKS_AT_ONCE)

    async def one(release_id: str):
        async with slots:
            return await _read_back(js, subjects, release_id, before_seq, keys)

    tasks = [asyncio.create_task(one(release_id), name=f"read back {release_id}") for release_id in release_ids]
    try:
        return list(await asyncio.gather(*tasks))
    finally:  # (after a failure: the others stop, and are awaited, before the error goes on)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _read_back(js, subjects: Subjects, release_id: str, before_seq: int, keys: ServiceKeys | None):
    """A buried release whole, as its own events before `before_seq` say (judged with the replay's keys).

    It was buried, so it has events: a read that finds none is read again, and after
    `READ_BACK_TRIES` reads the replay fails naming the release (it cannot fold on without it)."""
    state = await read_back(js, subjects, release_id, before_seq, keys, believe_empty_after=READ_BACK_TRIES + 1)
    assert state is not None  # (never believed empty: read_back raised instead)
    return state


class _Ahead:
    """Ed25519 verifications of a replay's batches in worker processes (each batch split among them).

    `cryptography` holds the GIL while it verifies; libsodium's C call does not, but each call then
    waits for the GIL again behind the busy event loop: threads did not gain (measured), processes
    do. A failing worker is not an error: its batches are verified by the fold (the same function).
    """

    def __init__(self, keys: ServiceKeys) -> None:
        self._keys = keys
        self._workers: list[_Worker] = []
        count = max(1, min(4, (os.cpu_count() or 2) - 1))
        self._starting: asyncio.Task[None] | None = asyncio.ensure_future(self._start(count))
        self._failed = False

    async def _start(self, count: int) -> None:
        try:
            for _ in range(count):
                self._workers.append(await _Worker.start())
            await asyncio.gather(*(w.verify([]) for w in self._workers))  # answered: imported and ready
        except Exception as exc:  # no processes here (a sandbox, a limit): the fold verifies
            self._fail(f"worker processes did not start ({exc})")

    async def wait_ready(self) -> None:
        if self._starting is not None:
            await self._starting

    def ready(self) -> bool:
        """Whether the workers answer (until then the fold verifies its batches itself)."""
        return not self._failed and self._starting is not None and self._starting.done() and bool(self._workers)

    def submit(self, batch: Batch) -> asyncio.Future[list[bool | None]]:
        """Each entry's verification outcome (None where the fold's check verifies nothing, or itself)."""
        slots: list[int] = []
        jobs: list[Job] = []
        for i, (entry, _, event) in enumerate(batch):
            if event is not None and needs_signature(event):
                job = self._keys.job(entry.subject, entry.data, entry.headers)
                if job is not None:
                    slots.append(i)
                    jobs.append(job)
        return asyncio.ensure_future(self._outcomes(len(batch), slots, jobs))

    async def _outcomes(self, size: int, slots: list[int], jobs: list[Job]) -> list[bool | None]:
        out: list[bool | None] = [None] * size
        workers = self._workers
        if not jobs or not workers:
            return out
        step = -(-len(jobs) // len(workers))
        try:
            parts = await asyncio.gather(*(w.verify(jobs[i * step : (i + 1) * step]) for i, w in enumerate(workers)))
        except Exception as exc:  # a worker died: this batch's entries are verified by the fold itself
            self._fail(f"a signature worker failed ({exc})")
            return out
        for slot, valid in zip(slots, (v for part in parts for v in part), strict=True):
            out[slot] = valid
        return out

    def _fail(self, why: str) -> None:
        if not self._failed:
            log.warning("replay: %s; signatures verified in this process", why)
        self._failed = True

    async def close(self) -> None:
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
        await asyncio.gather(*(w.close() for w in self._workers), return_exceptions=True)
        self._workers = []


class _Worker:
    """One `python -m services.reads.verify_worker` process. Requests are written as they come (the
    worker always has the next one queued: no idle round trip), answers read back in order."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self._waiting: deque[tuple[int, asyncio.Future[list[bool]]]] = deque()  # (jobs, answer) in order
        self._reader: asyncio.Task[None] = asyncio.ensure_future(self._read_answers())

    @classmethod
    async def start(cls) -> _Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.reads.verify_worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        _widen_pipe(proc.stdin)
        return cls(proc)

    async def verify(self, jobs: list[Job]) -> list[bool]:
        stdin = self._proc.stdin
        assert stdin is not None
        answer: asyncio.Future[list[bool]] = asyncio.get_running_loop().create_future()
        if self._reader.done():
            raise RuntimeError(f"the worker exited ({self._proc.returncode})")
        blob = pickle.dumps(jobs, protocol=pickle.HIGHEST_PROTOCOL)
        self._waiting.append((len(jobs), answer))
        try:
            stdin.write(HEADER.pack(len(blob)) + blob)  # whole messages, in order: writes do not interleave
            await stdin.drain()
        except BaseException:
            answer.cancel()  # (the reader skips it; nobody waits for it)
            raise
        return await answer

    async def _read_answers(self) -> None:
        stdout = self._proc.stdout
        assert stdout is not None
        try:
            while True:
                (size,) = HEADER.unpack(await stdout.readexactly(HEADER.size))
                answer = await stdout.readexactly(size)
                count, future = self._waiting.popleft()
                if size != count:
                    raise RuntimeError(f"the worker answered {size} outcomes for {count} signatures")
                if not future.done():
                    future.set_result([b == 1 for b in answer])
        except (asyncio.IncompleteReadError, RuntimeError, IndexError) as exc:
            why = exc if not isinstance(exc, asyncio.IncompleteReadError) else "it exited"
            for _, future in self._waiting:
                if not future.done():
                    future.set_exception(RuntimeError(f"signature worker: {why}"))
            self._waiting.clear()

    async def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()  # the worker ends at EOF
        try:
            async with asyncio.timeout(2):
                await self._proc.wait()
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()
        self._reader.cancel()


def _widen_pipe(stdin: asyncio.StreamWriter | None) -> None:
    """Let a few batches' requests (~200 KB each) wait in the pipe, not in our process: the worker
    reads on while the event loop folds (Linux; elsewhere the default size, and shorter strides)."""
    pipe = stdin.get_extra_info("pipe") if stdin is not None else None
    setsize = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl is not None else None
    if pipe is None or setsize is None:
        return
    try:
        fcntl.fcntl(pipe.fileno(), setsize, PIPE_BYTES)
    except OSError:  # above /proc/sys/fs/pipe-max-size for an unprivileged user: keep the default
        pass


async def world_at(js, subjects: Subjects, at: datetime) -> World:
    """What the log said at `at` (server time of each append), from the log alone."""
    return await load_world(js, subjects, until=at)


def summary(audit: Audit) -> dict:
    """A deterministic summary of a replay: the same log always gives the same bytes."""
    scopes = {
        "/".join(k): {
            "version": s.active_pack.version if s.active_pack else None,
            "digest": s.active_pack.digest if s.active_pack else None,
            "kind": s.active.kind if s.active else None,
            "release": s.active.release_id if s.active else None,
            "lkg": s.lkg.digest if s.lkg else None,
            "pinned": s.pin.pack.digest if s.pin else None,
        }
        for k, s in sorted(audit.world.scopes.items())
    }
    return {
        "log_seq": audit.world.applied_seq,
        "events": audit.events,
        "undecodable": audit.undecodable,
        "releases": dict(sorted(release_outcomes(audit).items())),
        "scopes": scopes,
        "channels": sorted("/".join(k) for k in audit.world.channels.keys()),
        "violations": [{"seq": v.seq, "code": v.code, "message": v.message} for v in audit.violations],
        "safety": safety_report(audit),
    }


def safety_report(audit: Audit) -> dict[str, int]:
    """How often each safety invariant of issue 13 was broken (every one listed: 0 means it held)."""
    counts = {code: 0 for code in SAFETY_CODES}
    for v in audit.violations:
        if v.code in counts:
            counts[v.code] += 1
    return counts


# ---- the archivable HTML record --------------------------------------------------------------------
# (a trailing backslash joins two lines of the literal: the CSS itself has no line break there)
_CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2rem;color:#1b1f24;max-width:1100px}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;width:100%;margin:.5rem 0}\
td,th{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}.ok{color:#1a7f37}.fail{color:#cf222e;font-weight:600}.muted{color:#57606a}code{font-size:12px}"""
RECORD_CSS = _CSS  # the dashboard shows records with the same look


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _chart(comparisons: list[dict]) -> str:
    """Each figure as a bar against its threshold (the threshold at 80% of the width)."""
    rows = [c for c in comparisons if c.get("value") is not None and c.get("threshold") not in (None, 0)]
    if not rows:
        return ""
    height = 22 * len(rows) + 4
    parts = [f'<svg width="520" height="{height}" role="img" aria-label="figures against thresholds">']
    for i, c in enumerate(rows):
        ratio = min(float(c["value"]) / float(c["threshold"]), 1.25)
        width = 320 * ratio / 1.25
        color = "#1a7f37" if c["ok"] else "#cf222e"
        y = 22 * i + 2
        parts.append(f'<text x="0" y="{y + 14}" font-size="12">{_e(c["metric"])}</text>')
        parts.append(f'<rect x="170" y="{y}" width="{width:.1f}" height="16" fill="{color}"/>')
        parts.append(
            f'<line x1="{170 + 256}" y1="{y - 1}" x2="{170 + 256}" y2="{y + 17}" '
            'stroke="#1b1f24" stroke-dasharray="3,2"/>'
        )
        parts.append(
            f'<text x="{170 + 330}" y="{y + 14}" font-size="11" text-anchor="end">'
            f"{float(c['value']):.4g} / {float(c['threshold']):.4g}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def render_html(record: EvidenceRecord) -> str:
    r = record.to_json()
    head = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Release {_e(r['release_id'])}</title>"
        f"<style>{_CSS}</style></head><body>"
    )
    return "\n".join([head, record_sections(record), "</body></html>"])


def record_sections(record: EvidenceRecord) -> str:
    """The record's body (every section, escaped): the archivable page and the dashboard both show it."""
    r = record.to_json()
    out = []
    outcome = r["outcome"].get("outcome", "in flight")
    out.append(
        f"<h1>Release {_e(r['release_id'])} — "
        f"<span class='{'ok' if outcome == 'success' else 'fail'}'>{_e(outcome)}</span></h1>"
    )
    out.append(f"<p class='muted'>{_e(r['outcome'].get('summary', ''))}</p>")
    ident, pack, target = r["identity"], r["pack"], r["target"]
    out.append("<h2>Identity, target and pack</h2><table>")
    for k, val in [
        ("requested by", ident.get("requested_by")),
        ("requested at", ident.get("requested_at")),
        ("owner", ident.get("owner")),
        ("escalation", ident.get("escalation")),
        ("reason", ident.get("reason")),
        ("promoted from", ident.get("promoted_from")),
        ("target", f"{target.get('env')}/{target.get('channel')}"),
        ("pack", f"{pack.get('name')}@{pack.get('version')}"),
        ("digest", pack.get("digest")),
        ("size", pack.get("size")),
    ]:
        out.append(f"<tr><th>{_e(k)}</th><td><code>{_e(val)}</code></td></tr>")
    out.append("</table>")
    out.append("<h2>Pre-flight checklist</h2><table><tr><th>item</th><th>result</th><th>detail</th></tr>")
    for c in r["checklist"]:
        out.append(
            f"<tr><td>{_e(c['item'])}</td>"
            f"<td class='{'ok' if c['ok'] else 'fail'}'>{'pass' if c['ok'] else 'FAIL'}</td>"
            f"<td>{_e(c.get('detail'))}</td></tr>"
        )
    out.append(
        "</table><h2>Verification gates</h2><table><tr><th>gate</th><th>result</th><th>code</th><th>detail</th></tr>"
    )
    for g in r["gates"]:
        out.append(
            f"<tr><td>{_e(g['gate'])}</td>"
            f"<td class='{'ok' if g['ok'] else 'fail'}'>{'pass' if g['ok'] else 'FAIL'}</td>"
            f"<td>{_e(g['code'])}</td><td>{_e(g.get('message'))}</td></tr>"
        )
    out.append("</table><h2>Monitoring windows</h2>")
    for w in r["windows"]:
        verdict = w.get("verdict") or {}
        started = w.get("started") or {}
        out.append(f"<h3>Stage {int(w['stage']) + 1}: {_e(verdict.get('result', 'open'))}</h3>")
        out.append(
            f"<p class='muted'>{_e(started.get('starts_at'))} → {_e(started.get('ends_at'))}; "
            f"cohorts {_e(', '.join(started.get('cohorts', [])))}; {_e(verdict.get('reason'))}</p>"
        )
        comps = verdict.get("comparisons", [])
        out.append(_chart(comps))
        if comps:
            out.append("<table><tr><th>metric</th><th>value</th><th>op</th><th>threshold</th><th>result</th></tr>")
            for c in comps:
                out.append(
                    f"<tr><td>{_e(c['metric'])}</td><td>{_e(c['value'])}</td><td>{_e(c['op'])}</td>"
                    f"<td>{_e(c['threshold'])}</td>"
                    f"<td class='{'ok' if c['ok'] else 'fail'}'>{'ok' if c['ok'] else 'breach'}</td></tr>"
                )
            out.append("</table>")
    out.append(
        "<h2>Activations</h2><table><tr><th>seq</th><th>at</th><th>event</th><th>cohorts</th><th>batch</th></tr>"
    )
    for a in r["activations"]:
        out.append(
            f"<tr><td>{a['seq']}</td><td>{_e(a['at'])}</td><td>{_e(a['type'])}</td>"
            f"<td>{_e(', '.join(a.get('cohorts', [])))}</td><td><code>{_e(a.get('batch'))}</code></td></tr>"
        )
    out.append(
        "</table><h2>Decisions</h2><table><tr><th>seq</th><th>at</th><th>decision</th><th>by</th><th>rationale</th></tr>"
    )
    for d in r["decisions"]:
        why = d.get("rationale") or d.get("reason") or d.get("message") or ""
        out.append(
            f"<tr><td>{d['seq']}</td><td>{_e(d['at'])}</td><td>{_e(d['decision'])}</td><td>{_e(d['by'])}</td><td>{_e(why)}</td></tr>"
        )
    out.append("</table>")
    if r["incidents"]:
        out.append("<h2>Incidents</h2><ul>" + "".join(f"<li>{_e(i)}</li>" for i in r["incidents"]) + "</ul>")
    out.append(
        "<h2>Timeline</h2><table id='timeline'>"
        "<tr><th>seq</th><th>at</th><th>event</th><th>actor</th><th>summary</th></tr>"
    )
    for t in r["timeline"]:
        out.append(
            f"<tr><td>{t['seq']}</td><td>{_e(t['at'])}</td><td>{_e(t['type'])}</td><td>{_e(t['actor'])}</td><td>{_e(t['summary'])}</td></tr>"
        )
    out.append(
        "</table><h2>Record (JSON)</h2><details><summary>the raw record</summary><pre><code>"
        + _e(json.dumps(r, indent=2, sort_keys=True))
        + "</code></pre></details>"
    )
    return "\n".join(out)
