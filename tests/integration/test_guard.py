"""Policy violations discovered after activation, against a real nats-server and the whole service.

(a) a release in flight whose pack's only signing key a trust rotation drops is rolled back
    (trigger policy_violation) to last-known-good;
(b) a settled scope whose channel policy changes under its pack is flagged, and the flag is
    notified by webhook and shown by `kxr status`.
"""

from __future__ import annotations

import asyncio
import json

from events.model import ScopeFlagged
from events.signing import SigningKey, b64encode
from services.actions.trust import rotate
from services.jetstream.log_reads import log_entries
from services.reads.audit import replay
from services.reads.status import scope_rows
from tests.harness import CHANNEL, OPERATOR, make_pack, running_service, trust_root_for, wait_for
from tests.integration.webhook_server import WebhookServer


def root_doc(keys, version: int) -> dict:
    return {
        "version": version,
        "threshold": 1,
        "keys": {k.keyid: {"public": b64encode(k.public_raw), "name": f"k{version}-{i}"} for i, k in enumerate(keys)},
    }


async def log_events(svc, filters=None):
    return [e async for _, _, e in log_entries(svc.app.js, svc.app.subjects, filters) if e is not None]


async def settled_on(svc, release_id: str, pack) -> None:
    """`pack` released to every cohort of prod/canary and closed success: it is last-known-good."""
    await svc.request(release_id, pack, rollback={"strategy": "none"})
    release = await svc.wait_release(release_id)
    assert release.outcome == "success", release.failure


async def test_a_rotation_that_drops_the_active_packs_signer_rolls_the_release_back_to_lkg(nats_url, prefix):
    stays, dropped = SigningKey.generate(), SigningKey.generate()
    async with running_service(nats_url, prefix, key=stays, trust_root=trust_root_for(stays, dropped)) as svc:
        await svc.configure()
        await svc.runtime("t-int-1")
        await svc.runtime("tenant-42")
        lkg = make_pack("1.0.0", stays)
        await settled_on(svc, "r-lkg", lkg)

        # signed by the key the rotation will drop; a long window keeps it in flight
        doomed = make_pack("1.1.0", dropped)
        await svc.request("r-doomed", doomed, monitoring={"window_s": 600, "min_samples": 1})
        await svc.wait_release("r-doomed", "monitoring")
        assert svc.world.scope("prod", "canary", "internal").active_pack.digest == doomed.digest

        await rotate(svc.app.log, svc.app.js, svc.trust_root, root_doc([stays], 2), [stays], OPERATOR, "retire a key")

        release = await svc.wait_release("r-doomed")
        assert release.outcome == "rolled_back"
        assert release.rollback is not None and release.rollback.trigger == "policy_violation"
        assert (
            "signature/threshold_not_met" in release.rollback.reason
            and "prod/canary/internal" in release.rollback.reason
        )
        assert release.rolled_back is not None and release.rolled_back.targets["internal"].digest == lkg.digest
        started = [
            e
            for e in await log_events(svc, [svc.app.subjects.release_filter("r-doomed")])
            if e.type == "release.rollback_started"
        ]
        assert [e.actor.id for e in started] == ["guard"]  # exactly one, by the guard
        assert svc.world.scope("prod", "canary", "internal").active_pack.digest == lkg.digest
        assert svc.world.scope("prod", "canary", "rest").active_pack.digest == lkg.digest  # never exposed
        # the LKG is still signed by a trusted key: nothing is flagged
        assert all(s.flag is None for s in svc.world.scopes.values())
        audit = await replay(svc.app.js, svc.app.subjects, service_keys=svc.service_keys)
        assert audit.violations == (), [v.line() for v in audit.violations]


