"""The collector's REST API against a real database holding what a collector makes: failed
settlements alerted and opened as cases by the real alert engine, terminal status and
presence, tokens of each role. The role matrix (every route x no token, a bad token, a
revoked one, viewer, operator, admin), each resource's behaviour on SQLite and PostgreSQL,
the token commands, and the API served by uvicorn. Schemathesis: test_collector_api_schema.py.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from starlette.exceptions import StarletteDeprecationWarning
from test_collector_alerts import BANK, TID, failed, status
from test_collector_ingest import txn

from collector.alerts import AlertEngine, AlertStore, alert_event
from collector.api import create_app
from collector.cases import CaseState
from collector.casestore import CaseStore
from collector.config import CollectorConfig
from collector.http import HttpServer
from collector.schema import api_tokens
from collector.store import Store
from collector.terms import SettlementTerms
from collector.tokens import Role, TokenStore
from posmon.wire.models import PresenceEvent, PresenceState

with warnings.catch_warnings():
    # Starlette's test client asks for httpx2; httpx (the dev extra) still works.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

RRNS = ("402511000001", "402511000002", "402511000003")
OTHER_TID = "10000002"
ACCOUNT = "6222020200112233445"


@dataclass
class Seeded:
    """A database with data in it, and a token of each role (and a revoked one)."""

    url: str
    tokens: dict[str, str]
    alert_ids: list[str]
    case_ids: list[str]

    def open(self) -> Store:
        store = Store(self.url, SettlementTerms(CollectorConfig()), collector_id="api-test")
        store.migrate()
        return store


def seed(url: str) -> Seeded:
    """Fill a fresh database as a running collector would, through its real code paths."""
    config = CollectorConfig()
    store = Store(url, SettlementTerms(config), collector_id="api-test")
    try:
        store.migrate()
        alerts = AlertStore(store.engine, "api-test", ["mqtt"], reads=store.reads)
        cases = CaseStore(store.engine, reads=store.reads)
        engine = AlertEngine(config, alerts, lambda: datetime.now(UTC), cases=cases)
        engine.start()
        now = datetime.now(UTC)
        presence = PresenceEvent(
            agent_id="box-1",
            state=PresenceState.ONLINE,
            tids=[TID],
            version="0.1.0",
            observed_at=now,
        )
        store.ingest([presence, status(TID), status(OTHER_TID, link_up=False)])
        store.ingest([txn(rrn) for rrn in RRNS])
        store.ingest([failed(rrn, f"S-{rrn}", "AC04") for rrn in RRNS])
        engine.step()
        tokens = TokenStore(store.engine, reads=store.reads)
        made = {
            role.value: tokens.create(f"ops-{role.value}", role, created_by="test", now=now)
            for role in Role
        }
        made["revoked"] = tokens.create("ops-gone", Role.ADMIN, created_by="test", now=now)
        tokens.revoke("ops-gone", now)
        tokens.create("spare", Role.VIEWER, created_by="test", now=now)
        alert_ids = [row.alert_id for row in alerts.find(alert_type="SETTLEMENT_FAILED")]
        case_ids = [case.case_id for case in cases.search()]
    finally:
        store.close()
    assert len(alert_ids) == len(RRNS) and len(case_ids) == len(RRNS), (alert_ids, case_ids)
    return Seeded(url, made, alert_ids, case_ids)


def client_for(store: Store, token: str | None = None) -> TestClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # Server errors come back as 500 responses, as a real client would see them.
    return TestClient(create_app(store), raise_server_exceptions=False, headers=headers)


@pytest.fixture
def seeded(database_url: str) -> Seeded:
    return seed(database_url)


@pytest.fixture
def api(seeded: Seeded) -> Iterator[tuple[TestClient, Seeded, Store]]:
    """An operator's client on a seeded database (SQLite and PostgreSQL)."""
    store = seeded.open()
    with client_for(store, seeded.tokens["operator"]) as client:
        yield client, seeded, store
    store.close()


# --- the role matrix ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    """One seeded SQLite file; each matrix test works on its own copy."""
    folder = tmp_path_factory.mktemp("api-template")
    return seed(f"sqlite:///{folder}/posmon.db")


