"""Card numbers do not get out through any door (issue #15): each path an attacker found,
closed where the data crosses a boundary (the models, the database's free-text columns,
the log records), and typed identifiers (a merchant id that happens to pass Luhn) shown
the same everywhere.

Messages come in as raw JSON, as a hostile or careless publisher would send them, not as
models built by the test (which would already mask them).
"""

from __future__ import annotations

import io
import json
import logging
import re
import string
import threading
import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from sqlalchemy import select
from starlette.exceptions import StarletteDeprecationWarning
from test_collector_alerts import AlertRig, alert_rig  # noqa: F401 - the fixture
from test_collector_ingest import settlement, txn
from test_pan import SEPARATORS, pans, separator_mix, with_check_digit, written

from collector.alerts import AlertEngine, AlertStore
from collector.api import create_app
from collector.api import models as api_models
from collector.cases import CaseState
from collector.casestore import CaseStore
from collector.config import CollectorConfig
from collector.evidence import gather
from collector.schema import alerts, notifications, settlements, status_events, transactions
from collector.settlement_import import import_settlements
from collector.store import Store
from collector.terms import SettlementTerms
from collector.tokens import Role, TokenStore
from posmon.logs import setup_logging
from posmon.pan import IDENTIFIER_KEYS
from posmon.wire.codec import EventBuilder, parse_data
from posmon.wire.models import MESSAGE_TYPES, StatusEvent, parse_message

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

VISA = "4111111111111111"
# The contract's example card: UnionPay's range, and no Luhn check digit.
UNIONPAY = "6222021234567890123"
WRITTEN = ["4111.1111.1111.1111", "4111 1111 1111 1111", f"card{UNIONPAY}closed"]
# A 15-digit merchant id that passes Luhn: an identifier, never masked anywhere.
LUHN_MID = with_check_digit("89810001234000")
TID = "10000001"
RRN = "402511000001"
FULL_NUMBERS = re.compile(rf"{VISA}|{UNIONPAY}|4111[ .-]1111[ .-]1111[ .-]1111")


def leaks(value: object) -> list[str]:
    """Full card numbers found in any text, JSON or object (by its JSON or repr)."""
    if isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, default=str, ensure_ascii=False)
    return FULL_NUMBERS.findall(text)


def raw_settlement(reason_text: str, *, settlement_id: str = "S-1") -> bytes:
    """A failed settlement as an acquirer's feed would publish it, PAN in its reason."""
    body = json.loads(settlement(RRN, settlement_id).to_json())
    body.update(
        status="FAILED",
        reason_code="AC04",
        reason_text=reason_text,
        mid=LUHN_MID,
        bank_code="0102",
    )
    return json.dumps(body).encode()


def raw_txn(**extra: str) -> bytes:
    body = json.loads(txn(RRN, mid=LUHN_MID).to_json())
    body["extra"] = extra
    return json.dumps(body).encode()


# --- the agent: MID is a merchant id only where the contract defines one ------------------


def test_a_mid_key_on_status_and_heartbeat_frames_is_free_text_and_masked() -> None:
    fs = "\x1c"
    for kind in ("STS", "HBT"):
        keys = "LINK=UP\x1cNET=ETH\x1cSAF=0\x1c" if kind == "STS" else ""
        data = f"{kind}{fs}SEQ=1{fs}TID={TID}{fs}{keys}TS=20261125103015{fs}MID=4111 1111 1111 1111"
        event = EventBuilder("box-1").build(parse_data(data.encode()), datetime.now(UTC))
        assert isinstance(event, StatusEvent)
        assert event.extra is not None and event.extra["MID"] == "411111******1111"
        assert not leaks(event.to_json())


