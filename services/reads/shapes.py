"""The JSON shapes of `kxr … --json`: one model per output, one shape per concept (issue 16).

Every read command serialises its `--json` through these models (`dump`), and the schemas in
docs/schemas/cli/ are generated from them (`python -m services.reads.shapes docs/schemas/cli`;
tests/unit/test_cli_shapes.py fails when a file is stale), so output and schema cannot drift.

The concepts, the same wherever they appear:
- a pack is `{name, version, digest}`, the digest `sha256:<64 hex>` (`Pack`);
- a time is RFC 3339 in UTC with a `Z` (`rfc3339`), e.g. `2026-11-27T10:00:00.000000Z`;
- a scope is its `env/channel/cohort` string plus `env`, `channel`, `cohort` (`Scope`);
- `lkg` (last known good) is a `Pack` or null, in every command.

Only the commands import this module (pydantic): `kxr --help` stays free of it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from projections.releases import ReleaseState
    from projections.world import World

DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
TIME_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?Z$"

Digest = Annotated[str, Field(pattern=DIGEST_PATTERN, description="sha256:<64 lowercase hex>")]
Time = Annotated[str, Field(pattern=TIME_PATTERN, description="RFC 3339, UTC, with Z")]


def rfc3339(value: datetime | str | None) -> str | None:
    """A time as RFC 3339 in UTC with `Z` and microseconds (the evidence record's form)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Shape(BaseModel):
    # defer_build: a model's validator and serializer are built when a command first uses it, not
    # when this module is imported (~35 models: ~20 ms of every `kxr status`, which uses seven)
    model_config = ConfigDict(extra="forbid", defer_build=True)


class Pack(Shape):
    """A Runtime Pack, everywhere: `{name, version, digest}`."""

    name: str | None = Field(description="null only where it cannot be read (`pack verify` of a broken manifest)")
    version: str | None
    digest: Digest


def pack(ref) -> Pack | None:
    """From a PackRef (or anything with name/version/digest), or None."""
    return None if ref is None else Pack(name=ref.name, version=ref.version, digest=ref.digest)


class Pin(Shape):
    pack: Pack
    until: Time


class Flag(Shape):
    code: str
    message: str


class Scope(Shape):
    """One cohort's state: the active pack, since when, by which release, its LKG and pin."""

    scope: str = Field(description="env/channel/cohort")
    env: str
    channel: str
    cohort: str
    pack: Pack | None = Field(description="the active pack")
    version: str | None = Field(description="the active pack's version (= pack.version)")
    digest: Digest | None = Field(description="the active pack's digest (= pack.digest)")
    kind: str | None = Field(description="how it became active: rollout, rollback, pin, …")
    release: str | None
    since: Time | None
    lkg: Pack | None = Field(description="last known good")
    lkg_release: str | None
    pinned: Pin | None
    flag: Flag | None = Field(description="the guard's flag on the active pack")


class Release(Shape):
    """A release row of `kxr status` (its id `release_id`, as in `kxr release list`, `kxr watch` and the contract)."""

    release_id: str
    pack: Pack | None
    target: str | None = Field(description="env/channel")
    phase: str | None
    paused: bool
    stage: str | None = Field(description="current stage of all, e.g. 1/3")
    outcome: str | None
    why: str | None


class StagesPassed(Shape):
    passed: int = Field(ge=0, description="stages whose window passed (an operator's pass too)")
    total: int = Field(ge=0)


class ReleaseSummary(Shape):
    """`kxr release list --json` (a list, newest first) and the dashboard's history: services/reads/history.py."""

    release_id: str
    pack: Pack | None
    target: str | None = Field(description="env/channel")
    owner: str | None
    phase: str | None
    paused: bool
    outcome: (
        Literal["success", "promoted_by_override", "rolled_back", "pinned", "aborted", "rejected", "failed"] | None
    ) = Field(description="null while in flight")
    requested_at: Time | None
    closed_at: Time | None
    stages: StagesPassed
    promoted_to: str | None
    promoted_from: str | None
    why: str | None = Field(description="why it stopped or failed, if it did")
    seq: int = Field(description="log sequence of its first event (the order: newest first)")


class Ignored(Shape):
    seq: int
    why: str


# `kxr status` lists the newest ignored entries, and how many there are in all: anyone who may append
# (a producer's forged "service" events, say) can make the list grow without bound, and the read
# models' `position` value that carries it must stay well under a message's 1 MB. Entries that do not
# decode are listed with them ("undecodable: …"): never silently treated as absent.
IGNORED_SHOWN = 100
WHY_SHOWN = 500  # characters of a why (projections.world.PROBLEM_REASON_MAX): a decode error quotes its input


class Status(Shape):
    """`kxr status --json`."""

    scopes: list[Scope]
    releases: list[Release]
    log_seq: int
    signatures: str
    # the newest IGNORED_SHOWN entries that count for nothing (ignored or undecodable), oldest first
    # (`kxr audit replay` lists every one)
    ignored: list[Ignored]
    ignored_total: int = 0  # how many entries were ignored in all (undecodable ones too)


def newest_ignored(ignored: Mapping[int, str]) -> list[dict[str, Any]]:
    """The newest IGNORED_SHOWN ignored entries, oldest first, as `kxr status` lists them."""
    return [{"seq": seq, "why": why[:WHY_SHOWN]} for seq, why in sorted(ignored.items())[-IGNORED_SHOWN:]]


def ignored_total(ignored: Mapping[int, str]) -> int:
    """How many entries counted for nothing in all: a bounded map (projections.snapshot.Noted) keeps
    only the newest and says its `total`; a plain map (a one-off fold) keeps every one."""
    return max(getattr(ignored, "total", 0), len(ignored))


class AuditAt(Shape):
    """`kxr audit at TIME --json`."""

    at: Time
    scope: str | None = Field(description="the --scope asked for (env/channel[/cohort])")
    scopes: list[Scope]


class Problem(Shape):
    seq: int
    reason: str
    message: str


class ChannelShow(Shape):
    """`kxr channel show ENV/CHANNEL --json` (config: docs/schemas/channel-config.schema.json)."""

    scope: str = Field(description="env/channel")
    env: str
    channel: str
    configured_at: Time | None
    configured_by: str | None
    seq: int | None
    config: dict[str, Any] | None
    problem: Problem | None


class TrustKey(Shape):
    keyid: str
    name: str
    public: str


class Builder(TrustKey):
    ids: list[str]


class RefusedRotation(Shape):
    seq: int
    code: str
    message: str


class TrustShow(Shape):
    """`kxr trust show --json`."""

    version: int
    threshold: int
    keys: list[TrustKey]
    builders: list[Builder]
    accepted_rotations: list[int] = Field(description="log seqs of the rotations in force")
    refused_rotations: list[RefusedRotation]


class DeadLetterRow(Shape):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, defer_build=True)

    id: int
    consumer: str | None
    stream_seq: int | None
    stream_seq_old: int | None = Field(alias="stream seq", description="the older spelling of stream_seq")
    subject: str | None
    deliveries: int | None
    reason: str | None
    at: Time | None


