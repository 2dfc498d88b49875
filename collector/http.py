"""The collector's HTTP door: settlement results in (one or a batch), and a health check.

The REST API issue extends this app; the settlement endpoint feeds the same
`Store.ingest()` path as MQTT and CSV.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from collector.store import IngestReport, Store
from posmon import __version__
from posmon.wire.models import SettlementEvent

MAX_BATCH = 10_000
# Bodies are validated from the JSON text, as MQTT payloads are: the wire models' strict
# fields (timestamps, money) take JSON strings and numbers, which they refuse as the Python
# objects FastAPI would hand over after parsing the JSON itself.
_ONE = TypeAdapter(SettlementEvent)
_MANY = TypeAdapter(list[SettlementEvent])
_BODY_SCHEMA = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "description": "One posmon.settlement/1 result, or a list of up to 10,000.",
                "anyOf": [
                    {"$ref": "#/components/schemas/SettlementEvent"},
                    {"type": "array", "items": {"$ref": "#/components/schemas/SettlementEvent"}},
                ],
            }
        }
    },
}


class Stored(BaseModel):
    """What a settlement POST did."""

    stored: int = Field(description="Results new to the collector.")
    repeats: int = Field(description="Results it already had (same settlement_id).")


def create_app(store: Store, on_report: Callable[[IngestReport], None] = lambda r: None) -> FastAPI:
    """The FastAPI application over `store`."""
    app = FastAPI(title="posmon collector", version=__version__)

    @app.post(
        "/settlements",
        response_model=Stored,
        status_code=200,
        openapi_extra={"requestBody": _BODY_SCHEMA},
    )
    async def post_settlements(request: Request) -> Stored:
        """Take settlement results from an acquirer integration."""
        payload = await request.body()
        many = payload.lstrip().startswith(b"[")
        try:
            results = _MANY.validate_json(payload) if many else [_ONE.validate_json(payload)]
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False)
            raise RequestValidationError(
                [{**error, "loc": ("body", *error["loc"])} for error in errors]
            ) from exc
        if len(results) > MAX_BATCH:
            raise HTTPException(413, f"at most {MAX_BATCH} results per request")
        report = await run_in_threadpool(store.ingest, results, "http")
        on_report(report)
        return Stored(stored=sum(report.stored.values()), repeats=sum(report.repeats.values()))

    def openapi() -> dict[str, Any]:
        # The body is read by hand (above), so its schema is added to the document here.
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schema = _ONE.json_schema(ref_template="#/components/schemas/{model}")
            components = document.setdefault("components", {}).setdefault("schemas", {})
            components.update(schema.pop("$defs", {}))
            components["SettlementEvent"] = schema
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Whether the collector is up and its database answers."""
        store.next_deadline()
        return {"status": "ok", "version": __version__}

    return app


class HttpServer:
    """uvicorn in a thread of the collector process."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="http", daemon=True)

    def start(self) -> None:
        self.thread.start()

    @property
    def port(self) -> int | None:
        """The bound port once listening (useful with port 0)."""
        for server in getattr(self.server, "servers", []):
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return None

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
