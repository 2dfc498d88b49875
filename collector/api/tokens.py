"""/tokens: the admin's door to the API's bearer tokens (as `posmon tokens` is)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query

from collector.api.auth import requires
from collector.api.context import Services
from collector.api.errors import BAD_BODY, CONFLICT, NOT_FOUND
from collector.api.models import NewToken, Token, TokenRequest
from collector.tokens import NAME_PATTERN, Caller, Role, TokenError


def routes(services: Services) -> APIRouter:
    router = APIRouter(tags=["tokens"])
    admin = Depends(requires(services, Role.ADMIN))

    @router.get("/tokens", dependencies=[admin])
    def list_tokens(
        revoked: Annotated[bool, Query(description="Include revoked tokens.")] = False,
    ) -> list[Token]:
        """The tokens by name and role (never the tokens themselves)."""
        rows = services.tokens.tokens(revoked=revoked)
        return [Token.of(row, role=Role.known(row.role)) for row in rows]

    @router.post("/tokens", status_code=201, responses={**CONFLICT, **BAD_BODY})
    def create_token(body: TokenRequest, caller: Caller = admin) -> NewToken:
        """Make a token; the answer holds it, the only time it is shown."""
        try:
            token = services.tokens.create(
                body.name, body.role, created_by=caller.name, now=services.now()
            )
        except TokenError as exc:
            raise HTTPException(409, exc.reason) from exc
        return NewToken(name=body.name, role=body.role, token=token)

    @router.delete("/tokens/{name}", status_code=204, dependencies=[admin], responses=NOT_FOUND)
    def revoke_token(name: Annotated[str, Path(pattern=NAME_PATTERN)]) -> None:
        """Revoke the live token of that name; it stops working at once."""
        try:
            services.tokens.revoke(name, services.now())
        except TokenError as exc:
            raise HTTPException(404, exc.reason) from exc

    return router
