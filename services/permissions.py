"""Least-privilege NATS users, one per role: who may publish and subscribe to what.

Pure functions build each role's permissions from `events.subjects.Subjects` (so the
prefix and every stream and bucket name follow KX_PREFIX) and render them as a
nats-server `authorization { users [...] }` block. Credentials are JSON files, 0600,
under `KX_DATA_DIR/creds/<role>.json`:

    {"role": "runtime", "prefix": "kx", "user": "kx-runtime", "password": "...",
     "url": "nats://kx-runtime:...@127.0.0.1:4222", "inbox_prefix": "_INBOX_kx_runtime"}

`url` carries the user and password, so `KX_NATS_URL=<url>` is all `kxr` needs;
`inbox_prefix` is the reply-subject prefix the role must connect with: each role has its own
(each runtime with its own user too) and may receive on nothing else, so no role reads the
answers to another's reads (docs/permissions.md). `kxr` finds a role's prefix from its user
name when only a URL names the user (`inbox_for_user`).

The roles (docs/permissions.md has the full allow lists):
- service:  everything `kxr serve` does, and nothing else: its own log subjects
            (release events, scope activated/unpinned), timers, dead letters, snapshots,
            creating its streams, reading them, acking its durable consumers, live health.
            Never deletes or purges a stream (only the internal snapshot bucket's chunks).
- producer: `<p>.release.*.requested`, writes `<p>_packs` (never purges), reads the log.
- runtime:  reads the log (scope pointers, channel config, trust rotations) and packs,
            publishes health: under its own id only with its own user (`kxr creds runtime
            add ID`, `runtime-<id>.json`), under any id with the shared one (none at all
            under `--runtime-identity strict`); cannot
            subscribe to health nor read the health stream, so it cannot see another
            tenant's samples.
- operator: operator events only (pause/resume/abort/annotate/promote/extend/rollback/close,
            pin/unpin, channel configuration, trust rotation); reads the log, dead letters and
            stored health (`kxr watch`).
- auditor:  reads the log; publishes nothing.

No role but the service creates, updates or pulls from the service's durable consumers
(`SERVICE_DURABLES`). Embedded `kxr serve` puts the service's user in `ACCOUNT` (JetStream's)
and every other role's in its own account importing only what it uses (services/nats_accounts.py:
so JetStream's answers return to the requester's account, never onto a subject a stream
captures), each with limits (`AccountLimits`: JetStream consumers and streams, connections, subscriptions per
connection, message size), so no user can make the server hold without bound.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from events.subjects import Subjects
from events.tokens import InvalidToken, check_token

from .settings import ROLES as CONSUMER_ROLES
from .settings import env_credentials_document, read_credentials_document

ROLES = ("service", "producer", "runtime", "operator", "auditor")
API = "$JS.API"
DEFAULT_INBOX = "_INBOX"

# The operator's own events (services/actions/: operator.py, pins.py, producer.configure_channel, trust.py).
OPERATOR_RELEASE_SUFFIXES = (
    "paused",
    "resumed",
    "aborted",
    "annotated",
    "monitoring_passed",
    "monitoring_started",
    "rollback_started",
    "closed",
)  # closed: `kxr release close` ends a held release as failed/aborted


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    inbox_prefix: str = DEFAULT_INBOX
    publish_deny: tuple[str, ...] = ()  # carved out of `publish`

    def as_config(self) -> dict:
        publish: dict = {"allow": list(self.publish)}
        if self.publish_deny:
            publish["deny"] = list(self.publish_deny)
        return {"publish": publish, "subscribe": {"allow": list(self.subscribe)}}


@dataclass(frozen=True)
class Credentials:
    role: str
    prefix: str
    user: str
    password: str
    inbox_prefix: str = DEFAULT_INBOX
    url: str | None = None  # nats://user:password@host:port, once the server's address is known
    runtime_id: str | None = None  # a runtime's own credentials (`kxr creds runtime add ID`)

    def to_document(self) -> dict:
        doc = {
            "role": self.role,
            "prefix": self.prefix,
            "user": self.user,
            "password": self.password,
            "url": self.url,
            "inbox_prefix": self.inbox_prefix,
        }
        return doc | ({"runtime_id": self.runtime_id} if self.runtime_id else {})

    @classmethod
    def from_document(cls, doc: dict) -> Credentials:
        try:
            return cls(
                role=str(doc["role"]),
                prefix=str(doc["prefix"]),
                user=str(doc["user"]),
                password=str(doc["password"]),
                inbox_prefix=_document_inbox(doc),
                url=doc.get("url"),
                runtime_id=check_token(str(doc["runtime_id"]), "runtime_id") if doc.get("runtime_id") else None,
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a credentials document (missing {exc})") from None
        except InvalidToken as exc:
            raise ValueError(f"not a credentials document ({exc})") from None

    def with_server(self, server_url: str) -> Credentials:
        return replace(self, url=url_with_user(server_url, self.user, self.password))

    @property
    def name(self) -> str:
        """The file's stem under creds/: the role, or `runtime-<id>`."""
        return f"runtime-{self.runtime_id}" if self.runtime_id else self.role

    def permissions(self, subjects: Subjects, runtime_identity: str = "shared") -> Permissions:
        if self.runtime_id:
            return runtime_permissions(subjects, runtime_id=self.runtime_id)
        if self.role == "runtime" and check_runtime_identity(runtime_identity) == "strict":
            return runtime_permissions(subjects, report=False)
        return role_permissions(subjects, self.role)

    def connect_options(self) -> dict:
        """Keyword arguments for `nats.connect` (besides the server URL)."""
        return {"user": self.user, "password": self.password, "inbox_prefix": self.inbox_prefix}


