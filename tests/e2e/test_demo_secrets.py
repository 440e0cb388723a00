"""`kxr demo` prints how to watch as the operator, never the operator's password (issue 16)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from tests.e2e.support import base_env, kxr_binary


def test_the_demo_prints_the_operator_credentials_file_and_no_password(tmp_path):
    result = subprocess.run(
        [kxr_binary(), "demo", "--window", "1", "--keep"],
        env={**base_env(), "COLUMNS": "150"},
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )
    out = result.stdout + result.stderr
    found = re.search(r"kxr --creds (\S+/creds/operator\.json) watch demo-healthy", result.stdout)
    assert found, f"no `kxr --creds …/operator.json watch` line:\n{result.stdout[-3000:]}"
    creds_dir = Path(found.group(1)).parent
    try:
        assert result.returncode == 0, out[-3000:]
        passwords = [json.loads(p.read_text())["password"] for p in creds_dir.glob("*.json")]
        assert len(passwords) >= 5, f"expected every role's credentials under {creds_dir}"
        leaked = [p for p in passwords if p in out]
        assert not leaked, "the demo printed a NATS password"
        assert "kx-operator:" not in out  # no user:password URL at all
    finally:
        shutil.rmtree(creds_dir.parent, ignore_errors=True)  # --keep: the demo's data dir is ours to remove
