"""Option checks that run while the command line is parsed (typer callbacks), before anything is
read or any connection is made: a bad value is one line naming the option, and exit 2 (issue 16).

Typer's own `min=`/`max=` cover plain ranges; these cover the rest: enumerations, URIs, version
specifiers, versions. The enumerations mirror the actions' (tests/unit/test_cli_bad_input.py
checks they agree), so `kxr --help` need not import the event model to know them.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

import typer

CLOSE_OUTCOMES = ("failed", "aborted")
ROLLBACK_TRIGGERS = ("operator", "policy_violation", "tenant_impact")
ROLLBACK_STRATEGIES = ("lkg", "pinned", "none")


def one_of(*values: str) -> Callable[[str | None], str | None]:
    def check(value: str | None) -> str | None:
        if value is not None and value not in values:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(values)}")
        return value

    return check


def _uri(value: str) -> str:
    parts = urlsplit(value)
    if not parts.scheme or not (parts.netloc or parts.path) or any(c.isspace() for c in value):
        raise typer.BadParameter(f"{value!r} is not a URI (scheme://host/path)")
    if parts.scheme in ("http", "https", "git", "ssh") and not parts.netloc:
        raise typer.BadParameter(f"{value!r} is not a URI (no host)")
    return value


def uri(value: str | None) -> str | None:
    return None if value is None else _uri(value)


def uris(values: list[str] | None) -> list[str] | None:
    return None if values is None else [_uri(v) for v in values]


def runtime_specifier(value: str | None) -> str | None:
    """A PEP 440 version specifier with at least one constraint, e.g. '>=2.3,<3'."""
    if value is None:
        return None
    from events.versions import SpecifierError, parse_specifier

    try:
        parse_specifier(value)
    except SpecifierError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


def pack_version(value: str | None) -> str | None:
    if value is None:
        return None
    from events.versions import parse_version

    try:
        parse_version(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


def plan(value: str | None) -> str | None:
    """`--plan 'internal;eu-early,us-early;rest'`: stages split by ';', cohorts by ','; none empty."""
    if value is None:
        return None
    from events.tokens import InvalidToken, check_token

    for stage in value.split(";"):
        cohorts = [c.strip() for c in stage.split(",")]
        if not all(cohorts):
            raise typer.BadParameter(f"{value!r}: an empty stage or cohort (stages split by ';', cohorts by ',')")
        for c in cohorts:
            try:
                check_token(c, "cohort")
            except InvalidToken as exc:
                raise typer.BadParameter(str(exc)) from None
    return value