# ---- runtime identity ---------------------------------------------------------------------------
# "shared" (the default, compatible with runtimes deployed before per-runtime users): the shared
# `kx-runtime` user may report health under any runtime id. "strict": it may still read (pointers,
# packs) but report nothing, so only per-runtime users (`kxr creds runtime add ID`) report health,
# each under its own id (`kxr serve --runtime-identity strict`, kept under the data dir).
RUNTIME_IDENTITY_MODES = ("shared", "strict")


def check_runtime_identity(mode: str) -> str:
    if mode not in RUNTIME_IDENTITY_MODES:
        raise ValueError(f"runtime identity {mode!r}: one of {', '.join(RUNTIME_IDENTITY_MODES)}")
    return mode


def runtime_identity_path(data_dir: Path) -> Path:
    return data_dir / "runtime-identity"


def read_runtime_identity(data_dir: Path) -> str:
    """The mode embedded `kxr serve` last rendered its users with ("shared" if never set)."""
    try:
        return check_runtime_identity(runtime_identity_path(data_dir).read_text().strip())
    except FileNotFoundError:
        return "shared"


def write_runtime_identity(data_dir: Path, mode: str) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    runtime_identity_path(data_dir).write_text(check_runtime_identity(mode) + "\n")


# ---- JetStream API subjects ----------------------------------------------------------------------
def read_stream(stream: str) -> list[str]:
    """Read a stream: info, get a message (by sequence or last-by-subject, direct or not), and
    pull consumers (create, info, fetch). Consumers are created by name, the name a token of
    the subject (`CONSUMER.CREATE.<stream>.<name>[.<filter>]`, server 2.9+), so a deny list
    can keep other roles off the service's durables (`service_durable_denials`).

    Not the legacy `CONSUMER.CREATE.<stream>` (no name in the subject): nats-server takes the
    consumer's name from the request body there, and a body naming an existing durable
    *updates* it (filter, max_ack_pending, ...), which no subject permission can see."""
    return [
        f"{API}.STREAM.INFO.{stream}",
        f"{API}.STREAM.MSG.GET.{stream}",
        f"{API}.DIRECT.GET.{stream}",
        f"{API}.DIRECT.GET.{stream}.>",
        f"{API}.CONSUMER.CREATE.{stream}.*",
        f"{API}.CONSUMER.CREATE.{stream}.*.>",
        f"{API}.CONSUMER.INFO.{stream}.*",
        f"{API}.CONSUMER.MSG.NEXT.{stream}.*",
    ]


# The service's durable consumers (services/consumers/reactor.py `kxr-<name>`, the notifier, the
# monitor's and pinner's timers, the pinner): only the service may create, update or pull
# from them. Another role pulling from one would hold its messages un-acked until they are
# redelivered (a delay) or dead-lettered (max deliveries): a denial, not just a read.
SERVICE_DURABLES = (
    *(f"kxr-{name}" for name in CONSUMER_ROLES),
    "kxr-monitor-timers",
    "kxr-pinner",
    "kxr-pinner-timers",
)


def service_durable_denials(stream: str) -> list[str]:
    """For every role but the service: create/update and fetch on the service's durables."""
    out: list[str] = []
    for durable in SERVICE_DURABLES:
        out += [
            f"{API}.CONSUMER.CREATE.{stream}.{durable}",
            f"{API}.CONSUMER.CREATE.{stream}.{durable}.>",
            f"{API}.CONSUMER.MSG.NEXT.{stream}.{durable}",
        ]
    return out


