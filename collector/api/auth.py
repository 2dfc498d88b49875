"""Bearer tokens on every route but /health: 401 without a valid token, 403 when its role
is below the route's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from collector.api.context import Services
from collector.tokens import Caller, Role

_BEARER = HTTPBearer(
    auto_error=False,
    description="A token from `posmon tokens create` (or POST /tokens): "
    "`Authorization: Bearer pm_...`.",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
UNAUTHORISED = {"WWW-Authenticate": "Bearer"}


def requires(services: Services, role: Role) -> Callable[..., object]:
    """A dependency that yields the caller when its token's role allows `role` (`Role.allows`)."""

    async def caller(credentials: Credentials) -> Caller:
        if credentials is None:
            raise HTTPException(401, "a bearer token is needed", headers=UNAUTHORISED)
        found = await run_in_threadpool(services.tokens.caller, credentials.credentials)
        if found is None:
            raise HTTPException(401, "unknown or revoked token", headers=UNAUTHORISED)
        if not found.role.allows(role):
            raise HTTPException(403, f"needs the {role.value} role; this token is {found.role}")
        return found

    return caller
