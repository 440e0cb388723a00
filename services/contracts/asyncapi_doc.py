"""FastStream's AsyncAPI 3.0 document, brought to what the specification asks and its JSON Schema cannot check.

FastStream 0.7 writes two things the AsyncAPI 3.0.0 specification does not allow:

- component keys such as `release.requested:Message`: the specification restricts every key of
  `components` (and the ids of channels and operations) to `^[a-zA-Z0-9\\.\\-_]+$`; the `:` becomes `.`,
  a subject wildcard (`*`, `>`, in the keys of a subscriber on several filter subjects) `_`, and
  every `$ref` to a renamed key follows it (FastStream percent-encodes a wildcard in a `$ref`);
- channel addresses with `{env}`, `{release_id}`, … and no `parameters`: the specification
  requires a Parameter Object for every expression in an address; each gets one, describing the
  subject token it stands for (events/tokens.py).

`conform` does both on the JSON form of the document; `services/contracts/asyncapi_app.py`
applies it inside `faststream docs gen`, so the README's commands write the conforming document.
Pure: no FastStream, no IO.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

from events.tokens import TOKEN_PATTERN

KEY_PATTERN = re.compile(r"^[A-Za-z0-9\.\-_]+$")  # the specification's Components Object key pattern
_NOT_KEY = re.compile(r"[^A-Za-z0-9\.\-_]")
_WILDCARD = re.compile(r"[*>]")
_EXPRESSION = re.compile(r"\{([^{}]+)\}")
# what each subject token of the contract's addresses is (CONTRACT §2); a new one fails `conform` until described
PARAMETERS = {
    "release_id": "The release's id (`release_id` of the envelope).",
    "env": "The environment, e.g. `prod`.",
    "channel": "The release channel, e.g. `canary` or `stable`.",
    "cohort": "The cohort of the channel, as resolved from the channel's configuration (CONTRACT §7).",
    "runtime_id": "The reporting runtime's own id (its NATS user may publish under this id only).",
}


class ConformError(ValueError):
    """The document cannot be made conforming (a key collision, an undescribed address parameter)."""


def valid_key(key: str) -> str:
    return _NOT_KEY.sub(".", _WILDCARD.sub("_", key))


def address_parameters(address: str) -> list[str]:
    return _EXPRESSION.findall(address)


def conform(doc: dict[str, Any]) -> dict[str, Any]:
    """A copy of `doc` with valid keys (and the `$ref`s that name them) and every address parameter declared."""
    renamed: dict[str, str] = {}  # old JSON pointer prefix -> new one
    out = dict(doc)
    for section in ("channels", "operations"):
        if isinstance(doc.get(section), dict):
            out[section] = _rekey(doc[section], f"#/{section}/", renamed)
    if isinstance(doc.get("components"), dict):
        out["components"] = {
            kind: _rekey(entries, f"#/components/{kind}/", renamed) if isinstance(entries, dict) else entries
            for kind, entries in doc["components"].items()
        }
    out = _rewrite_refs(out, renamed)
    for channel_id, channel in (out.get("channels") or {}).items():
        names = address_parameters(str(channel.get("address") or ""))
        if not names:
            continue
        declared = dict(channel.get("parameters") or {})
        for name in names:
            if name not in declared:
                if name not in PARAMETERS:
                    raise ConformError(f"channel {channel_id}: address parameter {{{name}}} is not described")
                declared[name] = {"description": f"{PARAMETERS[name]} A subject token: `{TOKEN_PATTERN}`."}
        out["channels"][channel_id] = _insert_after(channel, "address", "parameters", declared)
    return out


def _rekey(entries: dict[str, Any], pointer: str, renamed: dict[str, str]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in entries.items():
        new = valid_key(key)
        if new in result:
            raise ConformError(f"{pointer}{key} and another key both become {new!r}")
        if new != key:
            renamed[f"{pointer}{key}"] = f"{pointer}{new}"
        result[new] = value
    return result


def _rewrite_refs(node: Any, renamed: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {
            k: _moved(v, renamed) if k == "$ref" and isinstance(v, str) else _rewrite_refs(v, renamed)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rewrite_refs(v, renamed) for v in node]
    return node


def _moved(ref: str, renamed: dict[str, str]) -> str:
    plain = unquote(ref)  # a URI fragment: `*` may come as `%2A`
    for old, new in renamed.items():
        if plain == old or plain.startswith(old + "/"):
            return new + plain[len(old) :]
    return ref


def _insert_after(mapping: dict[str, Any], after: str, key: str, value: Any) -> dict[str, Any]:
    """`mapping` with `key` set, placed right after `after` (the document reads address, then its parameters)."""
    result: dict[str, Any] = {}
    for k, v in mapping.items():
        if k != key:
            result[k] = v
        if k == after:
            result[key] = value
    result.setdefault(key, value)
    return result
