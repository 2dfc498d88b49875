"""Hostile input never gets a 500 (issue #15): every door of the collector answers it with a
clear refusal, on SQLite and PostgreSQL alike.

The REST API against a real database a real alert engine filled: JSON's non-finite numbers
(bare NaN, Infinity, 1e400), times at the edges of the datetime range with extreme
offsets, silences that would end at the edge of time, lone surrogates and NUL characters
in any text, a stored token whose role is no longer known, card numbers in free text going
in and coming out. The CSV import and MQTT refuse NUL characters the same way. Last, the
fuzz of `benchmarks/api_fuzz.py` (schemathesis, positive and negative, with unicode-heavy
strings and non-finite numbers) with a small budget: no answer may be a 5xx.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from starlette.exceptions import StarletteDeprecationWarning
from test_collector_alerts import BANK, TID
from test_collector_api import Seeded, client_for, seed, settlement_body
from test_settlement_import import row, write_csv

from collector.api import create_app
from collector.config import CollectorConfig
from collector.http import HttpServer
from collector.schema import api_tokens
from collector.settlement_import import import_settlements
from collector.store import Store
from collector.terms import SettlementTerms
from collector.tokens import Role, TokenStore, digest
from posmon.wire.models import MessageError, SettlementEvent, parse_message

with warnings.catch_warnings():
    # Starlette's test client asks for httpx2; httpx (the dev extra) still works.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parent.parent
# The fuzz is the benchmark's (benchmarks/ is a folder of scripts, not a package).
sys.path.insert(0, str(ROOT / "benchmarks"))
from api_fuzz import fuzz  # noqa: E402

PAN = "6222021234567890123"  # a UnionPay-shaped card number
EARLIEST = "0001-01-01T00:00:00+23:59"  # before year 1 once in UTC
LATEST = "9999-12-31T23:59:59-23:59"  # after year 9999 once in UTC


@pytest.fixture
def api(database_url: str) -> Iterator[tuple[TestClient, Seeded, Store]]:
    """An admin's client on a seeded database (SQLite and PostgreSQL); it posts settlements
    with the acquirer's token, the one role that may."""
    seeded = seed(database_url)
    store = seeded.open()

    def acquirer_posts_settlements(request: httpx.Request) -> None:
        if request.url.path == "/settlements":
            request.headers["Authorization"] = f"Bearer {seeded.tokens['acquirer']}"

    with client_for(store, seeded.tokens["admin"]) as client:
        client.event_hooks["request"].append(acquirer_posts_settlements)
        yield client, seeded, store
    store.close()


def post_text(client: TestClient, path: str, body: str) -> Any:
    """POST JSON text as written (bare NaN, escaped surrogates ...), not re-encoded."""
    return client.post(path, content=body.encode(), headers={"Content-Type": "application/json"})


def assert_refused(response: Any, status: int = 422, *field: str | int) -> None:
    """A 4xx whose JSON names `field` in one of its errors' locations."""
    assert response.status_code == status, (response.status_code, response.text)
    detail = response.json()["detail"]
    if field:
        locations = [error["loc"] for error in detail]
        assert any(list(field) == loc[-len(field) :] for loc in locations), locations


# --- 1. non-finite numbers -----------------------------------------------------------------


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
def test_a_non_finite_silence_duration_is_422(
    api: tuple[TestClient, Seeded, Store], number: str
) -> None:
    client, _, _ = api
    body = f'{{"reason": "upgrade", "bank_code": "{BANK}", "duration_s": {number}}}'

    response = post_text(client, "/silences", body)

    assert_refused(response, 422, "duration_s")
    assert client.get("/silences").json() == []


# --- 2. times at the edges of the datetime range -------------------------------------------


@pytest.mark.parametrize("moment", [EARLIEST, LATEST])
def test_a_time_out_of_range_in_utc_is_422_naming_the_field(
    api: tuple[TestClient, Seeded, Store], moment: str
) -> None:
    client, _, store = api
    silence = {"reason": "upgrade", "bank_code": BANK}

    starts = client.post("/silences", json=silence | {"starts_at": moment, "duration_s": 60})
    ends = client.post("/silences", json=silence | {"ends_at": moment})
    both = client.post(
        "/silences", json=silence | {"starts_at": moment, "ends_at": "2030-01-01T00:00:00Z"}
    )
    settled = client.post("/settlements", json=settlement_body() | {"settled_at": moment})
    in_a_list = client.post("/settlements", json=[settlement_body() | {"settled_at": moment}])

    assert_refused(starts, 422, "starts_at")
    assert_refused(ends, 422, "ends_at")
    assert_refused(both, 422, "starts_at")
    assert_refused(settled, 422, "settled_at")
    assert_refused(in_a_list, 422, 0, "settled_at")
    assert "UTC" in str(settled.json()["detail"])
    assert store.settlement("ACQ-MATRIX") is None
    assert client.get("/silences", params={"all": True}).json() == []


