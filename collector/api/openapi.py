"""The OpenAPI document of the REST API, generated from the routes and committed
(docs/openapi.json), so clients and reviewers see the API without running it."""

from __future__ import annotations

import json
from pathlib import Path

from posmon import generated

DOCUMENT = Path("docs/openapi.json")


def document() -> str:
    """The OpenAPI document as stable, readable JSON text."""
    from collector.api import create_app  # noqa: PLC0415 - FastAPI only when asked
    from collector.config import CollectorConfig  # noqa: PLC0415
    from collector.store import Store  # noqa: PLC0415
    from collector.terms import SettlementTerms  # noqa: PLC0415

    # The document depends on the routes only; this store is never queried.
    store = Store("sqlite://", SettlementTerms(CollectorConfig()))
    try:
        spec = create_app(store).openapi()
    finally:
        store.close()
    return json.dumps(spec, indent=2, ensure_ascii=False) + "\n"


def write(path: Path = DOCUMENT) -> Path:
    return generated.write(path.parent, {path.name: document()})[0]


def check(path: Path = DOCUMENT) -> generated.Drift:
    """How the committed document differs from the one the routes make now."""
    return generated.drift(path.parent, {path.name: document()}, path.name)