def settlement_body() -> dict[str, Any]:
    return {
        "schema": "posmon.settlement/1",
        "settlement_id": "ACQ-MATRIX",
        "mid": "898100012340001",
        "tid": TID,
        "rrn": RRNS[0],
        "txn_date": datetime.now(UTC).date().isoformat(),
        "amount": 12_800,
        "fee": 0,
        "net_amount": 12_800,
        "currency": "CNY",
        "status": "CREDITED",
        "settled_at": datetime.now(UTC).isoformat(),
        "kind": "ORIGINAL",
    }


@dataclass(frozen=True)
class Route:
    """One route of the matrix: the role it needs (None: none) and its status when allowed."""

    method: str
    path: str
    needed: Role | None
    allowed: int = 200
    body: Any = None

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


SILENCE = {"reason": "upgrade", "bank_code": BANK, "duration_s": 60}
ROUTES = [
    Route("GET", "/health", None),
    Route("GET", "/metrics", Role.VIEWER),
    Route("GET", "/alerts", Role.VIEWER),
    Route("GET", "/alerts/{alert_id}", Role.VIEWER),
    Route("POST", "/alerts/{alert_id}/ack", Role.OPERATOR, body={"note": "calling the bank"}),
    Route("GET", "/silences", Role.VIEWER),
    Route("POST", "/silences", Role.OPERATOR, 201, SILENCE),
    Route("GET", "/cases", Role.VIEWER),
    Route("GET", "/cases/{case_id}", Role.VIEWER),
    Route("POST", "/cases/{case_id}/transitions", Role.OPERATOR, body={"to": "VERIFYING"}),
    Route("GET", "/cases/{case_id}/evidence", Role.VIEWER),
    Route("GET", "/cases/{case_id}/evidence.pdf", Role.VIEWER),
    Route("GET", "/terminals", Role.VIEWER),
    Route("GET", "/terminals/{tid}", Role.VIEWER),
    Route("POST", "/settlements", Role.ACQUIRER, body="settlement"),
    Route("GET", "/tokens", Role.ADMIN),
    Route("POST", "/tokens", Role.ADMIN, 201, {"name": "new-one", "role": "viewer"}),
    Route("DELETE", "/tokens/{name}", Role.ADMIN, 204),
]
CALLERS = ("none", "bogus", "revoked", "viewer", "operator", "admin", "acquirer")


def expected_status(route: Route, caller: str) -> int:
    if route.needed is None:
        return route.allowed
    if caller in ("none", "bogus", "revoked"):
        return 401
    return route.allowed if Role(caller).allows(route.needed) else 403


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_role_matrix(template: Seeded, tmp_path: Path, caller: str, route: Route) -> None:
    shutil.copy(template.url.removeprefix("sqlite:///"), tmp_path / "posmon.db")
    seeded = Seeded(f"sqlite:///{tmp_path}/posmon.db", **_ids(template))
    token = {"none": None, "bogus": "pm_" + "x" * 43, **seeded.tokens}[caller]
    url = route.path.format(
        alert_id=seeded.alert_ids[0], case_id=seeded.case_ids[0], tid=TID, name="spare"
    )
    store = seeded.open()
    try:
        with client_for(store, token) as client:
            body = settlement_body() if route.body == "settlement" else route.body
            response = client.request(route.method, url, json=body)
    finally:
        store.close()

    assert response.status_code == expected_status(route, caller), response.text
    if response.status_code == 401:
        assert response.headers["www-authenticate"] == "Bearer"


def _ids(seeded: Seeded) -> dict[str, Any]:
    return {"tokens": seeded.tokens, "alert_ids": seeded.alert_ids, "case_ids": seeded.case_ids}


def test_the_matrix_covers_every_route(template: Seeded) -> None:
    store = template.open()
    try:
        paths = create_app(store).openapi()["paths"]
    finally:
        store.close()
    served = {(method.upper(), path) for path, item in paths.items() for method in item}

    assert served == {(route.method, route.path) for route in ROUTES}


# --- alerts and silences -----------------------------------------------------------------


