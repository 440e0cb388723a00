"""Whatever the published schemas call valid is accepted here, or refused by a rule they state.

A producer, runtime or auditor in another language builds from docs/schemas/ alone. These tests
generate documents from the schema files themselves (tests/unit/schema_strategies.py), check each
is valid by a JSON Schema validator (so the generator honours the schema), and hand it to the code
that reads it in production: `decode_event` on the event's subject, `decode_sample` for a runtime's
health message, `ChannelConfig` for a configuration file, the verifier's manifest gate for a
manifest. A refusal passes only if every reason in it matches a rule of `STATED` — a rule the code
enforces that no pattern can say (a cross-field rule, the version grammar) — and that rule's words
are in the schema file, where the producer reads them. Anything else is a schema that promises
more than the code takes: the failure shows the document.

Found by this (session 14): a channel's webhook `url`, its `on` list, `secret_env`, the Prometheus
query names, templates and URL, and `alert_waiver` were refused by code the schema did not state
(now patterns, events/schema_patterns.py), and the manifest's `version` grammar was unstated (now
in its description).

KX_SCHEMA_EXAMPLES=2000 runs longer (documents per schema; CI runs the default).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import ValidationError
from referencing import Registry, Resource

from events.canonical import StrictJSONError, compact_bytes
from events.channel import PROMQL_TEMPLATE, ChannelConfig, PrometheusSource, prometheus_problems
from events.codec import DecodeError, decode_event
from events.health import HealthSample, decode_sample
from events.manifest import SignedManifest
from events.notifications import url_problem
from events.schema_patterns import NOT_BLANK, WEBHOOK_URL
from events.signing import SigningKey
from events.subjects import Subjects
from events.thresholds import Thresholds
from services.actions.producer import manifest_bytes
from tests.harness import manifest_gate

from .schema_strategies import UnsupportedSchema, from_schema

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
EXAMPLES = int(os.environ.get("KX_SCHEMA_EXAMPLES", "60"))
SUBJECTS = Subjects()
KEY = SigningKey.from_raw(bytes(range(32)))

# (a refusal's sentence, matched whole once its "<field>: Value error, " is taken off; words the schema says it
# with). Whole, so a run of sentences one rule matched cannot swallow an unexplained one after it.
Rule = tuple[str, str]
_QUOTED = r"""(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")"""  # a value as repr() writes it
CHANNEL_RULES: list[Rule] = [
    (r"cohort names must be unique", "unique cohort names"),
    (r"the last cohort \(.*\) must be a catch-all with no criteria", "the last cohort a catch-all"),
    (r"cohort .* has no criteria but is not last: later cohorts would never match", "no criteria and no other"),
    (r"cohort .*: percent range \[.*\) must lie inside 0\.\.10000 with lo < hi", "percent ranges inside 0..10000"),
    (
        r"cohort .* can never match: every runtime it names matches cohort .* first",
        "no cohort an earlier one covers whole",
    ),
    (r"a plan stage must name at least one cohort", "a plan naming every cohort once"),
    (rf"plan names unknown cohort {_QUOTED}", "a plan naming every cohort once"),
    (rf"plan names cohort {_QUOTED} twice", "a plan naming every cohort once"),
    (r"the plan leaves out cohorts \[.*\]: they would never receive a release", "a plan naming every cohort once"),
    (r"notification sink names must be unique", "unique notification sink names"),
    (
        r"no threshold to judge it against: set monitoring\.thresholds\.\w+_max or \w+_min",
        "needs a threshold named after it",
    ),
    (
        rf"monitoring\.thresholds\.\w+ must be a finite number a double holds, not (?:{_QUOTED}|[^;]*)",
        "a finite number a 64-bit double holds",
    ),
    (
        r"is not a URL \('.*' does not appear to be an IPv4 or IPv6 address\)",
        "a bracketed IPv6 literal must be a valid",
    ),
]
STATED: dict[str, list[Rule]] = {
    "events/channel.configured.schema.json": CHANNEL_RULES,
    "channel-config.schema.json": CHANNEL_RULES,
    "health-sample.schema.json": [
        (r"errors \(\d+\) exceed requests \(\d+\)", "`errors` may not exceed `requests`"),
        (r"correctness mismatches exceed checked", "`correctness.mismatches` exceed `correctness.checked`"),
    ],
    "manifest.schema.json": [
        (rf"version {_QUOTED} is neither PEP 440 nor SemVer", "a version that is neither is refused"),
        # (JSON Schema's "integer" takes 1.0 too: "no float" is not a type it has)
        (r"float at .* is not allowed in a signed document", "no floats in `signed`"),
    ],
}
_PREFIX = re.compile(r"^(?:[\w.$\[\]-]*: |Value error, )*")  # where it was said: "data: Value error, <field>: "


def _explained(pieces: list[str], rules: list[re.Pattern[str]]) -> bool:
    """Whether `pieces` split into runs (joined back with "; ") that each are what a rule says."""

    @cache
    def from_(start: int) -> bool:
        return start == len(pieces) or any(
            any(rule.fullmatch(_PREFIX.sub("", "; ".join(pieces[start:end]), count=1)) for rule in rules) and from_(end)
            for end in range(start + 1, len(pieces) + 1)
        )

    return from_(0)


def unstated(path: str, reasons: list[str]) -> list[str]:
    """The sentences of `reasons` that no rule stated for `path` explains (a reason may join several
    with "; ", and a quoted value in one may hold "; " too)."""
    rules = [re.compile(pattern, re.DOTALL) for pattern, _ in STATED.get(path, [])]  # (a value may hold a newline)
    left = []
    for reason in reasons:
        pieces = reason.split("; ")
        if not _explained(pieces, rules):
            bare = [_PREFIX.sub("", p, count=1) for p in pieces]
            left += [p for p in bare if not any(rule.fullmatch(p) for rule in rules)] or bare
    return left


def _registry() -> Registry:
    docs = [json.loads(p.read_text()) for p in SCHEMAS.rglob("*.schema.json")]
    return Registry().with_resources((doc["$id"], Resource.from_contents(doc)) for doc in docs)


REGISTRY = _registry()


def _schema(path: str) -> dict:
    return json.loads((SCHEMAS / path).read_text())


def _check_all(path: str, judge: Callable[[dict], list[str]]) -> None:
    """`judge` says why the code refuses a document (empty: accepted); run it over generated ones."""
    schema = _schema(path)
    validator = Draft202012Validator(schema, registry=REGISTRY, format_checker=Draft202012Validator.FORMAT_CHECKER)
    accepted: list[int] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    )
    @given(from_schema(schema))
    def check(doc: dict) -> None:
        errors = [e.message for e in validator.iter_errors(doc)]
        assert not errors, f"the generator made a document its schema refuses: {errors[:3]}"
        why = unstated(path, judge(doc))
        assert not why, f"{path} calls this valid, but it is refused for: {why}\n{json.dumps(doc)[:2000]}"
        accepted.append(1)

    check()
    assert accepted, f"{path}: no document was accepted"


