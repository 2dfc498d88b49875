"""How the API says no: `{"detail": ...}` with a 4xx, documented on each route.

A request the models cannot judge alone (a silence that would end before now) is refused
in FastAPI's own 422 shape, so every 422 reads the same. A 422 names each field at fault
and why, without the value sent: the value may be what cannot be written as JSON (NaN, a
lone surrogate) or what must not be echoed (a card number in a note). A database that does
not answer is a 503, logged; never a 500 with a stack trace for the client.
"""

from __future__ import annotations

import logging
import math
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
    return RequestValidationError([{"type": "value_error", "loc": ("body", *loc), "msg": message}])


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


async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """422 for a request that does not validate: each error's type, location and message
    (and its context, as plain JSON), never the input."""
    assert isinstance(exc, RequestValidationError)
    errors = [
        {key: _plain(value) for key, value in error.items() if key in _SHOWN}
        for error in exc.errors()
    ]
    return JSONResponse({"detail": errors}, status_code=422)


_SHOWN = ("type", "loc", "msg", "ctx")


def _plain(value: Any) -> Any:
    """`value` as JSON can carry it: lone surrogates escaped, non-finite numbers and other
    objects (an exception in a context) as text."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, bool | int) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {_plain(str(key)): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return _plain(str(value))


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
