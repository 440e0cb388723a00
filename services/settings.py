"""Configuration from the environment and flags (CONTRACT §9)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from events.canonical import StrictJSONError, loads_strict

if TYPE_CHECKING:  # cryptography is loaded by what verifies: `kxr status` from the read models needs none
    from events.signing import TrustRoot

ROLES = ("preparer", "distributor", "verifier", "activator", "monitor", "promoter", "notifier", "guard")


class ConfigError(ValueError):
    """Bad configuration: `kxr` prints it as one line and exits non-zero."""


@dataclass(frozen=True)
class Settings:
    nats_url: str | None = None
    prefix: str = "kx"
    data_dir: Path = Path(".kx-data")
    trust_root_path: Path | None = None
    service_key_path: Path | None = None  # this process's signing key (KX_SERVICE_KEY)
    service_keys_path: Path | None = None  # public service keys and their roles (KX_SERVICE_KEYS)
    roles: tuple[str, ...] = ROLES
    verify_timeout_s: float = 30.0
    health_max_age_s: float = 7 * 24 * 3600
    replicas: int = 1  # JetStream replicas of every stream and bucket created (KX_REPLICAS; 3 on a cluster)
    ack_wait_s: float = 30.0  # how long a fetched message may stay unacked before redelivery (KX_ACK_WAIT)
    metrics_addr: str | None = None  # HOST:PORT for Prometheus' /metrics (KX_METRICS_ADDR; off when unset)
    metrics_log: bool = True  # /metrics has the log-derived series (KX_METRICS_LOG; off: in all processes but one)
    # the Prometheus a channel's `monitoring.prometheus` queries when it names no url (KX_PROMETHEUS_URL)
    prometheus_url: str | None = None
    # the dashboard's public origin behind a proxy (`kxr serve --ui-origin`, `kxr ui --origin`; checked by
    # services/dashboard/server.parse_origin); None: browsers reach it at the address it binds
    ui_origin: str | None = None
    # webhooks may go to loopback, link-local and private addresses (KX_WEBHOOK_ALLOW_PRIVATE=1): off, the
    # notifier posts to public addresses only, so a channel's sink cannot reach into the service's network
    webhook_allow_private: bool = False
    # a release's next steps decided at once when their consumers run in the same process, stored in one
    # atomic batch (KX_FAST_PATH=off: one step per delivery; services/consumers/fast_path.py)
    fast_path: bool = True
    extra: dict = field(default_factory=dict)
    connection: Connection | None = None  # how to connect (connection_from); None: nats_url as it is

    @classmethod
    def from_env(
        cls, connection_flags: ConnectionFlags | None = None, use_selected_context: bool = False, **overrides
    ) -> Settings:
        """The environment, with the CLI's overrides; the connection from flags, environment and a
        `nats` context (`connection_from`): `nats_url` is the chosen URL as written (connect with
        `nats_connection()`, which carries the identity and TLS too, and prints no password)."""
        env = os.environ
        flags = connection_flags or ConnectionFlags()
        url = overrides.pop("nats_url", None)
        if url:
            flags = replace(flags, url=url)
        connection = connection_from(flags, env, use_selected_context=use_selected_context)
        values: dict[str, Any] = {  # typed by the dataclass; overrides come from the CLI
            "nats_url": connection.given_url,  # as written: code that connects with a bare URL keeps working
            "connection": connection,
            "prefix": env.get("KX_PREFIX", "kx"),
            "data_dir": Path(env.get("KX_DATA_DIR", ".kx-data")),
            "trust_root_path": Path(env["KX_TRUST_ROOT"]) if env.get("KX_TRUST_ROOT") else None,
            "service_key_path": Path(env["KX_SERVICE_KEY"]) if env.get("KX_SERVICE_KEY") else None,
            "service_keys_path": Path(env["KX_SERVICE_KEYS"]) if env.get("KX_SERVICE_KEYS") else None,
            "replicas": parse_replicas(env.get("KX_REPLICAS") or "1"),
            "ack_wait_s": parse_seconds("KX_ACK_WAIT", env.get("KX_ACK_WAIT") or "30"),
            "metrics_addr": env.get("KX_METRICS_ADDR") or None,
            "metrics_log": parse_switch("KX_METRICS_LOG", env.get("KX_METRICS_LOG") or "on"),
            "prometheus_url": env.get("KX_PROMETHEUS_URL") or None,
            "webhook_allow_private": parse_allow(ALLOW_PRIVATE_ENV, env.get(ALLOW_PRIVATE_ENV) or "0"),
            "fast_path": parse_switch("KX_FAST_PATH", env.get("KX_FAST_PATH") or "on"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def nats_connection(self) -> Connection:
        """The connection to use: the resolved one, or one for `nats_url` as given (settings built in code)."""
        if self.connection is not None and self.connection.given_url == self.nats_url:
            return self.connection
        if not self.nats_url:
            return Connection()
        servers, identity = _url_layer(self.nats_url, "the NATS URL")
        return Connection(url=servers, identity=identity)


def parse_seconds(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.1 <= value <= 3600:
        raise ConfigError(f"{name} must be a number of seconds from 0.1 to 3600, not {raw!r}")
    return value


def parse_switch(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value not in ("on", "off"):
        raise ConfigError(f"{name} takes on or off, not {raw!r}")
    return value == "on"


ALLOW_PRIVATE_ENV = "KX_WEBHOOK_ALLOW_PRIVATE"


def parse_allow(name: str, raw: str) -> bool:
    """A permission that is off unless the deployment says `1` (or `on`); anything else is a typo, never a yes."""
    value = raw.strip().lower()
    if value not in ("1", "on", "0", "off"):
        raise ConfigError(f"{name} takes 1 or 0, not {raw!r}")
    return value in ("1", "on")


def parse_replicas(raw: str) -> int:
    """KX_REPLICAS: how many copies JetStream keeps of each stream (1..5, JetStream's own limit)."""
    try:
        value = int(raw.strip())
    except ValueError:
        value = 0
    if not 1 <= value <= 5:
        raise ConfigError(f"KX_REPLICAS must be an integer from 1 to 5 (3 on a 3-node cluster), not {raw!r}")
    return value


def parse_roles(only: str | None) -> tuple[str, ...]:
    if not only:
        return ROLES
    roles = tuple(r.strip() for r in only.split(",") if r.strip())
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        raise ConfigError(
            f"--only takes a comma-separated subset of {','.join(ROLES)}; unknown: {','.join(unknown) or '(empty)'}"
        )
    return roles


def load_trust_root(path: Path | None) -> TrustRoot:
    from events.signing import TrustRoot

    if path is None:
        raise ConfigError(
            "no trust root: set KX_TRUST_ROOT or pass --trust-root (the verifier never trusts keys from a pack)"
        )
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read trust root {path}: {exc.strerror}") from None
    try:
        return TrustRoot.from_document(loads_strict(raw, max_bytes=1024 * 1024))
    except (StrictJSONError, ValueError) as exc:
        raise ConfigError(f"trust root {path} is invalid: {exc}") from None


def load_service_keys(path: Path | None):
    """The public keys auditors and runtimes trust for each service role (None: not configured)."""
    if path is None:
        return None
    from events.service_signing import ServiceKeys

    try:
        return ServiceKeys.from_document(loads_strict(path.read_bytes(), max_bytes=1024 * 1024))
    except OSError as exc:
        raise ConfigError(f"cannot read service keys {path}: {exc.strerror}") from None
    except (StrictJSONError, ValueError) as exc:
        raise ConfigError(f"service keys {path} are invalid: {exc}") from None


def service_signing_key(settings: Settings):
    """This process's signing key: KX_SERVICE_KEY, else one kept under KX_DATA_DIR (created once).

    Beside a created key, `service-keys.json` lists its public half for every role, ready
    to hand to auditors (KX_SERVICE_KEYS) and runtimes. Processes sharing a data directory
    share the key: the first creates it (atomically), the others read it.
    """
    import json
    import time

    from events.service_signing import ServiceKeys
    from events.signing import SigningKey

    from .keyfiles import write_secret

    path = settings.service_key_path or settings.data_dir / "service.key.json"
    if settings.service_key_path is not None and not path.exists():
        raise ConfigError(f"service key {path} does not exist (create it with: kxr keys generate {path})")
    if not path.exists():
        key = SigningKey.generate()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_secret(path, json.dumps(key.to_file_dict("kxr-serve"), indent=2) + "\n")
            (path.parent / "service-keys.json").write_text(
                json.dumps(ServiceKeys.of(key, list(ROLES)).to_document(), indent=2) + "\n"
            )
            return key
        except FileExistsError:
            pass  # another process sharing the data directory created it first: read theirs
        except OSError as exc:
            raise ConfigError(f"cannot create service key {path}: {exc.strerror}") from None
    for _ in range(50):  # the creator may still be writing it
        try:
            return SigningKey.from_file_dict(loads_strict(path.read_bytes()))
        except (StrictJSONError, KeyError, ValueError):
            time.sleep(0.02)
        except OSError as exc:
            raise ConfigError(f"cannot read service key {path}: {exc.strerror}") from None
    raise ConfigError(f"service key {path} is unusable (not a key file)")


def service_keys_for(settings: Settings, signer, roles: tuple[str, ...] | None = None):
    """The service keys a service process trusts in its own fold (trust only signed state).

    KX_SERVICE_KEYS when set: every process of a deployment then trusts the same keys, and
    this process's own key must be among them for each role it runs (else its own appends
    would count for nothing: refused as bad configuration). Unset: this process's key, for
    every role (one `kxr serve`, or processes sharing a data directory and so a key).
    None without a signing key: a process that signs nothing trusts nothing (tests, tools).
    """
    from events.service_signing import ServiceKeys

    keys = load_service_keys(settings.service_keys_path)
    if keys is None:
        return ServiceKeys.of(signer, list(ROLES)) if signer is not None else None
    if signer is not None:
        own = keys.keys.get(signer.keyid)
        missing = sorted(set(roles or settings.roles) - (own.roles if own else frozenset()))
        if missing:
            raise ConfigError(
                f"service keys {settings.service_keys_path} do not trust this process's key "
                f"{signer.keyid[:16]} for {', '.join(missing)}: its own appends would be ignored"
            )
    return keys


def reader_service_keys(settings: Settings):
    """The service keys a reading tool (`kxr status`, `kxr ui`, operator actions) checks signatures with:
    KX_SERVICE_KEYS, else the `service-keys.json` a `kxr serve` sharing KX_DATA_DIR wrote beside its key,
    else None (signatures unchecked; said so where it shows)."""
    path = settings.service_keys_path
    if path is None and (settings.data_dir / "service-keys.json").is_file():
        path = settings.data_dir / "service-keys.json"
    return load_service_keys(path)


CREDS_ENV = "KX_NATS_CREDS"


def read_credentials_document(path: Path) -> dict:
    """A credentials file's JSON object (services/permissions.py types it); ValueError with the reason."""
    import json

    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read credentials {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"credentials {path} are not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"credentials {path} are not a JSON object")
    return doc


def env_credentials_document(env=None) -> tuple[str, dict] | None:
    """(path, object) of the credentials file KX_NATS_CREDS names, if set; ValueError if it cannot
    be used (unreadable, or naming no server yet). Config reads it for the URL; permissions types it."""
    path = (os.environ if env is None else env).get(CREDS_ENV)
    if not path:
        return None
    doc = read_credentials_document(Path(path))
    if not doc.get("url"):
        raise ValueError(f"credentials {path} ({CREDS_ENV}) name no server yet (kxr creds init --server URL)")
    return path, doc


# ---- connections: where NATS is and who we are there ----------------------------------------
# One place turns flags, environment and a `nats` CLI context into the options of one NATS
# connection (`connection_from`); every kxr command, `kxr serve`, `kxr ui` and `kxr runtime
# simulate` connect with what it returns (services/jetstream/client.py `connect_with`).
#
# Three layers, the first that says something wins, per field: the flags (`--nats-url`, and the
# root options `kxr --creds F --context N --tls-ca …`), the environment (KX_NATS_URL, KX_CREDS,
# KX_NATS_CREDS, KX_TLS_CA/CERT/KEY), the context (--context / KX_CONTEXT, else the `nats` CLI's
# selected one for commands that need a server). The fields are: the servers; the identity (user
# and password, a token, a NATS .creds file or an NKey seed, with the inbox prefix that user may
# receive on: one whole, never a user of one layer with the password of another); the CA; the
# client certificate with its key (a pair).

CONNECTION_ENV = ("KX_NATS_URL", "KX_CREDS", "KX_NATS_CREDS", "KX_CONTEXT", "KX_TLS_CA", "KX_TLS_CERT", "KX_TLS_KEY")
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"  # a context that names no server (the nats CLI's default)
# context fields kxr does not act on: set to anything but empty, they stop the command (never ignored)
_UNSUPPORTED_CONTEXT_FIELDS = (
    "nsc",
    "user_jwt",
    "user_seed",
    "jetstream_domain",
    "jetstream_api_prefix",
    "jetstream_event_prefix",
    "socks_proxy",
    "windows_cert_store",
    "windows_cert_match_by",
    "windows_cert_match",
    "windows_ca_certs_match",
)
_CONTEXT_STRINGS = ("description", "url", "token", "user", "password", "creds", "nkey", "cert", "key", "ca")


@dataclass(frozen=True)
class ConnectionFlags:
    """What the command line says (None: not given)."""

    url: str | None = None
    creds: Path | None = None
    context: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None


@dataclass(frozen=True)
class Identity:
    """Who we are on NATS: one of user+password, token, NATS .creds file, NKey seed file (with the
    inbox prefix that user may receive replies on, when it has its own)."""

    origin: str  # where it came from, for messages: "--creds ops.json", "context 'prod'", "KX_NATS_URL"
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds_file: Path | None = None
    nkey_file: Path | None = None
    inbox_prefix: str | None = None


@dataclass(frozen=True)
class Connection:
    """The resolved options of one NATS connection. `url` holds no password (safe to print);
    `given_url` is the chosen URL as it was written (a password in it included), for code that
    still connects with a bare URL (Settings.nats_url)."""

    url: str | None = None
    given_url: str | None = None
    identity: Identity | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_first: bool = False

    @property
    def inbox_prefix(self) -> str | None:
        return self.identity.inbox_prefix if self.identity else None

    @property
    def user(self) -> str | None:
        return self.identity.user if self.identity else None

    def describe(self) -> str:
        """`nats://host:4222 as kx-operator (--creds operator.json)`: for messages, never a secret."""
        who = ""
        if self.identity is not None:
            i = self.identity
            name = i.user or (f"creds {i.creds_file}" if i.creds_file else "nkey" if i.nkey_file else "token")
            who = f" as {name} ({i.origin})"
        return f"{self.url}{who}"

    def connect_options(self) -> dict:
        """Keyword arguments for `nats.connect` besides the servers; ConfigError if a file is unusable."""
        out: dict[str, Any] = {}
        i = self.identity
        if i is not None:
            if i.user is not None:
                out["user"], out["password"] = i.user, i.password or ""
            if i.token is not None:
                out["token"] = i.token
            if i.creds_file is not None:
                out["user_credentials"] = str(_readable(i.creds_file, "NATS credentials"))
            if i.nkey_file is not None:
                out["nkeys_seed"] = str(_readable(i.nkey_file, "NKey seed"))
            if i.inbox_prefix:
                out["inbox_prefix"] = i.inbox_prefix
        tls = self.tls_context()
        if tls is not None:
            out["tls"] = tls
            out["tls_handshake_first"] = self.tls_first
        return out

    def tls_context(self):
        """An SSLContext for the CA and the client certificate, or None when neither is set."""
        import ssl

        if self.tls_ca is None and self.tls_cert is None:
            return None
        try:
            context = ssl.create_default_context(
                cafile=str(_readable(self.tls_ca, "TLS CA")) if self.tls_ca is not None else None
            )
        except ssl.SSLError as exc:
            raise ConfigError(f"TLS CA {self.tls_ca} is not a PEM certificate: {exc.reason or exc}") from None
        if self.tls_cert is not None:
            cert = _readable(self.tls_cert, "TLS client certificate")
            key = _readable(self.tls_key, "TLS client key") if self.tls_key is not None else None
            try:
                context.load_cert_chain(str(cert), str(key) if key else None)
            except ssl.SSLError as exc:
                raise ConfigError(
                    f"TLS client certificate {cert} and key {key} do not load: {exc.reason or exc}"
                ) from None
        return context


def _readable(path: Path, what: str) -> Path:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    return path


@dataclass(frozen=True)
class _Layer:
    url: str | None = None  # servers the layer names itself
    fallback_url: str | None = None  # the server a credentials file of the layer names
    identity: Identity | None = None
    tls_ca: Path | None = None
    tls_pair: tuple[Path, Path | None] | None = None
    tls_first: bool = False
    given_url: str | None = None  # url and fallback_url as written (with any password)
    given_fallback: str | None = None


def split_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """`nats://u:p@h:1,nats://h2:1` -> (`nats://h:1,nats://h2:1`, u, p): the first user named wins."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    servers, user, password = [], None, None
    for raw in (u.strip() for u in url.split(",")):
        if not raw:
            continue
        parts = urlsplit(raw if "://" in raw else f"nats://{raw}")
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(f"NATS URL {_redact(raw)} has a port that is not a number") from None
        if parts.username is not None and user is None:
            user = unquote(parts.username)
            password = unquote(parts.password) if parts.password is not None else None
        host = parts.hostname or "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        servers.append(urlunsplit((parts.scheme or "nats", host + (f":{port}" if port else ""), "", "", "")))
    if not servers:
        raise ConfigError(f"NATS URL {url!r} names no server")
    return ",".join(servers), user, password


def _redact(url: str) -> str:
    at = url.rfind("@")
    return url if at < 0 else url[: url.find("://") + 3 if "://" in url else 0] + "***" + url[at:]


def _url_layer(url: str | None, origin: str) -> tuple[str | None, Identity | None]:
    if not url:
        return None, None
    servers, user, password = split_userinfo(url)
    if user is None:
        return servers, None
    if password is None:  # `nats://TOKEN@host`: a token, as every NATS client reads it
        return servers, Identity(origin, token=user)
    return servers, Identity(origin, user=user, password=password)


def read_creds_file(path: Path, origin: str) -> tuple[str | None, Identity, str | None]:
    """A credentials file: the NATS ecosystem's `.creds` (user JWT + NKey seed, from nsc or a NATS
    operator), or kxr's own JSON per role (`kxr creds show ROLE --json`: url, user, password, inbox
    prefix). Returns (the server it names, if any; the identity; that server's URL as written, with
    the password kxr's files put in it). ConfigError with the reason."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read credentials {path} ({origin}): {exc.strerror}") from None
    if b"-----BEGIN NATS USER JWT-----" in raw:
        return None, Identity(origin, creds_file=path), None
    try:
        doc = read_credentials_document(path)
    except ValueError as exc:
        raise ConfigError(
            f"{exc} ({origin}): expected a NATS .creds file or kxr's credentials JSON (kxr creds show ROLE --json)"
        ) from None
    user, password = doc.get("user"), doc.get("password")
    if not isinstance(user, str) or not isinstance(password, str):
        raise ConfigError(f"credentials {path} ({origin}) name no user and password")
    inbox = doc.get("inbox_prefix")
    url = doc.get("url")
    servers = split_userinfo(url)[0] if isinstance(url, str) and url else None
    identity = Identity(origin, user=user, password=password, inbox_prefix=inbox if isinstance(inbox, str) else None)
    return servers, identity, url if servers else None


def _creds_layer_part(path: Path | None, origin: str) -> tuple[str | None, Identity | None, str | None]:
    return read_creds_file(path, origin) if path is not None else (None, None, None)


def _tls_pair(cert: Path | None, key: Path | None, where: str) -> tuple[Path, Path | None] | None:
    if cert is None and key is None:
        return None
    if cert is None:
        raise ConfigError(f"a TLS client key without its certificate ({where}): give both")
    return cert, key


def _flag_layer(flags: ConnectionFlags) -> _Layer:
    url, url_id = _url_layer(flags.url, "--nats-url")
    creds_url, creds_id, creds_given = _creds_layer_part(flags.creds, f"--creds {flags.creds}")
    return _Layer(
        url,
        creds_url,
        creds_id or url_id,
        flags.tls_ca,
        _tls_pair(flags.tls_cert, flags.tls_key, "--tls-cert/--tls-key"),
        given_url=flags.url,
        given_fallback=creds_given,
    )


def _env_path(env: Mapping[str, str], name: str) -> Path | None:
    return Path(env[name]) if env.get(name) else None


def _env_layer(env: Mapping[str, str]) -> _Layer:
    url, url_id = _url_layer(env.get("KX_NATS_URL"), "KX_NATS_URL")
    name = "KX_CREDS" if env.get("KX_CREDS") else CREDS_ENV  # KX_NATS_CREDS: the older name, for kxr's JSON
    path = _env_path(env, name)
    creds_url, creds_id, creds_given = _creds_layer_part(path, f"{name}={path}")
    if (
        name == CREDS_ENV
        and path is not None
        and creds_url is None
        and creds_id is not None
        and not creds_id.creds_file
    ):
        raise ConfigError(f"KX_NATS_CREDS: credentials {path} name no server yet (kxr creds init --server URL)")
    return _Layer(
        url,
        creds_url,
        creds_id or url_id,
        _env_path(env, "KX_TLS_CA"),
        _tls_pair(_env_path(env, "KX_TLS_CERT"), _env_path(env, "KX_TLS_KEY"), "KX_TLS_CERT/KX_TLS_KEY"),
        given_url=env.get("KX_NATS_URL") or None,
        given_fallback=creds_given,
    )


def nats_config_home(env: Mapping[str, str]) -> Path:
    """Where the `nats` CLI keeps its contexts: $XDG_CONFIG_HOME/nats, else ~/.config/nats."""
    base = env.get("XDG_CONFIG_HOME")
    return (Path(base) if base else Path(env.get("HOME") or Path.home()) / ".config") / "nats"


def selected_context(env: Mapping[str, str]) -> str | None:
    """The context `nats context select` chose (`context.txt`), or None."""
    try:
        name = (nats_config_home(env) / "context.txt").read_text().strip()
    except OSError:
        return None
    return name or None


def context_path(name: str, env: Mapping[str, str]) -> Path:
    """A context's file: NAME.json under the nats CLI's context directory, or NAME itself when it is
    a path to a .json file (as the nats CLI accepts)."""
    if name.endswith(".json") and ("/" in name or Path(name).is_file()):
        return Path(name)
    if not name or ".." in name or "/" in name or "\\" in name:
        raise ConfigError(f"invalid context name {name!r} (a name from `nats context ls`, or a path to a .json file)")
    return nats_config_home(env) / "context" / f"{name}.json"


def read_context(name: str, env: Mapping[str, str], origin: str) -> dict[str, Any]:
    """A `nats` CLI context file as a dict of the fields kxr uses; ConfigError (one line) if it is
    missing, not JSON, or asks for something kxr does not do (nsc, JetStream domains, …)."""
    import json

    path = context_path(name, env)
    try:
        raw = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"unknown context {name!r} ({origin}): no file {path} (nats context ls lists them)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read context {name!r} at {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"context {name!r} at {path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"context {name!r} at {path} is not a JSON object")
    used = [k for k in _UNSUPPORTED_CONTEXT_FIELDS if doc.get(k) not in (None, "", [], False)]
    if used:
        raise ConfigError(f"context {name!r} at {path} sets {', '.join(used)}, which kxr does not support")
    for key in (*_CONTEXT_STRINGS, "inbox_prefix"):
        if not isinstance(doc.get(key, ""), str):
            raise ConfigError(f"context {name!r} at {path}: {key} must be a string")
    if not isinstance(doc.get("tls_first", False), bool):
        raise ConfigError(f"context {name!r} at {path}: tls_first must be true or false")
    if len([k for k in ("user", "creds", "nkey") if doc.get(k)]) > 1:
        raise ConfigError(f"context {name!r} at {path} names more than one of user, creds, nkey: choose one")
    return doc


def _expand(path: str) -> Path:
    return Path(os.path.expandvars(path)).expanduser()


def _context_layer(name: str, env: Mapping[str, str], origin: str) -> _Layer:
    doc = read_context(name, env, origin)
    where = f"context {name!r}"
    url, url_id = _url_layer(doc.get("url") or DEFAULT_NATS_URL, where)
    inbox = doc.get("inbox_prefix") or None
    identity: Identity | None = None
    if doc.get("user"):
        identity = Identity(where, user=doc["user"], password=doc.get("password") or "", token=doc.get("token") or None)
    elif doc.get("creds"):
        _, identity, _ = read_creds_file(_expand(doc["creds"]), where)
    elif doc.get("nkey"):
        identity = Identity(where, nkey_file=_expand(doc["nkey"]), token=doc.get("token") or None)
    elif doc.get("token"):
        identity = Identity(where, token=doc["token"])
    identity = identity or url_id
    if identity is not None and inbox:
        identity = replace(identity, inbox_prefix=inbox)
    cert, key = (_expand(doc[k]) if doc.get(k) else None for k in ("cert", "key"))
    return _Layer(
        url,
        None,
        identity,
        _expand(doc["ca"]) if doc.get("ca") else None,
        _tls_pair(cert, key, where),
        bool(doc.get("tls_first")),
        given_url=url,
    )


def connection_from(
    flags: ConnectionFlags = ConnectionFlags(),
    env: Mapping[str, str] | None = None,
    *,
    use_selected_context: bool = False,
) -> Connection:
    """The connection the flags, the environment and a context describe (precedence in that order,
    field by field). `use_selected_context`: when nothing else names a server, the `nats` CLI's
    selected context does (commands that need a server; not `kxr serve`, which then embeds one)."""
    env = os.environ if env is None else env
    layers = [_flag_layer(flags), _env_layer(env)]
    if flags.context:
        layers.append(_context_layer(flags.context, env, "--context"))
    elif env.get("KX_CONTEXT"):
        layers.append(_context_layer(env["KX_CONTEXT"], env, "KX_CONTEXT"))
    elif use_selected_context and not any(layer.url or layer.fallback_url for layer in layers):
        chosen = selected_context(env)
        if chosen:
            layers.append(_context_layer(chosen, env, "the nats CLI's selected context"))
    url, given = next(
        (
            (u, g)
            for layer in layers
            for u, g in ((layer.url, layer.given_url), (layer.fallback_url, layer.given_fallback))
            if u
        ),
        (None, None),
    )
    identity = next((layer.identity for layer in layers if layer.identity is not None), None)
    pair = next((layer.tls_pair for layer in layers if layer.tls_pair is not None), None)
    return Connection(
        url=url,
        given_url=given,
        identity=identity,
        tls_ca=next((layer.tls_ca for layer in layers if layer.tls_ca is not None), None),
        tls_cert=pair[0] if pair else None,
        tls_key=pair[1] if pair else None,
        tls_first=any(layer.tls_first for layer in layers),
    )
