"""A manifest's `expires` is RFC 3339 exactly (CONTRACT §6), not whatever ISO 8601 `fromisoformat` reads.

A runtime in another language (Go's time.RFC3339, Rust's chrono parse_from_rfc3339, Java's
ISO_OFFSET_DATE_TIME) refuses a manifest whose `expires` is an ISO 8601 week date, the basic format
or an hours-only offset; were it verified here, the service and this SDK would activate a signed
pack that part of the fleet refuses. RFC 3339's own freedoms (lower-case `t`/`z`, any fraction, an
offset) stay accepted (tests/unit/test_gates.py reads them as the instant they name).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from events.manifest import SignedManifest
from events.model import PackRef
from events.signing import SigningKey
from services.actions.producer import build_signed, manifest_bytes
from services.verification.context import verify_context
from services.verification.gates import check_manifest
from tests.harness import trust_root_for

KEY = SigningKey.generate()
BODY = b"pack" * 100


def signed_with_expires(expires: str) -> dict:
    return build_signed(
        BODY,
        name="kb",
        version="1.0.0",
        schema="kx-pack/1",
        profile="standard",
        runtime=">=2.3,<3",
        build_id="b",
        builder="kx-pipeline",
        run="r",
        source="https://git.example/kb/core",
        revision="rev",
        extra={"expires": expires},
    )


NOT_RFC3339 = [
    "2099-W01-1T00:00:00Z",  # ISO 8601 week date (fromisoformat: 2098-12-29)
    "2099-365T00:00:00Z",  # ordinal date
    "20991231T000000Z",  # basic format
    "2099-12-31T00:00:00+00",  # hours-only offset
    "2099-12-31T0000Z",  # time in the basic format
    "2099-12-31T00Z",  # hour only
    "2099-12-31T00:00Z",  # no seconds
    "2099-12-31T00:00:00,5Z",  # a comma before the fraction
    "2099-12-31 00:00:00Z",  # a space for the T (RFC 3339 §5.6 NOTE allows it only by agreement)
    "2099-12-31T00:00:00+0000",  # offset without its colon
    "2099-12-31T00:00:00Z\n",  # a trailing newline (`$` would let it through)
    "\u0662\u0660\u0669\u0669-12-31T00:00:00Z",  # Arabic-Indic digits (`\d` would match them)
]


@pytest.mark.parametrize("expires", NOT_RFC3339)
def test_an_expires_that_is_not_rfc3339_is_refused_at_the_manifest_gate(expires):
    signed = signed_with_expires(expires)
    pack = PackRef(name="kb", version="1.0.0", digest=signed["digest"], size=len(BODY))
    ctx = verify_context(pack, trust_root_for(KEY), datetime.now(UTC), "pin")
    v = check_manifest(manifest_bytes(signed, [KEY]), ctx)
    assert v.failure is not None and (v.failure.gate, v.failure.code) == ("manifest", "schema_invalid"), (
        v.failure,
        v.manifest.expires if v.manifest else None,
    )
    assert "expires" in v.failure.message


@pytest.mark.parametrize(
    ("expires", "instant"),
    [
        ("2099-12-31T00:00:00Z", datetime(2099, 12, 31, tzinfo=UTC)),
        ("2099-12-31t00:00:00z", datetime(2099, 12, 31, tzinfo=UTC)),
        ("2099-12-31T02:00:00.123456789+02:00", datetime(2099, 12, 31, 0, 0, 0, 123456, tzinfo=UTC)),
        ("2099-12-30T19:00:00-05:00", datetime(2099, 12, 31, tzinfo=UTC)),
    ],
)
def test_every_rfc3339_form_is_read_as_the_instant_it_names(expires, instant):
    assert SignedManifest.model_validate(signed_with_expires(expires)).expires == instant


@pytest.mark.parametrize("expires", ["2099-13-01T00:00:00Z", "2099-02-30T00:00:00Z", "2099-12-31T24:00:00Z"])
def test_an_rfc3339_shaped_expires_naming_no_instant_is_refused(expires):
    with pytest.raises(ValidationError):
        SignedManifest.model_validate(signed_with_expires(expires))
