"""Subject builders (CONTRACT §2, §4, §8). Every token is checked before use."""

from __future__ import annotations

from dataclasses import dataclass

from .tokens import check_token



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

    # -- the release log --------------------------------------------------------------------
    def release(self, release_id: str, suffix: str) -> str:
        return f"{self.prefix}.release.{check_token(release_id, 'release_id')}.{check_token(suffix, 'event suffix')}"

    def release_filter(self, release_id: str) -> str:
        return f"{self.prefix}.release.{check_token(release_id, 'release_id')}.*"

    def notification(self, release_id: str, outcome: str) -> str:
        """Under the release, outside its lifecycle filter `release_filter` (one token deeper)."""
        return f"{self.prefix}.release.{check_token(release_id, 'release_id')}.notification.{check_token(outcome, 'event suffix')}"

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
        return f"{self.prefix}.health.{check_token(env, 'env')}.{check_token(channel, 'channel')}.{check_token(cohort, 'cohort')}.*"

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
    def parse(self, subject: str) -> tuple[str, list[str]]:
        """`kx.release.r1.verified` -> ("release", ["r1", "verified"]); ("", []) if not ours."""
        parts = subject.split(".")
        if len(parts) < 3 or parts[0] != self.prefix:
            return "", []
        return parts[1], parts[2:]

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
        raise ValueError(f"event type {event_type!r} needs a {'release_id' if family in ('release', 'notification') else 'scope'}")