def ack_stream(stream: str) -> list[str]:
    """Acknowledge messages of a stream's durable consumers (ack, nak, term): the reply subjects
    `$JS.ACK.<stream>.…`, and their newer form `$JS.ACK.<domain>.<account hash>.<stream>.…`."""
    return [f"$JS.ACK.{stream}.>", f"$JS.ACK.*.*.{stream}.>"]


def object_stream(bucket: str) -> str:
    return f"OBJ_{bucket}"


def write_bucket(bucket: str) -> list[str]:
    """Put objects: chunks and metadata. Never purge: a purge (`STREAM.PURGE.OBJ_<bucket>`,
    with or without a subject filter) is how an object store deletes, and no producer may
    remove a pack's bytes (services/jetstream/packstore.py puts without purging)."""
    return [f"$O.{bucket}.C.>", f"$O.{bucket}.M.>"]


def get_objects(bucket: str) -> list[str]:
    """What a stock object-store get asks beyond reading the bucket's stream (nats.py's `ObjectStore.get`,
    nats.go's `ObjectStore.Get`): the stream's name looked up by subject, an ordered push consumer
    created without a name (the legacy `CONSUMER.CREATE.<stream>`: on a bucket's stream no service
    durable lives for a body to name), and the answers to its flow control. Its deliveries reach the
    reader's inbox through its account's import (services/nats_accounts.py `deliveries`)."""
    stream = object_stream(bucket)
    return [f"{API}.STREAM.NAMES", f"{API}.CONSUMER.CREATE.{stream}", f"$JS.FC.{stream}.>"]


def kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


def read_models(subjects: Subjects) -> list[str]:
    """Read the read models' bucket (services/reads/model_reads.py): its stream's info and direct
    gets (a key's last value, the last value of every key under a prefix). No consumer on it, and
    never a put, delete or purge (`$KV.<bucket>.>`, `STREAM.PURGE.KV_<bucket>`): only the service writes."""
    stream = kv_stream(subjects.read_bucket)
    return [f"{API}.STREAM.INFO.{stream}", f"{API}.DIRECT.GET.{stream}", f"{API}.DIRECT.GET.{stream}.>"]


def inbox_for(subjects: Subjects, role: str, runtime_id: str | None = None) -> str:
    """Reply-subject prefix: private to each role (and to each runtime with its own credentials).

    Each user may subscribe to its own prefix only, so no role receives the answers to another's
    reads: the operator's reads of health and dead letters (`kxr watch`, `kxr deadletter`) come back
    on `_INBOX_<p>_operator`, where neither the producer nor the auditor, who may not read those
    streams, can listen; nor can a runtime read the service's health reads or another runtime's."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    if role == "runtime" and runtime_id:
        return f"_INBOX_{subjects.prefix}_runtime_{check_token(runtime_id, 'runtime_id')}"
    return f"_INBOX_{subjects.prefix}_{role}"


# The roles people and pipelines run `kxr` as, often with nothing but a URL naming the user
# (`KX_NATS_URL=$(kxr creds show operator)`) or a nats context with a user and password.
KXR_ROLES = ("producer", "operator", "auditor")


def inbox_for_user(user: str | None) -> str | None:
    """The inbox prefix of a `kxr` role's user, `<prefix>-producer|operator|auditor`; None for any
    other user (whose connection says its prefix, or uses the default).

    For connections that name no inbox prefix, or the default one: a bare URL, a nats context
    with a user, a credentials file written when these roles still received on `_INBOX`. The
    user name says it all: `user_name` and `inbox_for` are both functions of prefix and role."""
    for role in KXR_ROLES:
        prefix = (user or "").removesuffix(f"-{role}")
        if prefix != user and prefix:
            try:
                return inbox_for(Subjects(prefix), role)
            except InvalidToken:
                return None
    return None


def _document_inbox(doc: dict) -> str:
    """A credentials document's inbox prefix; for one of a `kxr` role's user that names none or the
    default (written before each role had its own), that role's own: the one its user may receive on."""
    stored = str(doc.get("inbox_prefix") or DEFAULT_INBOX)
    if stored == DEFAULT_INBOX and doc.get("role") in KXR_ROLES and not doc.get("runtime_id"):
        return inbox_for_user(str(doc.get("user") or "")) or stored
    return stored


def janitor_streams(subjects: Subjects) -> tuple[str, ...]:
    """The streams other roles may read, so create consumers on: the janitor's beat."""
    return (
        subjects.releases_stream,
        subjects.health_stream,
        subjects.deadletter_stream,
        object_stream(subjects.packs_bucket),
    )