# --- 3. silences that would end at the edge of time ----------------------------------------


def test_a_silence_longer_than_a_year_or_ending_at_the_edge_of_time_is_422(
    api: tuple[TestClient, Seeded, Store],
) -> None:
    client, _, _ = api
    now = datetime.now(UTC)
    silence = {"reason": "upgrade", "bank_code": BANK}

    refused = {
        "to the end of time": client.post(
            "/silences", json=silence | {"ends_at": "9999-12-31T23:59:59Z"}
        ),
        "late start, overflowing duration": client.post(
            "/silences", json=silence | {"starts_at": "9999-12-31T00:00:00Z", "duration_s": 86400}
        ),
        "a day at the end of time": client.post(
            "/silences",
            json=silence | {"starts_at": "9999-12-30T00:00:00Z", "ends_at": "9999-12-31T00:00:00Z"},
        ),
        "two years": client.post(
            "/silences",
            json=silence
            | {"starts_at": now.isoformat(), "ends_at": (now + timedelta(days=731)).isoformat()},
        ),
        "duration over the maximum": client.post(
            "/silences", json=silence | {"duration_s": 366 * 86400 + 1}
        ),
    }
    longest = client.post("/silences", json=silence | {"duration_s": 366 * 86400})
    next_year = client.post(
        "/silences",
        json=silence
        | {
            "starts_at": (now + timedelta(days=300)).isoformat(),
            "ends_at": (now + timedelta(days=301)).isoformat(),
        },
    )

    for what, response in refused.items():
        assert response.status_code == 422, (what, response.text)
        assert "silence" in response.text or "duration_s" in response.text, (what, response.text)
    assert (longest.status_code, next_year.status_code) == (201, 201), (
        longest.text,
        next_year.text,
    )
    assert len(client.get("/silences").json()) == 2


# --- 4. lone surrogates ---------------------------------------------------------------------

SURROGATE = "\ud800"


def test_a_lone_surrogate_in_any_body_string_is_4xx(
    api: tuple[TestClient, Seeded, Store],
) -> None:
    client, seeded, store = api
    alert, case = seeded.alert_ids[0], seeded.case_ids[0]
    silence = {"reason": "upgrade", "bank_code": BANK, "duration_s": 60}
    bodies: list[tuple[str, dict[str, Any] | list[Any]]] = [
        (f"/alerts/{alert}/ack", {"note": SURROGATE}),
        (f"/alerts/{alert}/ack", {"note": "ok", SURROGATE: 1}),
        *[("/silences", silence | {name: SURROGATE}) for name in ("reason", "bank_code", "type")],
        ("/silences", silence | {"reason": "x" + SURROGATE + "y", "mid": SURROGATE}),
        ("/silences", silence | {"starts_at": SURROGATE}),
        (f"/cases/{case}/transitions", {"to": "VERIFYING", "note": SURROGATE}),
        (f"/cases/{case}/transitions", {"to": "VERIFYING", "account": SURROGATE}),
        (f"/cases/{case}/transitions", {"to": SURROGATE}),
        ("/tokens", {"name": SURROGATE, "role": "viewer"}),
        ("/tokens", {"name": "fine", "role": SURROGATE}),
        ("/settlements", settlement_body() | {"reason_text": SURROGATE, "status": "FAILED"}),
        ("/settlements", [settlement_body() | {"settlement_id": SURROGATE}]),
    ]

    answers = [(path, body, post_text(client, path, json.dumps(body))) for path, body in bodies]

    for path, body, response in answers:
        assert 400 <= response.status_code < 500, (path, body, response.status_code, response.text)
        assert response.json()["detail"], (path, response.text)
    assert client.get(f"/alerts/{alert}").json()["status"] == "firing"
    assert client.get(f"/cases/{case}").json()["state"] == "OPEN"
    assert store.settlement("ACQ-MATRIX") is None


# --- 5. a stored token whose role is no longer known --------------------------------------


