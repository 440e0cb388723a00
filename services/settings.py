"""Configuration from the environment and flags (CONTRACT §9)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from events.canonical import StrictJSONError, loads_strict
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
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        """KX_NATS_URL, else the URL of the credentials file KX_NATS_CREDS names (services/permissions.py)."""
        env = os.environ
        values: dict[str, Any] = {  # typed by the dataclass; overrides come from the CLI
            "nats_url": env.get("KX_NATS_URL") or _creds_url(),
            "prefix": env.get("KX_PREFIX", "kx"),
            "data_dir": Path(env.get("KX_DATA_DIR", ".kx-data")),
            "trust_root_path": Path(env["KX_TRUST_ROOT"]) if env.get("KX_TRUST_ROOT") else None,
            "service_key_path": Path(env["KX_SERVICE_KEY"]) if env.get("KX_SERVICE_KEY") else None,
            "service_keys_path": Path(env["KX_SERVICE_KEYS"]) if env.get("KX_SERVICE_KEYS") else None,
            "replicas": parse_replicas(env.get("KX_REPLICAS") or "1"),
            "ack_wait_s": parse_seconds("KX_ACK_WAIT", env.get("KX_ACK_WAIT") or "30"),
            "metrics_addr": env.get("KX_METRICS_ADDR") or None,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def parse_seconds(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.1 <= value <= 3600:
        raise ConfigError(f"{name} must be a number of seconds from 0.1 to 3600, not {raw!r}")
    return value


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
    from events.service_signing import ServiceKeys

    if path is None:
        return None
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


def _creds_url() -> str | None:
    try:
        found = env_credentials_document()
    except ValueError as exc:
        raise ConfigError(f"KX_NATS_CREDS: {exc}") from None
    return found[1]["url"] if found else None