async def test_a_settled_scope_that_a_policy_change_leaves_in_violation_is_flagged_and_notified(nats_url, prefix):
    key = SigningKey.generate()
    with WebhookServer() as hooks:
        sink = {"name": "ops", "url": hooks.url("/flags"), "on": ["flagged", "rolled_back"]}
        config = {**CHANNEL, "notifications": [sink]}
        async with running_service(nats_url, prefix, key=key) as svc:
            await svc.configure(config=config)
            await svc.runtime("t-int-1")
            await svc.runtime("tenant-42")
            pack = make_pack("1.0.0", key)
            await settled_on(svc, "r-settled", pack)
            pointers = {c: svc.world.scope("prod", "canary", c).active_seq for c in ("internal", "rest")}

            # the channel now only admits another builder: the pack that runs was built by kx-pipeline
            await svc.configure(
                config={**config, "policy": {**CHANNEL["policy"], "allowed_builders": ["other-pipeline"]}}
            )

            flags = await wait_for(
                lambda: (
                    [s for s in svc.world.scopes.values() if s.flag]
                    if all(svc.world.scope("prod", "canary", c).flag for c in ("internal", "rest"))
                    else None
                ),
                20,
                "both cohorts flagged",
            )
            for state in flags:
                assert state.flag.code == "policy/builder_forbidden" and state.flag.pack.digest == pack.digest
                assert state.active_seq == pointers[state.key[2]]  # nothing moved
            events = [e for e in await log_events(svc) if e.type == "scope.flagged"]
            assert sorted(e.scope.cohort for e in events) == ["internal", "rest"]  # once each
            assert all(
                isinstance(e.data, ScopeFlagged) and e.actor.id == "guard" and e.release_id == "r-settled"
                for e in events
            )

            # notified: one post per flag, recorded under the release that put the pack there
            await wait_for(lambda: len(hooks.posts("/flags")) == 2, 20, "a webhook per flag")
            bodies = sorted((json.loads(p.body) for p in hooks.posts("/flags")), key=lambda b: b["scope"]["cohort"])
            assert [(b["kind"], b["code"], b["scope"]["cohort"], b["pack"]["digest"]) for b in bodies] == [
                ("flagged", "policy/builder_forbidden", c, pack.digest) for c in ("internal", "rest")
            ]
            assert {p.headers["idempotency-key"] for p in hooks.posts("/flags")} == {e.event_id for e in events}
            recorded = await wait_for_notes(svc, "r-settled", 2)
            assert {(n.data.kind, n.data.trigger) for n in recorded} == {("flagged", e.event_id) for e in events}

            # shown by `kxr status`
            rows = {r["scope"]: r for r in scope_rows(svc.world)}
            assert rows["prod/canary/internal"]["flag"].startswith("policy/builder_forbidden: ")
            audit = await replay(svc.app.js, svc.app.subjects, service_keys=svc.service_keys)
            assert audit.violations == (), [v.line() for v in audit.violations]


async def test_a_violation_back_after_another_is_flagged_again(nats_url, prefix):
    """builder refused, then source refused, then builder refused again: three flags, the scope saying the
    last one. Before, the third flag derived the first one's event id (pointer and code) and JetStream
    dropped it as a duplicate: the scope went on saying `source_forbidden` (found by the lifecycle model)."""
    key = SigningKey.generate()
    async with running_service(nats_url, prefix, key=key) as svc:
        await svc.configure()
        await svc.runtime("t-int-1")
        await svc.runtime("tenant-42")
        pack = make_pack("1.0.0", key)
        await settled_on(svc, "r-settled", pack)
        builders = {**CHANNEL, "policy": {**CHANNEL["policy"], "allowed_builders": ["other-pipeline"]}}
        sources = {**CHANNEL, "policy": {**CHANNEL["policy"], "allowed_sources": ["https://git.example/other"]}}
        for config, code in (
            (builders, "builder_forbidden"),
            (sources, "source_forbidden"),
            (builders, "builder_forbidden"),
        ):
            await svc.configure(config=config)
            await wait_for(
                lambda code=code: (
                    all(
                        (flag := svc.world.scope("prod", "canary", c).flag) is not None
                        and flag.code == f"policy/{code}"
                        for c in ("internal", "rest")
                    )
                    or None
                ),
                20,
                f"both cohorts flagged policy/{code}",
            )
        flags = [e for e in await log_events(svc) if e.type == "scope.flagged" and e.scope.cohort == "rest"]
        assert [e.data.code for e in flags] == [
            "policy/builder_forbidden",
            "policy/source_forbidden",
            "policy/builder_forbidden",
        ]
        assert len({e.event_id for e in flags}) == 3
        audit = await replay(svc.app.js, svc.app.subjects, service_keys=svc.service_keys)
        assert audit.violations == (), [v.line() for v in audit.violations]


async def wait_for_notes(svc, release_id: str, count: int):
    for _ in range(400):
        notes = await log_events(svc, [svc.app.subjects.notification_filter(release_id)])
        if len(notes) >= count:
            return notes
        await asyncio.sleep(0.05)
    raise AssertionError(f"{count} notification outcomes never recorded for {release_id}")