def test_alerts_are_listed_and_filtered(api: tuple[TestClient, Seeded, Store]) -> None:
    client, seeded, _ = api

    everything = client.get("/alerts").json()
    failures = client.get("/alerts", params={"type": "SETTLEMENT_FAILED", "bank": BANK}).json()
    one = client.get("/alerts", params={"type": "SETTLEMENT_FAILED", "limit": 1}).json()
    elsewhere = client.get("/alerts", params={"tid": OTHER_TID, "type": "SETTLEMENT_FAILED"})
    resolved = client.get("/alerts", params={"status": "resolved"}).json()

    assert {alert["alert_id"] for alert in failures} == set(seeded.alert_ids)
    assert len(everything) >= len(seeded.alert_ids) and len(one) == 1
    assert elsewhere.json() == [] and resolved == []
    alert = failures[0]
    assert (alert["status"], alert["cause"], alert["severity"]) == (
        "firing",
        "ACCOUNT_INFO",
        "critical",
    )
    assert (alert["amount_at_risk"], alert["currency"]) == (12_800, "CNY")
    assert datetime.fromisoformat(alert["started_at"]).tzinfo is not None
    assert any("AC04" in line for line in alert["details"]["evidence"])


def test_an_alert_is_acknowledged_by_the_tokens_name_once(
    api: tuple[TestClient, Seeded, Store],
) -> None:
    client, seeded, _ = api
    alert_id = seeded.alert_ids[0]

    acked = client.post(f"/alerts/{alert_id}/ack", json={"note": "calling the bank"})
    again = client.post(f"/alerts/{alert_id}/ack")
    shown = client.get(f"/alerts/{alert_id}").json()

    assert acked.status_code == 200, acked.text
    assert (acked.json()["status"], acked.json()["acked_by"]) == ("acknowledged", "ops-operator")
    assert again.status_code == 409
    assert "not firing" in again.json()["detail"]
    assert [(item["event"], item["actor"]) for item in shown["history"]][-1] == (
        "acknowledged",
        "ops-operator",
    )
    assert shown["history"][-1]["note"] == "calling the bank"
    assert alert_id not in {
        a["alert_id"] for a in client.get("/alerts", params={"status": "firing"}).json()
    }


def test_an_alert_names_its_state_as_posmon_alert_1_does(
    api: tuple[TestClient, Seeded, Store],
) -> None:
    # One field name across MQTT and REST (issue #20): `state`. Its old REST name `status`
    # stays, deprecated in the OpenAPI document, with the same value until API 2.
    client, seeded, store = api
    alert_id = seeded.alert_ids[0]
    stored = AlertStore(store.engine, "t", [], reads=store.reads).get(alert_id)
    assert stored is not None
    published = alert_event(stored)
    [rest] = [a for a in client.get("/alerts", params={"state": "firing"}).json()
              if a["alert_id"] == alert_id]  # fmt: skip
    assert rest["state"] == published.state.value == "firing"
    assert rest["status"] == rest["state"]
    acked = client.post(f"/alerts/{alert_id}/ack").json()
    assert (acked["state"], acked["status"]) == ("acknowledged", "acknowledged")
    by_old_name = client.get("/alerts", params={"status": "acknowledged"}).json()
    assert alert_id in {a["alert_id"] for a in by_old_name}
    both = client.get("/alerts", params={"state": "resolved", "status": "firing"})
    assert both.status_code == 422
    document = client.get("/openapi.json").json()
    fields = document["components"]["schemas"]["Alert"]["properties"]
    assert fields["status"]["deprecated"] is True and "deprecated" not in fields["state"]
    parameters = {p["name"]: p for p in document["paths"]["/alerts"]["get"]["parameters"]}
    assert parameters["status"]["deprecated"] is True


@pytest.mark.parametrize(
    ("path", "status_code"),
    [
        ("/alerts/A-0000000000000000", 404),
        ("/alerts/A-0000000000000000/ack", 404),
        ("/alerts/not%20an%20id", 422),
        ("/cases/C-000000000000", 404),
        ("/cases/C-000000000000/evidence", 404),
        ("/cases/C-000000000000/evidence.pdf", 404),
        ("/cases/C-000000000000/transitions", 404),
        ("/terminals/99999999", 404),
        ("/terminals/123", 422),
        ("/alerts?status=closed", 422),
        ("/alerts?type=NO_SUCH_TYPE", 422),
        ("/alerts?limit=0", 422),
        ("/cases?state=SHELVED", 422),
        ("/cases?cause=WEATHER", 422),
        ("/alerts?stauts=resolved", 422),
    ],
)
def test_unknown_ids_are_404_and_bad_input_422(
    api: tuple[TestClient, Seeded, Store], path: str, status_code: int
) -> None:
    client, _, _ = api
    if path.endswith(("/ack", "/transitions")):
        response = client.post(path, json={"to": "VERIFYING"} if "transitions" in path else {})
    else:
        response = client.get(path)

    assert response.status_code == status_code, response.text
    assert response.json()["detail"]


