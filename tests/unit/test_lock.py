"""The locked installs (requirements/*.txt, made by `bash .ci/lock`) are in step with pyproject.toml.

CI (.ci/run) and the Dockerfile install from these files with `--require-hashes`, so a dependency
added to pyproject.toml and not locked would never be installed there: this test fails first, and
says to run `bash .ci/lock`. Each lock holds what its extras declare (base: the dependencies; test:
+test; dev: +test +dev), every package pinned `==` with its hashes, each pin inside the bounds
pyproject.toml sets, and the same version of a package in every lock.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCKS = {"base": (), "test": ("test",), "dev": ("test", "dev")}  # lock -> the extras it adds to the dependencies
RELOCK = "pyproject.toml and requirements/ differ: run `bash .ci/lock` and commit requirements/"
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)")


@dataclass
class Entry:
    version: str
    hashes: int
    via: list[str]


def parse_lock(text: str) -> dict[str, Entry]:
    """pip-compile's output: `name==version \\` then `--hash=` lines, then `# via` comment lines."""
    entries: dict[str, Entry] = {}
    current: Entry | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or (stripped.startswith("#") and current is None):
            continue
        pin = PIN.match(line)
        if pin:
            current = Entry(pin.group("version"), 0, [])
            entries[canonicalize_name(pin.group("name"))] = current
        elif stripped.startswith("--hash=sha256:") and current is not None:
            current.hashes += 1
        elif stripped.startswith("#") and current is not None:
            via = stripped.lstrip("#").strip()
            if via.startswith("via"):
                via = via[3:].strip()
            if via:
                current.via.append(via)
        else:
            raise AssertionError(f"unexpected line in a lock (not plain pins with hashes): {line!r}")
    return entries


def declared(extras: tuple[str, ...]) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


def lock(name: str) -> dict[str, Entry]:
    path = ROOT / "requirements" / f"{name}.txt"
    assert path.exists(), f"{path} is missing: {RELOCK}"
    return parse_lock(path.read_text())


@pytest.mark.parametrize("name", LOCKS)
def test_every_declared_dependency_is_pinned_with_hashes_within_its_bounds(name):
    entries = lock(name)
    for req in declared(LOCKS[name]):
        if req.marker is not None and not req.marker.evaluate():
            continue
        entry = entries.get(canonicalize_name(req.name))
        assert entry is not None, f"{req} (pyproject.toml) is not in requirements/{name}.txt: {RELOCK}"
        assert req.specifier.contains(Version(entry.version), prereleases=True), (
            f"requirements/{name}.txt pins {req.name}=={entry.version}, outside pyproject.toml's {req}: {RELOCK}"
        )


@pytest.mark.parametrize("name", LOCKS)
def test_every_locked_package_has_hashes_and_nothing_undeclared_is_a_direct_dependency(name):
    entries = lock(name)
    wanted = {canonicalize_name(r.name) for r in declared(LOCKS[name])}
    for pkg, entry in entries.items():
        assert entry.hashes > 0, f"requirements/{name}.txt: {pkg} has no --hash (pip --require-hashes refuses it)"
    direct = {pkg for pkg, entry in entries.items() if "konnaxion-releases (pyproject.toml)" in entry.via}
    assert direct == wanted, (
        f"direct dependencies locked {sorted(direct ^ wanted)} differ from pyproject.toml: {RELOCK}"
    )


@pytest.mark.parametrize("name", LOCKS)
def test_the_extras_of_a_dependency_are_locked_too(name):
    """`faststream[nats]`: pip installs what the extra adds only if the lock holds it (--strip-extras)."""
    entries = lock(name)
    for req in declared(LOCKS[name]):
        if not req.extras:
            continue
        try:
            requires = distribution(req.name).requires or []
        except PackageNotFoundError:
            pytest.fail(f"{req.name} is not installed: install from requirements/dev.txt first", pytrace=False)
        for line in requires:
            sub = Requirement(line)
            if sub.marker is None or not any(sub.marker.evaluate({"extra": e}) for e in req.extras):
                continue
            if sub.marker.evaluate({"extra": ""}):
                continue  # needed without the extra as well: covered by the dependency's own pins
            assert canonicalize_name(sub.name) in entries, (
                f"{req} needs {sub.name} and requirements/{name}.txt lacks it: {RELOCK}"
            )


def test_a_package_has_one_version_in_every_lock():
    locks = {name: lock(name) for name in LOCKS}
    for pkg, entry in locks["dev"].items():
        for name in ("base", "test"):
            other = locks[name].get(pkg)
            assert other is None or other.version == entry.version, (
                f"{pkg}: {other.version} in requirements/{name}.txt, {entry.version} in dev.txt: {RELOCK}"
            )
    assert set(locks["base"]) <= set(locks["test"]) <= set(locks["dev"]), f"each lock contains the smaller: {RELOCK}"


def test_ci_and_the_image_install_from_the_locks():
    run = (ROOT / ".ci" / "run").read_text()
    assert "pip install -q --require-hashes -r requirements/dev.txt" in run, ".ci/run installs from the dev lock"
    assert "pip install -q --no-deps -e ." in run, ".ci/run installs the project without resolving anything"
    docker = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes -r requirements/base.txt" in docker, "the image installs from the base lock"
    assert "--no-deps" in docker, "the image installs the project without resolving anything"


def test_parse_lock_reads_pins_hashes_and_via_and_refuses_anything_else():
    text = (
        "#\n# header\n#\nfoo-bar==1.2 \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n"
        "    # via\n    #   -c requirements/dev.txt\n    #   konnaxion-releases (pyproject.toml)\n"
        "baz==3 \\\n    --hash=sha256:cc\n    # via foo-bar\n"
    )
    got = parse_lock(text)
    assert got["foo-bar"] == Entry("1.2", 2, ["-c requirements/dev.txt", "konnaxion-releases (pyproject.toml)"])
    assert got["baz"] == Entry("3", 1, ["foo-bar"])
    with pytest.raises(AssertionError, match="unexpected line"):
        parse_lock(text + "--find-links /opt/wheels\n")