def _unique(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


# ---- the roles -------------------------------------------------------------------------------
def service_permissions(subjects: Subjects) -> Permissions:
    s = subjects
    p = s.prefix
    packs, snapshots = object_stream(s.packs_bucket), object_stream(s.snapshots_bucket)
    streams = (s.releases_stream, s.health_stream, s.timers_stream, s.deadletter_stream, packs, snapshots)
    inbox = inbox_for(s, "service")
    publish = [
        f"{p}.release.*.*",  # release events (the promoter also requests linked releases)
        f"{p}.release.*.notification.*",  # the notifier's records of webhook deliveries
        f"{p}.scope.*.*.*.activated",  # the activator's pointers (and pins switched by the pinner)
        f"{p}.scope.*.*.*.unpinned",  # pin refused or expired
        f"{p}.scope.*.*.*.flagged",  # the guard: a settled scope's pack now fails a gate
        s.timers_all(),  # monitoring windows and pin expiries (scheduled messages)
        s.deadletter_all(),
        f"$O.{s.snapshots_bucket}.C.>",
        f"$O.{s.snapshots_bucket}.M.>",
        f"{API}.STREAM.PURGE.{snapshots}",
        # the read models (services/reads/projector.py): puts with the expected revision, never a purge
        f"$KV.{s.read_bucket}.>",
        f"{API}.STREAM.CREATE.{kv_stream(s.read_bucket)}",
        *read_models(s),
        # a distributed pack's metadata, re-published from the log's record when a producer deleted
        # or re-pointed it (services/jetstream/pack_keeper.py): never its chunks, never a purge
        f"$O.{s.packs_bucket}.M.>",
        *get_objects(s.snapshots_bucket),  # reading a snapshot back (nats.py's object get)
        f"{API}.INFO",  # the account's limits: the log asks no more consumers than allowed
        # the watchdog (services/jetstream/watchdog.py): a role account's connections, and disconnecting
        # one that floods; the embedded server's system account lends them to KX (nats_accounts.py)
        "$SYS.REQ.ACCOUNT.*.CONNZ",
        "$SYS.REQ.SERVER.*.KICK",
        *[f"{API}.STREAM.CREATE.{name}" for name in streams],  # the layout, created idempotently
        f"{API}.STREAM.UPDATE.{s.releases_stream}",  # additive migration (trust.rotated subject)
        f"{API}.STREAM.INFO.{s.deadletter_stream}",
        *read_stream(s.releases_stream),
        *read_stream(s.health_stream),
        *read_stream(s.timers_stream),
        *read_stream(packs),
        *read_stream(snapshots),
        # nats.py's ordered consumers (a snapshot's object get) are created without a name
        *[f"{API}.CONSUMER.CREATE.{name}" for name in streams],
        *ack_stream(s.releases_stream),
        *ack_stream(s.timers_stream),
        # the janitor (services/jetstream/janitor.py): list the consumers on the streams other roles read,
        # remove those that are neither the service's nor a live reader's
        *[x for name in janitor_streams(s) for x in (f"{API}.CONSUMER.LIST.{name}", f"{API}.CONSUMER.DELETE.{name}.*")],
    ]
    subscribe = [
        f"{inbox}.>",
        s.health_all(),  # replies; live health (early breach detection)
        *[f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.*" for stream in (s.releases_stream, s.timers_stream)],
    ]
    # release events are the service's, except the operator's own decisions
    deny = [f"{p}.release.*.{suffix}" for suffix in ("paused", "resumed", "aborted", "annotated")]
    return Permissions(_unique(publish), tuple(subscribe), inbox, tuple(deny))


def _reader(
    subjects: Subjects, role_publish: list[str], streams: list[str], subscribe: tuple[str, ...], inbox: str
) -> Permissions:
    """A role that publishes `role_publish` and reads `streams`: never the service's durables
    (which live on the log and the timers; a consumer of that name elsewhere is not one)."""
    publish = [*role_publish, *(x for stream in streams for x in read_stream(stream))]
    guarded = [stream for stream in streams if stream in (subjects.releases_stream, subjects.timers_stream)]
    deny = [x for stream in guarded for x in service_durable_denials(stream)]
    return Permissions(_unique(publish), subscribe, inbox, _unique(deny))


def producer_permissions(subjects: Subjects) -> Permissions:
    s = subjects
    inbox = inbox_for(s, "producer")
    return _reader(
        s,
        [f"{s.prefix}.release.*.requested", *write_bucket(s.packs_bucket), *get_objects(s.packs_bucket)],
        [object_stream(s.packs_bucket), s.releases_stream],
        (f"{inbox}.>",),
        inbox,
    )


def runtime_permissions(
    subjects: Subjects,
    env: str | None = None,
    channel: str | None = None,
    runtime_id: str | None = None,
    report: bool = True,
) -> Permissions:
    """A runtime reads pointers and packs and reports its own health.

    With runtime_id given (`kxr creds runtime add ID`), it may only publish health under its
    own id (`<p>.health.<env>.<channel>.*.<runtime_id>`: the cohort is resolved at start-up)
    and receives replies on its own inbox prefix, so it can neither speak for another runtime
    nor read another runtime's replies. env/channel narrow it further. `report=False` (the
    shared user under strict runtime identity) reads only: it reports no health at all.
    """
    s = subjects
    parts = [check_token(v, n) if v is not None else "*" for v, n in ((env, "env"), (channel, "channel"))]
    health = f"{s.prefix}.health.{parts[0]}.{parts[1]}.*.{check_token(runtime_id, 'runtime_id') if runtime_id else '*'}"
    inbox = inbox_for(s, "runtime", runtime_id)
    own = [health] if report else []
    return _reader(
        s,
        [*own, *get_objects(s.packs_bucket)],
        [s.releases_stream, object_stream(s.packs_bucket)],
        (f"{inbox}.>",),
        inbox,
    )


def operator_permissions(subjects: Subjects) -> Permissions:
    s = subjects
    p = s.prefix
    publish = [
        *[f"{p}.release.*.{suffix}" for suffix in OPERATOR_RELEASE_SUFFIXES],
        f"{p}.scope.*.*.*.pinned",
        f"{p}.scope.*.*.*.unpinned",
        f"{p}.channel.*.*.configured",
        s.trust_rotated(),
    ]
    # kxr deadletter list|show; kxr watch: an open window's figures (stored samples, never live subscriptions)
    # kxr status, release list, channel show, pin: the read models (read only)
    # their answers come back on the operator's own inbox: the producer and auditor may not read them
    inbox = inbox_for(s, "operator")
    return _reader(
        s,
        [*publish, *read_models(s)],
        [s.releases_stream, s.deadletter_stream, s.health_stream],
        (f"{inbox}.>",),
        inbox,
    )


def auditor_permissions(subjects: Subjects) -> Permissions:
    inbox = inbox_for(subjects, "auditor")
    return _reader(subjects, read_models(subjects), [subjects.releases_stream], (f"{inbox}.>",), inbox)


def role_permissions(subjects: Subjects, role: str) -> Permissions:
    builders = {
        "service": service_permissions,
        "producer": producer_permissions,
        "runtime": runtime_permissions,
        "operator": operator_permissions,
        "auditor": auditor_permissions,
    }
    if role not in builders:
        raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    return builders[role](subjects)


# ---- credentials -----------------------------------------------------------------------------
def user_name(subjects: Subjects, role: str) -> str:
    return f"{subjects.prefix}-{role}"


def new_credentials(subjects: Subjects, role: str) -> Credentials:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    return Credentials(
        role=role,
        prefix=subjects.prefix,
        user=user_name(subjects, role),
        password=secrets.token_urlsafe(24),
        inbox_prefix=inbox_for(subjects, role),
    )


def url_with_user(server_url: str, user: str, password: str) -> str:
    parts = urlsplit(server_url if "://" in server_url else f"nats://{server_url}")
    host = parts.hostname or "127.0.0.1"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme or "nats", netloc, "", "", ""))


