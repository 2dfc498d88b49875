"""POST /settlements: settlement results from an acquirer integration, one or a batch.

The same `Store.ingest()` path as MQTT and CSV. Bodies are validated from the JSON text,
as MQTT payloads are: the wire models' strict fields (timestamps, money) take JSON strings
and numbers, which they refuse as the Python objects FastAPI would hand over after parsing
the JSON itself; so the body's schema is added to the OpenAPI document by hand.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError

from collector.api.auth import requires
from collector.api.context import Services
from collector.api.errors import invalid
from collector.api.models import OUT_OF_RANGE, Problem, Stored, in_utc_range
from collector.tokens import Role
from posmon.wire.models import SettlementEvent

MAX_BATCH = 10_000
ONE = TypeAdapter(SettlementEvent)
_MANY = TypeAdapter(list[SettlementEvent])
# FastAPI's own 422 schema (in the document because other routes take parameters).
_VALIDATION_ERROR = "#/components/schemas/HTTPValidationError"
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


def routes(services: Services) -> APIRouter:
    router = APIRouter(tags=["settlements"])

    @router.post(
        "/settlements",
        response_model=Stored,
        status_code=200,
        dependencies=[Depends(requires(services, Role.ACQUIRER))],
        openapi_extra={"requestBody": _BODY_SCHEMA},
        responses={
            413: {"model": Problem},
            422: {
                "description": "The body is not one result or a list of them, as the schema says.",
                "content": {"application/json": {"schema": {"$ref": _VALIDATION_ERROR}}},
            },
        },
    )
    async def post_settlements(request: Request) -> Stored:
        """Take settlement results from an acquirer integration."""
        payload = await request.body()
        many = payload.lstrip().startswith(b"[")
        try:
            results = _MANY.validate_json(payload) if many else [ONE.validate_json(payload)]
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            raise RequestValidationError(
                [{**error, "loc": ("body", *error["loc"])} for error in errors]
            ) from exc
        if len(results) > MAX_BATCH:
            raise HTTPException(413, f"at most {MAX_BATCH} results per request")
        for index, result in enumerate(results):
            where = [index] if many else []
            # Required on the wire (the models default it only for code that makes them).
            if "schema_" not in result.model_fields_set:
                raise invalid("Field required", *where, "schema")
            if _holds_nul(result.model_dump()):
                # PostgreSQL keeps no NUL in text; refused here, not by the database.
                raise invalid("text may not contain NUL characters", *where)
            if not in_utc_range(result.settled_at):
                raise invalid(OUT_OF_RANGE, *where, "settled_at")
        report = await run_in_threadpool(services.store.ingest, results, "http")
        services.on_report(report)
        return Stored(stored=sum(report.stored.values()), repeats=sum(report.repeats.values()))

    return router


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_nul(item) for item in value)
    return False
