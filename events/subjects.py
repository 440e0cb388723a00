"""Subject builders (CONTRACT §2, §4, §8). Every token is checked before use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from .tokens import check_token, is_token


class HealthParts(NamedTuple):
    """The tokens of a health subject `<prefix>.health.<env>.<channel>.<cohort>.<runtime_id>`."""

    env: str
    channel: str
    cohort: str
    runtime_id: str


class ScopeParts(NamedTuple):
    """The tokens of a scope event's subject `<prefix>.scope.<env>.<channel>.<cohort>.<suffix>`."""

    env: str
    channel: str
    cohort: str
    suffix: str


@dataclass(frozen=True)
class Subjects:
    prefix: str = "kx"

    def __post_init__(self) -> None:
        check_token(self.prefix, "subject prefix")

    # -- stream and bucket names -------------------------------------------------------------
    # With the default prefix `kx` these are the contract's names (KX_RELEASES, kx_packs, ...);
    # another prefix gets streams of its own, so installations (or test cases) can share a server.
    @property
    def releases_stream(self) -> str:
        return f"{self.prefix.upper()}_RELEASES"

    @property
    def health_stream(self) -> str:
        return f"{self.prefix.upper()}_HEALTH"

    @property
    def timers_stream(self) -> str:
        return f"{self.prefix.upper()}_TIMERS"

    @property
    def deadletter_stream(self) -> str:
        return f"{self.prefix.upper()}_DEADLETTER"

    @property
    def packs_bucket(self) -> str:
        return f"{self.prefix}_packs"

    @property
    def snapshots_bucket(self) -> str:
        return f"{self.prefix}_snapshots"

    @property
    def read_bucket(self) -> str:
        """The operator's read models (a KV bucket the service keeps: services/reads/projector.py)."""
        return f"{self.prefix}_read"

    # -- the release log --------------------------------------------------------------------
    def release(self, release_id: str, suffix: str) -> str:
        return f"{self.prefix}.release.{check_token(release_id, 'release_id')}.{check_token(suffix, 'event suffix')}"

    def release_filter(self, release_id: str) -> str:
        return f"{self.prefix}.release.{check_token(release_id, 'release_id')}.*"

    def notification(self, release_id: str, outcome: str) -> str:
        """Under the release, outside its lifecycle filter `release_filter` (one token deeper)."""
        return (
            f"{self.prefix}.release.{check_token(release_id, 'release_id')}"
            f".notification.{check_token(outcome, 'event suffix')}"
        )

    def notification_filter(self, release_id: str) -> str:
        return self.notification(release_id, "x").rsplit(".", 1)[0] + ".*"

    def scope(self, env: str, channel: str, cohort: str, suffix: str) -> str:
        return (
            f"{self.prefix}.scope.{check_token(env, 'env')}.{check_token(channel, 'channel')}"
            f".{check_token(cohort, 'cohort')}.{check_token(suffix, 'event suffix')}"
        )

    def scope_filter(self, env: str, channel: str, cohort: str) -> str:
        return self.scope(env, channel, cohort, "activated").rsplit(".", 1)[0] + ".*"

    def channel(self, env: str, channel: str) -> str:
        return f"{self.prefix}.channel.{check_token(env, 'env')}.{check_token(channel, 'channel')}.configured"

    def log_subjects(self) -> list[str]:
        return [f"{self.prefix}.release.>", f"{self.prefix}.scope.>", f"{self.prefix}.channel.>", self.trust_rotated()]

    def trust_rotated(self) -> str:
        return f"{self.prefix}.trust.rotated"

    def all_activations(self) -> str:
        return f"{self.prefix}.scope.*.*.*.activated"

    # -- telemetry ---------------------------------------------------------------------------
    def health(self, env: str, channel: str, cohort: str, runtime_id: str) -> str:
        return (
            f"{self.prefix}.health.{check_token(env, 'env')}.{check_token(channel, 'channel')}"
            f".{check_token(cohort, 'cohort')}.{check_token(runtime_id, 'runtime_id')}"
        )

    def health_cohort(self, env: str, channel: str, cohort: str) -> str:
        return (
            f"{self.prefix}.health.{check_token(env, 'env')}.{check_token(channel, 'channel')}"
            f".{check_token(cohort, 'cohort')}.*"
        )

    def health_runtime(self, env: str, channel: str, runtime_id: str) -> str:
        """Every cohort's subject of one runtime's reports on a channel."""
        return (
            f"{self.prefix}.health.{check_token(env, 'env')}.{check_token(channel, 'channel')}"
            f".*.{check_token(runtime_id, 'runtime_id')}"
        )

    def health_all(self) -> str:
        return f"{self.prefix}.health.>"

    # -- internal: timers and dead letters ---------------------------------------------------
    def timer_schedule(self, key: str) -> str:
        return f"{self.prefix}.timer.schedule.{key}"

    def timer_fire(self, key: str) -> str:
        return f"{self.prefix}.timer.fire.{key}"

    def timers_all(self) -> str:
        return f"{self.prefix}.timer.>"

    def deadletter(self, consumer: str) -> str:
        return f"{self.prefix}.deadletter.{check_token(consumer, 'consumer')}"

    def deadletter_all(self) -> str:
        return f"{self.prefix}.deadletter.>"

    # -- parsing -----------------------------------------------------------------------------
    # Each parser is the inverse of its builder above: it returns None for anything the builder
    # could not have produced (another prefix or family, a token count off, a token that is
    # not a CONTRACT §1 token), so a caller never indexes into a subject of the wrong shape.
    def parse(self, subject: str) -> tuple[str, list[str]]:
        """`kx.release.r1.verified` -> ("release", ["r1", "verified"]); ("", []) if not ours."""
        parts = subject.split(".")
        if len(parts) < 3 or parts[0] != self.prefix:
            return "", []
        return parts[1], parts[2:]

    def _tokens(self, subject: str, family: str, count: int) -> list[str] | None:
        kind, tokens = self.parse(subject)
        if kind != family or len(tokens) != count or not all(is_token(t) for t in tokens):
            return None
        return tokens

    def health_parts(self, subject: str) -> HealthParts | None:
        """`kx.health.prod.canary.internal.rt-1` -> HealthParts("prod", "canary", "internal", "rt-1")
        (inverse of `health`)."""
        tokens = self._tokens(subject, "health", 4)
        return HealthParts(*tokens) if tokens else None

    def scope_of(self, subject: str) -> ScopeParts | None:
        """`kx.scope.prod.canary.all.pinned` -> ScopeParts("prod", "canary", "all", "pinned") (inverse of `scope`)."""
        tokens = self._tokens(subject, "scope", 4)
        return ScopeParts(*tokens) if tokens else None

    @staticmethod
    def release_id_of(subject: str) -> str | None:
        """The release a subject `<any prefix>.release.<id>.…` concerns (lifecycle events and notifications), else None.

        Whatever the prefix: the log context of a message (services/observability/logs.py) is
        taken where the installation's prefix is not at hand.
        """
        parts = subject.split(".")
        if len(parts) >= 4 and parts[1] == "release" and is_token(parts[2]):
            return parts[2]
        return None

    def expected_subject(self, event_type: str, release_id: str | None, scope: tuple[str, str, str] | None) -> str:
        """The only subject an event of this type (and identity) may be stored on."""
        family, _, suffix = event_type.partition(".")
        if family == "release" and release_id:
            return self.release(release_id, suffix)
        if family == "scope" and scope:
            return self.scope(*scope, suffix)
        if family == "notification" and release_id:
            return self.notification(release_id, suffix)
        if family == "channel" and scope:
            return self.channel(scope[0], scope[1])
        if event_type == "trust.rotated":
            return self.trust_rotated()
        raise ValueError(
            f"event type {event_type!r} needs a {'release_id' if family in ('release', 'notification') else 'scope'}"
        )
