"""Producer and operator actions: push a pack, request a release, configure a channel.

These are the only ways `kxr` (and the demo) write to the log besides the
consumers, and they follow the contract exactly as an outside producer would.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from events.bundle import PAYLOAD_TYPE, STATEMENT_TYPE, pae
from events.canonical import StrictJSONError, compact_bytes, loads_strict
from events.channel import ChannelConfig, channel_problems, cohort_set_notes, promotion_window_problems, unknown_fields
from events.codec import DecodeError, decode_event, make_event
from events.manifest import attestation_object_name, manifest_object_name, pack_object_name, sign_manifest
from events.model import Actor, Event, Requested, Scope
from events.signing import SigningKey, b64decode_strict, b64encode
from events.subjects import Subjects
from events.tokens import check_token
from services.jetstream.direct import connection_of, last_per_subject
from services.jetstream.log import AppendConflict, Entry, EventLog
from services.jetstream.packstore import PackStore
from services.observability import tracing
from services.verification.gates import ATTESTATION_MAX_BYTES, SLSA_PROVENANCE_V1


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def build_signed(
    pack: bytes,
    *,
    name: str,
    version: str,
    schema: str,
    profile: str,
    runtime: str,
    build_id: str,
    builder: str,
    run: str,
    source: str,
    revision: str,
    refs: list[str] | None = None,
    expires: datetime | None = None,
    scopes: dict | None = None,
    extra: dict | None = None,
) -> dict[str, Any]:
    signed: dict[str, Any] = {
        "name": name,
        "version": version,
        "digest": sha256_digest(pack),
        "size": len(pack),
        "expires": (expires or datetime.now(UTC) + timedelta(days=90)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "compatibility": {"schema": schema, "profile": profile, "runtime": runtime},
        "build": {"id": build_id, "builder": builder, "validation": "passed", "run": run},
        "provenance": {"source": source, "revision": revision, "refs": refs or []},
    }
    if scopes is not None:
        signed["scopes"] = scopes
    signed.update(extra or {})
    return signed


def manifest_bytes(signed: dict[str, Any], keys: list[SigningKey]) -> bytes:
    return compact_bytes(sign_manifest(signed, keys))


def provenance_statement(
    digest: str,
    *,
    name: str,
    builder_id: str,
    build_type: str,
    external_parameters: dict | None = None,
    invocation_id: str | None = None,
) -> dict[str, Any]:
    """An in-toto Statement v1 whose subject is the pack and whose predicate is SLSA provenance v1."""
    run: dict[str, Any] = {"builder": {"id": builder_id}}
    if invocation_id:
        run["metadata"] = {"invocationId": invocation_id}
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": digest.removeprefix("sha256:")}}],
        "predicateType": SLSA_PROVENANCE_V1,
        "predicate": {
            "buildDefinition": {"buildType": build_type, "externalParameters": external_parameters or {}},
            "runDetails": run,
        },
    }


def dsse_envelope(statement: dict[str, Any], keys: list[SigningKey]) -> bytes:
    """The statement in a DSSE envelope, Ed25519 over DSSE's pre-authentication encoding."""
    payload = compact_bytes(statement)
    return compact_bytes(
        {
            "payloadType": PAYLOAD_TYPE,
            "payload": b64encode(payload),
            "signatures": [{"keyid": k.keyid, "sig": b64encode(k.sign(pae(PAYLOAD_TYPE, payload)))} for k in keys],
        }
    )


