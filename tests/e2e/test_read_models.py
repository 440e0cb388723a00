"""Issue 18: the operator's read models say what a fold of the log says, after every step of a story.

A `kxr serve` keeps the read models (services/reads/projector.py); after each step the test reads
`kxr status` (in flight and --all), `kxr release list` (all, and filtered) and `kxr channel show`
from them (services/reads/model_reads.py) and from a fold of the whole log, and compares the JSON.
At the end the `kxr` commands themselves answer from the model (no "folding the log" line) with the
output of `--fold`; a restart (one with a release in flight, one after) resumes the model from the
bucket, and what changes afterwards — a closed release too — is still what a fold says.
"""

from __future__ import annotations

import asyncio
import json
import signal
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from services.jetstream.log_reads import load_signed_world
from services.reads import model_reads
from services.reads.history import load_history, summary
from services.reads.read_models import channel_show
from services.reads.shapes import ReleaseSummary, dump, status_of
from services.settings import load_service_keys
from tests.e2e.support import wait_closed, wait_event
from tests.e2e.test_serve import rig, start_world  # noqa: F401  (rig is a fixture)
from tests.harness import make_pack

pytestmark = pytest.mark.e2e

FILTERS = [
    (None, None, None),
    (None, "in-flight", None),
    ((None, "canary"), "success", None),
    (("prod", "x"), None, None),
]


def ok(result) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


async def both(rig, kx) -> tuple[dict, dict]:  # noqa: F811
    """(from the read models, from a fold of the log) of every read, at the log's last sequence."""
    keys = load_service_keys(kx.workdir / "kx-data" / "service-keys.json")
    s = rig.subjects
    since = datetime.now(UTC) - timedelta(hours=1)

    async def use(view):
        out = {}
        for all_releases in (False, True):
            out[f"status all={all_releases}"] = await model_reads.status(view, all_releases)
        for channel, outcome, _ in FILTERS:
            out[f"list {channel} {outcome}"] = (await model_reads.release_list(view, channel, outcome, None, 50))[0]
        out["list since"] = (await model_reads.release_list(view, None, None, since, 2))[0]
        value = await model_reads.channel(view, "prod", "canary")
        out["channel"] = value["show"] if value else None
        out["cohorts"] = value["cohorts"] if value else None
        return out

    model = await model_reads.read_view(
        rig.nc, s.releases_stream, s.read_bucket, model_reads.keys_id(keys), use, wait_s=20
    )
    world, ignored = await load_signed_world(rig.js, s, keys)
    fold = {}
    for all_releases in (False, True):
        folded = status_of(world, ignored, all_releases)
        fold[f"status all={all_releases}"] = {k: v for k, v in folded.items() if k != "signatures"}
    for channel, outcome, _ in FILTERS:
        history = await load_history(rig.js, s, keys, channel=channel, outcome=outcome, limit=50)
        fold[f"list {channel} {outcome}"] = dump([ReleaseSummary.model_validate(summary(i)) for i in history.items])
    history = await load_history(rig.js, s, keys, since=since, limit=2)
    fold["list since"] = dump([ReleaseSummary.model_validate(summary(i)) for i in history.items])
    state, problem = world.channel_state("prod", "canary"), world.channel_problem("prod", "canary")
    fold["channel"] = channel_show(state, problem, "prod", "canary") if state or problem else None
    fold["cohorts"] = list(world.channel_config("prod", "canary").cohort_names) if state or problem else None
    return model, fold


async def same(rig, kx, step: str) -> dict:  # noqa: F811
    model, fold = await both(rig, kx)
    for what in fold:
        assert model[what] == fold[what], f"after {step}: {what} differs\nmodel: {model[what]}\nfold:  {fold[what]}"
    return model


