"""Compare and write a directory of generated contract files (the IO half of `kxr schema export`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Drift:
    changed: tuple[str, ...]  # generated files missing or different on disk
    stale: tuple[str, ...]  # files on disk in a generated folder that the code no longer generates


def drift(directory: Path, files: dict[str, str]) -> Drift:
    changed = tuple(p for p, text in files.items() if _read(directory / p) != text)
    # Only folders the export owns entirely (events/) are checked for leftovers; the top level
    # may hold hand-written files beside the generated ones.
    owned = {Path(p).parent for p in files if Path(p).parent != Path(".")}
    on_disk = {
        str(f.relative_to(directory))
        for d in owned
        if (directory / d).is_dir()
        for f in (directory / d).iterdir()
        if f.is_file()
    }
    return Drift(changed, tuple(sorted(on_disk - set(files))))


def write(directory: Path, files: dict[str, str]) -> Drift:
    """Bring `directory` to exactly `files` (in its generated folders); returns what it changed."""
    found = drift(directory, files)
    for path in found.changed:
        target = directory / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(files[path], encoding="utf-8")
    for path in found.stale:
        (directory / path).unlink()
    return found


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