def attested_digests(envelope: bytes) -> list[str]:
    """The `sha256:<hex>` subjects an attestation names (unverified: a producer's sanity check
    before upload; the verifier checks signature and subject for real). ValueError if unreadable."""
    try:
        doc = loads_strict(envelope, allow_floats=True, max_bytes=ATTESTATION_MAX_BYTES)
        statement = loads_strict(b64decode_strict(doc["payload"]), allow_floats=True)
        return ["sha256:" + s["digest"]["sha256"] for s in statement["subject"]]
    except (StrictJSONError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a DSSE envelope of an in-toto statement with subjects: {exc}") from None


async def push_pack(
    js: JetStreamContext,
    subjects: Subjects,
    pack: bytes,
    manifest: bytes,
    digest: str | None = None,
    attestation: bytes | None = None,
) -> str:
    """Step 1 of CONTRACT §5: the pack and its manifest (and attestation) into kx_packs, named by digest."""
    digest = digest or sha256_digest(pack)
    store = PackStore(js, subjects)
    await store.put(pack_object_name(digest), pack)
    await store.put(manifest_object_name(digest), manifest)
    if attestation is not None:
        await push_attestation(js, subjects, digest, attestation)
    return digest


async def push_attestation(js: JetStreamContext, subjects: Subjects, digest: str, attestation: bytes) -> str:
    """The attestation beside the pack it names; refused before upload if it names another pack."""
    if digest not in attested_digests(attestation):
        raise ValueError(f"the attestation's subjects do not include the pack {digest}")
    name = attestation_object_name(digest)
    await PackStore(js, subjects).put(name, attestation)
    return name


def request_event(release_id: str, requested: Requested | dict, actor: Actor) -> Event:
    return make_event("release.requested", requested, actor=actor, release_id=release_id, correlation_id=release_id)


async def request_release(log: EventLog, release_id: str, requested: Requested | dict, actor: Actor) -> int:
    """Step 2 of CONTRACT §5: publish release.requested; a release id can be requested once."""
    event = request_event(release_id, requested, actor)
    try:
        with tracing.producer_span("kxr release request", release_id, event.event_id):  # TRACEPARENT from env
            return await log.append(log.release_entry(event, 0))
    except AppendConflict:
        raise AppendConflict(f"release {release_id} was already requested") from None


def parse_channel_config(doc: Any, channel: str) -> ChannelConfig:
    """Validate a channel configuration; ValueError lists every problem, one per line."""
    from pydantic import ValidationError

    try:
        cfg = ChannelConfig.model_validate(doc)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            where = ".".join(str(p) for p in err["loc"]) or "config"
            lines.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
        raise ValueError("\n".join(lines)) from None
    problems = [f"{f}: unknown field" for f in unknown_fields(cfg)] + channel_problems(cfg, own_channel=channel)
    if problems:
        raise ValueError("\n".join(problems))
    return cfg


async def configured_channels(js: JetStreamContext, subjects: Subjects, env: str) -> dict[str, ChannelConfig | str]:
    """Every channel of `env` with a configuration in the log: its newest one, or why it does not decode
    (never left out: an unreadable configuration is reported, not taken for none)."""
    pattern = f"{subjects.prefix}.channel.{check_token(env, 'env')}.*.configured"
    found: dict[str, ChannelConfig | str] = {}
    async for stored in last_per_subject(connection_of(js), subjects.releases_stream, [pattern]):
        name = stored.subject.split(".")[-2]
        try:
            data = decode_event(stored.data, stored.subject, subjects).data
        except DecodeError as exc:
            found[name] = f"its configuration (seq {stored.seq}) does not decode: {exc}"
            continue
        found[name] = data if isinstance(data, ChannelConfig) else f"seq {stored.seq} is no channel configuration"
    return found


async def promotion_window_conflicts(
    js: JetStreamContext, subjects: Subjects, env: str, channel: str, config: ChannelConfig
) -> tuple[list[str], list[str], list[str]]:
    """What `config` would break of "canary short, stable longer" against the channels it promotes to
    or is promoted from (`promotion_window_problems`), and the channels of `env` it could not be checked
    against (their configuration does not decode). `kxr channel set` refuses the first and names the
    second; the promoter enforces the rule at each promotion whoever wrote the configurations, so this
    is the operator's early warning, not the only guard (and writers that configure thousands of
    channels, the benches, skip a scan of every channel per write). Third: what the new cohort set
    changes against the channel's own current configuration (`cohort_set_notes`), from the same read."""
    try:
        others = await configured_channels(js, subjects, env)
    except Exception as exc:  # advisory: said, and the promoter still enforces the rule at each promotion
        why = f"{env}/*: the other channels' configurations could not be read: {exc.__class__.__name__}: {exc}"
        return [], [why], []
    current = others.pop(channel, None)  # its own current configuration is what this one replaces
    unreadable = [f"{env}/{name}: {why}" for name, why in sorted(others.items()) if isinstance(why, str)]
    readable = {name: cfg for name, cfg in others.items() if isinstance(cfg, ChannelConfig)}
    notes = cohort_set_notes(current, config) if isinstance(current, ChannelConfig) else []
    return promotion_window_problems(channel, config, readable), unreadable, notes


async def configure_channel(
    log: EventLog, js: JetStreamContext, env: str, channel: str, config: ChannelConfig, actor: Actor
) -> int:
    """Append channel.configured, expecting the channel's current last sequence (no lost update)."""
    subject = log.subjects.channel(env, channel)
    try:
        current = (await js.get_last_msg(log.subjects.releases_stream, subject)).seq
    except NotFoundError:
        current = 0
    event = make_event("channel.configured", config, actor=actor, scope=Scope(env=env, channel=channel, cohort="all"))
    return await log.append(Entry(event, current))