def test_a_luhn_valid_mid_on_a_transaction_frame_stays_whole() -> None:
    fs = "\x1c"
    data = fs.join(
        [
            "TXN",
            "SEQ=1",
            f"TID={TID}",
            f"MID={LUHN_MID}",
            "KIND=SALE",
            "AMT=12800",
            "CUR=156",
            f"PAN={VISA}",
            "RC=00",
            f"RRN={RRN}",
            "STAN=000001",
            "BATCH=000042",
            "TS=20261125103015",
            "NOTE=slip 4111-1111-1111-1111",
        ]
    )
    event = EventBuilder("box-1").build(parse_data(data.encode()), datetime.now(UTC))
    payload = json.loads(event.to_json())
    assert payload["mid"] == LUHN_MID
    assert payload["pan_masked"] == "411111******1111"
    assert payload["extra"] == {"NOTE": "slip 411111******1111"}


# --- the collector: every door and every output -------------------------------------------


@pytest.fixture
def collector_db(database_url: str) -> Iterator[Store]:
    store = Store(database_url, SettlementTerms(CollectorConfig()), collector_id="pan-test")
    store.migrate()
    yield store
    store.close()


def ingest_and_alert(store: Store, raw: list[bytes]) -> tuple[AlertStore, CaseStore]:
    """Store raw messages as the MQTT ingest does, and let the alert engine act on them."""
    config = CollectorConfig()
    alert_store = AlertStore(store.engine, "pan-test", ["mqtt"], reads=store.reads)
    cases = CaseStore(store.engine, reads=store.reads)
    engine = AlertEngine(config, alert_store, lambda: datetime.now(UTC), cases=cases)
    engine.start()
    store.ingest([parse_message(payload) for payload in raw])
    engine.step()
    return alert_store, cases


def all_text(store: Store, *tables: Any) -> list[Any]:
    with store.engine.connect() as conn:
        return [list(row) for table in tables for row in conn.execute(select(table)).all()]


def test_free_text_from_mqtt_is_masked_in_the_database_alerts_api_and_evidence(
    collector_db: Store,
) -> None:
    store = collector_db
    alert_store, cases = ingest_and_alert(
        store,
        [
            raw_txn(NOTE=f"slip {WRITTEN[0]}", **{VISA: "key is a card"}),
            raw_settlement(f"card {WRITTEN[1]} closed; {WRITTEN[2]}"),
        ],
    )

    stored = all_text(store, transactions, settlements, alerts, notifications)
    assert stored and not leaks(stored)
    with store.engine.connect() as conn:
        reason = conn.execute(select(settlements.c.reason_text)).scalar_one()
        extra = conn.execute(select(transactions.c.extra)).scalar_one()
    assert reason == "card 411111******1111 closed; card622202*********0123closed"
    assert extra == {"NOTE": "slip 411111******1111", "411111******1111": "key is a card"}

    (alert,) = alert_store.find(alert_type="SETTLEMENT_FAILED")
    assert alert.details is not None
    assert alert.details["settlement"]["reason_text"] == reason
    tokens = TokenStore(store.engine, reads=store.reads)
    token = tokens.create("ops", Role.ADMIN, created_by="test", now=datetime.now(UTC))
    client = TestClient(
        create_app(store),
        raise_server_exceptions=False,
        headers={"Authorization": f"Bearer {token}"},
    )
    listed = client.get("/alerts")
    shown = client.get(f"/alerts/{alert.alert_id}")
    (case,) = cases.search()
    case_json = client.get(f"/cases/{case.case_id}")
    evidence = client.get(f"/cases/{case.case_id}/evidence")
    for response in (listed, shown, case_json, evidence):
        assert response.status_code == 200, response.text
        assert not leaks(response.text), response.url
    # The merchant id is an identifier: whole in the alert, the case and the evidence.
    assert shown.json()["mid"] == LUHN_MID
    assert case_json.json()["mid"] == LUHN_MID
    assert evidence.json()["case"]["mid"] == LUHN_MID
    package = gather(cases, alert_store, case, datetime.now(UTC))
    assert package["case"]["mid"] == LUHN_MID and not leaks(package)


