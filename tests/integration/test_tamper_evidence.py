"""Tamper evidence: service signatures on every append, checked by auditors and runtimes."""

from __future__ import annotations

from events.codec import encode_event, make_event
from events.model import Actor, Scope
from events.service_signing import signature_headers
from events.signing import SigningKey
from services.reads.audit import replay
from services.runtime import sdk
from tests.harness import make_pack, running_service, wait_for


async def test_forged_pointer_is_flagged_by_the_auditor_and_ignored_by_runtimes(nats_url, prefix, monkeypatch):
    monkeypatch.setattr(sdk, "HISTORY_KEPT", 2)  # the runtime remembers its newest two: bounded, not every entry
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
        assert len(rt.history) == 2  # the activation of r1 before them is no longer kept
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
