"""The MQTT wire models: what goes out as JSON comes back equal, what breaks the contract is
refused with a reason that names the field."""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import pytest

from posmon.wire.models import (
    AlertEvent,
    AlertState,
    BatchEvent,
    BatchResult,
    Cause,
    DeadLetter,
    EntryMode,
    MessageError,
    Network,
    Paper,
    PresenceEvent,
    PresenceState,
    SettlementEvent,
    SettlementKind,
    SettlementStatus,
    Severity,
    StatusEvent,
    TxnEvent,
    TxnKind,
    WireMessage,
    parse_message,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
OBSERVED = datetime(2026, 11, 25, 10, 30, 16, tzinfo=SHANGHAI)
EVENT_ID = UUID("0b7e8f38-5c1a-4d7e-9a43-1f2f3e4d5c6b")


def txn() -> TxnEvent:
    return TxnEvent(
        event_id=EVENT_ID,
        agent_id="box-1",
        tid="10000001",
        mid="898100012340001",
        kind=TxnKind.SALE,
        amount=12800,
        currency="CNY",
        pan_masked="622202*********0123",
        rc="00",
        approved=True,
        rrn="402511000017",
        stan="000017",
        batch="000042",
        terminal_time=datetime(2026, 11, 25, 10, 30, 15, tzinfo=SHANGHAI),
        observed_at=OBSERVED,
        auth_code="A1B2C3",
        issuer="0102",
        entry_mode=EntryMode.CHIP,
        extra={"OPER": "01"},
    )


def status() -> StatusEvent:
    return StatusEvent(
        event_id=EVENT_ID,
        agent_id="box-1",
        tid="10000001",
        link_up=False,
        network=Network.G4,
        saf_pending=3,
        serial_ok=True,
        observed_at=OBSERVED,
        rssi_dbm=-91,
        host_rtt_ms=850,
        battery_pct=40,
        paper=Paper.LOW,
        firmware="2.3.1",
    )


def batch() -> BatchEvent:
    return BatchEvent(
        event_id=EVENT_ID,
        agent_id="box-1",
        tid="10000001",
        mid="898100012340001",
        batch="000042",
        count=37,
        total=1234500,
        currency="CNY",
        result=BatchResult.UNBALANCED,
        terminal_time=datetime(2026, 11, 25, 23, 0, 5, tzinfo=SHANGHAI),
        observed_at=OBSERVED,
    )


def presence() -> PresenceEvent:
    return PresenceEvent(
        agent_id="box-1",
        state=PresenceState.ONLINE,
        tids=["10000001", "10000002"],
        version="0.1.0",
        observed_at=OBSERVED,
    )


def settlement() -> SettlementEvent:
    return SettlementEvent(
        settlement_id="ACQ-20261126-000123",
        mid="898100012340001",
        tid="10000001",
        rrn="402511000017",
        txn_date=date(2026, 11, 25),
        amount=12800,
        fee=77,
        net_amount=12723,
        currency="CNY",
        status=SettlementStatus.RETURNED,
        settled_at=datetime(2026, 11, 26, 9, 0, tzinfo=SHANGHAI),
        kind=SettlementKind.ORIGINAL,
        stan="000017",
        batch="000042",
        reason_code="AC04",
        reason_text="收款账户已销户",
        bank_code="0102",
        account_masked="622202******1234",
    )


def alert() -> AlertEvent:
    return AlertEvent(
        alert_id="alert-000123",
        fingerprint="SETTLEMENT_RETURNED:898100012340001:402511000017",
        type="SETTLEMENT_RETURNED",
        severity=Severity.MAJOR,
        state=AlertState.FIRING,
        cause=Cause.ACCOUNT_INFO,
        summary="Settlement of 128.00 CNY returned: account closed",
        started_at=datetime(2026, 11, 26, 9, 0, 3, tzinfo=SHANGHAI),
        updated_at=datetime(2026, 11, 26, 9, 0, 3, tzinfo=SHANGHAI),
        tid="10000001",
        mid="898100012340001",
        rrn="402511000017",
        bank_code="0102",
        amount_at_risk=12800,
        currency="CNY",
        details={"reason_code": "AC04", "retries": 0},
    )


def dead_letter(
    payload: str = "TXN\x1cSEQ=17\x1cTID=10000001\x1cPAN=622202*********0123",
) -> DeadLetter:
    return DeadLetter(
        event_id=EVENT_ID,
        source="agent:/dev/ttyUSB0",
        reason="missing MID",
        payload=payload,
        observed_at=OBSERVED,
        agent_id="box-1",
        tid="10000001",
    )


EXAMPLES = [txn, status, batch, presence, settlement, alert, dead_letter]


def as_json(message: WireMessage, **changes: Any) -> bytes:
    """The message's JSON with some keys changed (or removed, given `None`)."""
    data = json.loads(message.to_json())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return json.dumps(data).encode()


def rejection(payload: bytes) -> str:
    with pytest.raises(MessageError) as caught:
        parse_message(payload)
    return caught.value.reason


# --- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda make: make.__name__)
def test_message_round_trips_through_json(example: Any) -> None:
    message = example()

    payload = message.to_json()

    assert type(message).from_json(payload) == message
    assert parse_message(payload) == message
    assert parse_message(payload, expected=type(message)) == message
    assert json.loads(payload)["schema"] == type(message).SCHEMA


def test_json_leaves_out_absent_optional_fields() -> None:
    message = txn().model_copy(update={"auth_code": None, "extra": None})

    data = json.loads(message.to_json())

    assert "auth_code" not in data
    assert "extra" not in data
    assert "orig_rrn" not in data


def test_timestamps_and_money_on_the_wire() -> None:
    data = json.loads(txn().to_json())

    assert data["terminal_time"] == "2026-11-25T10:30:15+08:00"
    assert data["amount"] == 12800
    assert data["currency"] == "CNY"


def test_parse_message_insists_on_the_expected_schema() -> None:
    with pytest.raises(MessageError) as caught:
        parse_message(txn().to_json(), expected=StatusEvent)

    assert "schema" in caught.value.reason


# --- rejections -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("amount", 12800.0),
        ("amount", "12800"),
        ("amount", -1),
        ("terminal_time", "2026-11-25T10:30:15"),
        ("observed_at", "2026-11-25 10:30:16"),
        ("terminal_time", 1795648676),  # epoch seconds are not ISO 8601
        ("terminal_time", "1795648676"),
        ("amount", 2**63),  # beyond a 64-bit column
        ("tid", "1000001"),
        ("mid", "89810001234000"),
        ("rrn", "40251100001"),
        ("stan", "12345"),
        ("pan_masked", "6222021********0123"),
        ("pan_masked", "6222021234567890123"),
        ("currency", "cny"),
        ("currency", "156"),
        ("approved", "yes"),
        ("kind", "PURCHASE"),
    ],
)
def test_txn_with_a_bad_field_is_refused_naming_the_field(field: str, value: Any) -> None:
    reason = rejection(as_json(txn(), **{field: value}))

    assert field in reason


