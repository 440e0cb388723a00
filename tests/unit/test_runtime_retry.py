"""Which refused switches a runtime retries (services/runtime/sdk.py `refusal_kind`), and how long it waits."""

from __future__ import annotations

import nats.errors
import nats.js.errors
import pytest

from services.jetstream.direct import Behind, DirectGetError
from services.jetstream.pull import ConsumerGone
from services.jetstream.reader import ReadRefused
from services.runtime.sdk import refusal_kind, retry_pause
from services.verification.gates import GATE_CODES

# (gate, code, error) -> kind: the pointer or pack is bad ("final": never retried) or an input
# could not be read just now ("transient": the same pointer is tried again)
CASES = [
    # not there now: a genuine pointer names objects the service verified in the store
    ("integrity", "pack_missing", None, "transient"),
    ("manifest", "manifest_missing", None, "transient"),
    # the bytes that were read are bad
    ("integrity", "digest_mismatch", None, "final"),
    ("integrity", "size_mismatch", None, "final"),
    ("integrity", "pack_oversized", None, "final"),
    ("signature", "threshold_not_met", None, "final"),  # a rogue key, a forged manifest
    ("signature", "no_signatures", None, "final"),
    ("expiry", "expired", None, "final"),
    ("identity", "digest_mismatch", None, "final"),
    ("identity", "name_mismatch", None, "final"),
    ("manifest", "malformed_json", None, "final"),
    ("manifest", "manifest_oversized", None, "final"),
    ("trust_root", "trust_root_missing", None, "final"),
    ("integrity", "internal_error", None, "final"),  # an unexpected state never turns into a pass, nor a retry
    # a code that is missing somewhere else is not missing here
    ("signature", "pack_missing", None, "final"),
    # reading raised instead of answering
    (None, None, nats.errors.TimeoutError(), "transient"),
    (None, None, TimeoutError(), "transient"),
    (None, None, nats.errors.ConnectionClosedError(), "transient"),
    (None, None, nats.errors.NoRespondersError(), "transient"),
    (None, None, nats.js.errors.ServiceUnavailableError(), "transient"),
    (None, None, nats.js.errors.NotFoundError(), "transient"),
    (None, None, ConnectionResetError(), "transient"),
    # ... and our own readers' words for "could not read now": the pack store's direct gets, the trust
    # chain's one-off read refused a consumer, a pull whose consumer went
    (None, None, DirectGetError("no answer to a direct get within 10s"), "transient"),
    (None, None, DirectGetError("the leader of OBJ_kx_packs did not answer within 10s (TimeoutError())"), "transient"),
    (None, None, DirectGetError("direct get failed: 503 No Responders"), "transient"),
    (None, None, Behind("OBJ_kx_packs: answered up to seq 7, 9 asked for"), "transient"),
    (None, None, ReadRefused("the server refused a consumer to read KX_RELEASES for 5 s"), "transient"),
    (None, None, ConsumerGone("consumer deleted"), "transient"),
    # anything else raised is a bug, not a hiccup: refused as today, not retried
    (None, None, ValueError("bad"), "final"),
    (None, None, KeyError("digest"), "final"),
    (None, None, AssertionError(), "final"),
]


@pytest.mark.parametrize(("gate", "code", "error", "kind"), CASES)
def test_refusal_kind(gate, code, error, kind):
    assert refusal_kind(gate, code, error) == kind


def test_only_the_not_there_codes_of_all_gate_codes_are_transient():
    transient = {(g, c) for g, codes in GATE_CODES.items() for c in codes if refusal_kind(g, c) == "transient"}
    assert transient == {("integrity", "pack_missing"), ("manifest", "manifest_missing")}


def test_retry_pause_doubles_from_half_a_second_to_a_30_second_cap_with_jitter():
    ceilings = [retry_pause(n, 0.0) for n in range(1, 10)]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert retry_pause(1, 0.999) == pytest.approx(0.25, abs=1e-3)  # jitter: (ceiling/2, ceiling]
    assert all(15.0 < retry_pause(n, d) <= 30.0 for n in (7, 50, 10_000) for d in (0.0, 0.5, 0.999))
    assert retry_pause(0, 0.0) == 0.5  # never below the first pause
    assert retry_pause(3, 0.0, first_s=0.1, cap_s=0.3) == 0.3
