"""Patterns the published JSON Schemas state for rules our validators check in code.

A producer in another language validates against docs/schemas/ and nothing else, so a rule
the code enforces and the schema leaves out is a document the producer calls valid and we
refuse. Where a rule can be said as a regular expression it is said here, once, and put in
the schema (`json_schema_extra`); the validators keep their own checks and messages. Each
pattern is written in the subset of ECMA-262 (what JSON Schema names) that Python's `re`, RE2
(Go) and Rust's engine read the same way: no lookaround, and no `\\s`, `\\w` or `\\d` (their sets
differ: Python's `\\s` is `str.isspace`, ECMA's is not), only explicit classes. A pattern may be
stricter than the code (it then describes the portable subset), never looser:
tests/unit/test_schema_acceptance.py generates documents from the schemas and decodes them.
"""

from __future__ import annotations

# Whitespace by either definition: Python's str.isspace (which the validators use: it has
# U+001C..U+001F and U+0085) and ECMA-262's \s (which has U+FEFF). For use inside [...]: escapes
# below U+0100 (\t, \xhh: ECMA, Python and RE2 read them alike), the others as the characters
# themselves (no escape for them is read alike: ECMA and Python write \u1680, RE2 \x{1680}).
WHITESPACE = r"\t-\r\x1c-\x20\x85\xa0" + "\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
# Holds something other than whitespace (JSON Schema patterns search: no anchors needed).
NOT_BLANK = f"[^{WHITESPACE}]"

_PORT = r"(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})?)?"
# RFC 3986 reg-name (ASCII: an IDN in its punycode form) or IPv4, or a bracketed IPv6 literal
_HOST = r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%!&'()*+,;=-]+)"
# `${NAME}` only as a whole placeholder, and only in the path or query. Without lookahead (RE2,
# Go's and Rust's engines, has none): a run of `$` is followed by a character that is not `{`, or
# ends in a placeholder, or ends the URL.
_NAME = r"[A-Za-z_][A-Za-z0-9_]{0,127}"
_PATH = f"(?:[^{WHITESPACE}#$]|\\$+(?:[^{WHITESPACE}#${{]|\\{{{_NAME}\\}}))*\\$*"
WEBHOOK_URL = f"^[Hh][Tt][Tt][Pp][Ss]?://{_HOST}{_PORT}(?:[/?]{_PATH})?$"
WEBHOOK_URL_NOTE = (
    "An http:// or https:// URL: a host (a bracketed IPv6 literal must be a valid address), no "
    "credentials, no #fragment, no whitespace; `${ENV_VAR_NAME}` only in the path or query (the "
    "notifier fills it in from its environment when it posts, so a URL that is itself a secret stays "
    "out of the log; only variables named `KX_HOOK_…` are filled in, any other fails that delivery). "
    "A destination that resolves to a loopback, private, link-local or otherwise non-public address "
    "is refused at delivery unless the deployment allows it."
)