class DeadLetterShow(Shape):
    """`kxr deadletter show ID --json`: the record as stored, with its time in RFC 3339."""

    id: int
    consumer: str | None
    stream: str | None
    seq: int | None
    subject: str | None
    reason: str | None
    deliveries: int | None
    recorded_at: Time | None
    data_b64: str
    data_text: str | None = Field(description="the bytes as text, null when not UTF-8")


class Gate(Shape):
    model_config = ConfigDict(extra="allow", defer_build=True)

    gate: str
    ok: bool
    code: str
    message: str = ""


class PackVerify(Shape):
    """`kxr pack verify PACK MANIFEST --json`."""

    ok: bool
    pack: Pack = Field(description="the pack file's digest, with the manifest's name and version when readable")
    gates: list[Gate]


class AuditVerify(Shape):
    """`kxr audit verify BUNDLE --json`."""

    valid: bool
    release_id: str | None
    pack: Pack = Field(description="the bundle's subject: the pack the release moved")
    outcome: str
    events: int


class ReplayScope(Shape):
    version: str | None
    digest: Digest | None
    kind: str | None
    release: str | None
    lkg: Pack | None
    pinned: Pack | None


class Violation(Shape):
    seq: int
    code: str
    message: str


class AuditReplay(Shape):
    """`kxr audit replay --json`: deterministic (the same log gives the same bytes)."""

    log_seq: int
    events: int
    undecodable: int
    releases: dict[str, int] = Field(description="outcome (or 'in flight (phase)') -> count")
    scopes: dict[str, ReplayScope] = Field(description="env/channel/cohort -> state")
    channels: list[str]
    violations: list[Violation]
    safety: dict[str, int]