def _subject(event_type: str, doc: dict) -> str:
    """The subject a writer following the contract publishes on (a null scope: the subject names it)."""
    family = event_type.split(".", 1)[0]
    scope = doc.get("scope") or {"env": "prod", "channel": "canary", "cohort": "all" if family == "channel" else "c1"}
    named = family not in ("release", "trust", "notification")
    tokens = (scope["env"], scope["channel"], scope["cohort"]) if named else None
    return SUBJECTS.expected_subject(event_type, doc.get("release_id"), tokens)


EVENT_SCHEMAS = sorted(p.name for p in (SCHEMAS / "events").glob("*.schema.json"))


def _event_judge(name: str) -> Callable[[dict], list[str]]:
    event_type = name.removesuffix(".schema.json")

    def judge(doc: dict) -> list[str]:
        try:
            decode_event(compact_bytes(doc), _subject(event_type, doc), SUBJECTS)
        except DecodeError as exc:
            return [r["message"] for r in exc.reasons]
        return []

    return judge


def _judge_sample(doc: dict) -> list[str]:
    checked = decode_sample(compact_bytes(doc))
    return [] if isinstance(checked, HealthSample) else [checked]


def _judge_channel(doc: dict) -> list[str]:
    try:
        ChannelConfig.model_validate(doc)
    except ValidationError as exc:
        return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)]
    return []


def _judge_manifest(doc: dict) -> list[str]:
    """Signed again by a trusted key (a generated signature verifies nothing), so only the
    manifest's shape and contents are judged; later gates (expiry, identity...) are not this one."""
    try:
        signed = {**doc, **json.loads(manifest_bytes(doc["signed"], [KEY]))}
    except StrictJSONError as exc:
        return [str(exc)]
    failure = manifest_gate(compact_bytes(signed), KEY)
    if failure is None or failure.gate != "manifest":
        return []
    # the gate names the first problem only: every field's, so a stated one hides no other
    try:
        SignedManifest.model_validate(doc["signed"])
    except ValidationError as exc:
        return [failure.message, *(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())]
    return [failure.message]


