"""The collector's HTTP door: settlement results POSTed one or many (with an operator's
token), stored through `Store.ingest()` like MQTT and CSV; invalid bodies refused with 422
naming the field. The rest of the REST API: tests/test_collector_api.py.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from starlette.exceptions import StarletteDeprecationWarning

from collector.config import CollectorConfig
from collector.http import MAX_BATCH, create_app
from collector.store import Store
from collector.terms import SettlementTerms
from collector.tokens import Role, TokenStore
from posmon import __version__

with warnings.catch_warnings():
    # Starlette's test client asks for httpx2; httpx (the dev extra) still works.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

NOW = datetime(2026, 11, 25, 10, 30, tzinfo=ZoneInfo("Asia/Shanghai"))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    instance = Store(
        f"sqlite:///{tmp_path}/posmon.db", SettlementTerms(CollectorConfig()), clock=lambda: NOW
    )
    instance.migrate()
    yield instance
    instance.close()


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    token = TokenStore(store.engine).create("acquirer", Role.ACQUIRER, created_by="test", now=NOW)
    headers = {"Authorization": f"Bearer {token}"}
    # Server errors come back as 500 responses, as a real client would see them.
    with TestClient(create_app(store), raise_server_exceptions=False, headers=headers) as client:
        yield client


def settlement(n: int, **changes: Any) -> dict[str, Any]:
    """A `posmon.settlement/1` message as an acquirer integration would POST it."""
    body: dict[str, Any] = {
        "schema": "posmon.settlement/1",
        "settlement_id": f"ACQ-{n:06d}",
        "mid": "898100012340001",
        "tid": "10000001",
        "rrn": f"{n:012d}",
        "txn_date": "2026-11-24",
        "amount": 12_800,
        "fee": 77,
        "net_amount": 12_723,
        "currency": "CNY",
        "status": "CREDITED",
        "settled_at": "2026-11-25T09:00:00+08:00",
        "kind": "ORIGINAL",
    }
    body.update(changes)
    return {name: value for name, value in body.items() if value is not None}


def test_one_settlement_is_stored(client: TestClient, store: Store) -> None:
    response = client.post("/settlements", json=settlement(1))

    assert response.status_code == 200, response.text
    assert response.json() == {"stored": 1, "repeats": 0}
    stored = store.settlement("ACQ-000001")
    assert stored is not None
    assert (stored.source, stored.amount, stored.outcome) == ("http", 12_800, "ORPHAN")


def test_a_list_is_stored_and_the_same_again_counted_as_repeats(client: TestClient) -> None:
    batch = [settlement(n) for n in range(1, 4)]

    first = client.post("/settlements", json=batch)
    again = client.post("/settlements", json=batch)
    mixed = client.post("/settlements", json=[settlement(3), settlement(4)])

    assert (first.status_code, first.json()) == (200, {"stored": 3, "repeats": 0})
    assert (again.status_code, again.json()) == (200, {"stored": 0, "repeats": 3})
    assert (mixed.status_code, mixed.json()) == (200, {"stored": 1, "repeats": 1})


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (settlement(1, amount=12_800.0), "amount"),
        (settlement(1, settled_at=None), "settled_at"),
        (settlement(1, settled_at="2026-11-25T09:00:00"), "settled_at"),
        (settlement(1, txn_date="2026-11-31"), "txn_date"),
        (settlement(1, net_amount=12_800), "net_amount"),
        (settlement(1, amount="12800"), "amount"),
        (settlement(1, remark="late"), "remark"),
        ([settlement(1), settlement(2, tid="1000")], "tid"),
    ],
    ids=[
        "float-amount",
        "missing-field",
        "naive-time",
        "bad-date",
        "net-not-gross-less-fee",
        "amount-as-text",
        "unknown-field",
        "bad-item-in-list",
    ],
)
def test_an_invalid_body_is_refused_with_the_field_named(
    client: TestClient, store: Store, body: Any, field: str
) -> None:
    response = client.post("/settlements", json=body)

    assert response.status_code == 422, response.text
    assert field in response.text
    assert store.counts()["settlements"] == 0  # a bad item refuses the whole request


def test_a_body_that_is_not_json_is_refused(client: TestClient) -> None:
    response = client.post(
        "/settlements",
        content=b"settlement_id,amount\nS1,128.00\n",
        headers={"content-type": "text/csv"},
    )

    assert response.status_code == 422


def test_a_body_that_is_not_utf8_is_refused(client: TestClient) -> None:
    response = client.post(
        "/settlements", content=b"9F\xff", headers={"content-type": "application/json"}
    )

    assert response.status_code == 422


def test_more_than_the_batch_limit_is_refused(client: TestClient, store: Store) -> None:
    response = client.post("/settlements", json=[settlement(n) for n in range(MAX_BATCH + 1)])

    assert response.status_code == 413
    assert store.counts()["settlements"] == 0


def test_health(client: TestClient) -> None:
    response = client.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "version": __version__}
