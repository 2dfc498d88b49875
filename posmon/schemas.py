"""JSON Schemas of the wire messages, generated from the models and checked for staleness."""

from __future__ import annotations

import json
from pathlib import Path

from posmon.generated import Drift, drift, write
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


SchemaDrift = Drift


def check(directory: Path) -> SchemaDrift:
    """Compare `directory` with the generated schemas without writing anything."""
    return drift(directory, schema_files(), "*.schema.json")


def export(directory: Path) -> list[Path]:
    """Write every schema into `directory` (created if needed); return the paths written."""
    return write(directory, schema_files())
