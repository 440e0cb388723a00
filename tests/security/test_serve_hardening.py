"""`kxr serve --strict` refuses a user with too few rights as well as too many, and every
dashboard response carries the security headers (404, 405 and 421 too)."""

from __future__ import annotations

import subprocess

import aiohttp
import pytest

from services.dashboard.server import dashboard_for
from services.dashboard.web import SECURITY_HEADERS
from tests.integration.test_permissions import kxr, lines, serve_env

pytestmark = pytest.mark.security


@pytest.mark.parametrize("role", ["auditor", "runtime", "producer"])
def test_strict_serve_refuses_a_user_with_too_few_rights(authed, tmp_path, role):
    """None of these can do more than the service (no excess), but each lacks what it needs."""
    env = serve_env(tmp_path, authed.prefix, authed.creds[role].url)
    result = subprocess.run(
        [kxr(), "serve", "--strict"],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0, result.stderr
    err = lines(result.stderr)
    assert len(err) == 1, result.stderr
    assert err[0].startswith("kxr: error: --strict") and "cannot do all that kxr serve needs" in err[0], err[0]
    assert "append release events" in err[0] and authed.creds[role].password not in err[0]


async def test_every_dashboard_response_carries_the_security_headers(service_app):
    async with dashboard_for(service_app.app, ("127.0.0.1", 0)) as url, aiohttp.ClientSession() as http:
        cases = [
            ("get", "", 200),
            ("get", "no/such/page", 404),
            ("get", "releases/nope", 404),
            ("get", "api/releases/nope", 404),
            ("get", "assets/nothing.js", 404),
            ("post", "api/overview", 405),
            ("delete", "", 405),
        ]
        for method, path, status in cases:
            async with http.request(method, url + path) as response:
                assert response.status == status, (method, path, response.status)
                for name, value in SECURITY_HEADERS.items():
                    assert response.headers.get(name) == value, (method, path, name, dict(response.headers))
        async with http.get(url + "api/overview", headers={"Host": "attacker.example"}) as response:
            assert response.status == 421
            assert all(response.headers.get(name) == value for name, value in SECURITY_HEADERS.items()), dict(
                response.headers
            )