def creds_dir(data_dir: Path) -> Path:
    return data_dir / "creds"


def creds_path(data_dir: Path, role: str) -> Path:
    """A role's file (`service`, ...) or a runtime's own (`runtime-<id>`)."""
    return creds_dir(data_dir) / f"{role}.json"


def runtime_creds_path(data_dir: Path, runtime_id: str) -> Path:
    return creds_path(data_dir, f"runtime-{check_token(runtime_id, 'runtime_id')}")


def write_credentials(data_dir: Path, creds: Credentials) -> Path:
    """(Re)write one role's credentials, readable by the owner only (0600, atomically)."""
    directory = creds_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    path = creds_path(data_dir, creds.name)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(creds.to_document(), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def new_runtime_credentials(subjects: Subjects, runtime_id: str, server_url: str | None = None) -> Credentials:
    """One runtime's own user: publishes health under its own id only, replies on its own inbox."""
    rid = check_token(runtime_id, "runtime_id")
    creds = Credentials(
        role="runtime",
        prefix=subjects.prefix,
        user=f"{user_name(subjects, 'runtime')}-{rid}",
        password=secrets.token_urlsafe(24),
        inbox_prefix=inbox_for(subjects, "runtime", rid),
        runtime_id=rid,
    )
    return creds.with_server(server_url) if server_url else creds


def runtime_credentials(data_dir: Path, subjects: Subjects) -> list[Credentials]:
    """Every runtime's own credentials under creds/ (`runtime-<id>.json`) of this prefix, by id."""
    out = []
    for path in sorted(creds_dir(data_dir).glob("runtime-*.json")):
        try:
            creds = read_credentials(path)
        except ValueError:
            continue  # not ours to render: a broken file gets no user
        if creds.runtime_id and creds.prefix == subjects.prefix and path.name == f"runtime-{creds.runtime_id}.json":
            out.append(creds)
    return out


def read_credentials(path: Path) -> Credentials:
    """A credentials file; ValueError (with the reason) if it is missing or not one."""
    return Credentials.from_document(read_credentials_document(path))


def env_credentials(env: dict | None = None) -> Credentials | None:
    """The credentials file that KX_NATS_CREDS names, if set (compose hands each process its
    own: its URL carries the user, its inbox prefix is the one that user may receive on).
    ValueError with the reason if it cannot be used."""
    found = env_credentials_document(env)
    return Credentials.from_document(found[1]) if found else None


def inbox_for_url(url: str | list[str]) -> str | None:
    """The inbox prefix of the KX_NATS_CREDS credentials when `url` is theirs, else None."""
    try:
        creds = env_credentials()
    except ValueError:
        return None  # reported where the URL was read (Settings.from_env)
    return creds.inbox_prefix if creds is not None and url == creds.url else None


def ensure_credentials(data_dir: Path, subjects: Subjects, server_url: str | None = None) -> dict[str, Credentials]:
    """Every role's credentials under `data_dir/creds`: kept if present (same prefix), else created.

    With `server_url`, each file's `url` is (re)written for that server.
    """
    out: dict[str, Credentials] = {}
    for role in ROLES:
        path = creds_path(data_dir, role)
        stored: Credentials | None = None
        if path.exists():
            try:
                stored = read_credentials(path)
            except ValueError:
                stored = None  # unreadable: replace it
            if stored is not None and (stored.prefix != subjects.prefix or stored.role != role):
                stored = None  # another installation's file: replace it
        if stored is None:
            creds = new_credentials(subjects, role)
        else:
            creds = Credentials(
                role, stored.prefix, stored.user, stored.password, inbox_for(subjects, role), stored.url
            )
        if server_url is not None:
            creds = creds.with_server(server_url)
        if stored is None or creds != stored or not _private(path):
            write_credentials(data_dir, creds)
        out[role] = creds
    for creds in runtime_credentials(data_dir, subjects):  # `kxr creds runtime add ID`: kept as they are, URL aside
        moved = creds.with_server(server_url) if server_url is not None else creds
        if moved != creds:
            write_credentials(data_dir, moved)
        out[moved.name] = moved
    return out


def _private(path: Path) -> bool:
    try:
        return (path.stat().st_mode & 0o077) == 0
    except OSError:
        return False


# ---- nats-server configuration -----------------------------------------------------------------
def _q(text: str) -> str:
    return json.dumps(text)  # a double-quoted string nats-server's parser reads literally ($ included)


def _subject_list(key: str, subjects: tuple[str, ...], indent: str) -> list[str]:
    body = [f"{indent}  {_q(x)}" + ("," if i < len(subjects) - 1 else "") for i, x in enumerate(subjects)]
    return [f"{indent}{key}: [", *body, f"{indent}]"]


def render_users(
    creds: dict[str, Credentials] | list[Credentials],
    subjects: Subjects,
    indent: str = "    ",
    runtime_identity: str = "shared",
) -> str:
    """The `users` entries (without brackets) for these credentials."""
    items = creds.values() if isinstance(creds, dict) else creds
    out: list[str] = []
    for c in items:
        perms = c.permissions(subjects, runtime_identity)
        i2, i3, i4 = indent + "  ", indent + "    ", indent + "      "
        publish = _subject_list("allow", perms.publish, i4)
        if perms.publish_deny:
            publish += _subject_list("deny", perms.publish_deny, i4)
        out += [
            f"{indent}# {c.name}: inbox prefix {c.inbox_prefix}",
            f"{indent}{{",
            f"{i2}user: {_q(c.user)}",
            f"{i2}password: {_q(c.password)}",
            f"{i2}permissions: {{",
            f"{i3}publish: {{",
            *publish,
            f"{i3}}}",
            f"{i3}subscribe: {{",
            *_subject_list("allow", perms.subscribe, i4),
            f"{i3}}}",
            f"{i2}}}",
            f"{indent}}}",
        ]
    return "\n".join(out)


def render_authorization(
    creds: dict[str, Credentials] | list[Credentials], subjects: Subjects, runtime_identity: str = "shared"
) -> str:
    """An `authorization { users [...] }` block for a server whose users live in the default account."""
    return (
        f"# Konnaxion Releases (prefix {subjects.prefix!r}): one user per role, least privilege.\n"
        f"# Generated by kxr; see docs/permissions.md.\n"
        "authorization {\n"
        "  users: [\n"
        f"{render_users(creds, subjects, runtime_identity=runtime_identity)}\n"
        "  ]\n"
        "}\n"
    )


@dataclass(frozen=True)
class AccountLimits:
    """Limits of the embedded server's one account (every role's user lives in it).

    They bound what any user, whatever its permissions, can make the server hold.

    JetStream: consumers per stream (each costs memory and start-up time: 10^4 durables took a
    server from 124 to 499 MiB and over 10 s to start) and streams. `max_consumers` applies to
    every stream (the lower of it and the stream's own `max_consumers`); one consumer per
    running runtime and a few per `kxr` command is the budget, so raise it for more runtimes.
    Stored bytes are bounded by the server's own limits (`max_mem`/`max_file` -1: 75% of the
    machine's memory, and of the store's disk up to 1 TB): nats-server refuses to start at all
    if an account asks for more than the machine has, so a fixed figure would stop embedded
    `kxr serve` on a small disk. Set them (e.g. "1G", "64G") to bound one deployment below that.

    Core NATS (one runtime user held 100,000 subscriptions on its own inbox: 19 -> 441 MiB):
    - `max_subscriptions`, per connection. The service's connection holds the most: about 20 of
      its own (durables, readers, advisories, replies) plus one per scope whose monitoring window
      is open or about to open (the monitor's live health feed): 1,016 with bench.throughput's
      1,000 scopes in flight. A runtime holds 3, a `kxr` command a few. Past it the server refuses
      the subscription ("maximum subscriptions exceeded", and nats-py then closes that
      connection), so it is sized for the service: room for about 16,000 scopes in flight.
    - `max_connections`, for the account: each runtime holds one (bench.fan_out's and
      bench.rollback's 1,000 runtimes hold 1,000), `kxr serve` one per process and a short-lived
      probe, a dashboard one and one per signed-in operator, a `kxr` command one while it runs.
      The default is the fleet `max_consumers` lets follow the log (one consumer per runtime)
      and 1,024 more; past it the server refuses the connection. Raise both for a larger fleet.
    - `max_payload`, the server's (clients learn it when they connect and refuse a larger publish
      themselves): 1 MiB, nats-server's default and the dead letters' cap (their stream's
      `max_msg_size`), the largest message any role publishes (the log takes 256 KiB, health
      64 KiB, pack and snapshot chunks are 128 KiB).
    The first two are settings (`LIMIT_ENV`, read by `from_env`). One user can hold at most
    `max_connections` x `max_subscriptions` subscriptions: bounded, not small (nats-server's
    configuration file has no per-user limits; its operator/JWT mode has).
    """

    max_consumers: int = 4096
    max_streams: int = 16
    max_mem: str = "-1"
    max_file: str = "-1"
    max_connections: int = 4096 + 1024
    max_subscriptions: int = 16384
    max_payload: int = 1024 * 1024
    # How long KX keeps the way back for an answer to a role's API request that has not ended: a request
    # crossing the `$JS.API.>` import (answers as a stream) leaves a mapping in KX (~0.7 KB) until its
    # answers end, and a direct get's single answer has no end marker, so each stays this long after
    # its last answer (up to twice: the server sweeps once a threshold). nats-server's default, 2 min,
    # let one runtime flooding direct gets hold gigabytes; what a flood holds is its rate times this.
    # Above the longest quiet a live read has between answers: its pull's heartbeats (1 s for the
    # service's readers and `kxr`, 2 s for a runtime's: RUNTIME_HEARTBEAT_S) renew the mapping.
    response_threshold_s: float = 5.0

    def render(self, indent: str) -> str:
        """KX's limits (inside its block): JetStream's and core NATS'; `max_payload` is the server's
        (`render_server_config`)."""
        return (
            f"{indent}jetstream: {{ max_mem: {self.max_mem}, max_file: {self.max_file}, "
            f"max_streams: {self.max_streams}, max_consumers: {self.max_consumers} }}\n" + self.render_core(indent)
        )

    def render_core(self, indent: str) -> str:
        """A role account's limits: core NATS only (it has no JetStream of its own: a role account
        with JetStream would answer its users' API requests itself, "stream not found")."""
        connections, subscriptions = self.max_connections, self.max_subscriptions
        return f"{indent}limits: {{ max_connections: {connections}, max_subscriptions: {subscriptions} }}"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AccountLimits:
        """The defaults, with each of `LIMIT_ENV` that is set: a whole number, at least its minimum
        (`LIMIT_MINIMUM`); ValueError naming the variable otherwise (`kxr serve` says it in one line)."""
        given: dict[str, Any] = {}  # whole numbers, for fields some of which are strings
        for name, variable in LIMIT_ENV.items():
            text = (env.get(variable) or "").strip()
            if not text:
                continue
            try:
                value = int(text)
            except ValueError:
                raise ValueError(f"{variable}={text!r}: a whole number") from None
            if value < LIMIT_MINIMUM[name]:
                raise ValueError(f"{variable}={value}: at least {LIMIT_MINIMUM[name]} ({LIMIT_WHY[name]})")
            given[name] = value
        return replace(cls(), **given)

    @classmethod
    def from_document(cls, doc: object) -> AccountLimits:
        """What `write_account_limits` wrote; ValueError if it is not that."""
        defaults = cls()
        if not isinstance(doc, dict) or set(doc) - {f.name for f in fields(cls)}:
            raise ValueError("not an account limits document")
        for key, value in doc.items():
            expected = type(getattr(defaults, key))
            if type(value) is not expected:
                raise ValueError(f"account limit {key}: {value!r} is not a {expected.__name__}")
        return replace(defaults, **doc)


# The limits an embedded `kxr serve` takes from its environment (docs/permissions.md "Limits").
LIMIT_ENV = {"max_connections": "KX_NATS_MAX_CONNECTIONS", "max_subscriptions": "KX_NATS_MAX_SUBSCRIPTIONS"}
LIMIT_MINIMUM = {"max_connections": 8, "max_subscriptions": 64}
LIMIT_WHY = {
    "max_connections": "kxr serve, its probe, a dashboard and a few kxr commands",
    "max_subscriptions": "the service's connection alone holds about 20",
}


def account_limits_path(data_dir: Path) -> Path:
    return data_dir / "account-limits.json"


def write_account_limits(data_dir: Path, limits: AccountLimits) -> None:
    """Kept under the data dir, as the runtime identity is: `kxr creds runtime add` re-renders the
    running server's configuration with the limits it was started with, whatever its own environment."""
    data_dir.mkdir(parents=True, exist_ok=True)
    account_limits_path(data_dir).write_text(json.dumps(asdict(limits), indent=2) + "\n")


def read_account_limits(data_dir: Path) -> AccountLimits:
    """The limits embedded `kxr serve` last rendered its server with (the defaults if never written);
    ValueError if the file is not what `write_account_limits` writes."""
    path = account_limits_path(data_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return AccountLimits()
    try:
        return AccountLimits.from_document(json.loads(text))
    except (json.JSONDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None


ACCOUNT = "KX"  # owns JetStream (the store's directory is named after it) and holds the service's user


def write_server_config(path: Path, text: str) -> Path:
    """The config holds passwords: 0600, replaced atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def redacted(url: str) -> str:
    """A URL (or comma-separated URLs) fit for logs: any password replaced by `***`."""
    if "," in url:
        return ",".join(redacted(u.strip()) for u in url.split(","))
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


__all__ = [
    "ACCOUNT",
    "AccountLimits",
    "KXR_ROLES",
    "LIMIT_ENV",
    "account_limits_path",
    "inbox_for_user",
    "read_account_limits",
    "write_account_limits",
    "Credentials",
    "Permissions",
    "ROLES",
    "RUNTIME_IDENTITY_MODES",
    "SERVICE_DURABLES",
    "new_runtime_credentials",
    "read_runtime_identity",
    "write_runtime_identity",
    "janitor_streams",
    "runtime_credentials",
    "runtime_creds_path",
    "service_durable_denials",
    "auditor_permissions",
    "creds_path",
    "ensure_credentials",
    "inbox_for",
    "new_credentials",
    "operator_permissions",
    "producer_permissions",
    "read_credentials",
    "redacted",
    "render_authorization",
    "render_users",
    "role_permissions",
    "runtime_permissions",
    "service_permissions",
    "user_name",
    "write_credentials",
    "write_server_config",
]