def test_silences_are_made_by_the_token_and_checked(
    api: tuple[TestClient, Seeded, Store],
) -> None:
    client, _, _ = api
    start = datetime(2030, 1, 1, 22, 0, tzinfo=UTC)

    made = client.post(
        "/silences",
        json={
            "reason": "core upgrade",
            "bank_code": BANK,
            "starts_at": start.isoformat(),
            "ends_at": (start + timedelta(hours=8)).isoformat(),
            "maintenance": True,
        },
    )
    listed = client.get("/silences").json()
    refused = [
        client.post("/silences", json=body)
        for body in (
            {"reason": "no matcher", "duration_s": 60},
            {"reason": "both", "bank_code": BANK, "duration_s": 60, "ends_at": start.isoformat()},
            {
                "reason": "backwards",
                "bank_code": BANK,
                "starts_at": start.isoformat(),
                "ends_at": (start - timedelta(hours=1)).isoformat(),
            },
            {"reason": "ended", "bank_code": BANK, "ends_at": "2020-01-01T00:00:00+08:00"},
            {"reason": "naive", "bank_code": BANK, "ends_at": "2031-01-01T00:00:00"},
            {
                "reason": "far",
                "bank_code": BANK,
                "starts_at": "9999-12-31T00:00:00Z",
                "duration_s": 86400 * 2,
            },
            {"reason": "x", "bank_code": BANK, "duration_s": 60, "colour": "red"},
            {"reason": "nul\x00", "bank_code": BANK, "duration_s": 60},
        )
    ]

    assert made.status_code == 201, made.text
    silence = made.json()
    assert (silence["created_by"], silence["maintenance"], silence["bank_code"]) == (
        "ops-operator",
        True,
        BANK,
    )
    assert datetime.fromisoformat(silence["ends_at"]) == start + timedelta(hours=8)
    assert silence["silence_id"] in {item["silence_id"] for item in listed}
    assert [response.status_code for response in refused] == [422] * len(refused)


# --- cases -------------------------------------------------------------------------------


def test_cases_are_listed_shown_and_moved_with_the_account_masked(
    api: tuple[TestClient, Seeded, Store],
) -> None:
    client, seeded, _ = api
    case_id = seeded.case_ids[0]

    listed = client.get("/cases", params={"tid": TID, "cause": "ACCOUNT_INFO"}).json()
    shown = client.get(f"/cases/{case_id}").json()
    moved = client.post(
        f"/cases/{case_id}/transitions",
        json={"to": "VERIFYING", "note": "account closed", "account": ACCOUNT},
    )
    verifying = client.get("/cases", params={"state": "VERIFYING"}).json()

    assert {case["case_id"] for case in listed} == set(seeded.case_ids)
    assert (shown["state"], shown["cause"], shown["amount"], shown["currency"]) == (
        "OPEN",
        "ACCOUNT_INFO",
        12_800,
        "CNY",
    )
    assert shown["next_states"] == ["CANCELLED", "VERIFYING"]
    assert [event["to_state"] for event in shown["audit_log"]] == ["OPEN"]
    assert moved.status_code == 200, moved.text
    case = moved.json()
    assert case["state"] == "VERIFYING"
    assert case["account_masked"] == "*" * (len(ACCOUNT) - 4) + ACCOUNT[-4:]
    assert ACCOUNT not in moved.text
    last = case["audit_log"][-1]
    assert (last["from_state"], last["to_state"], last["actor"], last["note"]) == (
        "OPEN",
        "VERIFYING",
        "ops-operator",
        "account closed",
    )
    assert [item["case_id"] for item in verifying] == [case_id]