@pytest.mark.parametrize("field", ["tid", "amount", "pan_masked", "observed_at"])
def test_txn_without_a_required_field_is_refused_naming_it(field: str) -> None:
    reason = rejection(as_json(txn(), **{field: None}))

    assert field in reason


def test_unknown_key_is_refused_naming_it() -> None:
    reason = rejection(as_json(txn(), card_holder="ZHANG SAN"))

    assert "card_holder" in reason


def test_refusal_of_a_full_pan_does_not_repeat_it() -> None:
    reason = rejection(as_json(txn(), pan_masked="6222021234567890128"))

    assert "pan_masked" in reason
    assert "6222021234567890128" not in reason


def test_settlement_whose_net_is_not_gross_less_fee_is_refused() -> None:
    reason = rejection(as_json(settlement(), net_amount=12800))

    assert "net_amount" in reason


def test_settlement_account_showing_too_many_digits_is_refused() -> None:
    reason = rejection(as_json(settlement(), account_masked="6222021234561234"))

    assert "account_masked" in reason


def test_alert_with_amount_at_risk_but_no_currency_is_refused() -> None:
    reason = rejection(as_json(alert(), currency=None))

    assert "amount_at_risk" in reason
    assert "currency" in reason


def test_resolved_alert_without_resolved_at_is_refused() -> None:
    reason = rejection(as_json(alert(), state="resolved"))

    assert "resolved_at" in reason


