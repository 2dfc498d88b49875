"""Schemathesis against the committed OpenAPI document (docs/openapi.json): generated
requests to every operation of an API with data in it, as an admin (and, by
schemathesis' own auth check, without a token). No answer may be a 500 or break the
documented schema, status codes and content types included."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from conftest import fresh_postgres_database
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance
from test_collector_api import seed

from collector.api import create_app
from collector.http import HttpServer
from collector.tokens import Role, TokenStore

ROOT = Path(__file__).resolve().parent.parent
# Loaded at collection (schemathesis' fixture-based loader does not run under pytest 9).
schema = schemathesis.openapi.from_path(ROOT / "docs" / "openapi.json")


@dataclass(frozen=True)
class Served:
    url: str
    token: str


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One database per backend for the whole run (PostgreSQL refuses what SQLite takes)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('schemathesis')}/posmon.db"
        return
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture(scope="module")
def served(database: str) -> Iterator[Served]:
    """The API served by uvicorn over a seeded database, and an admin's token."""
    seeded = seed(database)
    store = seeded.open()
    # A name generated requests will not hit (DELETE /tokens/{name} would revoke it).
    name = f"schemathesis-{secrets.token_hex(8)}"
    token = TokenStore(store.engine).create(name, Role.ADMIN, created_by="test", now=store.clock())
    server = HttpServer(create_app(store), "127.0.0.1", 0)
    server.start()
    try:
        deadline = time.monotonic() + 10
        while server.port is None and time.monotonic() < deadline:
            time.sleep(0.02)
        yield Served(f"http://127.0.0.1:{server.port}", token)
    finally:
        server.stop()
        store.close()


# Every check but one: a body can be valid by the schema and still be refused with 422
# for what no JSON Schema says (a silence ending before it starts, or before now; neither
# or both of ends_at and duration_s). That refusal is the API's promise, not a fault.
EXCLUDED = [positive_data_acceptance]


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_error_and_no_schema_violation(case: Any, served: Served) -> None:
    case.call_and_validate(
        base_url=served.url, headers=_auth(case, served.token), excluded_checks=EXCLUDED
    )


def _auth(case: Any, token: str) -> dict[str, str]:
    """The admin's token, in place of the generated Authorization header.

    Except where a negative case left the (required) header out on purpose: putting it back
    would make that case valid again, and the API's 200 would count as accepting bad data.
    """
    negative = case.meta is not None and case.meta.generation.mode.is_negative
    if negative and "Authorization" not in (case.headers or {}):
        return {}
    return {"Authorization": f"Bearer {token}"}
