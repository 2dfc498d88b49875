"""JSON Schemas of the wire messages, generated from the models and checked for staleness."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from posmon.wire.models import MESSAGE_TYPES


def schema_files() -> dict[str, str]:
    """File name -> JSON Schema text for every message, e.g. `posmon.txn.1.schema.json`."""
    files = {}
    for name, model in MESSAGE_TYPES.items():
        schema = model.model_json_schema(by_alias=True, mode="serialization")
        schema["$id"] = f"https://posmon.dev/schemas/{name}"
        schema["title"] = name
        text = json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
        files[name.replace("/", ".") + ".schema.json"] = text
    return files


@dataclass(frozen=True)
class SchemaDrift:
    """How a schema folder differs from what the models generate."""

    stale: list[str]
    missing: list[str]
    unexpected: list[str]

    @property
    def clean(self) -> bool:
        return not (self.stale or self.missing or self.unexpected)


def check(directory: Path) -> SchemaDrift:
    """Compare `directory` with the generated schemas without writing anything."""
    wanted = schema_files()
    present = (
        {path.name for path in directory.glob("*.schema.json")} if directory.is_dir() else set()
    )
    stale = sorted(
        name
        for name in wanted.keys() & present
        if (directory / name).read_text(encoding="utf-8") != wanted[name]
    )
    return SchemaDrift(
        stale=stale,
        missing=sorted(wanted.keys() - present),
        unexpected=sorted(present - wanted.keys()),
    )


def export(directory: Path) -> list[Path]:
    """Write every schema into `directory` (created if needed); return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in schema_files().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
