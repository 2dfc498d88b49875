"""Generated files kept in the repository (JSON Schemas, Grafana dashboards): written by a
command, and compared with what would be written so CI fails when they are stale."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Drift:
    """How a folder of generated files differs from what would be generated now."""

    stale: list[str]
    missing: list[str]
    unexpected: list[str]

    @property
    def clean(self) -> bool:
        return not (self.stale or self.missing or self.unexpected)


def drift(directory: Path, wanted: dict[str, str], pattern: str) -> Drift:
    """Compare `directory` (its files matching `pattern`) with `wanted` (name -> text)."""
    present = {path.name for path in directory.glob(pattern)} if directory.is_dir() else set()
    stale = sorted(
        name
        for name in wanted.keys() & present
        if (directory / name).read_text(encoding="utf-8") != wanted[name]
    )
    return Drift(
        stale=stale,
        missing=sorted(wanted.keys() - present),
        unexpected=sorted(present - wanted.keys()),
    )


def write(directory: Path, files: dict[str, str]) -> list[Path]:
    """Write every file into `directory` (created if needed); return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
