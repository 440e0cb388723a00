"""A replay's whole output, pinned: the same log gives the same audit, world, ignored entries and evidence.

The replay is tuned for speed (issue 18: decode, fold, checks); none of that may change what it
finds. The log here holds every event type (recorded history, then `MINIMAL` payloads of every
type over several releases, scopes and channels), pointers in and out of chain, entries a service
key did not sign, junk on every kind of subject and an event on a subject that is not its own. Its
replay — `audit_entry` (no keys), `audit_signed_entry` (keys, as `kxr audit replay --service-keys`),
the service's signed fold (`fold_signed_entry`: world and ignored entries) and each release's
evidence — is compared, canonically, with `replay_golden.json`, written by the replay before the
tuning (session 9, main at ce9e455). Regenerate only for an intended change in what a replay finds:
`python -m tests.unit.test_replay_equivalence --write`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from rpds import HashTrieMap, HashTrieSet

from events.canonical import compact_bytes
from events.codec import DecodeError, check_subject, decode_event, encode_event, make_event, scope_tuple
from events.model import PAYLOADS, Actor, Scope
from events.service_signing import SIGNATURE_HEADER, SIGNER_HEADER, Prechecked, ServiceKeys, signed_bytes
from events.signing import SigningKey, b64encode
from events.subjects import Subjects
from events.tokens import is_token
from projections.evidence import evidence_of
from projections.invariants import Audit, audit_entry, audit_signed_entry, finish
from services.jetstream.log_reads import fold_signed_entry, position_of
from services.jetstream.reader import RawEntry
from tests.unit.test_events_codec import MINIMAL, PACK

GOLDEN = Path(__file__).with_name("replay_golden.json")
HISTORY = Path(__file__).resolve().parent.parent / "fixtures" / "histories" / "staged-regression-rejection.jsonl"
SUBJECTS = Subjects("kx")
KEY = SigningKey.from_raw(bytes(range(32)))
ROLES = ["preparer", "distributor", "verifier", "activator", "monitor", "promoter", "notifier", "guard"]
T0 = datetime(2030, 1, 1, tzinfo=UTC)
D2 = "sha256:" + "2" * 64


def _synthetic() -> Iterator[tuple[str, bytes, str | None, bool]]:
    """(subject, bytes, batch id, signed) of every event type, over releases s0..s3 and two scopes each."""
    service, operator = Actor(kind="service", id="activator"), Actor(kind="operator", id="ops")
    n = 0
    for round_ in range(4):
        release_id = f"s{round_}"
        for event_type in sorted(PAYLOADS, key=lambda t: (t.split(".")[0] != "release", t)):
            n += 1
            family = event_type.split(".")[0]
            data = dict(MINIMAL[event_type])
            if event_type == "release.closed":
                data = {"outcome": ["success", "rolled_back", "aborted", "promoted_by_override"][round_]}
            if event_type == "release.monitoring_passed":
                data = {"stage": 0, "samples": round_, "override": round_ == 3}
            if event_type == "scope.pinned" and round_ == 3:
                data = {**data, "until": "2029-01-01T00:00:00Z"}  # not a future bound
            if event_type == "release.rollback_started":
                data = {"trigger": "operator", "reason": "" if round_ == 1 else "why", "targets": {"internal": PACK}}
            if event_type == "scope.activated":
                data = {
                    **data,
                    "release_id": release_id,
                    "kind": ["rollout", "rollback", "pin", "rollout"][round_],
                    "generation": [None, 1, 1, 5][round_],
                    "pack": {**PACK, "digest": D2} if round_ == 2 else PACK,
                }
            scope = None
            if family == "scope":
                scope = Scope(env="prod", channel="canary", cohort=["internal", "rest"][round_ % 2])
            elif family == "channel":
                scope = Scope(env="prod", channel=["canary", "stable"][round_ % 2], cohort="all")
            event = make_event(
                event_type,
                data,
                actor=operator if event_type in ("release.paused", "release.aborted") or round_ == 3 else service,
                release_id=release_id if family in ("release", "notification", "scope") else None,
                scope=scope,
                event_id=f"ev-{n}",
                occurred_at=T0 + timedelta(seconds=n),
            )
            subject = SUBJECTS.expected_subject(
                event.type, event.release_id, (scope.env, scope.channel, scope.cohort) if scope else None
            )
            batch = f"b{n}" if event_type == "scope.activated" and round_ != 1 else None
            yield subject, encode_event(event), batch, n % 7 != 3  # every seventh: no signature


def log_entries() -> list[RawEntry]:
    """The log: recorded history, every event type (`_synthetic`), junk, a wrong subject, a replayed pointer."""
    raw: list[tuple[str, bytes, str | None, bool]] = []
    for line in HISTORY.read_text().splitlines():
        rec = json.loads(line)
        raw.append((rec["subject"], compact_bytes(rec["event"]), rec["batch_id"], True))
    raw.extend(_synthetic())
    pointer = next(r for r in raw if ".scope." in r[0] and r[0].endswith(".activated"))
    requested = next(r for r in raw if r[0].endswith(".requested"))
    raw += [
        pointer,  # the same pointer again: not newer
        ("kx.release.s0.closed", b"not json", None, False),
        ("kx.scope.prod.canary.internal.activated", b'{"type": "scope.activated"}', "bx", True),
        ("kx.scope.prod.canary.rest.pinned", b"[]", None, False),
        ("kx.channel.prod.canary.configured", b'{"a": 1, "a": 2}', None, False),
        ("kx.release.other.requested", requested[1], None, False),  # not its own subject
        ("kx.trust.rotated", b"\xff", None, False),
    ]
    entries = []
    for seq, (subject, data, batch, signed) in enumerate(raw, start=1):
        headers = {"Nats-Msg-Id": f"m{seq}"}
        if batch is not None:
            headers["Nats-Batch-Id"] = batch
        if signed:
            headers[SIGNER_HEADER] = KEY.keyid
            headers[SIGNATURE_HEADER] = b64encode(KEY.sign(signed_bytes(subject, data)))
        stored_at = T0 + timedelta(milliseconds=seq)
        entries.append(RawEntry(seq, subject, data, headers, stored_at, len(raw) - seq))
    return entries


def canonical(value: Any) -> Any:
    """A JSON form of replay output that does not depend on hash order (rpds maps, sets)."""
    if isinstance(value, BaseModel):
        return {"model": type(value).__name__, "value": value.model_dump(mode="json")}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"class": type(value).__name__} | {
            f.name: canonical(getattr(value, f.name)) for f in dataclasses.fields(value)
        }
    if isinstance(value, (HashTrieMap, Mapping)):
        items = [[canonical(k), canonical(v)] for k, v in value.items()]
        return {"map": sorted(items, key=lambda kv: json.dumps(kv[0], sort_keys=True))}
    if isinstance(value, (HashTrieSet, set, frozenset)):
        return {"set": sorted((canonical(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def replay_output() -> dict[str, Any]:
    entries = log_entries()
    keys = ServiceKeys.of(KEY, ROLES)
    decoded = []
    for entry in entries:
        try:
            event = decode_event(entry.data, entry.subject, SUBJECTS)
        except DecodeError:
            event = None
        decoded.append((entry, position_of(entry), event))
    plain, signed, checker = Audit(), Audit(), Prechecked(keys)
    world, ignored = Audit().world, {}
    for entry, position, event in decoded:
        plain = audit_entry(plain, position, event, SUBJECTS)
        checker.expect(entry.subject, entry.data, None)
        signed = audit_signed_entry(signed, checker, position, event, entry.data, entry.headers, SUBJECTS)
        world, why = fold_signed_entry(world, keys, entry, position, event, SUBJECTS)
        if why is not None:
            ignored[position.seq] = why
    releases = sorted({e.release_id for _, _, e in decoded if e is not None and e.release_id})
    evidence = {
        rid: evidence_of(rid, [(p, e) for _, p, e in decoded if e is not None and e.release_id == rid]).to_json()
        for rid in releases
    }
    parts = {
        "entries": len(entries),
        "audit": finish(plain),
        "audit_signed": finish(signed),
        "signed_world": world,
        "ignored": ignored,
        "evidence": evidence,
    }
    return {name: canonical(part) for name, part in parts.items()}


def test_the_log_holds_every_event_type_and_junk() -> None:
    types = set()
    junk = 0
    for entry in log_entries():
        try:
            types.add(decode_event(entry.data, entry.subject, SUBJECTS).type)
        except DecodeError:
            junk += 1
    assert types == set(PAYLOADS)
    assert junk == 6


def golden(output: dict[str, Any]) -> dict[str, Any]:
    """What the golden file keeps: a digest of each part, and in full what an auditor reads first."""
    return {
        "sha256": {k: hashlib.sha256(json.dumps(v, sort_keys=True).encode()).hexdigest() for k, v in output.items()},
        "violations": {k: output[k]["violations"] for k in ("audit", "audit_signed")},
        "ignored": output["ignored"],
    }


def test_replay_output_is_what_it_was_before_the_tuning() -> None:
    got = golden(replay_output())
    want = json.loads(GOLDEN.read_text())
    assert got["violations"] == want["violations"]
    assert got["ignored"] == want["ignored"]
    assert got["sha256"] == want["sha256"]  # world, releases, scopes, channels, safety memory, evidence
    # and the log is not trivial: violations of several kinds, entries ignored, junk
    codes = {v["code"] for v in got["violations"]["audit_signed"]}
    assert {
        "unsigned_or_forged",
        "undecodable",
        "pointer_chain_broken",
        "illegal_transition",
        "pointer_untrusted",
    } <= codes
    assert {"pin_without_rationale_or_bound", "rollback_without_reason", "success_without_data"} <= codes
    assert len(got["ignored"]["map"]) >= 5


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    GOLDEN.write_text(json.dumps(golden(replay_output()), sort_keys=True, indent=1) + "\n")
    print(GOLDEN)


def test_every_known_suffix_is_a_subject_token() -> None:
    """What `events.codec._plain_subject` relies on to skip `check_subject`'s token checks."""
    assert all(is_token(event_type.partition(".")[2]) for event_type in PAYLOADS)


def test_an_event_on_another_subject_fails_as_check_subject_says() -> None:
    for entry in log_entries():
        try:
            event = decode_event(entry.data, None, SUBJECTS)
        except DecodeError:
            continue
        own = SUBJECTS.expected_subject(event.type, event.release_id, scope_tuple(event))
        assert decode_event(entry.data, own, SUBJECTS) == event
        for other in (own + "x", own.replace("kx.", "ky.", 1), "kx.trust.rotated", "kx.release.zz.closed"):
            if other == own:
                continue
            with pytest.raises(DecodeError) as got:
                decode_event(entry.data, other, SUBJECTS)
            with pytest.raises(DecodeError) as want:
                check_subject(event, other, SUBJECTS)
            assert str(got.value) == str(want.value) and got.value.reasons == want.value.reasons
