"""Bearer tokens of the REST API: made, listed, revoked, and checked; each has a role.

A token is 32 random bytes (URL-safe base64 behind a `pm_` prefix, so a leaked one is
easy to grep for). Only its SHA-256 is stored: the token is shown once, when it is made.
A presented token is hashed and looked up by that hash; the stored hash is then compared
in constant time. The token's name is the actor recorded for what it does (an alert
acknowledged, a case moved). A stored role this version does not know (written by an
older one, or by hand) grants nothing: the token is refused, with a warning naming it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError

from collector.schema import api_tokens

PREFIX = "pm_"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"
logger = logging.getLogger(__name__)


class Role(StrEnum):
    """What a token may do.

    viewer, operator and admin are a ladder: each may do everything the ones below it may.
    acquirer stands apart: it may post settlement results and nothing else, and no other
    role may post them. A settlement marks money as arrived, so the one who acknowledges
    alerts and closes cases (an operator) cannot also say the money came; an admin can make
    an acquirer token, and that is recorded (`created_by`).
    """

    VIEWER = "viewer"  # reads
    OPERATOR = "operator"  # acts: acknowledges, silences, moves cases
    ADMIN = "admin"  # configures: manages tokens
    ACQUIRER = "acquirer"  # the acquirer's integration: posts settlement results only

    @property
    def rank(self) -> int:
        return _LADDER.index(self) if self in _LADDER else -1

    def allows(self, needed: Role) -> bool:
        if Role.ACQUIRER in (self, needed):
            return self is needed
        return self.rank >= needed.rank

    @classmethod
    def known(cls, stored: str) -> Role | None:
        """The role a stored value names, or None for one this version does not know."""
        try:
            return cls(stored)
        except ValueError:
            return None


_LADDER = (Role.VIEWER, Role.OPERATOR, Role.ADMIN)


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A token as listed: never the token, nor its hash."""

    name: str
    role: str  # as stored: `Role.known` says whether this version knows it
    created_at: datetime
    created_by: str
    revoked_at: datetime | None


class TokenError(Exception):
    """A token cannot be made or revoked as asked."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Caller:
    """Who presented a valid token."""

    name: str
    role: Role


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """The `api_tokens` table on the collector's engine (writes) and read engine."""

    def __init__(self, engine: Engine, *, reads: Engine | None = None) -> None:
        self.engine = engine
        self.reads = reads or engine

    def create(self, name: str, role: Role, *, created_by: str, now: datetime) -> str:
        """Make a token and return it: the only time it is ever seen."""
        token = PREFIX + secrets.token_urlsafe(32)
        row = {
            "name": name,
            "role": role.value,
            "token_sha256": digest(token),
            "created_at": now,
            "created_by": created_by[:64],
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(api_tokens.insert().values(row))
        except IntegrityError as exc:
            raise TokenError(f"a token named {name!r} exists; revoke it first") from exc
        return token

    def revoke(self, name: str, now: datetime) -> None:
        """Revoke the live token of that name; `TokenError` when there is none."""
        key = api_tokens.c
        with self.engine.begin() as conn:
            done = conn.execute(
                update(api_tokens)
                .where(key.name == name, key.revoked_at.is_(None))
                .values(revoked_at=now)
            )
        if done.rowcount != 1:
            raise TokenError(f"no live token named {name!r}")

    def tokens(self, *, revoked: bool = False) -> list[TokenRecord]:
        """Tokens by name (their hashes left out); the revoked ones too when asked."""
        key = api_tokens.c
        query = select(key.name, key.role, key.created_at, key.created_by, key.revoked_at)
        if not revoked:
            query = query.where(key.revoked_at.is_(None))
        with self.reads.connect() as conn:
            rows = conn.execute(query.order_by(key.name, key.id)).all()
            return [TokenRecord(*row) for row in rows]

    def caller(self, token: str) -> Caller | None:
        """The live token's name and role, or None for an unknown or revoked token."""
        wanted = digest(token)
        key = api_tokens.c
        with self.reads.connect() as conn:
            row = conn.execute(
                select(key.name, key.role, key.token_sha256).where(
                    key.token_sha256 == wanted, key.revoked_at.is_(None)
                )
            ).first()
        if row is None or not hmac.compare_digest(row.token_sha256, wanted):
            return None
        role = Role.known(row.role)
        if role is None:
            logger.warning(
                "token %r refused: its stored role %r is not a role (%s); revoke it and "
                "make it again",
                row.name,
                row.role,
                ", ".join(Role),
            )
            return None
        return Caller(row.name, role)