async def test_read_models_equal_the_fold_after_every_step(kx, rig):  # noqa: F811
    serve, _, _ = await start_world(kx, rig)
    await same(rig, kx, "start")
    p1 = make_pack("1.0.0", kx.key)
    await rig.request("r1", p1, rollback={"strategy": "none"})
    await wait_event(rig.js, kx, "r1", "verified")
    await same(rig, kx, "r1 verified")
    assert (await wait_closed(rig.js, kx, "r1"))["data"]["outcome"] == "success"
    await same(rig, kx, "r1 closed")
    p2 = make_pack("1.1.0", kx.key)
    await rig.request("r2", p2, monitoring={"window_s": 600, "min_samples": 1})
    await wait_event(rig.js, kx, "r2", "monitoring_started")
    shown = await same(rig, kx, "r2 monitoring")
    assert [r["release_id"] for r in shown["status all=False"]["releases"]] == ["r2"]
    ok(await kx.arun("pin", "prod/canary/rest", "--version", "1.0.0", "--until", "2h", "-m", "hold the rest"))
    await same(rig, kx, "pin")
    ok(await kx.arun("release", "pause", "r2", "-m", "look first"))
    await same(rig, kx, "pause")
    # a restart with r2 in flight and r1 closed: the projector resumes from the bucket (the log's tail
    # only, r2 read back from its own events), and what follows is as a whole fold says
    serve = await restarted(rig, kx, serve)
    await same(rig, kx, "restart with r2 in flight")
    ok(await kx.arun("release", "abort", "r2", "-m", "enough"))
    await wait_closed(rig.js, kx, "r2")
    shown = await same(rig, kx, "r2 aborted")
    assert shown["status all=False"]["releases"] == []
    assert {r["release_id"] for r in shown["status all=True"]["releases"]} == {"r1", "r2"}
    # a closed release (out of the projector's memory) changes again: it is read back whole, and moves
    ok(await kx.arun("release", "annotate", "r1", "-m", "postmortem done"))
    shown = await same(rig, kx, "r1 annotated after close")
    assert [r["release_id"] for r in shown["status all=True"]["releases"]] == ["r2", "r1"]

    # the commands themselves: from the model (no fold said), the same JSON as --fold
    for args in (["status"], ["status", "--all"], ["release", "list"], ["channel", "show", "prod/canary"]):
        from_model = await kx.arun(*args, "--json")
        assert "folding the log" not in from_model.stderr, from_model.stderr
        folded = await kx.arun(*args, "--json", "--fold")
        assert json.loads(ok(from_model)) == json.loads(ok(folded)), args
    # a channel pin's pre-check reads the channel's cohorts from the model
    pinned = await kx.arun("pin", "prod/canary", "--version", "1.0.0", "--until", "1h", "-m", "all of it")
    assert "folding the log" not in ok(pinned) + pinned.stderr
    await same(rig, kx, "channel pin")
    await decides_as_the_fold(rig, kx)

    # a restart resumes the model: the same values, nothing goes back; a closed release (known to the
    # restarted projector from the bucket's index only) that changes again is read back whole
    before = await both(rig, kx)
    await restarted(rig, kx, serve)
    after = await both(rig, kx)
    assert after == before
    ok(await kx.arun("release", "annotate", "r2", "-m", "after the restart"))
    shown = await same(rig, kx, "r2 annotated after a restart")
    assert [r["release_id"] for r in shown["status all=True"]["releases"]] == ["r1", "r2"]  # by last seq


async def decides_as_the_fold(rig, kx) -> None:  # noqa: F811
    """`kxr pin`/`unpin` decide on the read models (services/reads/model_world.py): the scopes, the channel
    and the pack they find are what a fold of the whole log has, and so is every decision taken on them."""
    from events.model import Scope
    from services.actions.pins import find_pack, pin, unpin
    from services.errors import OperatorError
    from services.jetstream.log_reads import load_world
    from services.reads.model_world import pin_facts, pin_world
    from tests.harness import OPERATOR

    keys = load_service_keys(kx.workdir / "kx-data" / "service-keys.json")
    s, now = rig.subjects, datetime.now(UTC)
    folded = await load_world(rig.js, s, service_keys=keys)
    for parts, version in ((("prod", "canary"), "1.0.0"), (("prod", "canary", "rest"), None), (("prod", "x"), "9")):
        facts = await model_reads.read_view(
            rig.nc, s.releases_stream, s.read_bucket, model_reads.keys_id(keys),
            lambda view, p=parts, v=version: pin_facts(view, p, v), wait_s=20,
        )  # fmt: skip
        world = await pin_world(rig.js, s, keys, facts, version)
        assert facts["targets"] == (
            [("prod", "canary", c) for c in folded.channel_config("prod", "canary").cohort_names]
            if parts == ("prod", "canary")
            else [parts]
            if len(parts) == 3
            else [("prod", "x", "all")]
        )
        assert world.channel_state(*parts[:2]) == folded.channel_state(*parts[:2])
        for target in facts["targets"]:
            assert world.scope(*target) == folded.scope(*target), target
            scope = Scope(env=target[0], channel=target[1], cohort=target[2])
            decisions = [lambda w, sc=scope: unpin(w, sc, "why", OPERATOR, now)]
            if version is not None:  # what a pin of that version reads (an unpin reads no release)
                decisions.append(
                    lambda w, sc=scope, v=version: pin(w, sc, v, now + timedelta(hours=1), "why", OPERATOR, now)
                )
            for decide in decisions:
                try:
                    mine = decide(world)
                except OperatorError as exc:
                    mine = str(exc)
                try:
                    theirs = decide(folded)
                except OperatorError as exc:
                    theirs = str(exc)
                if isinstance(mine, tuple):  # an event and its expected sequence: the same but for ids
                    assert mine[1] == theirs[1] and mine[0].data == theirs[0].data, target
                else:
                    assert mine == theirs, target
        if version == "1.0.0":  # from the model: the newest verified release of it alone, not a fold
            assert set(world.releases) == {"r1"} and len(folded.releases) == 2
            assert find_pack(world, "prod", "canary", "1.0.0") == find_pack(folded, "prod", "canary", "1.0.0")

    # release actions decide on the release's own events (+ its channel, + its activated scopes)
    from services.actions import operator as ops
    from services.reads.model_world import _model_scopes, release_world

    # a rollback reads its scopes from the models when they are current: those states are the fold's
    r1 = folded.release("r1")
    r1_scopes = [("prod", "canary", c) for c in r1.activated]
    from_models = await _model_scopes(rig.js, s, keys, r1_scopes)
    assert from_models is not None and set(from_models) == set(r1_scopes)
    assert all(from_models[k] == folded.scope(*k) for k in r1_scopes)
    for release_id, reads, use_model in [
        *((r, reads, True) for r in ("r1", "r2", "nope") for reads in ("release", "channel", "scopes")),
        *((r, "scopes", False) for r in ("r1", "r2")),  # the fold of the scopes' own subjects
    ]:
        world = await release_world(rig.js, s, keys, release_id, reads, use_model)
        assert world.release(release_id) == folded.release(release_id), (release_id, reads)
        release = folded.release(release_id)
        target = release.prepared.target if release and release.prepared else None
        if target and reads == "channel":
            assert world.channel_state(target.env, target.channel) == folded.channel_state(target.env, target.channel)
        if target and reads == "scopes":
            for cohort in release.activated:
                mine, theirs = (
                    world.scope(target.env, target.channel, cohort),
                    folded.scope(target.env, target.channel, cohort),
                )
                if not use_model:
                    # the scopes' own subjects cannot say which release's success made a pack LKG, nor which
                    # rollback pulled one (release events): the rollback then decides on the pin and the target
                    # pre-flight recorded (the activator, on the whole fold, holds one pulled since), and the
                    # decisions compared below must agree
                    unknown = {
                        "lkg": None,
                        "lkg_manifest": None,
                        "lkg_release": None,
                        "lkg_earned": True,
                        "lkg_prior": None,
                        "pulled": frozenset(),
                    }
                    mine, theirs = replace(mine, **unknown), replace(theirs, **unknown)
                assert mine == theirs
        actions = {
            "release": [
                lambda w, r=release_id: ops.pause(w, r, "why", OPERATOR, now),
                lambda w, r=release_id: ops.resume(w, r, "why", OPERATOR, now),
                lambda w, r=release_id: ops.abort(w, r, "why", OPERATOR, now),
                lambda w, r=release_id: ops.annotate(w, r, "why", None, OPERATOR, now),
                lambda w, r=release_id: ops.promote(w, r, "why", OPERATOR, now),
                lambda w, r=release_id: ops.close(w, r, "failed", "why", OPERATOR, now),
            ],
            "channel": [lambda w, r=release_id: ops.extend(w, r, 900, "why", OPERATOR, now)],
            "scopes": [lambda w, r=release_id: ops.rollback(w, r, "operator", "why", OPERATOR, now)],
        }[reads]
        for decide in actions:
            assert _decided(decide, world) == _decided(decide, folded), (release_id, reads)


