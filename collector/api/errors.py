"""How the API says no: `{"detail": ...}` with a 4xx, documented on each route.

A request the models cannot judge alone (a silence that would end before now) is refused
in FastAPI's own 422 shape, so every 422 reads the same. A database that does not answer
is a 503, logged; never a 500 with a stack trace for the client.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from collector.api.models import Problem

logger = logging.getLogger(__name__)

AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "No token, or an unknown or revoked one."},
    403: {"model": Problem, "description": "The token's role is below the route's."},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem}}
CONFLICT: dict[int | str, dict[str, Any]] = {409: {"model": Problem}}


def invalid(message: str, *loc: str | int) -> RequestValidationError:
    """A 422 in FastAPI's shape for what only the route can see is wrong."""
    return RequestValidationError(
        [{"type": "value_error", "loc": ("body", *loc), "msg": message, "input": None}]
    )


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
