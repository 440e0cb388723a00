"""Fill a release log fast with valid history: recorded releases, cloned.

The shape comes from tests/fixtures/histories (recorded from the real service): each
clone gets fresh release ids, event ids and batch ids, its own channel (round-robin over
`channels`), the expected-sequence headers the service would send (so the server checks
that the clone is appended exactly in order) and, like the service, an Ed25519 signature
on every service append. A replay of the result folds like the recording: every invariant
holds, every signature verifies.

Speed: each recorded event is encoded once into a template split at its ids; a clone is a
join of bytes, then signed and sent with `publish_async` (acks collected in batches).
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from nats.js.errors import NotFoundError

from events.codec import decode_event, encode_event
from events.service_signing import SIGNATURE_HEADER, SIGNER_HEADER, signed_bytes
from events.signing import SigningKey, b64encode
from events.subjects import Subjects
from services.jetstream.direct import connection_of
from services.jetstream.layout import ensure_layout

from .common import Rig, rig

RAM_DIR = Path("/dev/shm")
HISTORIES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "histories"
DEFAULT_HISTORY = HISTORIES / "staged-regression-rejection.jsonl"
RECORDED_PREFIX = "kx"
ACK_EVERY = 4096  # publishes between two waits for their acks


@contextmanager
def fast_rig(prefix: str) -> Iterator[Rig]:
    """`rig()` with its store in RAM where there is one (still nats-server's file store).

    On disk every atomic batch commit is an fsync (~11 ms on this machine's disk, against
    ~1 ms in RAM): filling a 1M-event log, with 100k activations, would take 20 minutes.
    What these benches measure (reads, folds, restarts) does not sync.
    """
    old = tempfile.tempdir
    if RAM_DIR.is_dir() and os.access(RAM_DIR, os.W_OK):
        tempfile.tempdir = str(RAM_DIR)
    try:
        context = rig(prefix)
        r = context.__enter__()
    finally:
        tempfile.tempdir = old
    try:
        yield r
    except BaseException as exc:
        if not context.__exit__(type(exc), exc, exc.__traceback__):
            raise
    else:
        context.__exit__(None, None, None)


@dataclass(frozen=True)
class Template:
    """One recorded entry with its variable parts cut out: parts alternate literal bytes and keys."""

    subject: tuple[object, ...]
    payload: tuple[object, ...]
    signed: bool  # a service append (or a pointer switch): the service signs it
    batch: int | None  # index of the recorded atomic batch it belongs to
    release: object | None  # key of its release id (release subjects carry an expectation)
    scope_subject: bool  # a pointer subject (its own last sequence is expected)
    commit: bool  # the last entry of its batch
    batch_index: int  # its 1-based place in that batch
    own_event: str  # key of its own event id (Nats-Msg-Id)


def _split(text: str, tokens: dict[str, str]) -> tuple[object, ...]:
    """`text` as literal bytes and placeholder keys, for every token in `tokens` (token -> key)."""
    parts: list[object] = [text]
    for token, key in tokens.items():
        out: list[object] = []
        for part in parts:
            if not isinstance(part, str):
                out.append(part)
                continue
            pieces = part.split(token)
            for i, piece in enumerate(pieces):
                if i:
                    out.append(_Key(key))
                out.append(piece)
        parts = out
    return tuple(p.encode() if isinstance(p, str) else p for p in parts if p != "")


@dataclass(frozen=True)
class _Key:
    name: str


ID_FIELDS = {"release_id": "R", "correlation_id": "R", "channel": "C", "event_id": "E", "causation_id": "E"}


def _mark_ids(value, marks: dict[str, str], field: str = ""):
    """Replace ids by their marks, only in the fields that hold ids (an outcome may read `rejected`)."""
    if isinstance(value, str):
        mark = marks.get(value)
        return mark if mark is not None and field in ID_FIELDS and mark.startswith("@@" + ID_FIELDS[field]) else value
    if isinstance(value, dict):
        return {k: _mark_ids(v, marks, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_mark_ids(v, marks, field) for v in value]
    return value


def load_templates(path: Path = DEFAULT_HISTORY) -> list[Template]:
    """The recorded history as templates; every entry is decoded first (a stale recording fails here)."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    subjects = Subjects(RECORDED_PREFIX)
    release_ids = sorted({rec["event"]["release_id"] for rec in lines if rec["event"].get("release_id")})
    event_ids = [rec["event"]["event_id"] for rec in lines]
    channels = sorted({rec["event"]["scope"]["channel"] for rec in lines if rec["event"].get("scope")})
    batches = {b: i for i, b in enumerate(dict.fromkeys(rec["batch_id"] for rec in lines if rec["batch_id"]))}
    # Unlikely tokens stand for the variable parts while the JSON is encoded once.
    marks = {r: f"@@R{i}@@" for i, r in enumerate(release_ids)}
    marks.update({e: f"@@E{i}@@" for i, e in enumerate(event_ids)})
    marks.update({c: f"@@C{i}@@" for i, c in enumerate(channels)})
    tokens = {m: m.strip("@") for m in marks.values()}
    out = []
    last_of_batch = {rec["batch_id"]: rec["seq"] for rec in lines if rec["batch_id"]}
    seen_in_batch: dict[str, int] = {}
    for n, line in enumerate(lines):
        if line["batch_id"]:
            seen_in_batch[line["batch_id"]] = seen_in_batch.get(line["batch_id"], 0) + 1
        event = decode_event(json.dumps(line["event"]).encode(), line["subject"], subjects)
        marked = _mark_ids(json.loads(encode_event(event)), marks)
        tokens_of = line["subject"].split(".")
        # kx.release.<id>.<suffix>, kx.scope.<env>.<channel>.<cohort>.<suffix>, kx.channel.<env>.<channel>.<suffix>
        where = {"release": {2: "R"}, "scope": {3: "C"}, "channel": {3: "C"}}.get(tokens_of[1], {})
        for index, kind in where.items():
            mark = marks[tokens_of[index]]
            assert mark.startswith("@@" + kind), (line["subject"], mark)
            tokens_of[index] = mark
        subject = ".".join(["@@P@@", *tokens_of[1:]])
        tokens_all = {**tokens, "@@P@@": "P"}
        is_scope = subject.split(".")[1] == "scope"
        out.append(
            Template(
                subject=_split(subject, tokens_all),
                payload=_split(json.dumps(marked, separators=(",", ":"), ensure_ascii=False), tokens),
                signed=event.actor.kind == "service" or event.type == "scope.activated",
                batch=batches.get(line["batch_id"]) if line["batch_id"] else None,
                release=_Key(marks[event.release_id].strip("@"))
                if event.release_id and subject.split(".")[1] == "release"
                else None,
                scope_subject=is_scope,
                commit=bool(line["batch_id"]) and last_of_batch[line["batch_id"]] == line["seq"],
                batch_index=seen_in_batch.get(line["batch_id"], 0),
                own_event=f"E{n}",
            )
        )
    return out


def _fill(parts: tuple[object, ...], values: dict[str, bytes]) -> bytes:
    return b"".join(values[p.name] if isinstance(p, _Key) else p for p in parts)  # type: ignore[misc]


@dataclass
class Generated:
    events: int
    clones: int
    seconds: float
    first_seq: int
    last_seq: int

    @property
    def rate(self) -> float:
        return self.events / max(self.seconds, 1e-9)


async def generate(
    js,
    subjects: Subjects,
    events: int,
    key: SigningKey | None,
    *,
    channels: int = 10,
    templates: list[Template] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Generated:
    """Append whole clones of the recorded history until at least `events` entries are stored."""
    await ensure_layout(js, subjects)
    templates = templates or load_templates()
    nc = connection_of(js)
    start_last = (await js.stream_info(subjects.releases_stream)).state.last_seq
    run = os.urandom(4).hex()  # ids stay unique across runs on one stream (the duplicate window would drop repeats)
    per_clone = len(templates)
    clones = max(1, -(-events // per_clone))
    release_keys = sorted({t.release.name for t in templates if t.release is not None})  # type: ignore[union-attr]
    channel_keys = sorted(
        {p.name for t in templates for p in t.payload if isinstance(p, _Key) and p.name.startswith("C")}
    )
    keyid = key.keyid if key is not None else None
    prefix = subjects.prefix.encode()
    seq = start_last
    last_on: dict[bytes, int] = {}  # release filter or pointer subject -> its last sequence
    pending: list[asyncio.Future] = []
    t0 = time.perf_counter()
    sent = 0
    for clone in range(clones):
        values: dict[str, bytes] = {"P": prefix}
        for i in range(per_clone):
            values[f"E{i}"] = f"{run}-0000-7000-8000-{clone * 64 + i:012x}".encode()
        for i, name in enumerate(release_keys):
            values[name] = f"r{run}-{clone}-{i}".encode()
        for name in channel_keys:
            values[name] = f"c{clone % channels}-{name}".encode()
        batch_ids: dict[int, str] = {}
        for t in templates:
            subject = _fill(t.subject, values).decode()
            payload = _fill(t.payload, values)
            headers = {"Nats-Msg-Id": values[t.own_event].decode()}
            if t.signed and key is not None:
                headers[SIGNER_HEADER] = keyid  # type: ignore[assignment]
                headers[SIGNATURE_HEADER] = b64encode(key.sign(signed_bytes(subject, payload)))
            expect = None
            if t.release is not None:
                expect = values[t.release.name]  # type: ignore[union-attr]
                flt = b"%s.release.%s.*" % (prefix, expect)
                headers["Nats-Expected-Last-Subject-Sequence"] = str(last_on.get(flt, 0))
                headers["Nats-Expected-Last-Subject-Sequence-Subject"] = flt.decode()
            elif t.scope_subject:
                flt = subject.encode()
                if flt not in last_on:  # a pointer may have moved before this run (channels are shared)
                    last_on[flt] = await _last_seq(js, subjects.releases_stream, subject)
                headers["Nats-Expected-Last-Subject-Sequence"] = str(last_on[flt])
            else:
                flt = None
            seq += 1
            if flt is not None:
                last_on[flt] = seq
            if t.batch is not None:
                batch_id = batch_ids.setdefault(t.batch, f"{run}-0000-5000-8000-{clone * 64 + t.batch:012x}")
                headers["Nats-Batch-Id"] = batch_id
                headers["Nats-Batch-Sequence"] = str(t.batch_index)
                if not t.commit:
                    await nc.publish(subject, payload, headers=headers)
                    continue
                headers["Nats-Batch-Commit"] = "1"
            pending.append(await js.publish_async(subject, payload, headers=headers))
        sent += per_clone
        if len(pending) >= ACK_EVERY:
            await _acks(pending)
            pending = []
            if progress is not None:
                progress(sent)
    await _acks(pending)
    seconds = time.perf_counter() - t0
    last = (await js.stream_info(subjects.releases_stream)).state.last_seq
    if last != seq:
        raise RuntimeError(
            f"generated up to seq {seq} but the stream ends at {last}: another writer, or a lost publish"
        )
    if progress is not None:
        progress(sent)
    return Generated(sent, clones, seconds, start_last + 1, last)


async def _last_seq(js, stream: str, subject: str) -> int:
    try:
        return (await js.get_last_msg(stream, subject)).seq
    except NotFoundError:
        return 0


async def _acks(futures: list[asyncio.Future]) -> None:
    try:
        done = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 60)
    except TimeoutError:
        raise RuntimeError("appends of the generated history were not acknowledged within 60 s") from None
    for fut in done:
        if isinstance(fut, BaseException):
            raise RuntimeError(f"an append of the generated history was refused: {fut}")
