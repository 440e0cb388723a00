"""Standard Webhooks signing (sender) and `verify` (receiver): the spec's vector, the replay window, rotation."""

from __future__ import annotations

import base64
import json

import pytest

from services.actions.producer import parse_channel_config
from services.consumers.notifier.signing import (
    DEFAULT_TOLERANCE_S,
    VerificationError,
    secret_key,
    sign,
    signature_headers,
    verify,
)
from services.consumers.notifier.webhook import SIGNATURE_HEADER, signature, webhook
from tests.unit.test_notifications import HOOK, _rolled_back_release, channel

# the specification's published test vector (every Standard Webhooks library reproduces it)
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID, VECTOR_TS, VECTOR_BODY = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
NEW = "whsec_" + base64.b64encode(b"n" * 32).decode()
OLD = "whsec_" + base64.b64encode(b"o" * 32).decode()
T = 2_000_000_000


def signed(body: bytes, *secrets: str, ts: int = T, msg_id: str = "ev-1") -> dict[str, str]:
    return signature_headers(msg_id, ts, body, [secret_key(s) for s in secrets])


def test_the_specification_vector_signs_and_verifies() -> None:
    assert sign(VECTOR_ID, VECTOR_TS, VECTOR_BODY, secret_key(VECTOR_SECRET)) == VECTOR_SIGNATURE
    headers = {"webhook-id": VECTOR_ID, "webhook-timestamp": str(VECTOR_TS), "webhook-signature": VECTOR_SIGNATURE}
    assert verify(headers, VECTOR_BODY, VECTOR_SECRET, now=VECTOR_TS + 10) == VECTOR_ID


def test_a_valid_post_verifies_whatever_the_header_case() -> None:
    headers = {k.title(): v for k, v in signed(b'{"a":1}', NEW).items()}
    assert verify(headers, b'{"a":1}', NEW, now=T) == "ev-1"


@pytest.mark.parametrize(
    "case, expected",
    [
        ("tampered body", "no signature matches"),
        ("tampered id", "no signature matches"),
        ("tampered timestamp", "no signature matches"),
        ("wrong secret", "no signature matches"),
        ("too old", "too old"),
        ("too new", "too new"),
        ("unsigned", "missing header(s): webhook-signature"),
        ("no timestamp", "missing header(s): webhook-timestamp"),
        ("timestamp not a number", "is not unix seconds"),
        ("another scheme only", "no signature matches"),
    ],
)
def test_a_post_that_must_not_be_trusted_is_refused_with_the_reason(case: str, expected: str) -> None:
    body, secret, now = b'{"a":1}', NEW, T
    headers = signed(body, NEW)
    if case == "tampered body":
        body = b'{"a":2}'
    elif case == "tampered id":
        headers["webhook-id"] = "ev-2"
    elif case == "tampered timestamp":
        headers["webhook-timestamp"] = str(T + 1)
    elif case == "wrong secret":
        secret = OLD
    elif case == "too old":
        now = T + DEFAULT_TOLERANCE_S + 1
    elif case == "too new":
        now = T - DEFAULT_TOLERANCE_S - 1
    elif case == "unsigned":
        del headers["webhook-signature"]
    elif case == "no timestamp":
        del headers["webhook-timestamp"]
    elif case == "timestamp not a number":
        headers["webhook-timestamp"] = "1e9"
    elif case == "another scheme only":
        headers["webhook-signature"] = headers["webhook-signature"].replace("v1,", "v1a,")
    with pytest.raises(VerificationError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        verify(headers, body, secret, now=now)


def test_the_replay_window_is_inclusive_at_its_edges_and_adjustable() -> None:
    headers = signed(b"x", NEW)
    assert verify(headers, b"x", NEW, now=T + DEFAULT_TOLERANCE_S) == "ev-1"
    assert verify(headers, b"x", NEW, now=T - DEFAULT_TOLERANCE_S) == "ev-1"
    with pytest.raises(VerificationError, match="too old"):
        verify(headers, b"x", NEW, tolerance_s=30, now=T + 31)


def test_during_a_rotation_both_keys_sign_and_a_receiver_holding_either_verifies() -> None:
    headers = signed(b"x", NEW, OLD)
    first, second = headers["webhook-signature"].split(" ")
    assert first.startswith("v1,") and second.startswith("v1,") and first != second
    assert verify(headers, b"x", NEW, now=T) == verify(headers, b"x", OLD, now=T) == "ev-1"
    stranger = "whsec_" + base64.b64encode(b"s" * 32).decode()
    with pytest.raises(VerificationError, match="no signature matches"):
        verify(headers, b"x", stranger, now=T)


def test_secrets_whsec_is_decoded_anything_else_is_its_text_and_junk_is_refused() -> None:
    assert secret_key(NEW) == b"n" * 32
    assert secret_key("s3cret") == b"s3cret"  # secrets configured before Standard Webhooks keep working
    for bad in ("whsec_not base64!", "whsec_", ""):
        with pytest.raises(ValueError):
            secret_key(bad)
    with pytest.raises(VerificationError, match="unusable secret"):
        verify(signed(b"x", NEW), b"x", "whsec_%%%", now=T)


def test_the_notifiers_webhook_is_signed_per_attempt_under_one_id_and_keeps_the_legacy_header() -> None:
    release, rolled = _rolled_back_release()
    sink = parse_channel_config(channel({**HOOK, "secret_env": "S"}), "canary").notifications[0]
    hook = webhook("rolled_back", sink, rolled, release, f"{NEW} {OLD}")
    first, retry = hook.attempt_headers(T), hook.attempt_headers(T + 7.9)
    assert first["webhook-id"] == retry["webhook-id"] == first["Idempotency-Key"] == "ev-rb"  # stable across retries
    assert (first["webhook-timestamp"], retry["webhook-timestamp"]) == (str(T), str(T + 7))  # each attempt its time
    for secret in (NEW, OLD):
        assert verify(first, hook.body, secret, now=T) == verify(retry, hook.body, secret, now=T + 8) == "ev-rb"
    # the legacy header: the body alone, with the first secret's text, as before Standard Webhooks
    assert first[SIGNATURE_HEADER] == retry[SIGNATURE_HEADER] == signature(NEW, hook.body)
    assert json.loads(hook.body)["event_id"] == "ev-rb"
    unsigned = webhook("rolled_back", sink, rolled, release, None).attempt_headers(T)
    assert unsigned["webhook-id"] == "ev-rb" and "webhook-signature" not in unsigned
    assert SIGNATURE_HEADER not in unsigned
    for junk in ("   ", "whsec_???"):
        with pytest.raises(ValueError):
            webhook("rolled_back", sink, rolled, release, junk)
