"""`kxr runtime simulate` as a process: follows its scope through a real release, reports
health that fits the published schema, and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import jsonschema

from services.contracts.schemas import schema_files
from tests.harness import make_pack, running_service

from .support import ServeProcess, assert_one_line_error, base_env, kxr_binary, read_log, wait_until, write_trust_root

HEALTH_SCHEMA = json.loads(schema_files()["health-sample.schema.json"])


async def test_a_simulated_runtime_follows_a_release_and_reports_schema_valid_health(
    nats_url, prefix, tmp_path: Path
) -> None:
    async with running_service(nats_url, prefix) as svc:
        await svc.configure()
        await svc.runtime("tenant-42")  # the `rest` cohort's runtime, in process
        keys = tmp_path / "service-keys.json"
        keys.write_text(json.dumps(svc.service_keys.to_document()))
        env = {
            **base_env(),
            "KX_NATS_URL": nats_url,
            "KX_PREFIX": prefix,
            "KX_SERVICE_KEYS": str(keys),
            "KX_TRUST_ROOT": str(write_trust_root(tmp_path / "trust-root.json", svc.key)),
        }
        argv = [
            kxr_binary(),
            "runtime",
            "simulate",
            "--env",
            "prod",
            "--channel",
            "canary",
            "--tenant",
            "t-int-1",
            "--runtime-id",
            "rt-sim",
            "--interval",
            "0.1",
        ]
        runtime = ServeProcess(argv, env, tmp_path, "runtime")
        try:
            await wait_until(
                lambda: (
                    "follows prod/canary/internal" in " ".join(runtime.stderr().split())
                    or runtime.proc.poll() is not None
                ),
                20,
                "the runtime to start",
                runtime.stderr,
            )
            assert runtime.proc.poll() is None, runtime.stderr()
            pack = make_pack("1.0.0", svc.key)
            await svc.request("sim", pack, rollback={"strategy": "none"})
            release = await svc.wait_release("sim")
            assert release.outcome == "success", release
            out = tmp_path / "runtime.stdout"
            await wait_until(
                lambda: f"switched to kb@1.0.0 {pack.digest}" in out.read_text(),
                10,
                "the switch to be printed",
                out.read_text,
            )
            health = await read_log(
                svc.app.js, svc.app.subjects.health_stream, [f"{prefix}.health.prod.canary.internal.rt-sim"]
            )
            kinds = {body["kind"] for _, _, body, _ in health}
            assert kinds == {"sample", "activation"} and any(
                b.get("ok") is True for _, _, b, _ in health if b["kind"] == "activation"
            )
            for _, _, body, _ in health:
                jsonschema.validate(body, HEALTH_SCHEMA)
            runtime.signal(signal.SIGTERM)
            assert runtime.proc.wait(timeout=15) == 0, runtime.stderr()
            assert "Traceback" not in runtime.stderr()
        finally:
            runtime.kill()


def test_a_simulated_runtime_without_nats_or_trust_root_is_one_line(tmp_path: Path) -> None:
    import subprocess

    def run(*extra: str, **env: str) -> subprocess.CompletedProcess:
        argv = [
            kxr_binary(),
            "runtime",
            "simulate",
            "--env",
            "prod",
            "--channel",
            "canary",
            "--tenant",
            "t",
            "--runtime-id",
            "r",
            *extra,
        ]
        return subprocess.run(
            argv,
            env={**base_env(), **env},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )

    assert_one_line_error(run(), "no trust root")
    from events.signing import SigningKey

    root = str(write_trust_root(tmp_path / "root.json", SigningKey.generate()))
    assert_one_line_error(run(KX_TRUST_ROOT=root), "KX_NATS_URL")
    assert_one_line_error(run(KX_TRUST_ROOT=root, KX_NATS_URL="nats://127.0.0.1:1"), "cannot reach NATS")
