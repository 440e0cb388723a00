"""Tamper evidence: service signatures on every append, checked by auditors and runtimes."""

from __future__ import annotations

from events.codec import encode_event, make_event
from events.model import Actor, Scope
from events.service_signing import signature_headers
from events.signing import SigningKey
from services.reads.audit import replay
from tests.harness import make_pack, running_service, wait_for


async def test_forged_pointer_is_flagged_by_the_auditor_and_ignored_by_runtimes(nats_url, prefix):
    async with running_service(nats_url, prefix) as svc:
        await svc.configure()
        rt = await svc.runtime("t-int-1")
        await svc.runtime("tenant-42")
        good = make_pack("1.0.0", svc.key)
        await svc.request("r1", good, rollback={"strategy": "none"})
        await svc.wait_release("r1")
        assert (await replay(svc.app.js, svc.app.subjects, service_keys=svc.service_keys)).violations == ()

        # Someone with publish rights writes a well-formed pointer to an evil pack, in a batch,
        # claiming to be the activator: once unsigned, once signed by a key nobody trusts.
        evil = make_pack("6.6.6", svc.key)
        await svc.publish(evil)
        subject = svc.app.subjects.scope("prod", "canary", "internal", "activated")
        for signer in (None, SigningKey.generate()):
            forged = make_event(
                "scope.activated",
                {
                    "pack": {"name": "kb", "version": "6.6.6", "digest": evil.digest, "size": len(evil.body)},
                    "manifest": "m",
                    "release_id": "r1",
                    "kind": "rollout",
                },
                actor=Actor(kind="service", id="activator"),
                release_id="r1",
                scope=Scope(env="prod", channel="canary", cohort="internal"),
            )
            payload = encode_event(forged)
            headers = {
                "Nats-Msg-Id": forged.event_id,
                "Nats-Batch-Id": forged.event_id,
                "Nats-Batch-Sequence": "1",
                "Nats-Batch-Commit": "1",
            }
            if signer is not None:
                headers.update(signature_headers(signer, subject, payload))
            await svc.app.nc.request(subject, payload, headers=headers, timeout=5)

        await wait_for(
            lambda: sum("ignored pointer" in why for _, why in rt.history) == 2,
            5,
            "the runtime to ignore both forgeries",
        )
        assert rt.active.digest == good.digest  # never switched
        audit = await replay(svc.app.js, svc.app.subjects, service_keys=svc.service_keys)
        forged_lines = [v for v in audit.violations if v.code == "unsigned_or_forged"]
        assert len(forged_lines) == 2
        assert "unsigned" in forged_lines[0].message and "unknown key" in forged_lines[1].message
        # without the keys the forgeries look legitimate to the other invariants: signatures are what catch them
        assert not [
            v for v in (await replay(svc.app.js, svc.app.subjects)).violations if v.code == "unsigned_or_forged"
        ]


async def test_a_stored_event_altered_after_signing_is_forged(nats_url, prefix):
    from events.service_signing import ServiceKeys

    key = SigningKey.generate()
    keys = ServiceKeys.of(key, ["activator"])
    subject, payload = "kx.scope.prod.canary.all.activated", b'{"x":1}'
    headers = signature_headers(key, subject, payload)
    assert keys.check("activator", subject, payload, headers) is None
    assert "forged" in keys.check("activator", subject, b'{"x":2}', headers)
    assert "forged" in keys.check(
        "activator", subject.replace("all", "other"), payload, headers
    )  # the subject is signed too
    assert "not trusted for" in keys.check("verifier", subject, payload, headers)


async def serial_audit(js, subjects, keys):
    """The reference: every signature verified in line, entry by entry, as replay did before its pool."""
    from projections.invariants import Audit, audit_signed_entry, finish
    from services.jetstream.log_reads import log_batches

    audit = Audit()
    async for batch in log_batches(js, subjects):
        for entry, position, event in batch:
            audit = audit_signed_entry(audit, keys, position, event, entry.data, entry.headers, subjects)
    return finish(audit)


async def test_the_pooled_signature_checks_audit_exactly_as_checks_in_line(nats_url, prefix, monkeypatch):
    """Replay verifies each batch's signatures in worker processes, a batch ahead of the fold: the
    violations and the rebuilt world equal those of verifying every entry in line, over a log with
    genuine appends and every kind of bad signature, spread over many small batches."""
    from services.jetstream import log_reads
    from services.reads import signature_pool
    from tests.harness import _SERVICE_KEYS

    async with running_service(nats_url, prefix) as svc:
        await svc.configure()
        await svc.runtime("t-int-1")
        await svc.runtime("tenant-42")
        await svc.request("r1", make_pack("1.0.0", svc.key), rollback={"strategy": "none"})
        await svc.wait_release("r1")
        subject = svc.app.subjects.scope("prod", "canary", "internal", "unpinned")
        stranger = SigningKey.generate()
        trusted = _SERVICE_KEYS[prefix]  # the key this service signs with
        for n, sign in enumerate(
            (
                lambda p: {},  # unsigned
                lambda p: signature_headers(stranger, subject, p),  # a key nobody trusts
                lambda p: signature_headers(trusted, subject, p + b" "),  # the service's key, other bytes
                lambda p: {**signature_headers(trusted, subject, p), "Kx-Signature": "not base64!"},
                lambda p: signature_headers(trusted, subject, p),  # genuine bytes, signed by the service's key
            )
        ):
            event = make_event(
                "scope.unpinned",
                {"reason": "expired", "rationale": f"probe {n}"},
                actor=Actor(kind="service", id="pinner"),
                scope=Scope(env="prod", channel="canary", cohort="internal"),
            )
            payload = encode_event(event)
            await svc.app.nc.request(subject, payload, headers={"Nats-Msg-Id": event.event_id, **sign(payload)})
        monkeypatch.setattr(log_reads, "LOG_READ_BATCH", 3)  # many batches: the pipeline crosses each edge
        monkeypatch.setattr(signature_pool, "POOL_MIN_BATCH", 1)  # and every batch goes to the workers
        pooled = await replay(svc.app.js, svc.app.subjects, service_keys=svc.service_keys)
        inline = await serial_audit(svc.app.js, svc.app.subjects, svc.service_keys)
    assert pooled.violations == inline.violations
    assert pooled.world == inline.world and pooled.events == inline.events
    codes = [v.message for v in pooled.violations if v.code == "unsigned_or_forged"]
    assert len(codes) >= 3 and any("forged" in m for m in codes) and any("base64" in m for m in codes)
