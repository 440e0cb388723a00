"""A rollback target's pack object must name its bytes (services/verification/readiness.py
`pack_object_problem`): the check a rollback makes instead of hashing the pack again."""

from __future__ import annotations

import base64
import hashlib

import pytest

from events.model import PackRef, StoredObject
from services.jetstream.packstore import object_digest, recorded_sha256
from services.verification.readiness import pack_object_problem

BODY = b"pack 1.0.0 " * 100
TARGET = PackRef(name="kb", version="1.0.0", digest="sha256:" + hashlib.sha256(BODY).hexdigest())
RECORD = StoredObject(nuid="N1", size=len(BODY), chunks=1, digest=object_digest(BODY), chunk_size=131072)


def meta(**fields) -> dict:
    return (
        {"name": "sha256-x", "nuid": "N1", "size": len(BODY), "chunks": 1, "digest": object_digest(BODY)}
        | {"options": {"max_chunk_size": 131072}}
        | fields
    )


def test_the_digest_reads_in_every_client_form() -> None:
    """nats.py and Go pad their base64url, nats.js does not: the same SHA-256 either way."""
    raw = hashlib.sha256(BODY).digest()
    padded = object_digest(BODY)
    assert padded.endswith("=") and recorded_sha256(padded) == raw
    assert recorded_sha256("SHA-256=" + base64.urlsafe_b64encode(raw).decode().rstrip("=")) == raw
    for unread in (None, 7, "", "SHA-512=abc", "SHA-256=", "SHA-256=" + base64.urlsafe_b64encode(b"short").decode()):
        assert recorded_sha256(unread) is None


def test_an_object_naming_its_bytes_is_fit() -> None:
    assert pack_object_problem(meta(), TARGET) == (len(BODY), None)
    assert pack_object_problem(meta(), TARGET, RECORD) == (len(BODY), None)
    unpadded = "SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(BODY).digest()).decode().rstrip("=")
    assert pack_object_problem(meta(digest=unpadded), TARGET) == (len(BODY), None)


def test_a_name_re_pointed_at_other_bytes_of_its_size_is_not() -> None:
    other = bytes(b ^ 0x5A for b in BODY)
    size, problem = pack_object_problem(meta(nuid="N2", digest=object_digest(other)), TARGET)
    assert size == len(BODY)
    assert problem == (
        f"pack object holds other bytes: its metadata's SHA-256 is {hashlib.sha256(other).hexdigest()[:12]}…, "
        "not the pack's"
    )


def test_metadata_that_copies_the_digest_but_names_other_chunks_is_not_when_recorded() -> None:
    """Crafted metadata can carry the right digest over other chunks: where distribution recorded the object
    (and the restore before the check could not put it back), it must read as recorded."""
    _, problem = pack_object_problem(meta(nuid="N2"), TARGET, RECORD)
    assert problem == (
        "pack object does not read as distributed (chunks 'N2', recorded 'N1') and the recorded chunks are gone"
    )
    assert pack_object_problem(meta(nuid="N2"), TARGET) == (len(BODY), None)  # no record: the digest is all there is


@pytest.mark.parametrize("size", ["lots", None, [1]])
def test_a_size_that_does_not_read_is_a_problem(size) -> None:
    assert pack_object_problem(meta(size=size), TARGET)[1] == f"pack object metadata unreadable: size {size!r}"


def test_a_digest_in_no_form_we_know_is_left_to_the_size_and_the_runtimes() -> None:
    """A client that writes no SHA-256 (or another algorithm) is not taken for tampering: the size check and
    every runtime's hash of what it fetches still stand."""
    for digest in (None, "SHA-512=abc"):
        assert pack_object_problem(meta(digest=digest), TARGET) == (len(BODY), None)
