"""What the store writes: the values of each row it inserts, and of its bulk updates.

The write side of `collector.store.rows`: one `TypedDict` per table, its keys the columns
the store sets and its values the Python types bound to them (enums as their values), so
strict mypy checks every key a module hands to `BulkWriter` or an `insert()`. A key
every row has is required; there are no optional keys (a multi-row insert takes the
columns of its first row). Transactions and settlements are built from the wire model's
fields (`vars()`, the hot path); tests/test_collector_store.py holds those keys to the
models' fields and every key to its table's columns.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, TypedDict

# A JSON document stored whole in a JSON column (a conflict's payload): not a row.
JsonObject = dict[str, Any]


class TxnInsert(TypedDict):
    """A new row of `transactions`: the event's fields, its date and its expectation."""

    event_id: str
    agent_id: str
    tid: str
    mid: str
    kind: str
    amount: int
    currency: str
    pan_masked: str
    rc: str
    approved: bool
    rrn: str
    stan: str
    batch: str
    terminal_time: datetime
    observed_at: datetime
    auth_code: str | None
    issuer: str | None
    entry_mode: str | None
    orig_stan: str | None
    orig_rrn: str | None
    extra: dict[str, str] | None
    txn_date: date
    stored_at: datetime
    expected_net: int | None
    deadline: datetime | None
    outcome: str


class ConflictInsert(TypedDict):
    """A new row of `conflicts`: a repeat of a business key with other money or card."""

    event_id: str
    tid: str
    rrn: str
    kind: str
    first_event_id: str
    differences: str
    payload: JsonObject
    stored_at: datetime


class SettlementInsert(TypedDict):
    """A new row of `settlements`: the result's fields, where it came from, an orphan."""

    settlement_id: str
    mid: str
    tid: str
    rrn: str
    txn_date: date
    amount: int
    fee: int
    net_amount: int
    currency: str
    status: str
    settled_at: datetime
    kind: str
    stan: str | None
    batch: str | None
    reason_code: str | None
    reason_text: str | None
    bank_code: str | None
    account_masked: str | None
    original_settlement_id: str | None
    case_id: str | None
    source: str
    received_at: datetime
    transaction_id: int | None
    outcome: str


class OutcomeLogInsert(TypedDict):
    """A new line of `outcome_log`."""

    transaction_id: int | None
    settlement_id: str | None
    outcome: str
    previous: str | None
    at: datetime
    collector_id: str
    note: str | None


class StatusInsert(TypedDict):
    """A new row of `status_events`."""

    event_id: str
    agent_id: str
    tid: str
    link_up: bool
    network: str
    saf_pending: int
    serial_ok: bool
    heartbeat_only: bool
    observed_at: datetime
    rssi_dbm: int | None
    host_rtt_ms: int | None
    battery_pct: int | None
    paper: str | None
    firmware: str | None


class BatchInsert(TypedDict):
    """A new row of `batches`: a terminal's batch close."""

    event_id: str
    agent_id: str
    tid: str
    mid: str
    batch: str
    count: int
    total: int
    currency: str
    result: str
    terminal_time: datetime
    observed_at: datetime


class DeadletterInsert(TypedDict):
    """A new row of `deadletters`."""

    event_id: str
    source: str
    reason: str
    payload: str
    topic: str | None
    observed_at: datetime


# The rows `Intake` stores each kind in one go, repeats dropped by event id.
EventInsert = StatusInsert | BatchInsert | DeadletterInsert


class PresenceUpsert(TypedDict):
    """An agent's row of `presence`, inserted or updated."""

    agent_id: str
    state: str
    tids: list[str]
    version: str
    observed_at: datetime


class CaseInsert(TypedDict):
    """A new row of `cases`, as `CaseStore.open` opens it."""

    case_id: str
    transaction_id: int
    tid: str
    mid: str
    rrn: str
    amount: int
    currency: str
    cause: str
    remedy: str | None
    alert_id: str | None
    state: str
    state_since: datetime
    opened_at: datetime
    updated_at: datetime
    bank_code: str | None


class SettlementVerdict(TypedDict):
    """Bound parameters of the bulk UPDATE of `settlements`: a settlement's match."""

    b_id: str
    b_txn: int
    b_outcome: str


class TxnOutcomeUpdate(TypedDict):
    """Bound parameters of the bulk UPDATE of `transactions`: an outcome changed."""

    b_id: int
    b_outcome: str
    b_at: datetime
    b_settlement: str | None