class StageRow(Shape):
    stage: int = Field(ge=1, description="1-based")
    cohorts: list[str]
    skipped: dict[str, str] = Field(description="cohort -> why preparation skipped it")
    state: Literal[
        "pending", "activating", "activated", "monitoring", "passed", "failed", "held", "rolling_back", "rolled_back"
    ]
    verdict: str | None = Field(description="the last window's reason")


class Figure(Shape):
    model_config = ConfigDict(extra="allow", defer_build=True)

    metric: str
    value: float | None
    op: Literal["<=", ">=", "none_new"]
    threshold: float | None
    ok: bool


class Window(Shape):
    """The most recent monitoring window: its clock, and each figure against its threshold."""

    stage: int = Field(ge=1)
    cohorts: list[str]
    digest: Digest
    starts_at: Time
    ends_at: Time
    window_s: int
    elapsed_s: float
    fraction: float = Field(ge=0, le=1, description="of the window's length; a judged window stops at its verdict")
    verdict_at: Time | None
    open: bool = Field(description="true until the monitor records a verdict")
    source: Literal["live", "verdict", "unavailable"] = Field(
        description="live: judged now from stored samples; verdict: the monitor's record; unavailable: see note"
    )
    result: Literal["passed", "failed", "inconclusive"] | None
    reason: str | None
    early: bool
    samples: int
    min_samples: int
    runtimes: int | None
    requests: int | None
    errors: int | None
    figures: list[Figure]
    new_error_classes: list[str]
    statistical: dict[str, Any] | None
    note: str | None


class FramePin(Shape):
    pack: Pack
    version: str | None = Field(description="= pack.version")
    until: Time
    rationale: str | None
    by: str | None


class FrameScope(Shape):
    """A cohort the release plans to touch: what runs there, its last-known-good and pin."""

    scope: str = Field(description="env/channel/cohort")
    cohort: str
    active: str | None = Field(description="the active pack's version")
    active_digest: Digest | None
    active_release: str | None
    active_kind: str | None
    lkg: Pack | None = Field(description="last known good (as in every command: a pack, its digest sha256:)")
    lkg_version: str | None = Field(description="= lkg.version")
    lkg_release: str | None
    pinned: FramePin | None
    rollback_target: str | None = Field(description="the version a rollback would put back here")


class TimelineEntry(Shape):
    seq: int
    at: Time
    type: str
    actor: str = Field(description="kind:id")
    event_id: str
    summary: str


