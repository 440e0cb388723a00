"""Producer and operator actions: push a pack, request a release, configure a channel.

These are the only ways `kxr` (and the demo) write to the log besides the
consumers, and they follow the contract exactly as an outside producer would.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from events.channel import ChannelConfig, channel_problems, unknown_fields
from events.codec import make_event
from events.manifest import manifest_object_name, pack_object_name, sign_manifest
from events.model import Actor, Event, Requested, Scope
from events.signing import SigningKey
from events.subjects import Subjects
from events.canonical import compact_bytes
from .log import AppendConflict, Entry, EventLog
from .packstore import PackStore


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def build_signed(
    pack: bytes, *, name: str, version: str, schema: str, profile: str, runtime: str,
    build_id: str, builder: str, run: str, source: str, revision: str,
    refs: list[str] | None = None, expires: datetime | None = None, scopes: dict | None = None, extra: dict | None = None,
) -> dict[str, Any]:
    signed: dict[str, Any] = {
        "name": name, "version": version, "digest": sha256_digest(pack), "size": len(pack),
        "expires": (expires or datetime.now(timezone.utc) + timedelta(days=90)).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
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


async def push_pack(js: JetStreamContext, subjects: Subjects, pack: bytes, manifest: bytes, digest: str | None = None) -> str:
    """Step 1 of CONTRACT §5: the pack and its manifest into kx_packs, named by digest."""
    digest = digest or sha256_digest(pack)
    store = PackStore(js, subjects)
    await store.put(pack_object_name(digest), pack)
    await store.put(manifest_object_name(digest), manifest)
    return digest


def request_event(release_id: str, requested: Requested | dict, actor: Actor) -> Event:
    return make_event("release.requested", requested, actor=actor, release_id=release_id, correlation_id=release_id)


async def request_release(log: EventLog, release_id: str, requested: Requested | dict, actor: Actor) -> int:
    """Step 2 of CONTRACT §5: publish release.requested; a release id can be requested once."""
    event = request_event(release_id, requested, actor)
    try:
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


async def configure_channel(log: EventLog, js: JetStreamContext, env: str, channel: str, config: ChannelConfig, actor: Actor) -> int:
    """Append channel.configured, expecting the channel's current last sequence (no lost update)."""
    subject = log.subjects.channel(env, channel)
    try:
        current = (await js.get_last_msg(log.subjects.releases_stream, subject)).seq
    except NotFoundError:
        current = 0
    event = make_event("channel.configured", config, actor=actor, scope=Scope(env=env, channel=channel, cohort="all"))
    return await log.append(Entry(event, current))