def test_a_token_whose_stored_role_is_unknown_is_401_and_logged_without_the_secret(
    api: tuple[TestClient, Seeded, Store], caplog: pytest.LogCaptureFixture
) -> None:
    client, _, store = api
    secret = "pm_" + uuid.uuid4().hex
    with store.engine.begin() as conn:
        # As an older version, or someone at the database's prompt, might have left it.
        conn.execute(
            api_tokens.insert().values(
                name="old-root",
                role="auditor",
                token_sha256=digest(secret),
                created_at=datetime.now(UTC),
                created_by="by-hand",
            )
        )

    with caplog.at_level(logging.WARNING, logger="collector.tokens"):
        refused = client.get("/alerts", headers={"Authorization": f"Bearer {secret}"})
    listed = client.get("/tokens")

    assert refused.status_code == 401, refused.text
    assert refused.headers["www-authenticate"] == "Bearer"
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "old-root" in warned[0].getMessage()
    assert "auditor" in warned[0].getMessage()
    assert all(
        secret not in r.getMessage() and digest(secret) not in r.getMessage()
        for r in caplog.records
    )
    assert listed.status_code == 200, listed.text
    assert {token["name"]: token["role"] for token in listed.json()}["old-root"] is None
    assert TokenStore(store.engine).caller(secret) is None


# --- 6. NUL characters on every door -------------------------------------------------------

NUL = "\x00"


def test_a_nul_in_any_body_text_path_or_query_parameter_is_422(
    api: tuple[TestClient, Seeded, Store],
) -> None:
    client, seeded, store = api
    alert, case = seeded.alert_ids[0], seeded.case_ids[0]
    silence = {"reason": "upgrade", "bank_code": BANK, "duration_s": 60}
    settlement = settlement_body() | {"reason_text": "refused", "status": "FAILED"}
    bodies: list[tuple[str, dict[str, Any] | list[Any]]] = [
        (f"/alerts/{alert}/ack", {"note": "a" + NUL}),
        (f"/alerts/{alert}/ack", {"note": "ok", NUL: "x"}),
        *[
            ("/silences", silence | {name: silence.get(name, "x") + NUL})
            for name in ("reason", "bank_code", "mid", "tid", "type", "starts_at", "ends_at")
        ],
        *[
            (f"/cases/{case}/transitions", {"to": "VERIFYING"} | {name: "VERIFYING" + NUL})
            for name in ("to", "note", "account")
        ],
        *[("/tokens", {"name": "ok", "role": "viewer"} | {name: NUL}) for name in ("name", "role")],
        *[
            ("/settlements", settlement | {name: str(value) + NUL})
            for name, value in settlement.items()
        ],
        ("/settlements", [settlement | {"reason_text": NUL}]),
    ]
    queries = [
        *[
            ("/alerts", {name: NUL})
            for name in ("status", "type", "tid", "bank", "limit", NUL + "x")
        ],
        ("/silences", {"all": NUL}),
        *[("/cases", {name: NUL}) for name in ("state", "tid", "mid", "cause", "limit")],
        (f"/terminals/{TID}", {"limit": NUL}),
        ("/tokens", {"revoked": NUL}),
        ("/alerts/A-0%00", {}),
        ("/cases/C-0%00", {}),
        ("/terminals/1000000%00", {}),
    ]

    posted = [(path, body, post_text(client, path, json.dumps(body))) for path, body in bodies]
    read = [(path, params, client.get(path, params=params)) for path, params in queries]
    revoked = client.delete("/tokens/spare%00")

    for path, sent, response in [*posted, *read]:
        assert response.status_code == 422, (path, sent, response.status_code, response.text)
        assert response.json()["detail"], (path, response.text)
    assert revoked.status_code == 422, revoked.text
    assert client.get(f"/alerts/{alert}").json()["status"] == "firing"
    assert client.get(f"/cases/{case}").json()["state"] == "OPEN"
    assert client.get("/silences").json() == []
    assert store.settlement("ACQ-MATRIX") is None


@pytest.mark.parametrize("column", ["reason_text", "settlement_id", "bank_code"])
def test_a_csv_row_with_a_nul_is_a_bad_row_by_line_and_the_rest_imported(
    database_url: str, tmp_path: Path, column: str
) -> None:
    store = Store(database_url, SettlementTerms(CollectorConfig()))
    store.migrate()
    rows = [row(1), row(2), row(3)]
    rows[1][column] = rows[1][column] + NUL + "tail"
    path = write_csv(tmp_path / "settlements.csv", rows)
    try:
        result = import_settlements(path, store)
        kept = [store.settlement(cells["settlement_id"]) for cells in (rows[0], rows[2])]
    finally:
        store.close()

    assert (result.rows, result.imported, result.bad, result.stopped) == (3, 2, 1, None)
    bad = result.bad_rows[0]
    assert bad.line == 3
    assert column in bad.reason and "NUL" in bad.reason, bad.reason
    assert NUL not in bad.reason and NUL not in bad.text
    assert all(stored is not None for stored in kept)