def _decided(decide, world):
    """A decision as comparable data: the event's type, data and expected sequence, or the refusal."""
    from services.errors import OperatorError

    try:
        action = decide(world)
    except OperatorError as exc:
        return str(exc)
    return action.event.type, action.event.data, action.expected_seq


async def restarted(rig, kx, serve):  # noqa: F811
    """The service stopped and started again (verbose: its log says where the read models resumed)."""
    position = json.loads((await (await rig.js.key_value(rig.subjects.read_bucket)).get("position")).value)["seq"]
    serve.signal(signal.SIGTERM)
    await asyncio.to_thread(serve.proc.wait, 30)
    serve = await kx.serve("-v").ready()
    for _ in range(200):
        if "read models: resumed at seq" in serve.stderr():
            break
        await asyncio.sleep(0.05)
    assert f"read models: resumed at seq {position} " in serve.stderr(), serve.stderr()[-2000:]
    return serve


async def test_without_a_service_the_commands_fold_and_say_so(kx, rig):  # noqa: F811
    from services.jetstream.layout import ensure_layout

    await ensure_layout(rig.js, rig.subjects)  # the streams and an empty read-model bucket: nobody writes it
    await rig.configure()
    result = await kx.arun("status", "--json")
    assert "kxr: folding the log: " in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1, result.stderr
    assert json.loads(ok(result))["log_seq"] >= 1
    shown = json.loads(ok(await kx.arun("channel", "show", "prod/canary", "--json")))
    assert shown["scope"] == "prod/canary"


async def test_release_list_from_the_models_lists_what_does_not_decode(kx, rig):  # noqa: F811
    """Anything the service could not decode is reported, never silently absent: `kxr release list`
    answered from the read models lists the ignored entries the service's fold noted, as `--fold` does."""
    await kx.serve().ready()
    ack = await rig.js.publish(rig.subjects.release("rjunk", "requested"), b"{not json")
    line = f"ignored log seq {ack.seq}: undecodable"
    for _ in range(100):  # until the read models reflect the junk entry
        from_model = await kx.arun("release", "list")
        if "folding the log" not in from_model.stderr and line in from_model.stderr:
            break
        await asyncio.sleep(0.1)
    ok(from_model)
    assert "folding the log" not in from_model.stderr and line in from_model.stderr, from_model.stderr
    folded = await kx.arun("release", "list", "--fold")
    ok(folded)
    assert line in folded.stderr, folded.stderr