# schema file -> why the code that reads such a document in production refuses one (empty: accepted)
JUDGES: dict[str, Callable[[dict], list[str]]] = {
    **{f"events/{name}": _event_judge(name) for name in EVENT_SCHEMAS},
    "health-sample.schema.json": _judge_sample,
    "channel-config.schema.json": _judge_channel,
    "manifest.schema.json": _judge_manifest,
}


@pytest.mark.parametrize("name", EVENT_SCHEMAS)
def test_every_event_the_schema_allows_decodes(name: str) -> None:
    _check_all(f"events/{name}", JUDGES[f"events/{name}"])


def test_every_health_sample_the_schema_allows_is_accepted() -> None:
    _check_all("health-sample.schema.json", _judge_sample)


def test_every_channel_configuration_the_schema_allows_is_accepted() -> None:
    _check_all("channel-config.schema.json", _judge_channel)


def test_every_manifest_the_schema_allows_passes_the_manifest_gate() -> None:
    _check_all("manifest.schema.json", _judge_manifest)


# ---- and the other way: a number or a date-time the schema refuses is refused ----------------------
#
# Found by a contract audit (session 26): pydantic's lax float took "0.01", true (as 1.0) and "Infinity" for
# a threshold, and its lax datetime took 1714564800, "2024-05-01T12:00Z" or "+0200" for `occurred_at`, a
# pin's `until` or a sample's `at`: forms a reader built from the schema refuses, so one log read two ways.
# Each generated document has one number, or one RFC 3339 string, replaced by such a look-alike; where the
# schema then refuses the document (the field is typed there, not free), the code must refuse it too.
NUMBER_LOOKALIKES = ["1", "0.01", True, "Infinity", "NaN", None]
TIME_LOOKALIKES = [
    1714564800,
    "1714564800",
    "2024-05-01T12:00Z",
    "2024-05-01T12:00:00+0200",
    "2024-05-01 12:00:00Z",
    "2024-05-01T12:00:00",
    "2024-W18-3T12:00:00Z",
    "2024-05-01T12:00:00,5Z",
]
RFC3339_LOOK = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9:.]+(?:[Zz]|[+-][0-9]{2}:[0-9]{2})")


