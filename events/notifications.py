"""Webhook notifications: the channel's sinks and the events that record each delivery.

A channel may name webhook sinks; the notifier posts to each sink for the release
events it subscribed to (`on`), and records the outcome in the log as
`notification.sent` / `notification.failed` on `<p>.release.<id>.notification.<sent|failed>`.
Those subjects sit *under* the release but outside its lifecycle filter
(`<p>.release.<id>.*`), so a notification never takes part in the release's
optimistic concurrency: recording one cannot block or change the release.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from .integers import JsonInt
from .schema_patterns import WEBHOOK_URL, WEBHOOK_URL_NOTE
from .tokens import TOKEN_PATTERN

NotifyKind = Literal["rolled_back", "held", "escalated", "flagged"]
# the body posted: the notifier's own JSON document, a message for a chat's incoming webhook, or
# the triggering event as a CloudEvent (events/cloudevents.py)
NotifyFormat = Literal["json", "slack", "teams", "cloudevents"]
# which event makes each kind: a hold is a window that ended without a verdict; a flag is the
# guard finding that a settled scope's active pack now fails a gate (services/consumers/guard.py)
KIND_OF_EVENT: dict[str, str] = {
    "release.rolled_back": "rolled_back",
    "release.monitoring_inconclusive": "held",
    "release.escalated": "escalated",
    "scope.flagged": "flagged",
}
MAX_URL_CHARS = 2048
MAX_ATTEMPTS = 10
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# `${NAME}` in a URL's path or query: the notifier puts the variable's value there when it posts,
# so a URL that is itself a credential (a Slack or Teams incoming webhook) stays out of the log
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]{0,127})\}")
# ... but only a variable the deployment set aside for it: whoever configures a channel chooses the URL's host,
# so a name outside this prefix (the service's NATS credentials in KX_NATS_URL, OTEL_* headers, cloud keys)
# would be posted to a host of their choosing. No setting of kxr's own is ever named KX_HOOK_*.
URL_VAR_PREFIX = "KX_HOOK_"
_OPENING = re.compile(r"\$\{")


class NotificationSink(BaseModel):
    """One webhook: where, for which kinds, in which format, and (optionally) the env var holding its secret.

    The secret itself is never in the log (the channel configuration is): only the name of
    the variable the notifier reads it from.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    name: StrictStr = Field(pattern=TOKEN_PATTERN)
    # (the schema states what `url_problem` and the validators below check, as far as a pattern can:
    # events/schema_patterns.py)
    url: StrictStr = Field(
        min_length=1,
        max_length=MAX_URL_CHARS,
        description=WEBHOOK_URL_NOTE,
        json_schema_extra={"pattern": WEBHOOK_URL},
    )
    on: list[NotifyKind] = Field(min_length=1, json_schema_extra={"uniqueItems": True})
    secret_env: StrictStr | None = Field(default=None, json_schema_extra={"pattern": ENV_NAME.pattern})
    attempts: JsonInt = Field(default=5, ge=1, le=MAX_ATTEMPTS)
    format: NotifyFormat = "json"  # optional (issue 16): configurations written before it post `json`

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        problem = url_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("on")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("names a kind twice")
        return value

    @field_validator("secret_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not ENV_NAME.fullmatch(value):  # (match: Python's `$` also takes a final newline)
            raise ValueError(f"{value!r} is not an environment variable name")
        return value


def url_problem(url: str) -> str | None:
    """Why a webhook URL is unusable, or None. Credentials in the URL would be written to the log."""
    if any(c.isspace() for c in url):
        return "must not contain whitespace"
    # every `${` begins a whole placeholder (scanned where each stands: removing the placeholders first
    # would join a `$` before one to a `{` after it, "$${A}{" refused for a `${` it does not hold)
    if any(not PLACEHOLDER.match(url, at.start()) for at in _OPENING.finditer(url)):
        return "has a ${...} that is not ${ENV_VAR_NAME}"
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a port that is not a number in range
    except ValueError as exc:
        return f"is not a URL ({exc})"
    if "${" in parts.scheme + parts.netloc:
        return "may have a ${VAR} only in its path or query (where it goes is always in the log)"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "must name a host"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials (use secret_env for a signing secret)"
    if parts.fragment:
        return "must not have a #fragment"
    return None


def expand_url(url: str, env: Mapping[str, str]) -> str:
    """The URL with each `${NAME}` replaced by the variable's value; ValueError naming what is
    unset or what the value would break (never the value: it is a secret).

    Only names beginning with URL_VAR_PREFIX are filled in; any other fails the notification, and
    is not looked up at all (whether it is set is none of the channel's business). The sink still
    decodes: a channel configured before the rule keeps its other sinks, and this one says why."""
    foreign = sorted({name for name in PLACEHOLDER.findall(url) if not name.startswith(URL_VAR_PREFIX)})
    if foreign:
        raise ValueError(
            f"url names {', '.join('${' + n + '}' for n in foreign)}: only variables named {URL_VAR_PREFIX}* "
            "are filled into a webhook URL"
        )
    unset = sorted({name for name in PLACEHOLDER.findall(url) if not env.get(name)})
    if unset:
        raise ValueError(f"url names {', '.join('${' + n + '}' for n in unset)}, not set in the notifier's environment")
    expanded = PLACEHOLDER.sub(lambda m: env[m.group(1)], url)
    problem = url_problem(expanded)
    if problem is None and urlsplit(expanded).netloc != urlsplit(url).netloc:
        problem = "changes the host"
    if problem is not None:
        raise ValueError(f"url with its ${{...}} filled in {problem}")
    return expanded


class NotificationOutcome(BaseModel):
    """What happened to one notification: the sink, the event it was about, how it went."""

    model_config = ConfigDict(frozen=True, extra="allow")

    sink: StrictStr = Field(pattern=TOKEN_PATTERN)
    kind: NotifyKind
    trigger: StrictStr = Field(min_length=1, max_length=128)  # the event id it notified about (= Idempotency-Key)
    trigger_type: StrictStr
    attempts: JsonInt = Field(ge=0)
    status: JsonInt | None = None  # the last HTTP status seen (None: no answer)
    error: StrictStr = ""  # why it failed ("" when sent)


NOTIFICATION_TYPES: dict[str, type[BaseModel]] = {
    "notification.sent": NotificationOutcome,
    "notification.failed": NotificationOutcome,
}
