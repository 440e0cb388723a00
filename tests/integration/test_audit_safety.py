"""`kxr audit replay` finds each safety invariant of issue 13 broken in a real log (real JetStream).

One log holds one small story per invariant; the replay must report each code at the
sequence of the entry that broke it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from events.codec import encode_event, make_event
from events.subjects import Subjects
from projections.invariants import SAFETY_CODES
from services.jetstream.client import connect
from services.jetstream.layout import ensure_layout
from services.jetstream.log import Entry, EventLog
from services.reads.audit import replay, summary
from tests.unit.test_projections import CHANNEL_DOC, P0, P1, P2, SERVICE, Log

FIGURES_OK = [{"metric": "error_rate", "value": 0.01, "op": "<=", "threshold": 0.05, "ok": True}]


# Safety codes no log can break any more, each kept as a check on the fold itself (a regression there would
# show): `lkg_not_earned`, since the fold sets last-known-good only as the check allows it (on data, or as a
# rollback's last pin). tests/unit/test_audit_invariants.py feeds the check what the fold before session 23 made.
UNREACHABLE_BY_LOG = {"lkg_not_earned"}


def stories(log: Log) -> dict[str, object]:
    """Each code -> the event that must be reported with it."""
    log.channel()
    log.two_stage_success("r0", P0)  # P0 earned its LKG on data: the clean baseline
    bad: dict[str, object] = {}

    log.through_verified("nodata")
    log.activate("nodata", 0, ["internal"])
    log.started("nodata", 0, ["internal"])
    bad["pass_without_data"] = log.add(
        "release.monitoring_passed",
        {
            "stage": 0,
            "samples": 0,
            "reason": "no samples",
            "comparisons": [{"metric": "latency_p99_ms", "value": None, "op": "<=", "threshold": 400.0, "ok": True}],
        },
        release_id="nodata",
    )

    log.through_verified("refused")
    log.activate("refused", 0, ["internal"])
    log.started("refused", 0, ["internal"])
    bad["pass_despite_refusal"] = log.verdict(
        "refused",
        "passed",
        0,
        comparisons=FIGURES_OK,
        figures={"activation_success_rate": 0.5, "activation_errors": ["switch raised"]},
    )

    log.through_verified("breach")
    log.activate("breach", 0, ["internal"])
    log.started("breach", 0, ["internal"])
    bad["pass_despite_breach"] = log.verdict(
        "breach",
        "passed",
        0,
        comparisons=[{"metric": "error_rate", "value": 0.5, "op": "<=", "threshold": 0.05, "ok": True}],
    )

    log.through_verified("ovr", P1)
    log.activate("ovr", 0, ["internal"])
    log.started("ovr", 0, ["internal"])
    log.override("ovr", 0, "no tenants yet")
    log.expanded("ovr", 0, 1, ["rest"])
    log.activate("ovr", 1, ["rest"])
    log.started("ovr", 1, ["rest"])
    log.verdict("ovr", "passed", 1, comparisons=FIGURES_OK)
    closed = log.closed("ovr", "success")
    bad["success_without_data"] = closed  # the fold refuses to make its pack known-good (nothing for check_lkg)

    # a rollback restores a pack that never passed a window on data (ovr's P1): before session 23 the fold
    # made it known-good by decree (`lkg_not_earned` here); now a rollback's pack is LKG only as the last pin,
    # so no log breaks it (UNREACHABLE_BY_LOG): this one must hold
    log.through_verified("unearned", P2)
    log.activate("unearned", 0, ["internal"], P2)
    log.started("unearned", 0, ["internal"], P2)
    log.verdict("unearned", "failed", 0, comparisons=FIGURES_OK)
    log.rollback_started("unearned", {"internal": P1})
    log.point("internal", P1, "unearned", kind="rollback")
    assert log.world().scope("prod", "canary", "internal").lkg.digest == P0["digest"]

    log.through_verified("abrt", P2)
    log.activate("abrt", 0, ["internal"], P2)
    log.started("abrt", 0, ["internal"], P2)
    log.verdict("abrt", "inconclusive", 0)
    log.note("abrt", "aborted", "wrong pack")
    bad["aborted_release_advanced"] = log.override("abrt", 0)

    log.through_verified("pinned", P2, strategy="pinned", targets={"internal": P1, "rest": P1})
    log.activate("pinned", 0, ["internal"], P2)
    log.started("pinned", 0, ["internal"], P2)
    log.verdict("pinned", "failed", 0, comparisons=FIGURES_OK)
    # strategy pinned recorded P1 (the pinned prior); the rollback goes to the LKG P0 instead (issue 13 item 5)
    bad["rollback_off_strategy"] = log.rollback_started("pinned", {"internal": P0})

    log.through_verified("held", P2)
    log.activate("held", 0, ["internal"], P2)
    log.started("held", 0, ["internal"], P2)
    log.verdict("held", "inconclusive", 0)
    bad["held_moved_without_operator"] = log.expanded("held", 0, 1, ["rest"])

    log.through_verified("paused", P2)
    log.activate("paused", 0, ["internal"], P2)
    log.started("paused", 0, ["internal"], P2)
    log.verdict("paused", "passed", 0, comparisons=FIGURES_OK)
    log.note("paused", "paused", "investigating")
    bad["paused_release_advanced"] = log.expanded("paused", 0, 1, ["rest"])

    # promoted to a channel that watches no longer than the canary (the seed: "stable: longer")
    log.channel({**CHANNEL_DOC, "promote_to": "stable"})
    log.channel(CHANNEL_DOC, channel="stable")  # the canary's 60 s window
    log.through_verified("samewin", P2)
    log.stage("samewin", 0, ["internal"], p=P2)
    log.expanded("samewin", 0, 1, ["rest"])
    log.stage("samewin", 1, ["rest"], p=P2)
    bad["promotion_not_watched_longer"] = log.promoted("samewin")

    # the first stage passed over (its cohort pinned after pre-flight), the pack first runs in `rest`
    log.through_verified("skipped", P2)
    log.activate("skipped", 0, [], P2)  # every cohort of stage 1 pinned: nothing switched
    log.started("skipped", 0, [], P2)
    log.verdict("skipped", "passed", 0, comparisons=FIGURES_OK)
    log.expanded("skipped", 0, 1, ["rest"])
    bad["first_run_past_first_stage"] = log.point("rest", P2, "skipped")

    # a release saying it was promoted from one that never promoted it (the source was aborted); before
    # the promoter stored `promoted` and the linked request as one batch, a lost race left exactly this
    log.requested("orphan", P2, promoted_from="abrt")
    log.prepared("orphan", P2)
    log.distributed("orphan", P2)
    log.verified("orphan", P2)
    bad["promotion_unrecorded"] = log.point("internal", P2, "orphan")

    log.requested("gates", P2)
    log.prepared("gates", P2)
    log.distributed("gates", P2)
    log.add(
        "release.verified",
        {
            "pack": P2,
            "manifest": "m",
            "reference_time": log.clock.isoformat(),
            "signers": ["k0"],
            "gates": [
                {"gate": "signature", "ok": True, "code": "ok"},
                {"gate": "policy", "ok": False, "code": "downgrade"},
            ],
        },
        release_id="gates",
    )
    bad["pointer_gate_not_passed"] = log.point("internal", P2, "gates")

    log.add(
        "trust.rotated",
        {
            "version": 2,
            "rationale": "drop k0",
            "root": {
                "signed": {"version": 2, "threshold": 1, "keys": {"k9": {"public": "AAAA", "name": "new"}}},
                "signatures": [],
            },
        },
    )
    bad["pointer_untrusted"] = log.point("rest", P2, "gates")

    log.through_verified("raced")
    log.activate("raced", 0, ["internal"])
    log.started("raced", 0, ["internal"])
    log.channel()  # the same configuration again: a newer entry than the one the window was judged against
    log.verdict("raced", "passed", 0, channel_seq=1, comparisons=FIGURES_OK)  # judged before it, stored after
    bad["stale_pass_carried_on"] = log.expanded("raced", 0, 1, ["rest"])

    # a rollback landing on a pack whose release was rolled back there since `later` recorded it (session 27:
    # the activator holds such a rollback; this pointer is what an older service, or a forger, would write)
    log.through_verified("later", P2, targets={"internal": P1})
    log.activate("later", 0, ["internal"], P2)
    log.through_verified("pullme", P1)
    log.activate("pullme", 0, ["internal"], P1)
    log.rollback_started("pullme", {"internal": P0})
    log.rolled_back("pullme", {"internal": P0})
    log.rollback_started("later", {"internal": P1})  # its recorded target: the strategy's own
    bad["lkg_pulled"] = log.point("internal", P1, "later", kind="rollback")
    return bad


async def test_replay_reports_each_safety_invariant_at_its_sequence(nats_url, prefix):
    nc = await connect(nats_url)
    js = nc.jetstream()
    subjects = Subjects(prefix)
    await ensure_layout(js, subjects)
    log = EventLog(nc, js, subjects)
    story = Log()
    bad = stories(story)
    seq_of: dict[str, int] = {}
    for event in story.events:
        if event.type == "scope.activated":  # pointers move in atomic batches, as the activator writes them
            seq_of[event.event_id] = await log.commit_batch([Entry(event)], f"batch-{event.event_id}")
        else:
            seq_of[event.event_id] = await log.append(Entry(event))
    # a verdict whose figure overflowed (issue 13 item 6): JSON with Infinity is no contract JSON
    overflowed = make_event(
        "release.monitoring_failed",
        {
            "stage": 0,
            "reason": "p95 inf",
            "comparisons": [
                {"metric": "latency_p95_ms", "value": float("inf"), "op": "<=", "threshold": 250.0, "ok": False}
            ],
        },
        actor=SERVICE,
        release_id="breach",
    )
    # the service's encoder refuses it now (issue 13 item 6), so write the bytes a buggy writer would
    raw = encode_event(
        overflowed.model_copy(
            update={
                "data": overflowed.data.model_copy(
                    update={"comparisons": [overflowed.data.comparisons[0].model_copy(update={"value": 987654.25})]}
                )
            }
        )
    )
    raw = raw.replace(b"987654.25", b"Infinity")
    assert b"Infinity" in raw
    ack = await js.publish(subjects.release("breach", "monitoring_failed"), raw)

    audit = await replay(js, subjects)
    found = {(v.code, v.seq) for v in audit.violations}
    for code, event in bad.items():
        assert (code, seq_of[event.event_id]) in found, (code, [v.line() for v in audit.violations])  # type: ignore[attr-defined]
    assert ("undecodable", ack.seq) in found
    assert set(bad) | UNREACHABLE_BY_LOG == set(SAFETY_CODES)  # every other safety invariant has its story here
    baseline_end = seq_of[story.events[story_r0_end(story)].event_id]
    assert not [
        v.line() for v in audit.violations if v.seq <= baseline_end and v.code in SAFETY_CODES
    ]  # the baseline is clean
    report = summary(audit)
    assert {v["code"] for v in report["violations"]} >= set(bad)  # the JSON report lists them
    assert set(report["safety"]) == set(SAFETY_CODES)
    assert {code for code, n in report["safety"].items() if not n} == UNREACHABLE_BY_LOG
    await nc.close()

    # and as an auditor runs it: `kxr audit replay` prints each with its sequence and exits 1
    env = {**os.environ, "KX_NATS_URL": nats_url, "KX_PREFIX": prefix, "NO_COLOR": "1", "COLUMNS": "400"}
    env.pop("KX_SERVICE_KEYS", None)
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "kxr"),
        "audit",
        "replay",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode()
    assert proc.returncode == 1, err.decode()
    for code, event in bad.items():
        assert f"seq {seq_of[event.event_id]}: {code}: " in text, (code, text)  # type: ignore[attr-defined]
    assert f"safety invariants: {len(UNREACHABLE_BY_LOG)} of {len(SAFETY_CODES)} held; broken: " in text


def test_stories_cover_each_code_once_offline() -> None:
    """The same stories through the pure auditor: each code, and only where expected (no NATS needed)."""
    from projections.invariants import Audit, audit_entry, finish

    story = Log()
    bad = stories(story)
    audit = Audit()
    for position, event in story.entries():
        audit = audit_entry(audit, position, event, Subjects())
    audit = finish(audit)
    seq = {e.event_id: i + 1 for i, e in enumerate(story.events)}
    found = {(v.code, v.seq) for v in audit.violations}
    for code, event in bad.items():
        assert (code, seq[event.event_id]) in found, (code, [v.line() for v in audit.violations])  # type: ignore[attr-defined]
    assert not [v.line() for v in audit.violations if v.seq <= story_r0_end(story) + 1 and v.code in SAFETY_CODES]


def story_r0_end(log: Log) -> int:
    """Index of the baseline release's `closed` in the story."""
    return next(i for i, e in enumerate(log.events) if e.type == "release.closed" and e.release_id == "r0")


def test_fail_closed_moves_and_recorded_overrides_are_no_violations() -> None:
    """What the checks must let through: a service rolling a held release back, an operator's
    recorded pass (it is not a pass on data, and says so), a rollback to the earned LKG."""
    from projections.invariants import Audit, audit_entry

    log = Log()
    log.channel()
    log.two_stage_success("r0", P0)
    log.through_verified("r1", P1)
    log.activate("r1", 0, ["internal"])
    log.started("r1", 0, ["internal"])
    log.verdict("r1", "inconclusive", 0)
    log.override("r1", 0)
    log.expanded("r1", 0, 1, ["rest"])
    log.activate("r1", 1, ["rest"])
    log.started("r1", 1, ["rest"])
    log.verdict("r1", "inconclusive", 1)
    log.rollback_started("r1", {"internal": P0, "rest": P0}, trigger="policy_violation")  # by the service, from held
    log.rolled_back("r1", {"internal": P0, "rest": P0})
    log.closed("r1", "rolled_back")
    audit = Audit()
    for position, event in log.entries():
        audit = audit_entry(audit, position, event, Subjects())
    assert not [v.line() for v in audit.violations if v.code in SAFETY_CODES]