def test_a_case_note_with_a_card_number_comes_back_masked(collector_db: Store) -> None:
    store = collector_db
    _, cases = ingest_and_alert(store, [raw_txn(), raw_settlement("closed")])
    (case,) = cases.search()
    cases.advance(
        case.case_id,
        CaseState.VERIFYING,
        actor="ops-li",
        now=datetime.now(UTC),
        note=f"merchant read out {WRITTEN[0]} on the phone",
    )
    last = cases.audit_log(case.case_id)[-1]
    assert last.to_state is CaseState.VERIFYING
    assert last.note == "merchant read out 411111******1111 on the phone"


def test_a_settlement_file_with_card_numbers_in_reasons_is_stored_masked(
    collector_db: Store, tmp_path: Path
) -> None:
    store = collector_db
    body = json.loads(raw_settlement("x"))
    header = list(body)
    header.remove("schema")
    rows = []
    for index, text in enumerate(WRITTEN):
        body.update(settlement_id=f"F-{index}", reason_text=f"card {text} closed")
        rows.append(",".join(json.dumps(str(body[name])) for name in header))
    path = tmp_path / "settlements.csv"
    path.write_text(",".join(header) + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    result = import_settlements(path, store)
    assert result.imported == len(WRITTEN), result
    stored = all_text(store, settlements)
    assert len(stored) == len(WRITTEN) and not leaks(stored)


def test_card_numbers_sent_straight_to_mqtt_are_masked_by_the_collector(
    alert_rig: AlertRig,  # noqa: F811 - the fixture
) -> None:
    rig = alert_rig
    rig.start()
    topics = rig.rig.publisher.topics
    status = json.loads(
        StatusEvent(
            event_id=uuid.uuid4(),
            agent_id="box-1",
            tid=TID,
            link_up=True,
            network="ETH",
            saf_pending=0,
            serial_ok=True,
            observed_at=datetime.now(UTC),
        ).to_json()
    )
    status.update(extra={"MID": WRITTEN[1]}, firmware=f"fw {WRITTEN[0]}")
    rig.rig.publisher.publish(topics.terminal(TID, "status"), json.dumps(status).encode())
    rig.rig.publisher.publish(topics.terminal(TID, "txn"), raw_txn(NOTE=WRITTEN[0]))
    rig.rig.publisher.publish(topics.settlements, raw_settlement(f"card {WRITTEN[2]}"))
    rig.rig.publisher.flush()
    alert = rig.wait_alert("SETTLEMENT_FAILED")
    assert not leaks(alert.to_json())
    assert alert.mid == LUHN_MID
    reader = rig.rig.reader
    stored = all_text(reader, transactions, settlements, status_events, alerts)
    assert len(stored) >= 4 and not leaks(stored)


# --- logs: any logger, any handler, tracebacks and threads ------------------------------


@pytest.fixture
def posmon_logging() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    saved = (
        logging.getLogRecordFactory(),
        list(logging.getLogger().handlers),
        logging.getLogger().level,
        threading.excepthook,
    )
    setup_logging("DEBUG", stream=stream)
    yield stream
    factory, handlers, level, hook = saved
    logging.setLogRecordFactory(factory)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    threading.excepthook = hook


def test_a_library_logger_with_a_handler_of_its_own_cannot_log_a_card_number(
    posmon_logging: io.StringIO,
) -> None:
    # What uvicorn does: its own logger, its own handler and formatter, no propagation.
    own = io.StringIO()
    library = logging.getLogger("somelibrary.error")
    handler = logging.StreamHandler(own)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    library.addHandler(handler)
    library.propagate = False
    try:
        library.error("request for card %s failed", WRITTEN[0])
        library.warning("args %(card)s", {"card": VISA})
        try:
            raise ValueError(f"bad card {UNIONPAY}")
        except ValueError:
            library.exception("Exception in ASGI application")
    finally:
        library.removeHandler(handler)
        library.propagate = True
    text = own.getvalue()
    assert "411111******1111" in text and "Exception in ASGI application" in text
    assert "ValueError: bad card 622202*********0123" in text
    assert not leaks(text)


def test_an_uncaught_exception_in_a_thread_is_logged_masked(
    posmon_logging: io.StringIO,
) -> None:
    def fail() -> None:
        raise RuntimeError(f"card {VISA} refused")

    worker = threading.Thread(target=fail, name="worker")
    worker.start()
    worker.join()
    text = posmon_logging.getvalue()
    assert "uncaught exception in thread worker" in text
    assert "RuntimeError: card 411111******1111 refused" in text
    assert not leaks(text)


# --- every free-text field of every model, whoever adds one later -------------------------


def _models() -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = list(MESSAGE_TYPES.values())
    for value in vars(api_models).values():
        if isinstance(value, type) and issubclass(value, api_models.ApiModel):
            found.append(value)
    return found


def _adapter(field: FieldInfo) -> TypeAdapter[Any]:
    if not field.metadata:
        return TypeAdapter(field.annotation)
    return TypeAdapter(Annotated[(field.annotation, *field.metadata)])  # type: ignore[valid-type]


PROBE = "card 4111 1111 1111 1111"
# Fields that hold a code from a closed set (an enum's value, a currency, a response code)
# or a value already masked: not written text. Identifiers are `IDENTIFIER_KEYS`.
CODES = frozenset(
    {
        "type",
        "kind",
        "currency",
        "rc",
        "network",
        "paper",
        "entry_mode",
        "outcome",
        "remedy",
        "event",
        "status",
        "state",
        "pan_masked",
        "account_masked",
        "token",  # a new API token: random, shown once
        "at",
        "generated_at",
    }
)


def _accepts(adapter: TypeAdapter[Any], value: Any) -> bool:
    try:
        adapter.validate_python(value)
    except ValidationError:
        return False
    return True


def free_text_fields() -> list[tuple[str, Any]]:
    """(model.field, how to wrap a text for it) of every field that takes written text.

    A field takes free text when it accepts a sentence with spaces in it (identifiers and
    codes have patterns that refuse one), as a string or as the values of a map.
    """
    fields = []
    for model in _models():
        for name, field in model.model_fields.items():
            if name in IDENTIFIER_KEYS or name in CODES:
                continue
            adapter = _adapter(field)
            for wrap in (lambda text: text, lambda text: {"k": text}, lambda text: [text]):
                if _accepts(adapter, wrap(PROBE)):
                    fields.append((f"{model.__name__}.{name}", (adapter, wrap)))
                    break
    return fields


FREE_TEXT = free_text_fields()


def test_the_models_have_the_free_text_fields_the_attacks_used() -> None:
    names = {name for name, _ in FREE_TEXT}
    for expected in (
        "SettlementEvent.reason_text",
        "TxnEvent.extra",
        "StatusEvent.extra",
        "StatusEvent.firmware",
        "AlertEvent.summary",
        "AlertEvent.details",
        "DeadLetter.payload",
    ):
        assert expected in names


@settings(max_examples=300, deadline=None)
@given(
    field=st.sampled_from(FREE_TEXT),
    pan=pans(),
    gaps=st.sampled_from(SEPARATORS) | separator_mix,
    before=st.text(string.ascii_letters + " :=#", max_size=6),
    after=st.text(string.ascii_letters + " .,;", max_size=6),
)
def test_a_card_number_anywhere_in_any_free_text_field_comes_out_masked(
    field: tuple[str, Any], pan: str, gaps: Any, before: str, after: str
) -> None:
    name, (adapter, wrap) = field
    value = before + written(pan, gaps) + after
    try:
        validated = adapter.validate_python(wrap(value))
    except ValidationError:
        assume(False)  # too long for this field: nothing stored, nothing leaked
    out = json.dumps(adapter.dump_python(validated, mode="json"))
    digits_out = re.sub(r"[ .-]", "", out)
    assert pan not in digits_out, (name, value, out)