def test_a_move_the_workflow_refuses_is_409_with_its_reason(
    api: tuple[TestClient, Seeded, Store],
) -> None:
    client, seeded, store = api
    case_id = seeded.case_ids[0]

    skipping = client.post(f"/cases/{case_id}/transitions", json={"to": "REMITTED"})
    for state in ("VERIFYING", "SUBMITTED"):
        assert client.post(f"/cases/{case_id}/transitions", json={"to": state}).status_code == 200
    silent_rejection = client.post(f"/cases/{case_id}/transitions", json={"to": "REJECTED"})
    bad = [
        client.post(f"/cases/{case_id}/transitions", json=body)
        for body in (
            {"to": "SHELVED"},
            {"to": "REJECTED", "account": "12-34"},
            {"to": "REJECTED", "account": "1234567"},
            {"note": "no target"},
        )
    ]

    assert skipping.status_code == 409
    assert skipping.json()["detail"] == (
        "a case OPEN cannot go to REMITTED (allowed: CANCELLED, VERIFYING)"
    )
    assert silent_rejection.status_code == 409
    assert "bank's reason" in silent_rejection.json()["detail"]
    assert [response.status_code for response in bad] == [422] * len(bad)
    case = CaseStore(store.engine).get(case_id)
    assert case is not None and case.state is CaseState.SUBMITTED


def test_evidence_as_json_and_as_pdf(api: tuple[TestClient, Seeded, Store]) -> None:
    client, seeded, _ = api
    case_id = seeded.case_ids[0]

    data = client.get(f"/cases/{case_id}/evidence")
    document = client.get(f"/cases/{case_id}/evidence.pdf")

    assert data.status_code == 200, data.text
    package = data.json()
    assert package["case"]["case_id"] == case_id
    assert package["cause"]["cause"] == "ACCOUNT_INFO"
    assert package["transaction"]["pan_masked"] == "622202*********0123"
    assert [item["status"] for item in package["settlements"]] == ["FAILED"]
    assert any("alert SETTLEMENT_FAILED" in entry["what"] for entry in package["timeline"])
    assert document.status_code == 200
    assert document.headers["content-type"] == "application/pdf"
    assert document.content.startswith(b"%PDF")
    assert case_id in document.headers["content-disposition"]


# --- terminals, settlements, metrics -----------------------------------------------------


def test_terminals_with_last_status_presence_and_masked_transactions(
    api: tuple[TestClient, Seeded, Store],
) -> None:
    client, _, _ = api

    terminals = {item["tid"]: item for item in client.get("/terminals").json()}
    one = client.get(f"/terminals/{TID}", params={"limit": 2})

    assert set(terminals) == {TID, OTHER_TID}
    assert terminals[TID]["last_status"]["link_up"] is True
    assert terminals[TID]["agent"]["state"] == "online"
    assert terminals[OTHER_TID]["last_status"]["link_up"] is False
    assert terminals[OTHER_TID]["agent"] is None
    assert one.status_code == 200, one.text
    detail = one.json()
    assert detail["agent"]["agent_id"] == "box-1"
    assert [item["rrn"] for item in detail["transactions"]] == sorted(RRNS, reverse=True)[:2]
    assert {item["outcome"] for item in detail["transactions"]} == {"FAILED"}
    for item in detail["transactions"]:
        assert re.fullmatch(r"\d{6}\*+\d{4}", item["pan_masked"]), item["pan_masked"]


def test_settlements_need_the_acquirer_role_and_refuse_nul(
    api: tuple[TestClient, Seeded, Store],
) -> None:
    operator, seeded, store = api
    body = settlement_body() | {"reason_text": "bad\x00text", "status": "FAILED"}

    with client_for(store, seeded.tokens["acquirer"]) as client:
        refused = client.post("/settlements", json=body)
        stored = client.post("/settlements", json=[settlement_body()])
        reads = client.get("/alerts")
    by_operator = operator.post("/settlements", json=[settlement_body() | {"settlement_id": "X"}])

    assert refused.status_code == 422, refused.text
    # An operator acknowledges alerts and closes cases; it cannot also say the money came.
    assert by_operator.status_code == 403
    assert by_operator.json()["detail"] == "needs the acquirer role; this token is operator"
    assert store.settlement("X") is None
    # The acquirer's token posts settlements and reads nothing.
    assert reads.status_code == 403
    assert stored.json() == {"stored": 1, "repeats": 0}
    assert store.settlement("ACQ-MATRIX") is not None


def test_metrics_in_prometheus_text(api: tuple[TestClient, Seeded, Store]) -> None:
    client, _, _ = api

    response = client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'posmon_alerts_open{type="SETTLEMENT_FAILED"} 3.0' in text
    assert 'posmon_cases{state="OPEN"} 3.0' in text
    assert "posmon_transactions_stored 3.0" in text
    assert "posmon_settlements_stored 3.0" in text
    assert "posmon_deadletters_stored 0.0" in text
    assert 'posmon_transactions_by_outcome{outcome="FAILED"} 3.0' in text
    assert "# TYPE posmon_collector_lag_seconds gauge" in text


