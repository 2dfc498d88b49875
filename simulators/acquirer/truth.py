"""Ground truth: what the acquirer simulator did wrong on purpose, one JSON line per fault.

A test or an evaluation compares the collector's alerts with these lines: each names the
kind of fault, the cause posmon should find, and the transaction and settlements involved.
Scenario lines (a bank outage, a frozen merchant) are written once when they start, and
each settlement they spoil gets a line of its own too. With `record_normal`, every
on-time credit and every cancelled settlement gets a line as well.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import Any

from posmon.wire.models import Cause


class FaultKind(StrEnum):
    """What a ground-truth line records."""

    FAILED = "FAILED"  # a FAILED settlement
    RETURNED = "RETURNED"  # CREDITED, then RETURNED
    MISSING = "MISSING"  # no settlement at all: overdue forever
    MISMATCH = "MISMATCH"  # CREDITED with another net amount
    DUPLICATE = "DUPLICATE"  # CREDITED twice
    ORPHAN = "ORPHAN"  # a settlement for a transaction that never existed
    VOID_IGNORED = "VOID_IGNORED"  # a void or reversal not processed: credited anyway
    VOID_AFTER_CREDIT = "VOID_AFTER_CREDIT"  # voided at the terminal after the credit
    LATE = "LATE"  # CREDITED after the deadline
    BANK_OUTAGE = "BANK_OUTAGE"  # scenario: a bank is down for a window
    MERCHANT_FROZEN = "MERCHANT_FROZEN"  # scenario: a merchant's settlements all fail
    NORMAL = "NORMAL"  # with record_normal: credited on time, as expected
    CANCELLED = "CANCELLED"  # with record_normal: voided or reversed before settlement


class Scenario(StrEnum):
    """Why a fault happened: drawn at random, or part of a scenario."""

    RANDOM = "random"
    FROZEN_MERCHANT = "frozen_merchant"
    BANK_OUTAGE = "bank_outage"
    OFFLINE = "offline"  # stuck in the terminal's SAF queue
    UNCLOSED_BATCH = "unclosed_batch"
    LATE_ARRIVAL = "late_arrival"  # the simulator heard of the transaction after its deadline
    LATE_VOID = "late_void"  # the void reached the acquirer after the sale's credit


@dataclass(frozen=True, slots=True)
class TruthRecord:
    """One ground-truth line; times are virtual and aware, money is integer fen."""

    kind: FaultKind
    cause: Cause | None
    scenario: Scenario | None
    injected_at: datetime
    tid: str | None = None
    mid: str | None = None
    rrn: str | None = None
    stan: str | None = None
    batch: str | None = None
    bank_code: str | None = None
    reason_code: str | None = None
    settlement_ids: tuple[str, ...] = ()
    amount: int | None = None
    currency: str | None = None
    expected_net: int | None = None
    credited_net: int | None = None
    deadline: datetime | None = None
    settled_at: datetime | None = None
    window_start: datetime | None = None
    window_end: datetime | None = None
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The record as JSON-ready values; absent fields are left out."""
        values: dict[str, Any] = {}
        for item in fields(self):
            name, value = item.name, getattr(self, item.name)
            if value is None or value == ():
                continue
            if isinstance(value, datetime):
                value = value.isoformat(timespec="seconds")
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, StrEnum):
                value = value.value
            values[name] = value
        return values

    def to_json_line(self) -> str:
        """One line of JSON (UTF-8 text, no trailing newline)."""
        return json.dumps(self.as_dict(), ensure_ascii=False)