def _leaves(node: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    if isinstance(node, dict):
        return [leaf for key, value in node.items() for leaf in _leaves(value, (*path, key))]
    if isinstance(node, list):
        return [leaf for i, value in enumerate(node) for leaf in _leaves(value, (*path, i))]
    return [(path, node)]


def _replaced(doc: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    copy = dict(doc) if isinstance(doc, dict) else list(doc)
    copy[path[0]] = _replaced(doc[path[0]], path[1:], value)
    return copy


@pytest.mark.parametrize("path", sorted(JUDGES))
def test_a_number_or_date_time_the_schema_refuses_is_refused(path: str) -> None:
    schema = _schema(path)
    validator = Draft202012Validator(schema, registry=REGISTRY, format_checker=Draft202012Validator.FORMAT_CHECKER)
    judge, checked = JUDGES[path], []

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(from_schema(schema), st.data())
    def check(doc: dict, data: st.DataObject) -> None:
        numbers = [(p, v) for p, v in _leaves(doc) if type(v) in (int, float)]
        times = [(p, v) for p, v in _leaves(doc) if isinstance(v, str) and RFC3339_LOOK.fullmatch(v)]
        if not numbers and not times:
            return
        where, _ = data.draw(st.sampled_from(numbers + times), label="leaf")
        lookalikes = TIME_LOOKALIKES if (where, _) in times else NUMBER_LOOKALIKES
        wrong = data.draw(st.sampled_from(lookalikes), label="look-alike")
        mutated = _replaced(doc, where, wrong)
        if validator.is_valid(mutated):
            return  # an untyped place (extra fields, free text): the schema promises nothing about it
        checked.append(1)
        assert judge(mutated), (
            f"{path} refuses {wrong!r} at {'.'.join(map(str, where))}, the code took it:\n"
            + (json.dumps(mutated)[:2000])
        )

    check()
    assert checked or path.startswith("events/"), f"{path}: no typed number or date-time was tried"


@pytest.mark.parametrize("path", sorted(STATED))
def test_every_rule_allowed_above_is_stated_in_its_schema(path: str) -> None:
    text = json.dumps(_schema(path))
    missing = [words for _, words in STATED[path] if words not in text]
    assert not missing, f"{path} does not say: {missing}"


def test_unstated_names_only_what_no_rule_explains() -> None:
    reasons = [
        "data: Value error, the last cohort (x) must be a catch-all with no criteria; cohort names must be unique",
        "data.notifications.0.url: Value error, must be an http:// or https:// URL",
    ]
    assert unstated("channel-config.schema.json", reasons) == ["must be an http:// or https:// URL"]
    assert unstated("health-sample.schema.json", ["$: Value error, errors (3) exceed requests (1)"]) == []
    # a quoted value may hold "; ", and a run one rule matches swallows no unexplained sentence after it
    quoted = "plan names unknown cohort 'x; y'; cohort names must be unique"
    assert unstated("channel-config.schema.json", [f": Value error, {quoted}"]) == []
    assert "something else" in unstated("channel-config.schema.json", [f": Value error, {quoted}; something else"])


def test_the_generator_refuses_a_keyword_it_does_not_know() -> None:
    with pytest.raises(UnsupportedSchema, match="dependentRequired"):
        from_schema({"type": "object", "dependentRequired": {"a": ["b"]}})


# ---- the patterns against the checks they state, one by one (more examples than a whole document gets) ----
@settings(max_examples=max(300, EXAMPLES * 5), deadline=None, database=None)
@given(st.from_regex(re.compile(WEBHOOK_URL), fullmatch=True))
def test_a_webhook_url_the_pattern_allows_is_one_the_notifier_takes(url: str) -> None:
    problem = url_problem(url)
    assert problem is None or "IPv4 or IPv6 address" in problem, (url, problem)


@settings(max_examples=max(300, EXAMPLES * 5), deadline=None, database=None)
@given(st.from_regex(re.compile(PROMQL_TEMPLATE), fullmatch=True).filter(lambda q: re.search(NOT_BLANK, q)))
def test_a_query_the_patterns_allow_has_no_problem_of_its_own(query: str) -> None:
    source = PrometheusSource(queries={"error_rate": query}, url="http://prometheus:9090")
    assert prometheus_problems(source, Thresholds(error_rate_max=0.05)) == []


@pytest.mark.parametrize(
    ("url", "code", "schema"),
    [
        ("https://hooks.example.com/services/${SLACK_PATH}?x=${TOKEN}", True, True),
        ("HTTP://example.com:8080/hook", True, True),  # a scheme is case-insensitive
        ("http://[::1]:9000/", True, True),
        ("http://example.com:65536/", False, False),
        ("http://user:pw@example.com/", False, False),  # credentials would be in the log
        ("http://${HOST}/hook", False, False),  # where it goes is always in the log
        ("http://example.com/${1X}", False, False),
        ("http://example.com/?$${A}{", True, True),  # found by this file: was refused for a `${` it lacks
        ("http://example.com/${${A}}", False, False),
        ("http://example.com/a b", False, False),
        ("http://example.com/a\u2003b", False, False),  # whitespace by Python's rule and ECMA's alike
        ("ftp://example.com/", False, False),
        # stricter than the code, on purpose (the portable subset): an IDN host (write its punycode), an
        # empty #fragment, a 5-digit port with a leading zero
        ("http://bücher.example/hook", True, False),
        ("http://example.com/#", True, False),
        ("http://example.com:08080/", True, False),
    ],
)
def test_the_webhook_url_pattern_and_the_check_on_examples(url: str, code: bool, schema: bool) -> None:
    assert (url_problem(url) is None) is code
    assert (re.search(WEBHOOK_URL, url) is not None) is schema


# What ECMA-262, Python's re, RE2 and Rust's regex do not read alike: class escapes (their sets differ;
# Python's \s is str.isspace), lookaround and named groups (RE2 and Rust have none), \u / \x{...} escapes
# (each engine spells a code point its own way). Checked by hand once against Node's RegExp (with and
# without the u flag) on 6,700 strings: the same verdicts, except Python's `$`, which also matches before a
# final newline — so the code checks names with fullmatch (tests/unit/test_notifications.py).
NOT_PORTABLE = re.compile(r"\\[sSdDwWbBuUN]|\(\?[=!<P>]|\\x\{|\\p\{")


def _patterns(node: object) -> list[str]:
    if isinstance(node, dict):
        own = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
        return own + [p for value in node.values() for p in _patterns(value)]
    if isinstance(node, list):
        return [p for value in node for p in _patterns(value)]
    return []


def test_every_pattern_in_the_schemas_is_read_alike_by_every_engine() -> None:
    found = {p for path in SCHEMAS.rglob("*.json") for p in _patterns(json.loads(path.read_text()))}
    assert len(found) >= 8, found  # (the walk reaches them: tokens, digests, base64, the URL, ...)
    assert not [p for p in found if NOT_PORTABLE.search(p)]