# --- tokens ------------------------------------------------------------------------------


def test_tokens_are_kept_hashed_and_revoking_one_stops_it(
    api: tuple[TestClient, Seeded, Store],
) -> None:
    client, seeded, store = api
    admin = {"Authorization": f"Bearer {seeded.tokens['admin']}"}

    made = client.post("/tokens", json={"name": "grafana", "role": "viewer"}, headers=admin)
    token = made.json()["token"]
    works = client.get("/alerts", headers={"Authorization": f"Bearer {token}"})
    twice = client.post("/tokens", json={"name": "grafana", "role": "admin"}, headers=admin)
    gone = client.delete("/tokens/grafana", headers=admin)
    after = client.get("/alerts", headers={"Authorization": f"Bearer {token}"})
    again = client.delete("/tokens/grafana", headers=admin)
    listed = client.get("/tokens", params={"revoked": True}, headers=admin).json()

    assert made.status_code == 201 and works.status_code == 200
    assert twice.status_code == 409
    assert (gone.status_code, after.status_code, again.status_code) == (204, 401, 404)
    grafana = [row for row in listed if row["name"] == "grafana"]
    assert len(grafana) == 1 and grafana[0]["revoked_at"] is not None
    assert token not in json.dumps(listed)
    with store.engine.connect() as conn:
        kept = conn.execute(select(api_tokens.c.token_sha256)).scalars().all()
    assert hashlib.sha256(token.encode()).hexdigest() in kept
    assert not any(token in value for value in kept)


def test_token_commands(tmp_path: Path) -> None:
    config = tmp_path / "collector.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/posmon.db"\n')
    posmon = [str(Path(sys.executable).parent / "posmon")]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*posmon, *args, "--config", str(config)], capture_output=True, text=True, check=False
        )

    made = run("tokens", "create", "--name", "ops-li", "--role", "operator")
    twice = run("tokens", "create", "--name", "ops-li", "--role", "viewer")
    wrong = run("tokens", "create", "--name", "x", "--role", "boss")
    listed = run("tokens", "list")
    revoked = run("tokens", "revoke", "ops-li")
    unknown = run("tokens", "revoke", "ops-li")

    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert re.fullmatch(r"pm_[A-Za-z0-9_-]{43}", token)
    assert (twice.returncode, wrong.returncode) == (1, 2)
    assert "ops-li" in listed.stdout and "operator" in listed.stdout
    assert token not in listed.stdout
    assert (revoked.returncode, unknown.returncode) == (0, 1)
    store = Store(f"sqlite:///{tmp_path}/posmon.db", SettlementTerms(CollectorConfig()))
    try:
        assert TokenStore(store.engine).caller(token) is None
    finally:
        store.close()


# --- served by uvicorn -------------------------------------------------------------------


def test_the_api_served_by_uvicorn(template: Seeded, tmp_path: Path) -> None:
    shutil.copy(template.url.removeprefix("sqlite:///"), tmp_path / "posmon.db")
    seeded = Seeded(f"sqlite:///{tmp_path}/posmon.db", **_ids(template))
    store = seeded.open()
    server = HttpServer(create_app(store), "127.0.0.1", 0)
    server.start()
    try:
        deadline = datetime.now(UTC) + timedelta(seconds=10)
        while server.port is None and datetime.now(UTC) < deadline:
            server.thread.join(0.02)
        base = f"http://127.0.0.1:{server.port}"
        request = urllib.request.Request(
            f"{base}/cases/{seeded.case_ids[0]}/transitions",
            data=json.dumps({"to": "CANCELLED", "note": "credit arrived"}).encode(),
            headers={
                "Authorization": f"Bearer {seeded.tokens['operator']}",
                "Content-Type": "application/json",
            },
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            moved = json.load(answer)
        with urllib.request.urlopen(f"{base}/health", timeout=10) as answer:
            health = json.load(answer)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/alerts", timeout=10)
        refused.value.close()
    finally:
        server.stop()
        store.close()

    assert moved["state"] == "CANCELLED" and moved["next_states"] == []
    assert health["status"] == "ok"
    assert refused.value.code == 401
