"""Issue 16: every `--json` output validates against its schema in docs/schemas/cli/, and every table
fits 80 columns without breaking a token or a digest (`--wide` shows everything in full).

One log drives it all: a release that succeeded (r1, so an LKG), one in flight (r2), a pin, a poison
message (a dead letter), an exported evidence bundle and a signed pack on disk.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import pytest

from tests.e2e.support import wait_event, wait_until
from tests.e2e.test_serve import rig, start_world  # noqa: F401  (rig is a fixture)
from tests.harness import make_pack

pytestmark = pytest.mark.e2e

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas" / "cli"
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
ANY_DIGEST_START = re.compile(r"sha256:")
SHORT_DIGEST = re.compile(r"sha256:[0-9a-f]{12}…")
TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


def ok(result) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


def validate(stem: str, doc) -> None:
    schema = json.loads((SCHEMAS / f"{stem}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, f"{stem}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])


def times_and_digests(doc, path="") -> list[tuple[str, str]]:
    """Every (path, value) of a value that looks like a digest or a time, anywhere in `doc` (not free text)."""
    found = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            found += times_and_digests(v, f"{path}.{k}")
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            found += times_and_digests(v, f"{path}[{i}]")
    elif (
        isinstance(doc, str) and " " not in doc and (doc.startswith("sha256") or re.match(r"^\d{4}-\d{2}-\d{2}T", doc))
    ):
        found.append((path, doc))
    return found


@pytest.fixture
async def world(kx, rig):  # noqa: F811
    await start_world(kx, rig)
    from tests.e2e.support import wait_closed

    p1 = make_pack("1.0.0", kx.key)
    await rig.request("r1", p1, rollback={"strategy": "none"})
    assert (await wait_closed(rig.js, kx, "r1"))["data"]["outcome"] == "success"
    p2 = make_pack("1.1.0", kx.key)
    await rig.request("r2", p2, monitoring={"window_s": 600, "min_samples": 1})
    await wait_event(rig.js, kx, "r2", "monitoring_started")
    ok(await kx.arun("pin", "prod/canary/rest", "--version", "1.0.0", "--until", "2h", "-m", "hold the rest"))
    await rig.js.publish(rig.subjects.release("x1", "verified"), b"{ not json")

    async def dead_letter():
        rows = json.loads(ok(await kx.arun("deadletter", "list", "--json")))
        return rows or None

    rows = await wait_until(dead_letter, 15, "the poison message to be dead-lettered")
    ok(await kx.arun("keys", "generate", "auditor.key.json", "--name", "auditor", "--trust-root", "auditors.json"))
    ok(await kx.arun("audit", "export", "r1", "--key", "auditor.key.json", "--out", "r1.bundle.json"))
    (kx.workdir / "p1.pack").write_bytes(p1.body)
    (kx.workdir / "p1.manifest.json").write_bytes(p1.manifest)
    return {"p1": p1, "p2": p2, "dead_letter": str(rows[0]["id"])}


async def test_every_json_output_has_one_shape_and_validates_against_its_schema(kx, world):
    p1, p2 = world["p1"], world["p2"]
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    keys = str(kx.workdir / "kx-data" / "service-keys.json")
    outputs = {
        "status": ["status", "--json", "--all"],
        "release-show": ["release", "show", "r1", "--json"],
        "audit-at": ["audit", "at", now, "--scope", "prod/canary", "--json"],
        "audit-replay": ["audit", "replay", "--json", "--service-keys", keys],
        "audit-verify": ["audit", "verify", "r1.bundle.json", "--trusted", "auditors.json", "--json"],
        "channel-show": ["channel", "show", "prod/canary", "--json"],
        "trust-show": ["trust", "show", "--json"],
        "deadletter-list": ["deadletter", "list", "--json"],
        "deadletter-show": ["deadletter", "show", world["dead_letter"], "--json"],
        "pack-verify": ["pack", "verify", "p1.pack", "p1.manifest.json", "--json"],
        "release-list": ["release", "list", "--json"],
    }
    docs = {}
    for stem, args in outputs.items():
        result = await kx.arun(*args)
        if stem == "audit-replay":  # the poison message is a violation: exit 1, the report on stdout all the same
            assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
            docs[stem] = json.loads(result.stdout)
            assert [v["seq"] for v in docs[stem]["violations"]], docs[stem]
            validate(stem, docs[stem])
            continue
        docs[stem] = json.loads(ok(result))
        validate(stem, docs[stem])
    validate("release-show", json.loads(ok(await kx.arun("audit", "release", "r2", "--json"))))
    # kxr watch --json: a frame per line; r1 ended (one frame), r2 in its window (exit 4 at --timeout)
    frames = [json.loads(line) for line in ok(await kx.arun("watch", "r1", "--json")).splitlines()]
    live = await kx.arun("watch", "r2", "--json", "--timeout", "1", "--interval", "0.2")
    assert live.returncode == 4 and "Traceback" not in live.stderr, live.stderr
    frames += [json.loads(line) for line in live.stdout.splitlines()]
    for frame in frames:
        validate("watch", frame)
    docs["watch"] = frames

    # one shape per concept: every digest is sha256:<64 hex>, every time RFC 3339 UTC with Z
    for stem, doc in docs.items():
        for path, value in times_and_digests(doc):
            if value.startswith("sha256"):
                assert DIGEST.fullmatch(value), (stem, path, value)
            elif not path.endswith(".scope"):
                assert TIME.match(value), (stem, path, value)

    pack = {"name": p1.name, "version": "1.0.0", "digest": p1.digest}
    scopes = {s["scope"]: s for s in docs["status"]["scopes"]}
    internal, rest = scopes["prod/canary/internal"], scopes["prod/canary/rest"]
    assert internal["lkg"] == pack and rest["lkg"] == pack  # lkg: a pack object, the same in every command
    assert (internal["env"], internal["channel"], internal["cohort"]) == ("prod", "canary", "internal")
    assert internal["pack"] == {"name": p2.name, "version": "1.1.0", "digest": p2.digest} and internal["since"]
    assert rest["pinned"]["pack"] == pack and TIME.match(rest["pinned"]["until"])
    at = {s["scope"]: s for s in docs["audit-at"]["scopes"]}
    assert at["prod/canary/internal"]["lkg"] == pack and docs["audit-at"]["scope"] == "prod/canary"
    assert docs["audit-replay"]["scopes"]["prod/canary/internal"]["lkg"] == pack
    assert docs["audit-verify"]["pack"] == pack and docs["pack-verify"]["pack"] == pack
    assert docs["release-show"]["pack"]["digest"] == p1.digest
    releases = {r["release_id"]: r for r in docs["status"]["releases"]}
    assert releases["r1"]["pack"] == pack and releases["r2"]["target"] == "prod/canary"
    # one id field across commands: release_id (status, release list, watch, the contract)
    assert [r["release_id"] for r in docs["release-list"]] == ["r2", "r1"]
    assert docs["release-list"][1]["pack"] == pack and docs["release-list"][1]["outcome"] == "success"
    r1_frame, r2_frame = frames[0], frames[-1]
    assert r1_frame["release_id"] == "r1" and r1_frame["terminal"] and r1_frame["window"]["source"] == "verdict"
    assert r2_frame["release_id"] == "r2" and r2_frame["window"]["open"]
    frame_scopes = {s["scope"]: s for s in r2_frame["scopes"]}
    assert frame_scopes["prod/canary/internal"]["lkg"] == pack  # lkg: the same pack object as status's
    assert frame_scopes["prod/canary/internal"]["lkg_version"] == "1.0.0"
    assert frame_scopes["prod/canary/rest"]["pinned"]["pack"] == pack
    assert docs["channel-show"]["scope"] == "prod/canary" and TIME.match(docs["channel-show"]["configured_at"])
    letter = docs["deadletter-list"][0]
    assert letter["stream_seq"] == letter["stream seq"] and TIME.match(letter["at"])


TABLES = [
    ["status"],
    ["status", "--all"],
    ["release", "show", "r1"],
    ["release", "show", "r2"],
    ["audit", "release", "r1"],
    ["audit", "at", "NOW"],
    ["channel", "show", "prod/canary"],
    ["trust", "show"],
    ["deadletter", "list"],
    ["deadletter", "show", "ID"],
]


async def test_every_table_fits_80_columns_without_breaking_a_token_and_wide_shows_it_all(kx, world):
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    p1, p2 = world["p1"], world["p2"]
    env80 = kx.env(COLUMNS="80")
    for args in TABLES:
        args = [now if a == "NOW" else world["dead_letter"] if a == "ID" else a for a in args]
        text = ok(await kx.arun(*args, env=env80))
        lines = text.splitlines()
        assert lines, args
        wide_lines = [line for line in lines if len(line) > 80]
        assert not wide_lines, f"{args}: lines wider than 80:\n" + "\n".join(wide_lines)
        # a digest is never split across lines: each is shown short and whole on one line
        assert len(ANY_DIGEST_START.findall(text)) == len(SHORT_DIGEST.findall(text)), f"{args}:\n{text}"
        assert not DIGEST.search(text), f"{args}: a full digest at 80 columns:\n{text}"
        if args[0] in ("status", "audit"):
            assert "prod/canary/internal" in text or args[:2] == ["audit", "release"], f"{args}:\n{text}"

        wide = ok(await kx.arun(*args, "--wide", env=env80))
        if args[0] == "status" or args[:2] == ["audit", "at"]:
            assert p1.digest in wide and (p2.digest in wide or args[:2] == ["audit", "at"]), f"{args}:\n{wide}"
        assert len(ANY_DIGEST_START.findall(wide)) == len(DIGEST.findall(wide)), f"{args} --wide:\n{wide}"

    status = ok(await kx.arun("status", env=env80))
    assert SHORT_DIGEST.search(status) and p2.digest[:19] + "…" in status  # sha256: + 12 hex
    timeline = ok(await kx.arun("release", "show", "r1", env=env80))
    for token in ("requested", "monitoring_started", "closed"):
        assert re.search(rf"\b{token}\b", timeline), f"{token} broken in:\n{timeline}"
