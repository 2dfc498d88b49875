"""How the API says no: `{"detail": ...}` with a 4xx, documented on each route.

A request the models cannot judge alone (a silence that would end before now) is refused
in FastAPI's own 422 shape, so every 422 reads the same. A database that does not answer
is a 503, logged; never a 500 with a stack trace for the client.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from fastapi import Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException
from starlette.routing import Match, Route

from collector.api.models import Problem

logger = logging.getLogger(__name__)

AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "No token, or an unknown or revoked one."},
    403: {"model": Problem, "description": "The token's role is below the route's."},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem}}
CONFLICT: dict[int | str, dict[str, Any]] = {409: {"model": Problem}}
BAD_BODY: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "The body is not JSON."}
}


def invalid(message: str, *loc: str | int) -> RequestValidationError:
    """A 422 in FastAPI's shape for what only the route can see is wrong."""
    return RequestValidationError(
        [{"type": "value_error", "loc": ("body", *loc), "msg": message, "input": None}]
    )


def known_query(request: Request) -> None:
    """Refuse (422) a query parameter the route does not take: `?stauts=resolved` would
    otherwise be ignored silently and answer as if unfiltered."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    known = set(_query_names(route.dependant))
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise RequestValidationError(
            [
                {"type": "extra_forbidden", "loc": ("query", name), "msg": "Unknown parameter"}
                for name in unknown
            ]
        )


def _query_names(dependant: Any) -> Iterator[str]:
    """The query parameters a route's dependency tree takes."""
    for param in dependant.query_params:
        yield param.alias
    for child in dependant.dependencies:
        yield from _query_names(child)


async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """503 for a database error: logged here, the client told to try again."""
    assert isinstance(exc, SQLAlchemyError)
    logger.error(
        "database error on %s %s: %s",
        request.method,
        request.url.path,
        getattr(exc, "orig", None) or type(exc).__name__,
    )
    return JSONResponse({"detail": "the database did not answer; try again"}, status_code=503)


async def with_allow(request: Request, exc: Exception) -> Response:
    """FastAPI's answer to an HTTP error, with a 405's `Allow` naming every method of the
    path (Starlette names only those of the first route it tried)."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        methods: set[str] = set()
        for route in request.app.router.routes:
            if isinstance(route, Route) and route.matches(request.scope)[0] is not Match.NONE:
                methods |= route.methods or set()
        exc.headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(methods))}
    return await http_exception_handler(request, exc)