def test_mqtt_refuses_a_settlement_whose_reason_text_holds_a_nul() -> None:
    body = settlement_body() | {"reason_text": "refused" + NUL, "status": "FAILED"}
    payload = json.dumps(body).encode()
    assert b"\\u0000" in payload

    with pytest.raises(MessageError) as refused:
        parse_message(payload, expected=SettlementEvent)

    assert "NUL" in refused.value.reason


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59"])
def test_mqtt_and_the_csv_import_refuse_a_time_with_no_utc_form(
    database_url: str, tmp_path: Path, moment: str
) -> None:
    payload = json.dumps(settlement_body() | {"settled_at": moment}).encode()
    with pytest.raises(MessageError) as refused:
        parse_message(payload, expected=SettlementEvent)
    assert "settled_at" in refused.value.reason and "UTC" in refused.value.reason

    store = Store(database_url, SettlementTerms(CollectorConfig()))
    store.migrate()
    rows = [row(1), row(2), row(3)]
    rows[1]["settled_at"] = moment
    path = write_csv(tmp_path / "settlements.csv", rows)
    try:
        result = import_settlements(path, store)
    finally:
        store.close()
    assert (result.rows, result.imported, result.bad, result.stopped) == (3, 2, 1, None)
    assert result.bad_rows[0].line == 3 and "settled_at" in result.bad_rows[0].reason


# --- free text: card numbers masked going in and coming out --------------------------------


def test_card_numbers_in_free_text_are_masked_in_and_out_and_never_echoed(
    api: tuple[TestClient, Seeded, Store],
) -> None:
    client, seeded, store = api
    alert, case = seeded.alert_ids[0], seeded.case_ids[1]
    with store.engine.begin() as conn:
        # Written past the store's own masking, as an older version or a hand might have.
        conn.execute(
            text("UPDATE alerts SET summary = :summary, details = :details WHERE alert_id = :id"),
            {
                "summary": f"card {PAN} failed",
                "details": json.dumps({"evidence": [f"slip shows {PAN}"], "tid": TID}),
                "id": seeded.alert_ids[1],
            },
        )

    acked = client.post(f"/alerts/{alert}/ack", json={"note": f"card {PAN} called"})
    moved = client.post(f"/cases/{case}/transitions", json={"to": "VERIFYING", "note": PAN})
    silenced = client.post(
        "/silences", json={"reason": f"card {PAN}", "bank_code": BANK, "duration_s": 60}
    )
    held = client.get(f"/alerts/{seeded.alert_ids[1]}")
    listed = client.get("/alerts")
    too_long = client.post(f"/alerts/{alert}/ack", json={"note": PAN + "x" * 600})

    for response in (acked, moved, silenced, held, listed):
        assert response.status_code in (200, 201), response.text
        assert PAN not in response.text
    assert acked.json()["history"][-1]["note"] == "card 622202*********0123 called"
    assert moved.json()["audit_log"][-1]["note"] == "622202*********0123"
    assert silenced.json()["reason"] == "card 622202*********0123"
    assert held.json()["summary"] == "card 622202*********0123 failed"
    assert held.json()["details"]["tid"] == TID
    assert too_long.status_code == 422 and PAN not in too_long.text


# --- the fuzz --------------------------------------------------------------------------------

EXAMPLES = 10  # per operation and mode: ~15 s a database (the benchmark runs more)


def test_fuzzed_hostile_requests_get_no_server_error(database_url: str) -> None:
    seeded = seed(database_url)
    store = seeded.open()
    token = TokenStore(store.engine).create(
        f"fuzz-{uuid.uuid4().hex[:8]}", Role.ADMIN, created_by="test", now=store.clock()
    )
    app = create_app(store)
    operations = sum(len(item) for item in app.openapi()["paths"].values())
    server = HttpServer(app, "127.0.0.1", 0)
    server.start()
    try:
        deadline = time.monotonic() + 10
        while server.port is None and time.monotonic() < deadline:
            server.thread.join(0.02)
        known = {"alert_id": seeded.alert_ids, "case_id": seeded.case_ids, "tid": [TID]}
        tally = fuzz(
            f"http://127.0.0.1:{server.port}",
            token,
            settlement_token=seeded.tokens["acquirer"],
            examples=EXAMPLES,
            known=known,
        )
    finally:
        server.stop()
        store.close()

    print(tally.line(database_url.split(":", 1)[0].split("+", 1)[0]))
    assert tally.operations == operations and tally.requests > operations * EXAMPLES
    assert tally.counts["4xx"] > 0 and tally.counts["2xx"] > 0
    assert tally.counts["5xx"] == 0, tally.server_errors