def test_resolved_alert_with_resolved_at_is_accepted() -> None:
    resolved_at = "2026-11-26T11:00:00+08:00"

    message = parse_message(as_json(alert(), state="resolved", resolved_at=resolved_at))

    assert isinstance(message, AlertEvent)
    assert message.resolved_at == datetime(2026, 11, 26, 11, tzinfo=SHANGHAI)


def test_firing_alert_with_resolved_at_is_refused() -> None:
    reason = rejection(as_json(alert(), resolved_at="2026-11-26T11:00:00+08:00"))

    assert "resolved_at" in reason


def test_presence_with_a_bad_tid_is_refused_naming_tids() -> None:
    reason = rejection(as_json(presence(), tids=["10000001", "1000"]))

    assert "tids" in reason


def test_status_with_an_unknown_network_is_refused() -> None:
    reason = rejection(as_json(status(), network="5G"))

    assert "network" in reason


def test_unknown_schema_is_refused_naming_schema() -> None:
    reason = rejection(as_json(txn(), schema="posmon.txn/2"))

    assert "schema" in reason
    assert "posmon.txn/2" in reason


def test_message_without_schema_is_refused_naming_schema() -> None:
    reason = rejection(as_json(txn(), schema=None))

    assert "schema" in reason


def test_non_json_is_refused() -> None:
    reason = rejection(b"TXN\x1cSEQ=17\x1cTID=10000001")

    assert "JSON" in reason


def test_json_array_is_refused() -> None:
    reason = rejection(b"[" + txn().to_json() + b"]")

    assert "object" in reason


def test_message_error_keeps_the_payload_for_the_dead_letter() -> None:
    payload = as_json(txn(), tid="1000001")

    with pytest.raises(MessageError) as caught:
        parse_message(payload)

    assert caught.value.payload == payload


# --- dead letters carry no card number ---------------------------------------------------


def test_dead_letter_masks_a_full_pan_in_its_payload() -> None:
    letter = dead_letter("TXN\x1cSEQ=17\x1cPAN=6222021234567890128\x1cNOTE=4111 1111 1111 1111")

    assert letter.payload == "TXN\x1cSEQ=17\x1cPAN=622202*********0128\x1cNOTE=411111******1111"


def test_dead_letter_from_elsewhere_is_masked_when_read() -> None:
    payload = as_json(
        dead_letter(), payload='{"pan": "4111111111111111"}', reason="bad 5500000000000004"
    )

    letter = parse_message(payload)

    assert isinstance(letter, DeadLetter)
    assert letter.payload == '{"pan": "411111******1111"}'
    assert letter.reason == "bad 550000******0004"
    assert b"4111111111111111" not in letter.to_json()


def test_a_nul_character_in_a_text_field_is_refused_a_spelled_out_one_is_not() -> None:
    """PostgreSQL cannot store NUL: a message holding one would fail its batch forever."""

    def status(firmware: str) -> bytes:
        return StatusEvent(
            event_id=EVENT_ID,
            agent_id="box-1",
            tid="10000001",
            link_up=True,
            network=Network.ETH,
            saf_pending=0,
            serial_ok=True,
            observed_at=OBSERVED,
            firmware=firmware,
        ).to_json()

    with pytest.raises(MessageError, match="NUL character"):
        parse_message(status("V2.3\x00"))
    spelled_out = parse_message(status("V2.3\\u0000"))
    assert isinstance(spelled_out, StatusEvent) and spelled_out.firmware == "V2.3\\u0000"
