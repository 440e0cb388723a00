"""Standard Webhooks signatures (https://www.standardwebhooks.com/): sign a post, verify one. Pure: no IO.

A signed post carries `webhook-id` (the id of the event notified about: the same on every
retry and from every notifier instance, so receivers use it as their idempotency key),
`webhook-timestamp` (unix seconds of *this attempt*: each retry is signed afresh) and
`webhook-signature`: space-separated `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`,
one per key the sender holds, so a secret can be rotated without a gap.

A secret is either `whsec_<base64>` (the key is the decoded bytes, as every Standard Webhooks
library reads it) or any other string (the key is its UTF-8 bytes: the secrets configured
before Standard Webhooks keep working for the legacy `Kx-Signature-256` header and sign the
new headers too). The notifier's `secret_env` may hold several secrets separated by spaces,
newest first: each signs, and the first also makes the legacy header.

`verify` is the receiver's side, for teams that write their receiver in Python.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
SECRET_PREFIX = "whsec_"
VERSION = "v1"
DEFAULT_TOLERANCE_S = 5 * 60


class VerificationError(ValueError):
    """A post that must not be trusted; the message says why (in one line)."""


def secret_key(secret: str) -> bytes:
    """The HMAC key a secret stands for (`whsec_<base64>` decoded; any other string as UTF-8)."""
    if not secret.startswith(SECRET_PREFIX):
        if not secret:
            raise ValueError("an empty secret")
        return secret.encode()
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a whsec_ secret that is not base64") from None
    if not key:
        raise ValueError("a whsec_ secret with no key")
    return key


def secrets_of(value: str) -> list[str]:
    """The secrets an environment variable holds: one, or several separated by whitespace (rotation)."""
    return value.split()


def signed_content(msg_id: str, timestamp: int, body: bytes) -> bytes:
    return f"{msg_id}.{timestamp}.".encode() + body


def sign(msg_id: str, timestamp: int, body: bytes, key: bytes) -> str:
    """One `v1,<base64>` signature."""
    mac = hmac.new(key, signed_content(msg_id, timestamp, body), hashlib.sha256).digest()
    return f"{VERSION},{base64.b64encode(mac).decode()}"


def signature_headers(msg_id: str, timestamp: int, body: bytes, keys: list[bytes]) -> dict[str, str]:
    """`webhook-id`, `webhook-timestamp` and (with keys) `webhook-signature` for one attempt."""
    headers = {ID_HEADER: msg_id, TIMESTAMP_HEADER: str(timestamp)}
    if keys:
        headers[SIGNATURE_HEADER] = " ".join(sign(msg_id, timestamp, body, key) for key in keys)
    return headers


def verify(
    headers: Mapping[str, str],
    body: bytes,
    secret: str,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> str:
    """Check a received post; returns its `webhook-id` (the idempotency key) or raises `VerificationError`.

    `body` must be the raw bytes received (not re-serialized JSON). The timestamp must lie
    within `tolerance_s` of `now` either way (a replayed old post, or one dated ahead, is
    refused); one of the space-separated `v1` signatures must match, compared in constant time.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp, signatures = (lower.get(h) for h in (ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER))
    if not msg_id or not stamp or not signatures:
        missing = [
            h for h, v in ((ID_HEADER, msg_id), (TIMESTAMP_HEADER, stamp), (SIGNATURE_HEADER, signatures)) if not v
        ]
        raise VerificationError(f"missing header(s): {', '.join(missing)}")
    if not stamp.isascii() or not stamp.isdigit():
        raise VerificationError(f"{TIMESTAMP_HEADER} {stamp!r} is not unix seconds")
    timestamp = int(stamp)
    clock = time.time() if now is None else now
    if timestamp < clock - tolerance_s:
        raise VerificationError(f"too old: signed {int(clock - timestamp)} s ago (tolerance {int(tolerance_s)} s)")
    if timestamp > clock + tolerance_s:
        raise VerificationError(f"too new: dated {int(timestamp - clock)} s ahead (tolerance {int(tolerance_s)} s)")
    try:
        key = secret_key(secret)
    except ValueError as exc:
        raise VerificationError(f"unusable secret: {exc}") from None
    expected = sign(msg_id, timestamp, body, key)
    for candidate in signatures.split():
        if candidate.startswith(f"{VERSION},") and hmac.compare_digest(candidate.encode(), expected.encode()):
            return msg_id
    raise VerificationError("no signature matches (tampered body or headers, or another secret)")
