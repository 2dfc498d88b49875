"""The collector's REST API (FastAPI): alerts, cases, terminals, settlements, tokens,
health and Prometheus metrics. One module per resource; `collector.http` serves it.

Every route but /health needs a bearer token (`collector.tokens`): viewer reads,
operator acts, admin manages tokens. See docs/api.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException

from collector.api import alerts, cases, settlements, terminals, tokens
from collector.api.auth import requires
from collector.api.context import Services
from collector.api.errors import (
    AUTH_RESPONSES,
    database_unavailable,
    invalid_request,
    known_query,
    with_allow,
)
from collector.api.metrics import exposition, registry
from collector.api.models import Health
from collector.store import IngestReport, Store
from collector.tokens import Role
from posmon import __version__

DESCRIPTION = (
    "posmon's collector: settlement failures as alerts with their cause, re-remittance "
    "(补划款) cases, terminals' status. Bearer tokens with a role: viewer reads, operator "
    "acts, admin manages tokens. Times are ISO 8601 with their offset; money is an "
    "integer in minor units with its currency."
)


def create_app(store: Store, on_report: Callable[[IngestReport], None] = lambda r: None) -> FastAPI:
    """The FastAPI application over `store`; `on_report` hears of each settlement POST."""
    services = Services.of(store, on_report)
    app = FastAPI(
        title="posmon collector",
        version=__version__,
        description=DESCRIPTION,
        dependencies=[Depends(known_query)],
    )
    app.add_exception_handler(SQLAlchemyError, database_unavailable)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, with_allow)
    for module in (alerts, cases, terminals, settlements, tokens):
        app.include_router(module.routes(services), responses=AUTH_RESPONSES)

    @app.get("/health", tags=["health"])
    def health() -> Health:
        """Whether the collector is up and its database answers (no token needed)."""
        store.next_deadline()
        return Health(status="ok", version=__version__)

    figures = registry(services)

    @app.get(
        "/metrics",
        tags=["health"],
        response_class=Response,
        dependencies=[Depends(requires(services, Role.VIEWER))],
        responses={
            200: {"content": {"text/plain": {}}, "description": "Prometheus text format."},
            **AUTH_RESPONSES,
        },
    )
    def metrics() -> Response:
        """Open alerts by type, cases by state, rows stored, collectors' lag (viewer)."""
        body, content_type = exposition(figures)
        return Response(body, media_type=content_type)

    def openapi() -> dict[str, Any]:
        # The settlement body is read by hand, so its schema is added to the document here.
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schema = settlements.ONE.json_schema(ref_template="#/components/schemas/{model}")
            components = document.setdefault("components", {}).setdefault("schemas", {})
            components.update(schema.pop("$defs", {}))
            components["SettlementEvent"] = schema
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