class WatchFrame(Shape):
    """`kxr watch RELEASE --json`: one frame (the live view, services/reads/live_view.py) per line per change."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, defer_build=True)

    schema_: Literal["kxr.release-view/2"] = Field(alias="schema")
    release_id: str
    log_seq: int = Field(description="the log sequence the fold has applied")
    at: Time
    phase: str | None
    paused: bool
    terminal: bool = Field(description="closed: the last frame")
    held: bool
    waiting: bool = Field(description="nothing moves it on but an operator: held, or paused after a passed stage")
    outcome: Literal["success", "rolled_back", "aborted", "rejected", "failed", "pinned"] | None
    why: str | None
    pack: Pack | None
    target: str | None = Field(description="env/channel")
    owner: str | None
    escalation: str | None
    promoted_to: str | None
    stages: list[StageRow]
    gates: list[Gate] = Field(description="in the verifier's order; [] before verification")
    verification: dict[str, Any]
    window: Window | None
    scopes: list[FrameScope]
    events: list[TimelineEntry] = Field(description="the last --events entries, oldest first")


# ---- builders from the fold -----------------------------------------------------------------------
def scope_shape(key: tuple[str, ...], s) -> Scope:
    active = s.active_pack
    return Scope(
        scope="/".join(key),
        env=key[0],
        channel=key[1],
        cohort=key[2],
        pack=pack(active),
        version=active.version if active else None,
        digest=active.digest if active else None,
        kind=s.active.kind if s.active else None,
        release=s.active.release_id if s.active else None,
        since=rfc3339(s.active_since),
        lkg=pack(s.lkg),
        lkg_release=s.lkg_release if s.lkg else None,
        pinned=Pin(pack=pack(s.pin.pack), until=rfc3339(s.pin.until)) if s.pin else None,
        flag=Flag(code=s.flag.code, message=s.flag.message) if s.flag else None,
    )


def scopes(world: World) -> list[Scope]:
    return [scope_shape(key, world.scopes[key]) for key in sorted(world.scopes.keys())]


def release_shape(r: ReleaseState) -> Release:
    """A release as `kxr status` lists it."""
    stages = len(r.stages)
    target = r.requested.target if r.requested else None
    return Release(
        release_id=r.release_id,
        pack=pack(r.pack),
        target=f"{target.env}/{target.channel}" if target else None,
        phase=r.phase,
        paused=r.paused,
        stage=f"{r.stage + 1}/{stages}" if stages else None,
        outcome=r.outcome,
        why=r.failure,
    )


def releases(world: World, in_flight_only: bool) -> list[Release]:
    ordered = sorted(world.releases.values(), key=lambda r: r.last_seq)
    return [release_shape(r) for r in ordered if r.in_flight or not in_flight_only]


def dump(shape: BaseModel | Sequence[BaseModel]) -> Any:
    """What `--json` prints: JSON-able, by alias (keys as documented)."""
    if not isinstance(shape, BaseModel):
        return [s.model_dump(mode="json", by_alias=True) for s in shape]
    return shape.model_dump(mode="json", by_alias=True)


# ---- the schemas ------------------------------------------------------------------------------------
SCHEMAS: dict[str, tuple[str, Any]] = {
    # file stem -> (the command, its model; a list output is `list[Model]`)
    "status": ("kxr status", Status),
    "audit-at": ("kxr audit at", AuditAt),
    "audit-replay": ("kxr audit replay", AuditReplay),
    "audit-verify": ("kxr audit verify", AuditVerify),
    "channel-show": ("kxr channel show", ChannelShow),
    "trust-show": ("kxr trust show", TrustShow),
    "deadletter-list": ("kxr deadletter list", list[DeadLetterRow]),
    "deadletter-show": ("kxr deadletter show", DeadLetterShow),
    "pack-verify": ("kxr pack verify", PackVerify),
    "watch": ("kxr watch", WatchFrame),
    "release-list": ("kxr release list", list[ReleaseSummary]),
}
# `kxr release show` and `kxr audit release`: the evidence record, docs/schemas/evidence-record.schema.json
# (projections/evidence_schema.py); written here too as release-show.schema.json.


def schema(stem: str) -> dict[str, Any]:
    from pydantic import TypeAdapter

    from projections.evidence_schema import schema_text

    if stem == "release-show":
        doc = json.loads(schema_text())
        doc["title"] = "kxr release show --json, kxr audit release --json (the evidence record)"
        doc["$id"] = "https://konnaxion.dev/releases/schemas/cli/release-show.schema.json"
        return doc
    command, model = SCHEMAS[stem]
    doc = TypeAdapter(model).json_schema(by_alias=True, mode="serialization")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://konnaxion.dev/releases/schemas/cli/{stem}.schema.json",
        "title": f"{command} --json",
        **doc,
    }


def schema_files() -> dict[str, str]:
    """file name -> text, for docs/schemas/cli/."""
    return {
        f"{stem}.schema.json": json.dumps(schema(stem), indent=2, sort_keys=True) + "\n"
        for stem in [*SCHEMAS, "release-show"]
    }


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "docs/schemas/cli")
    out.mkdir(parents=True, exist_ok=True)
    for name, text in schema_files().items():
        (out / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


def status_of(world: World, ignored: Mapping[int, str], all_releases: bool) -> dict:
    """`kxr status --json` of a folded world (`signatures` is the caller's to say)."""
    return dump(
        Status(
            scopes=scopes(world),
            releases=releases(world, not all_releases),
            log_seq=world.applied_seq,
            signatures="",
            ignored=[Ignored.model_validate(i) for i in newest_ignored(ignored)],
            ignored_total=ignored_total(ignored),
        )
    )
