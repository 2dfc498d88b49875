"""What the collector's costs do as its tables grow (issue #22, item 1).

Two databases in one run: one empty (migrated, nothing in it) and one filled with
`--rows` transactions of history over 90 days, with what goes with them, written straight
into the collector's tables by bulk COPY (PostgreSQL) or executemany (SQLite, `--sqlite`):

- transactions over `rows / (90 * 50)` terminals (50 a day each) and one merchant per
  5 terminals: 95% sales (4% of them declined, 1% voided a few minutes later, with the
  void), 3% refunds, 2% pre-authorisation completions. An approved sale's deadline is
  the next day's 18:00 Shanghai time (T1, without the holiday calendar);
- a settlement for every approved sale or completion whose deadline has passed, and
  the outcome log of each change: 98.6% credited as expected, 0.6% FAILED (reason codes
  over 30 banks), 0.15% credited then RETURNED, 0.2% never credited (OVERDUE), 0.3%
  credited after their deadline (OVERDUE, then SETTLED), 0.1% credited with another net
  (MISMATCH); the rest of the last day still PENDING;
- an alert for each failed, returned, overdue and mismatched one (resolved after 7 days,
  firing or acknowledged before), a TERMINAL_OFFLINE alert per terminal about every
  10 days (resolved), each alert's history, and a re-remittance case with its audit log
  for each failed, returned and never-credited sale (closed or cancelled after 14 days);
- `--statuses-per-txn` status messages per transaction (1: one every half hour per
  terminal; real agents send a heartbeat every 30 s, 57 times as many, which 90 days
  of would not fit this machine), a batch close per terminal and day, an agent each.

The 20 probe terminals of `alert_latency.py` are among the history's terminals, so the
alerts measured below are about terminals with 90 days of history. On PostgreSQL the
secondary indexes are dropped during the fill and built again after it, and the rows are
written frozen (COPY FREEZE) and then analysed: the state autovacuum leaves a database
that grew over months in. On SQLite the rows go in by executemany, indexes after them.

Then, on each database in turn, the same steps with the same code:

1. the overdue sweep in this process (the collector's `OverdueWatch.check()` and
   `Store.next_deadline()`): `--sweeps` sweeps with nothing due, then one with `--due`
   T0 sales past their deadline (stored through `Store.ingest`);
2. `posmon collector run` as its own process (HTTP on), against a private mosquitto;
3. ingest, live: `--messages` transactions published by the bare QoS 1 publisher of
   `collector_ingest.py`, msgs/s from the first stored to the last (`stored_at`);
4. alert latency as `alert_latency.py` measures it, under `--load-rate` msgs/s of
   background load: a failed settlement's publish to its SETTLEMENT_FAILED alert, a T0
   deadline to its SETTLEMENT_OVERDUE alert;
5. every GET route of the REST API, its lists and details (a GET route of the
   collector's OpenAPI document that `routes()` does not call is printed as not
   measured), `--requests` calls each, one after another over one keep-alive
   connection, or as many as fit in `--route-seconds`; `/metrics` among them.

The report gives each figure on both databases and their ratio, against the issue's
targets: ingest rate and alert p99 within 10% of the empty database, every API call's
p99 < 100 ms, `/metrics` < 50 ms. For each route over its target, the statements it runs
are caught in this process (the same route through FastAPI's test client) and the
slowest are shown with EXPLAIN (ANALYZE, BUFFERS) (SQLite: EXPLAIN QUERY PLAN).

The dashboards (dashboards/) query InfluxDB only, never the collector's database: they
are not measured here.

    .venv/bin/python benchmarks/growth.py [--rows 10000000] [--sqlite] [--keep] [--reuse]

This is one script, not several modules, like the other benchmarks: the history it
writes, the steps and the report are read together.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import sqlite3
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from _harness import (
    Broker,
    cpu_times,
    machine,
    quiet_logging,
    stop_process,
    table,
    wait_until,
    workspace,
)
from alert_latency import (
    MID,
    MID_T0,
    PROBE_TERMINALS,
    T0_HOURS,
    AlertListener,
    LoadProcess,
    Probe,
    Prober,
    make_probes,
    percentile,
    wait_alerts,
    warm_up,
)
from collector_ingest import POSTGRES_ADMIN_DEFAULT, make_payloads, publish

BIN = Path(sys.executable).parent
DAYS = 90
TXNS_PER_TERMINAL_DAY = 50
TERMINALS_PER_MERCHANT = 5
BANKS = 30
SHANGHAI_OFFSET_S = 8 * 3600
DEADLINE_UTC_S = 10 * 3600  # 18:00 in Shanghai
EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
HISTORY_COLLECTOR = "history"
TARGET_RATIO = 1.10  # ingest and alert latency within 10% of the empty database
TARGET_API_MS = 100.0
TARGET_METRICS_MS = 50.0
LOAD_WARMUP_S = 3.0
PLANS_PER_ROUTE = 2
PLAN_MIN_MS = 10.0
REASONS = [
    ("AC01", "ACCOUNT_INFO", "incorrect account number"),
    ("AC04", "ACCOUNT_INFO", "closed account"),
    ("AG01", "MERCHANT_QUALIFICATION", "transaction forbidden"),
    ("TM01", "BANK_SYSTEM", "cut-off time"),
    ("NARR", "NETWORK", "network timeout"),
    ("MS03", "UNKNOWN", "reason not specified"),
]
NETWORKS = ("ETH", "WIFI", "4G")
DECLINES = ("05", "51", "55", "14")
SEVERITY = {
    "SETTLEMENT_FAILED": "critical",
    "SETTLEMENT_RETURNED": "critical",
    "SETTLEMENT_OVERDUE": "major",
    "AMOUNT_MISMATCH": "major",
    "TERMINAL_OFFLINE": "major",
}
CASE_PATH = ["OPEN", "VERIFYING", "SUBMITTED", "BANK_PROCESSING", "REMITTED", "CONFIRMED"]
SLA_HOURS = {"OPEN": 4, "VERIFYING": 24, "SUBMITTED": 24, "BANK_PROCESSING": 72, "REMITTED": 48}

_COLUMN_NAMES = {
    "transactions": (
        "id event_id agent_id tid mid kind amount currency pan_masked rc approved rrn stan "
        "batch txn_date terminal_time observed_at stored_at auth_code issuer entry_mode "
        "orig_stan orig_rrn expected_net deadline outcome outcome_at settlement_id"
    ),
    "settlements": (
        "settlement_id mid tid rrn txn_date amount fee net_amount currency status settled_at "
        "kind stan batch reason_code reason_text bank_code source received_at transaction_id "
        "outcome"
    ),
    "outcome_log": "transaction_id settlement_id outcome previous at collector_id note",
    "status_events": (
        "event_id agent_id tid link_up network saf_pending serial_ok heartbeat_only "
        "observed_at rssi_dbm host_rtt_ms battery_pct paper firmware"
    ),
    "batches": (
        "event_id agent_id tid mid batch count total currency result terminal_time observed_at"
    ),
    "presence": "agent_id state tids version observed_at",
    "alerts": (
        "alert_id fingerprint open_fingerprint type severity status cause summary started_at "
        "updated_at resolved_at occurred_at tid mid rrn bank_code amount_at_risk currency "
        "case_id details acked_at acked_by notified_at collector_id"
    ),
    "alert_history": "alert_id at event actor note",
    "cases": (
        "case_id transaction_id tid mid rrn amount currency cause alert_id state state_since "
        "opened_at updated_at bank_code sla_breached_state"
    ),
    "case_events": "case_id at actor from_state to_state note",
}
# The columns the history fills, table by table, in its rows' order.
COLUMNS = {name: tuple(text.split()) for name, text in _COLUMN_NAMES.items()}

Row = tuple[Any, ...]


# --- the history ---------------------------------------------------------------------------


_MINUTES: dict[int, str] = {}


def moment(epoch: float) -> str:
    """A time as text both databases read, always with microseconds and then "+00:00".

    The minute's text is kept: formatting a datetime for each of the history's times was
    a third of the fill."""
    minute = int(epoch // 60)
    prefix = _MINUTES.get(minute)
    if prefix is None:
        prefix = _MINUTES[minute] = datetime.fromtimestamp(minute * 60, UTC).strftime(
            "%Y-%m-%d %H:%M:"
        )
    second, micro = divmod(int((epoch - minute * 60) * 1_000_000), 1_000_000)
    return f"{prefix}{second:02d}.{micro:06d}+00:00"


@dataclass(frozen=True, slots=True)
class Txn:
    """One generated transaction: what its settlements, alert and case repeat of it."""

    txn_id: int
    tid: str
    mid: str
    amount: int
    at: float
    local_day: int

    @property
    def rrn(self) -> str:
        return f"6{self.txn_id:011d}" if self.txn_id else ""

    @property
    def stan(self) -> str:
        return f"{self.txn_id % 1_000_000:06d}"

    @property
    def txn_date(self) -> str:
        return date.fromordinal(EPOCH_ORDINAL + self.local_day).isoformat()


Rows = Iterator[tuple[str, Row]]
# The rows of a sale's settlement, then (through `yield from`) its outcome, when it
# changed, and by which settlement.
Settled = Generator[tuple[str, Row], None, tuple[str, float, str | None]]


class History:
    """Generates the rows of `rows` transactions over DAYS ending at `now`, table by table,
    in the order they would have been written (module docstring)."""

    def __init__(self, rows: int, statuses_per_txn: float, now: datetime, seed: int = 22):
        self.rows = rows
        self.statuses_per_txn = statuses_per_txn
        self.now = now.timestamp()
        self.rng = random.Random(seed)
        count = max(rows // (DAYS * TXNS_PER_TERMINAL_DAY), PROBE_TERMINALS + 5)
        probes = [f"3{index:07d}" for index in range(PROBE_TERMINALS)]
        self.tids = probes + [f"1{index:07d}" for index in range(count - PROBE_TERMINALS)]
        self.mids = {
            tid: MID if tid in probes else f"8981{index // TERMINALS_PER_MERCHANT:011d}"
            for index, tid in enumerate(self.tids)
        }
        self.banks = [f"BANK{index:03d}" for index in range(BANKS)]
        self.counts: dict[str, int] = {}

    def uuid(self) -> str:
        # A version 4 layout from random bits: str(uuid.UUID(...)) costs three times more.
        bits = f"{self.rng.getrandbits(128):032x}"
        return f"{bits[:8]}-{bits[8:12]}-4{bits[13:16]}-{bits[16:20]}-{bits[20:]}"

    def pick(self, items: Sequence[str]) -> str:
        return items[int(self.rng.random() * len(items))]

    def generate(self) -> Rows:
        """(table, row) in COLUMNS order; `counts` holds the rows per table afterwards."""
        draw = self.rng.random
        start = self.now - DAYS * 86400
        step = DAYS * 86400 / self.rows
        statuses = 0.0
        day = -1
        batch_totals: dict[str, list[int]] = {}
        txn_id = 0
        while txn_id < self.rows:
            at = start + (txn_id + draw()) * step
            local_day = int((at + SHANGHAI_OFFSET_S) // 86400)
            if local_day != day:
                if day >= 0:
                    yield from self._batches(day, batch_totals)
                day, batch_totals = local_day, {}
            tid = self.pick(self.tids)
            txn_id += 1
            txn = Txn(txn_id, tid, self.mids[tid], 100 + int(draw() * 200_000), at, local_day)
            kind = "SALE" if (sort := draw()) < 0.95 else "REFUND" if sort < 0.98 else "PREAUTH"
            approved = kind != "SALE" or draw() >= 0.04
            totals = batch_totals.setdefault(tid, [0, 0])
            totals[0] += 1
            totals[1] += txn.amount
            voided = kind == "SALE" and approved and draw() < 0.01 and txn_id < self.rows
            yield from self._transaction(txn, kind, approved=approved, voided=voided)
            if voided:
                txn_id += 1
                yield self._void(txn_id, txn)
            statuses += self.statuses_per_txn
            while statuses >= 1:
                statuses -= 1
                yield self._count("status_events", self._status(at))
            if draw() < 1 / (TXNS_PER_TERMINAL_DAY * 10):
                yield from self._offline(self.pick(self.tids), at, local_day)
        yield from self._batches(day, batch_totals)
        for tid in self.tids:
            observed = moment(self.now - self.rng.uniform(0, 60))
            row = (f"agent-{tid}", "online", json.dumps([tid]), "1.4.2", observed)
            yield self._count("presence", row)

    def _count(self, name: str, row: Row) -> tuple[str, Row]:
        self.counts[name] = self.counts.get(name, 0) + 1
        return name, row

    def _transaction(self, txn: Txn, kind: str, *, approved: bool, voided: bool) -> Rows:
        if kind == "PREAUTH":
            kind = "PREAUTH_COMPLETION"
        expects = approved and kind in ("SALE", "PREAUTH_COMPLETION")
        deadline = (txn.local_day + 1) * 86400 + DEADLINE_UTC_S if expects else None
        outcome, outcome_at, settlement_id = "NOT_EXPECTED", None, None
        later: list[tuple[str, Row]] = []
        if voided:
            outcome, outcome_at = "CANCELLED", txn.at + 180.5
            later.append(
                self._log(txn.txn_id, None, "CANCELLED", "PENDING", outcome_at, note="voided")
            )
        elif deadline is not None and deadline > self.now:
            outcome = "PENDING"
        elif deadline is not None:
            outcome, outcome_at, settlement_id = yield from self._settle(txn, deadline)
        row = (
            txn.txn_id,
            self.uuid(),
            f"agent-{txn.tid}",
            txn.tid,
            txn.mid,
            kind,
            txn.amount,
            "CNY",
            f"622202*********{txn.txn_id % 10_000:04d}",
            "00" if approved else self.pick(DECLINES),
            approved,
            txn.rrn,
            txn.stan,
            f"{txn.local_day % 1_000_000:06d}",
            txn.txn_date,
            moment(txn.at),
            moment(txn.at + 0.3),
            moment(txn.at + 0.5),
            txn.stan if approved else None,
            "0102",
            "CHIP",
            None,
            None,
            txn.amount if expects else None,
            moment(deadline) if deadline is not None else None,
            outcome,
            moment(outcome_at) if outcome_at is not None else None,
            settlement_id,
        )
        yield self._count("transactions", row)
        yield from later

    def _void(self, txn_id: int, sale: Txn) -> tuple[str, Row]:
        void = Txn(txn_id, sale.tid, sale.mid, sale.amount, sale.at + 180, sale.local_day)
        row = (
            txn_id,
            self.uuid(),
            f"agent-{void.tid}",
            void.tid,
            void.mid,
            "VOID",
            void.amount,
            "CNY",
            f"622202*********{sale.txn_id % 10_000:04d}",
            "00",
            True,
            void.rrn,
            void.stan,
            f"{void.local_day % 1_000_000:06d}",
            void.txn_date,
            moment(void.at),
            moment(void.at + 0.3),
            moment(void.at + 0.5),
            void.stan,
            "0102",
            "CHIP",
            sale.stan,
            sale.rrn,
            None,
            None,
            "NOT_EXPECTED",
            None,
            None,
        )
        return self._count("transactions", row)

    def _fate(self, deadline: float, credited: float) -> tuple[str, float]:
        """What becomes of a sale due by `deadline`, and when its second event comes."""
        draw = self.rng.random()
        returned = credited + self.rng.uniform(86400, 3 * 86400)
        late = deadline + self.rng.uniform(3600, 2 * 86400)
        if draw < 0.006:
            return "failed", credited
        if draw < 0.0075:
            return ("returned", returned) if returned < self.now else ("credited", credited)
        if draw < 0.0095:
            return "never", deadline
        if draw < 0.0125:
            return ("late", late) if late < self.now else ("never", deadline)
        if draw < 0.0135:
            return "mismatch", credited
        return "credited", credited

    def _settlement(
        self, txn: Txn, settlement_id: str, status: str, when: float, *, net: int, outcome: str
    ) -> tuple[str, Row]:
        reason = REASONS[txn.txn_id % len(REASONS)] if status != "CREDITED" else None
        row = (
            settlement_id,
            txn.mid,
            txn.tid,
            txn.rrn,
            txn.txn_date,
            txn.amount,
            txn.amount - net,
            net,
            "CNY",
            status,
            moment(when),
            "ORIGINAL",
            txn.stan,
            None,
            reason[0] if reason else None,
            reason[2] if reason else None,
            self.banks[txn.txn_id % BANKS],
            "file",
            moment(when + 30),
            txn.txn_id,
            outcome,
        )
        return self._count("settlements", row)

    def _settle(self, txn: Txn, deadline: float) -> Settled:
        """The settlements, log rows, alert and case of one sale due by `deadline`."""
        txn_id, amount = txn.txn_id, txn.amount
        sid = f"S{txn_id:012d}"
        credited = deadline - self.rng.uniform(3600, 36000)
        fate, when = self._fate(deadline, credited)
        cause = REASONS[txn_id % len(REASONS)][1]
        if fate == "failed":
            yield self._settlement(txn, sid, "FAILED", when, net=amount, outcome="FAILED")
            yield self._log(txn_id, sid, "FAILED", "PENDING", when + 30)
            yield from self._alert(txn, "SETTLEMENT_FAILED", cause, when + 30.1, with_case=True)
            return "FAILED", when + 30, sid
        if fate == "returned":
            rid = f"R{txn_id:012d}"
            yield self._settlement(txn, sid, "CREDITED", credited, net=amount, outcome="SETTLED")
            yield self._log(txn_id, sid, "SETTLED", "PENDING", credited + 30)
            yield self._settlement(txn, rid, "RETURNED", when, net=amount, outcome="RETURNED")
            yield self._log(txn_id, rid, "RETURNED", "SETTLED", when + 30)
            yield from self._alert(txn, "SETTLEMENT_RETURNED", cause, when + 30.1, with_case=True)
            return "RETURNED", when + 30, rid
        if fate in ("never", "late"):
            yield self._log(txn_id, None, "OVERDUE", "PENDING", deadline + 0.2)
        if fate == "never":
            yield from self._alert(
                txn, "SETTLEMENT_OVERDUE", "UNKNOWN", deadline + 0.3, with_case=True
            )
            return "OVERDUE", deadline + 0.2, None
        if fate == "late":
            yield self._settlement(txn, sid, "CREDITED", when, net=amount, outcome="SETTLED")
            yield self._log(txn_id, sid, "SETTLED", "OVERDUE", when + 30)
            yield from self._alert(
                txn, "SETTLEMENT_OVERDUE", "UNKNOWN", deadline + 0.3, resolved=when + 30.2
            )
            return "SETTLED", when + 30, sid
        if fate == "mismatch":
            net = amount - self.rng.randint(1, min(500, amount - 1))
            yield self._settlement(txn, sid, "CREDITED", when, net=net, outcome="MISMATCH")
            yield self._log(txn_id, sid, "MISMATCH", "PENDING", when + 30)
            yield from self._alert(txn, "AMOUNT_MISMATCH", "UNKNOWN", when + 30.1)
            return "MISMATCH", when + 30, sid
        yield self._settlement(txn, sid, "CREDITED", when, net=amount, outcome="SETTLED")
        yield self._log(txn_id, sid, "SETTLED", "PENDING", when + 30)
        return "SETTLED", when + 30, sid

    def _log(
        self,
        txn_id: int,
        settlement_id: str | None,
        outcome: str,
        previous: str,
        at: float,
        *,
        note: str | None = None,
    ) -> tuple[str, Row]:
        row = (txn_id, settlement_id, outcome, previous, moment(at), HISTORY_COLLECTOR, note)
        return self._count("outcome_log", row)

    def _alert(
        self,
        txn: Txn,
        alert_type: str,
        cause: str,
        started: float,
        *,
        with_case: bool = False,
        resolved: float | None = None,
    ) -> Rows:
        rng = self.rng
        alert_id = f"A-{rng.getrandbits(64):016x}"
        case_id = f"C-{txn.txn_id:012x}" if with_case else None
        if resolved is None and started < self.now - 7 * 86400:
            resolved = min(started + rng.uniform(3600, 5 * 86400), self.now - 60)
        acked: float | None = started + rng.uniform(60, 3600)
        assert acked is not None
        if acked > min(self.now, resolved or self.now) or (resolved is None and rng.random() < 0.5):
            acked = None
        status = "resolved" if resolved else "acknowledged" if acked else "firing"
        fingerprint = f"{alert_type}:{txn.tid}" + (f":{txn.rrn}" if txn.rrn else "")
        bank = self.banks[txn.txn_id % BANKS] if txn.rrn else None
        details = {
            "evidence": [f"{alert_type.lower()} at bank {bank}" if bank else "no status"],
            "transaction": {"tid": txn.tid, "rrn": txn.rrn, "amount": txn.amount},
        }
        row = (
            alert_id,
            fingerprint,
            None if resolved else fingerprint,
            alert_type,
            SEVERITY[alert_type],
            status,
            cause,
            f"{alert_type} TID {txn.tid}" + (f" RRN {txn.rrn}" if txn.rrn else ""),
            moment(started),
            moment(resolved or acked or started),
            moment(resolved) if resolved else None,
            moment(started - 0.3),
            txn.tid,
            txn.mid,
            txn.rrn or None,
            bank,
            txn.amount or None,
            "CNY" if txn.amount else None,
            case_id,
            json.dumps(details),
            moment(acked) if acked else None,
            "ops" if acked else None,
            moment(started + 0.05),
            HISTORY_COLLECTOR,
        )
        yield self._count("alerts", row)
        yield self._count("alert_history", (alert_id, moment(started), "fired", "engine", None))
        if acked:
            yield self._count(
                "alert_history", (alert_id, moment(acked), "acknowledged", "ops", None)
            )
        if resolved:
            yield self._count(
                "alert_history", (alert_id, moment(resolved), "resolved", "engine", None)
            )
        if case_id is not None:
            yield from self._case(txn, case_id, alert_id, cause, started + 1)

    def _case(self, txn: Txn, case_id: str, alert_id: str, cause: str, opened: float) -> Rows:
        rng = self.rng
        if opened < self.now - 14 * 86400:
            path = [*CASE_PATH, "CLOSED"] if rng.random() < 0.9 else ["OPEN", "CANCELLED"]
        else:
            path = CASE_PATH[: rng.randint(1, 5)]
        at = opened
        events = []
        for index, state in enumerate(path):
            if index:
                at = min(at + rng.uniform(3600, 86400), self.now - 1)
            previous = path[index - 1] if index else None
            actor = "ops" if index else "engine"
            events.append((case_id, moment(at), actor, previous, state, None))
        state = path[-1]
        breached = state if state in SLA_HOURS and at + SLA_HOURS[state] * 3600 < self.now else None
        row = (
            case_id,
            txn.txn_id,
            txn.tid,
            txn.mid,
            txn.rrn,
            txn.amount,
            "CNY",
            cause,
            alert_id,
            state,
            moment(at),
            moment(opened),
            moment(at),
            self.banks[txn.txn_id % BANKS],
            breached,
        )
        yield self._count("cases", row)
        for event in events:
            yield self._count("case_events", event)

    def _offline(self, tid: str, at: float, local_day: int) -> Rows:
        resolved = min(at + self.rng.uniform(300, 3600), self.now - 60)
        terminal = Txn(0, tid, self.mids[tid], 0, at, local_day)
        yield from self._alert(terminal, "TERMINAL_OFFLINE", "NETWORK", at, resolved=resolved)

    def _status(self, at: float) -> Row:
        draw = self.rng.random
        tid = self.pick(self.tids)
        return (
            self.uuid(),
            f"agent-{tid}",
            tid,
            draw() >= 0.01,
            self.pick(NETWORKS),
            0 if draw() >= 0.02 else 1 + int(draw() * 20),
            True,
            draw() < 0.8,
            moment(at),
            -95 + int(draw() * 45),
            20 + int(draw() * 380),
            10 + int(draw() * 90),
            "OK" if draw() >= 0.02 else "LOW",
            "1.4.2",
        )

    def _batches(self, local_day: int, totals: dict[str, list[int]]) -> Iterator[tuple[str, Row]]:
        closed = local_day * 86400 + 14 * 3600  # 22:00 in Shanghai
        for tid, (count, total) in totals.items():
            row = (
                self.uuid(),
                f"agent-{tid}",
                tid,
                self.mids[tid],
                f"{local_day % 1_000_000:06d}",
                count,
                total,
                "CNY",
                "OK",
                moment(closed),
                moment(closed + 0.3),
            )
            yield self._count("batches", row)


# --- writing it: COPY on PostgreSQL, executemany on SQLite -----------------------------------


def libpq_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass(slots=True)
class FillReport:
    rows: dict[str, int]
    seconds: dict[str, float]  # step -> seconds
    sizes: dict[str, int] = field(default_factory=dict)  # table -> bytes, indexes included


def drop_indexes(admin: Any) -> list[str]:
    """Drop the filled tables' indexes but their primary keys; the statements that make
    them again (unique constraints as constraints)."""
    dropped = []
    for name in COLUMNS:
        found = admin.execute(
            "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid), c.conname,"
            " pg_get_constraintdef(c.oid) FROM pg_index i LEFT JOIN pg_constraint c"
            " ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid"
            " WHERE i.indrelid = %s::regclass AND NOT i.indisprimary",
            (name,),
        ).fetchall()
        for index, definition, constraint, constraint_definition in found:
            if constraint:
                admin.execute(f'ALTER TABLE {name} DROP CONSTRAINT "{constraint}"')
                dropped.append(
                    f'ALTER TABLE {name} ADD CONSTRAINT "{constraint}" {constraint_definition}'
                )
            else:
                admin.execute(f"DROP INDEX {index}")
                dropped.append(definition)
    return dropped


def fill_postgres(url: str, history: History, progress: Callable[[int], None]) -> FillReport:
    """COPY the history in, one connection per table; indexes built after; VACUUM ANALYZE."""
    import psycopg

    seconds: dict[str, float] = {}
    dsn = libpq_url(url)
    with psycopg.connect(dsn, autocommit=True) as admin:
        dropped = drop_indexes(admin)
        started = time.monotonic()
        with ExitStack() as stack:
            copies: dict[str, Any] = {}
            for name, columns in COLUMNS.items():
                conn = stack.enter_context(psycopg.connect(dsn))
                conn.execute("SET synchronous_commit = off")
                # Emptied in the COPY's own transaction, so that FREEZE may write the rows
                # frozen and all-visible: as autovacuum leaves a table that grew for months.
                conn.execute(f"TRUNCATE {name}")
                cursor = stack.enter_context(conn.cursor())
                copies[name] = stack.enter_context(
                    cursor.copy(f"COPY {name} ({', '.join(columns)}) FROM STDIN WITH (FREEZE)")
                )
            # Text lines made here: psycopg's write_row() took 60 us a row, most of the fill.
            # No value holds a tab, a newline or a backslash, so none needs escaping.
            pending: dict[str, list[str]] = {name: [] for name in COLUMNS}
            done = 0
            for name, row in history.generate():
                lines = pending[name]
                lines.append("\t".join(["\\N" if v is None else str(v) for v in row]))
                if len(lines) >= 5000:
                    copies[name].write("\n".join(lines) + "\n")
                    lines.clear()
                if name == "transactions":
                    done += 1
                    if done % 100_000 == 0:
                        progress(done)
            for name, lines in pending.items():
                if lines:
                    copies[name].write("\n".join(lines) + "\n")
        seconds["generate + COPY"] = time.monotonic() - started
        started = time.monotonic()
        admin.execute("SET maintenance_work_mem = '1GB'")
        for statement in dropped:
            admin.execute(statement)
        admin.execute(
            "SELECT setval(pg_get_serial_sequence('transactions', 'id'),"
            " (SELECT max(id) FROM transactions))"
        )
        seconds["indexes"] = time.monotonic() - started
        started = time.monotonic()
        for name in COLUMNS:
            admin.execute(f"VACUUM (ANALYZE) {name}")
        seconds["VACUUM ANALYZE"] = time.monotonic() - started
    return FillReport(dict(history.counts), seconds, table_sizes(url))


def fill_sqlite(url: str, history: History, progress: Callable[[int], None]) -> FillReport:
    """executemany in one transaction; indexes dropped and made again after it."""
    from collector.schema import UtcDateTime, metadata

    # SQLite keeps naive UTC: the history's times lose their "+00:00".
    naive = {
        name: [isinstance(metadata.tables[name].c[c].type, UtcDateTime) for c in columns]
        for name, columns in COLUMNS.items()
    }
    statements = {
        name: f"INSERT INTO {name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        for name, columns in COLUMNS.items()
    }
    seconds: dict[str, float] = {}
    conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")
        indexes = [
            (index, sql)
            for index, sql, table_name in conn.execute(
                "SELECT name, sql, tbl_name FROM sqlite_master"
                " WHERE type = 'index' AND sql IS NOT NULL"
            )
            if table_name in COLUMNS
        ]
        for index, _ in indexes:
            conn.execute(f'DROP INDEX "{index}"')
        started = time.monotonic()
        conn.execute("BEGIN")
        pending: dict[str, list[Row]] = {name: [] for name in COLUMNS}
        done = 0
        for name, row in history.generate():
            pending[name].append(
                tuple(
                    value[:-6] if cut and value else value
                    for cut, value in zip(naive[name], row, strict=True)
                )
            )
            if len(pending[name]) >= 20_000:
                conn.executemany(statements[name], pending[name])
                pending[name].clear()
            if name == "transactions":
                done += 1
                if done % 100_000 == 0:
                    progress(done)
        for name, rows in pending.items():
            conn.executemany(statements[name], rows)
        conn.execute("COMMIT")
        seconds["generate + insert"] = time.monotonic() - started
        started = time.monotonic()
        for _, sql in indexes:
            conn.execute(sql)
        seconds["indexes"] = time.monotonic() - started
    finally:
        conn.close()
    return FillReport(dict(history.counts), seconds, table_sizes(url))


def table_sizes(url: str) -> dict[str, int]:
    """Bytes per filled table, its indexes included."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            owner = dict(conn.execute("SELECT name, tbl_name FROM sqlite_master"))
            sizes: dict[str, int] = {}
            for name, size in conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"):
                table_name = owner.get(name, name)  # an index's table
                sizes[table_name] = sizes.get(table_name, 0) + size
            return {name: sizes.get(name, 0) for name in COLUMNS}
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(libpq_url(url)) as pg:
        found = pg.execute(
            "SELECT relname::text, pg_total_relation_size(oid) FROM pg_class"
            " WHERE relkind = 'r' AND relname = ANY(%s)",
            (list(COLUMNS),),
        ).fetchall()
    return dict(found)


def table_rows(url: str) -> dict[str, int]:
    """Rows per filled table of a database filled before: PostgreSQL's estimates."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            return {
                name: conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0] for name in COLUMNS
            }
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(libpq_url(url)) as pg:
        found = pg.execute(
            "SELECT relname::text, reltuples::bigint FROM pg_class"
            " WHERE relkind = 'r' AND relname = ANY(%s)",
            (list(COLUMNS),),
        ).fetchall()
    return dict(found)


# --- the databases ---------------------------------------------------------------------------


def migrate(url: str) -> None:
    from collector.config import CollectorConfig
    from collector.store import Store
    from collector.terms import SettlementTerms

    config = CollectorConfig(database={"url": url})
    store = Store(url, SettlementTerms(config), collector_id="bench-migrate")
    try:
        store.migrate()
    finally:
        store.close()


@contextlib.contextmanager
def postgres_database(
    admin_url: str, name: str, keep: bool, reuse: bool
) -> Iterator[tuple[str, bool]]:
    """(URL, whether it existed) of database `name`: made unless reused, dropped unless kept."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = make_url(admin_url)
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    url = admin.set(database=name).render_as_string(hide_password=False)
    try:
        with engine.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            ).first()
            if exists and not reuse:
                conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
            if not exists or not reuse:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield url, bool(exists) and reuse
        finally:
            if not keep:
                with engine.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


@contextlib.contextmanager
def sqlite_database(folder: Path, name: str, keep: bool, reuse: bool) -> Iterator[tuple[str, bool]]:
    path = folder / f"{name}.db"
    exists = path.exists() and reuse
    if path.exists() and not reuse:
        for extra in ("", "-wal", "-shm"):
            Path(f"{path}{extra}").unlink(missing_ok=True)
    try:
        yield f"sqlite:///{path}", exists
    finally:
        if not keep:
            for extra in ("", "-wal", "-shm"):
                Path(f"{path}{extra}").unlink(missing_ok=True)


# --- step 1: the overdue sweep, in this process ----------------------------------------------


def due_sales(count: int, tag: int) -> list[Any]:
    """`count` T0 sales whose deadline (T0_HOURS after them) has passed."""
    from posmon.wire.models import TxnEvent, TxnKind

    at = datetime.now(UTC) - timedelta(minutes=10)
    return [
        TxnEvent(
            event_id=uuid.uuid4(),
            agent_id="bench-due",
            tid=f"4{index % PROBE_TERMINALS:07d}",
            mid=MID_T0,
            kind=TxnKind.SALE,
            amount=12_800,
            currency="CNY",
            pan_masked="622202*********0123",
            rc="00",
            approved=True,
            rrn=f"8{tag:03d}{index:08d}",
            stan=f"{index % 1_000_000:06d}",
            batch="000007",
            terminal_time=at,
            observed_at=at,
        )
        for index in range(count)
    ]


@dataclass(slots=True)
class Sweep:
    idle_ms: list[float]
    due_ms: float
    marked: int


def sweep(url: str, sweeps: int, due: int, tag: int) -> Sweep:
    """The overdue watch's check and its next-deadline read, idle; then with `due` due."""
    from collector.config import CollectorConfig
    from collector.overdue import OverdueWatch
    from collector.store import Store
    from collector.terms import SettlementTerms

    config = CollectorConfig(
        database={"url": url},
        merchants=[{"mid": MID_T0, "mode": "T0", "t0_hours": T0_HOURS}],
    )
    store = Store(url, SettlementTerms(config), collector_id="bench-sweep")
    try:
        watch = OverdueWatch(store, lambda: datetime.now(UTC), lambda changes: None)
        watch.check()  # whatever is due already, and a warm connection
        idle = []
        for _ in range(sweeps):
            started = time.perf_counter()
            watch.check()
            store.next_deadline()
            idle.append(1000 * (time.perf_counter() - started))
        store.ingest(due_sales(due, tag), "bench")
        started = time.perf_counter()
        marked = len(watch.check())
        store.next_deadline()
        return Sweep(idle, 1000 * (time.perf_counter() - started), marked)
    finally:
        store.close()


# --- steps 2 to 5: the collector as its own process -------------------------------------------


class CollectorProcess:
    """`posmon collector run` with the probes' two merchants and HTTP on a free port."""

    def __init__(self, workdir: Path, broker: Broker, prefix: str, url: str) -> None:
        from simulators.broker import free_port

        self.id = f"bench-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.config = workdir / f"{self.id}.toml"
        self.log = workdir / f"{self.id}.log"
        self.config.write_text(
            f'[collector]\nid = "{self.id}"\n[database]\nurl = "{url}"\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\ntopic_prefix = "{prefix}"\n'
            "reconnect_min_s = 0.05\nreconnect_max_s = 0.2\n"
            f'[http]\nenabled = true\nhost = "127.0.0.1"\nport = {self.port}\n'
            f'[[merchants]]\nmid = "{MID}"\nfee_bp = 0\n'
            f'[[merchants]]\nmid = "{MID_T0}"\nmode = "T0"\nt0_hours = {T0_HOURS}\n'
        )
        self.process: subprocess.Popen[bytes] | None = None

    def token(self) -> str:
        """An admin token, made by `posmon tokens create` (which also migrates)."""
        made = subprocess.run(
            [
                *(str(BIN / "posmon"), "tokens", "create", "--name", self.id),
                *("--role", "admin", "--config", str(self.config)),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        return made.stdout.strip().splitlines()[-1]

    def start(self, timeout: float) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(BIN / "posmon"), "collector", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        def healthy() -> bool:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", "/health")
                return connection.getresponse().status == 200
            except OSError:
                return False

        wait_until(healthy, timeout, "the collector's /health")

    def cpu(self) -> float:
        assert self.process is not None
        return sum(cpu_times(self.process.pid))

    def stop(self) -> None:
        code = stop_process(self.process)
        self.process = None
        if code not in (0, None):
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(f"collector exited {code}:\n{tail}")


def ingest_messages(path: Path, prefix: str, count: int, tag: int) -> Path:
    """The JSON lines of `count` approved sales over 200 of the history's terminals
    (`collector_ingest.make_payloads`, RRNs of their own: 7, then `tag`)."""
    with path.open("w") as out:
        for tid, payload in make_payloads(count, rrn_prefix=f"7{tag:03d}"):
            line = {"topic": f"{prefix}/terminals/{tid}/txn", "payload": payload.decode()}
            out.write(json.dumps(line) + "\n")
    return path


@dataclass(slots=True)
class Ingest:
    count: int
    rate: float  # first to last stored
    from_publish: float  # first publish to last stored


def ingest(url: str, broker: Broker, messages: Path, count: int, timeout: float) -> Ingest:
    from sqlalchemy import create_engine, func, select

    from collector.schema import aggregate_time, transactions

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            before = conn.execute(
                select(func.coalesce(func.max(transactions.c.id), 0))
            ).scalar_one()
        newer = transactions.c.id > before

        def stored() -> tuple[int, Any, Any]:
            with engine.connect() as conn:
                row = conn.execute(
                    select(
                        func.count(),
                        func.min(transactions.c.stored_at),
                        func.max(transactions.c.stored_at),
                    ).where(newer)
                ).one()
            return int(row[0]), row[1], row[2]

        wall_start = datetime.now(UTC)
        mono_start = time.monotonic()
        times = publish(broker, messages, timeout)
        wait_until(lambda: stored()[0] >= count, timeout, f"{count} transactions stored")
        got, first, last = stored()
    finally:
        engine.dispose()
    first_at, last_at = aggregate_time(first), aggregate_time(last)
    assert first_at is not None and last_at is not None
    publish_start = wall_start + timedelta(seconds=times["start"] - mono_start)
    return Ingest(
        got,
        got / max((last_at - first_at).total_seconds(), 1e-6),
        got / max((last_at - publish_start).total_seconds(), 1e-6),
    )


@dataclass(slots=True)
class Alerts:
    failed_ms: list[float]
    overdue_ms: list[float]
    expected: int
    cpu_pct: float
    load: dict[str, float]
    probes: list[Probe]
    # kind -> (queued, store + engine, notify) ms of each alert (`where_it_went`)
    parts: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)


def measure_alerts(
    broker: Broker,
    prefix: str,
    *,
    prober: Prober,
    listener: AlertListener,
    collector: CollectorProcess,
    phase: int,
    args: argparse.Namespace,
) -> Alerts:
    load = LoadProcess(broker, prefix, args.load_rate)
    try:
        load.start()
        prober.pause(LOAD_WARMUP_S)
        probes = make_probes(phase, args.failures, args.overdue, args.seconds)
        since = len(listener.received)
        cpu_before, wall_before = collector.cpu(), time.monotonic()
        prober.run(probes)
        wait_alerts(probes, listener, since, args.timeout)
        cpu = 100 * (collector.cpu() - cpu_before) / (time.monotonic() - wall_before)
        result = load.stop()
    finally:
        load.kill()

    def latencies(kind: str) -> list[float]:
        return [p.latency_ms for p in probes if p.kind == kind and p.latency_ms is not None]

    return Alerts(latencies("failed"), latencies("overdue"), len(probes), cpu, result, probes)


def where_it_went(url: str, probes: list[Probe]) -> dict[str, list[tuple[float, float, float]]]:
    """Each alert split by the collector's own timestamps, as `alert_latency.py` splits it:
    queued (to the settlement's `received_at`, or from the deadline to the OVERDUE log
    row), store + engine (to the alert's `started_at`), notify (to its arrival here).
    Read by keys only (settlement id, fingerprint, business key): the tables may be big."""
    from sqlalchemy import and_, create_engine, select, tuple_

    from collector.schema import aggregate_time, alerts, outcome_log, settlements, transactions

    failed = [p for p in probes if p.kind == "failed"]
    overdue = [p for p in probes if p.kind == "overdue"]
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            received = dict(
                conn.execute(
                    select(settlements.c.settlement_id, settlements.c.received_at).where(
                        settlements.c.settlement_id.in_([f"S-{p.rrn}" for p in failed])
                    )
                ).all()
            )
            started = dict(
                conn.execute(
                    select(alerts.c.fingerprint, alerts.c.started_at).where(
                        alerts.c.fingerprint.in_(
                            [f"{p.alert_type}:{p.tid}:{p.rrn}" for p in probes]
                        )
                    )
                ).all()
            )
            key = transactions.c
            marked = dict(
                conn.execute(
                    select(key.rrn, outcome_log.c.at)
                    .join(outcome_log, outcome_log.c.transaction_id == key.id)
                    .where(
                        tuple_(key.tid, key.rrn, key.kind).in_(
                            [(p.tid, p.rrn, "SALE") for p in overdue]
                        ),
                        and_(outcome_log.c.outcome == "OVERDUE"),
                    )
                ).all()
            )
    finally:
        engine.dispose()
    parts: dict[str, list[tuple[float, float, float]]] = {"failed": [], "overdue": []}
    for probe in probes:
        entered = aggregate_time(
            received.get(f"S-{probe.rrn}") if probe.kind == "failed" else marked.get(probe.rrn)
        )
        fired = aggregate_time(started.get(f"{probe.alert_type}:{probe.tid}:{probe.rrn}"))
        if probe.stamp is None or probe.received is None or entered is None or fired is None:
            continue
        parts[probe.kind].append(
            (
                1000 * (entered.timestamp() - probe.stamp),
                1000 * (fired.timestamp() - entered.timestamp()),
                1000 * (probe.received - fired.timestamp()),
            )
        )
    return parts


# --- step 5: the REST API ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Route:
    """One call measured: the OpenAPI path it exercises, its name in the report (the same
    on both databases), and the request."""

    template: str
    name: str
    path: str

    @property
    def target_ms(self) -> float:
        return TARGET_METRICS_MS if self.template == "/metrics" else TARGET_API_MS


def routes(url: str) -> list[Route]:
    """The calls to make; those naming a row name the newest alert or case, the bank with
    the most alerts, the newest case's merchant, a probe terminal (history and probes)."""
    from sqlalchemy import create_engine, func, select

    from collector.schema import alerts, cases

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            alert = conn.execute(
                select(alerts.c.alert_id).order_by(alerts.c.started_at.desc()).limit(1)
            ).scalar_one()
            bank = conn.execute(
                select(alerts.c.bank_code)
                .where(alerts.c.bank_code.is_not(None))
                .group_by(alerts.c.bank_code)
                .order_by(func.count().desc())
                .limit(1)
            ).scalar_one()
            case, mid = conn.execute(
                select(cases.c.case_id, cases.c.mid).order_by(cases.c.opened_at.desc()).limit(1)
            ).one()
    finally:
        engine.dispose()
    tid = f"3{0:07d}"
    calls = [
        ("/health", "/health", "/health"),
        ("/metrics", "/metrics", "/metrics"),
        ("/alerts", "/alerts", "/alerts"),
        ("/alerts", "/alerts?state=all", "/alerts?state=all"),
        ("/alerts", "/alerts?state=all&type=SETTLEMENT_FAILED", None),
        ("/alerts", "/alerts?state=all&tid=TID", f"/alerts?state=all&tid={tid}"),
        (
            "/alerts",
            "/alerts?state=all&bank=BANK",
            "/alerts?" + urlencode({"state": "all", "bank": bank}),
        ),
        ("/alerts/{alert_id}", "/alerts/ALERT", f"/alerts/{alert}"),
        ("/silences", "/silences", "/silences"),
        ("/silences", "/silences?all=true", "/silences?all=true"),
        ("/cases", "/cases", "/cases"),
        ("/cases", "/cases?state=all", "/cases?state=all"),
        ("/cases", "/cases?state=all&tid=TID", f"/cases?state=all&tid={tid}"),
        ("/cases", "/cases?state=all&mid=MID", f"/cases?state=all&mid={mid}"),
        ("/cases", "/cases?state=all&cause=ACCOUNT_INFO", None),
        ("/cases/{case_id}", "/cases/CASE", f"/cases/{case}"),
        ("/cases/{case_id}/evidence", "/cases/CASE/evidence", f"/cases/{case}/evidence"),
        (
            "/cases/{case_id}/evidence.pdf",
            "/cases/CASE/evidence.pdf",
            f"/cases/{case}/evidence.pdf",
        ),
        ("/terminals", "/terminals", "/terminals"),
        ("/terminals/{tid}", "/terminals/TID", f"/terminals/{tid}"),
        ("/terminals/{tid}", "/terminals/TID?limit=1000", f"/terminals/{tid}?limit=1000"),
        ("/tokens", "/tokens", "/tokens"),
    ]
    return [Route(template, name, path or name) for template, name, path in calls]


def get_routes(port: int) -> set[str]:
    """Every GET path in the running collector's OpenAPI document."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/openapi.json")
    document = json.loads(connection.getresponse().read())
    return {path for path, item in document["paths"].items() if "get" in item}


def time_routes(
    port: int, token: str, made: list[Route], requests: int, seconds: float
) -> dict[str, list[float]]:
    """path -> ms of each call (after two unmeasured), one after another, one connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Authorization": f"Bearer {token}"}
    found: dict[str, list[float]] = {}
    for route in made:
        times: list[float] = []
        end = time.monotonic() + seconds
        for number in range(requests + 2):
            started = time.perf_counter()
            connection.request("GET", route.path, headers=headers)
            response = connection.getresponse()
            response.read()
            elapsed = 1000 * (time.perf_counter() - started)
            if response.status != 200:
                raise RuntimeError(f"GET {route.path}: {response.status}")
            if number >= 2:
                times.append(elapsed)
                if time.monotonic() > end and len(times) >= 5:
                    break
        found[route.path] = times
    connection.close()
    return found


# --- the plans of the slowest routes ---------------------------------------------------------


def plans(url: str, token: str, slow: list[Route]) -> list[str]:
    """Each slow route called once in this process (FastAPI's test client over the same
    code), its statements caught, and the slowest ones explained."""
    from sqlalchemy import event

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette's notice about httpx, not ours to act on
        from fastapi.testclient import TestClient

    from collector.api import create_app
    from collector.config import CollectorConfig
    from collector.store import Store
    from collector.terms import SettlementTerms

    config = CollectorConfig(database={"url": url})
    store = Store(url, SettlementTerms(config), collector_id="bench-explain")
    caught: list[tuple[float, str, Any]] = []
    started: list[float] = []

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, *rest: Any) -> None:
        started.append(time.perf_counter())

    def after(conn: Any, cursor: Any, statement: str, parameters: Any, *rest: Any) -> None:
        caught.append((1000 * (time.perf_counter() - started.pop()), statement, parameters))

    engines = {id(engine): engine for engine in (store.engine, store.reads)}
    for engine in engines.values():
        event.listen(engine, "before_cursor_execute", before)
        event.listen(engine, "after_cursor_execute", after)
    lines: list[str] = []
    try:
        client = TestClient(create_app(store))
        headers = {"Authorization": f"Bearer {token}"}
        for route in slow:
            client.get(route.path, headers=headers)  # warm
            caught.clear()
            began = time.perf_counter()
            client.get(route.path, headers=headers)
            total = 1000 * (time.perf_counter() - began)
            in_sql = sum(c[0] for c in caught)
            lines.append(
                f"\n=== GET {route.path}: {total:,.0f} ms in this process, "
                f"{len(caught)} statements, {in_sql:,.0f} ms in them"
                + (" (the time is not in the database)" if in_sql < total / 2 else "")
            )
            seen: set[str] = set()
            for elapsed, statement, parameters in sorted(caught, key=lambda c: -c[0]):
                if statement in seen or elapsed < PLAN_MIN_MS:
                    continue
                if len(seen) >= PLANS_PER_ROUTE or not statement.lstrip().upper().startswith(
                    "SELECT"
                ):
                    continue
                seen.add(statement)
                lines.append(f"--- {elapsed:,.0f} ms: {' '.join(statement.split())}")
                lines += explain(store, statement, parameters)
    finally:
        for engine in engines.values():
            event.remove(engine, "before_cursor_execute", before)
            event.remove(engine, "after_cursor_execute", after)
        store.close()
    return lines


def explain(store: Any, statement: str, parameters: Any) -> list[str]:
    prefix = "EXPLAIN (ANALYZE, BUFFERS) " if store.is_postgres else "EXPLAIN QUERY PLAN "
    with store.reads.connect() as conn:
        rows = conn.exec_driver_sql(prefix + statement, parameters).all()
    if store.is_postgres:
        return [f"    {row[0]}" for row in rows]
    return [f"    {row[-1]}" for row in rows]


# --- one database ---------------------------------------------------------------------------


@dataclass(slots=True)
class Figures:
    label: str
    sweep: Sweep
    ingest: Ingest
    alerts: Alerts
    api: dict[str, list[float]]
    routes: list[Route]
    unmeasured: list[str]
    started_s: float  # from `collector run` to the first alert back
    plans: list[str] = field(default_factory=list)


def measure(
    label: str,
    url: str,
    workdir: Path,
    broker: Broker,
    args: argparse.Namespace,
    *,
    explain_slow: bool,
) -> Figures:
    """Steps 1 to 5 of the module docstring on one database; with `explain_slow`, the
    plans of the routes over their target."""
    tag = random.randrange(1000)
    print(f"{label}: overdue sweep", flush=True)
    swept = sweep(url, args.sweeps, args.due, tag)
    prefix = f"bench/{uuid.uuid4().hex[:8]}"
    messages = ingest_messages(workdir / f"{prefix[-8:]}.jsonl", prefix, args.messages, tag)
    collector = CollectorProcess(workdir, broker, prefix, url)
    token = collector.token()
    phase = random.randrange(10, 100)
    with ExitStack() as stack:
        listener = AlertListener(broker, prefix)
        stack.callback(listener.close)
        print(f"{label}: collector starting", flush=True)
        began = time.monotonic()
        collector.start(args.timeout)
        stack.callback(lambda: stop_process(collector.process))
        prober = Prober(broker, prefix)
        stack.callback(prober.close)
        warm_up(prober, listener, phase, args.timeout)
        started_s = time.monotonic() - began
        print(f"{label}: collector up and alerting after {started_s:.1f} s; ingest", flush=True)
        ingested = ingest(url, broker, messages, args.messages, args.timeout)
        print(f"{label}: {ingested.rate:,.0f} msgs/s; alerts under load", flush=True)
        alerted = measure_alerts(
            broker,
            prefix,
            prober=prober,
            listener=listener,
            collector=collector,
            phase=(phase + 1) % 100,
            args=args,
        )
        print(f"{label}: API", flush=True)
        made = routes(url)
        served = get_routes(collector.port)
        unmeasured = sorted(served - {route.template for route in made})
        api = time_routes(collector.port, token, made, args.requests, args.route_seconds)
        collector.stop()
    alerted.parts = where_it_went(url, alerted.probes)
    figures = Figures(label, swept, ingested, alerted, api, made, unmeasured, started_s)
    slow = [r for r in made if percentile(api[r.path], 0.99) >= r.target_ms]
    if slow and explain_slow:
        print(f"{label}: plans of {len(slow)} routes over target", flush=True)
        figures.plans = plans(url, token, slow)
    return figures


# --- the report --------------------------------------------------------------------------------


def ms(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}" if base else "-"


@dataclass(slots=True)
class Comparison:
    """The rows of a report table, each a figure on both databases, and the verdicts."""

    rows: list[list[str]] = field(default_factory=list)
    verdicts: list[bool] = field(default_factory=list)

    def add(
        self,
        name: str,
        empty: float,
        full: float,
        *,
        target: str = "",
        met: bool | None = None,
        shown: Callable[[float], str] = ms,
    ) -> None:
        verdict = "" if met is None else "yes" if met else "NO"
        self.rows.append([name, shown(empty), shown(full), ratio(full, empty), target, verdict])
        if met is not None:
            self.verdicts.append(met)


def print_parts(empty: Figures, full: Figures) -> None:
    """Where the alerts' time went, p50 / p99 of each part (`where_it_went`)."""
    lines = []
    for figures in (empty, full):
        for kind, first in (("failed", "publish -> stored"), ("overdue", "deadline -> marked")):
            parts = figures.alerts.parts.get(kind, [])
            if not parts:
                continue
            cells = []
            for index in range(3):
                column = [part[index] for part in parts]
                cells.append(f"{ms(percentile(column, 0.5))} / {ms(percentile(column, 0.99))}")
            lines.append([figures.label, kind, first, f"{len(parts)}", *cells])
    print("\nwhere the alerts' time went, p50 / p99 ms, on the collector's own timestamps")
    print(
        table(
            ["database", "alert", "first part", "alerts", "queued", "store + engine", "notify"],
            lines,
        )
    )


def whole(value: float) -> str:
    return f"{value:,.0f}"


def report(empty: Figures, full: Figures, rows: int) -> bool:
    """Print the tables; whether every target was met."""
    compared = Comparison()
    compared.add(
        "ingest, msgs/s first-last stored",
        empty.ingest.rate,
        full.ingest.rate,
        target=">= 0.91 x empty",
        met=full.ingest.rate * TARGET_RATIO >= empty.ingest.rate,
        shown=whole,
    )
    compared.add(
        "ingest, msgs/s from publish",
        empty.ingest.from_publish,
        full.ingest.from_publish,
        shown=whole,
    )
    for kind, a, b in (
        ("failed settlement -> alert", empty.alerts.failed_ms, full.alerts.failed_ms),
        ("T0 deadline -> overdue alert", empty.alerts.overdue_ms, full.alerts.overdue_ms),
    ):
        if not a or not b:
            compared.rows.append([kind, f"{len(a)} alerts", f"{len(b)} alerts", "-", "", "NO"])
            compared.verdicts.append(False)
            continue
        compared.add(f"{kind} p50 ms", percentile(a, 0.5), percentile(b, 0.5))
        failed = kind.startswith("failed")
        compared.add(
            f"{kind} p99 ms",
            percentile(a, 0.99),
            percentile(b, 0.99),
            target="<= 1.10 x empty" if failed else "",
            met=percentile(b, 0.99) <= TARGET_RATIO * percentile(a, 0.99) if failed else None,
        )
    compared.add("collector start to first alert, s", empty.started_s, full.started_s)
    compared.add("collector CPU % during alerts", empty.alerts.cpu_pct, full.alerts.cpu_pct)
    for name, fraction in (("p50", 0.5), ("p99", 0.99)):
        compared.add(
            f"overdue sweep, nothing due, {name} ms",
            percentile(empty.sweep.idle_ms, fraction),
            percentile(full.sweep.idle_ms, fraction),
        )
    compared.add(
        f"overdue sweep of {full.sweep.marked} due, ms", empty.sweep.due_ms, full.sweep.due_ms
    )
    print(f"\nempty database against {rows:,} transactions of history, same run")
    print(table(["figure", "empty", "history", "ratio", "target", "met"], compared.rows))
    print_parts(empty, full)
    lines = []
    full_routes = {route.name: route for route in full.routes}
    for route in empty.routes:
        a, b = empty.api[route.path], full.api[full_routes[route.name].path]
        p99 = percentile(b, 0.99)
        met = p99 < route.target_ms
        compared.verdicts.append(met)
        lines.append(
            [
                route.name,
                f"{len(b)}",
                ms(percentile(a, 0.5)),
                ms(percentile(a, 0.99)),
                ms(percentile(b, 0.5)),
                ms(p99),
                ms(max(b)),
                ratio(p99, percentile(a, 0.99)),
                f"< {route.target_ms:.0f}",
                "yes" if met else "NO",
            ]
        )
    print("\nREST API, ms per call (one after another, one keep-alive connection)")
    headers = ["GET", "calls", "empty p50", "empty p99", "history p50", "history p99"]
    print(table([*headers, "history max", "p99 ratio", "target", "met"], lines))
    for figures in (empty, full):
        if figures.unmeasured:
            print(f"not measured on {figures.label}: {', '.join(figures.unmeasured)}")
    print(
        "dashboards: not measured; every dashboard query is InfluxQL against InfluxDB "
        "(dashboards/panels.py), none reads the collector's database"
    )
    for figures in (empty, full):
        load = figures.alerts.load
        print(
            f"load during the alerts on {figures.label}: {load['acked'] / load['seconds']:,.0f} "
            f"msgs/s acked; {len(figures.alerts.failed_ms)} + {len(figures.alerts.overdue_ms)} "
            f"of {figures.alerts.expected} alerts"
        )
    if full.plans:
        print(f"\nslowest statements of the routes over target, {full.label}:")
        print("\n".join(full.plans))
    met = all(compared.verdicts)
    print("\ntargets met" if met else "\ntargets NOT met")
    return met


def server(url: str) -> str:
    """The PostgreSQL server's version and the settings the plans depend on."""
    import psycopg

    names = ("server_version", "shared_buffers", "work_mem", "effective_cache_size")
    with psycopg.connect(libpq_url(url)) as conn:
        values = [conn.execute(f"SHOW {name}").fetchone() for name in names]
    return "PostgreSQL " + ", ".join(
        f"{name} {value[0] if value else '?'}" for name, value in zip(names, values, strict=True)
    )


def print_fill(fill: FillReport, rows: int) -> None:
    print(f"\nhistory: {rows:,} transactions over {DAYS} days")
    print(
        table(
            ["table", "rows", "MB", "bytes per row"],
            [
                [
                    name,
                    f"{fill.rows.get(name, 0):,}",
                    f"{fill.sizes.get(name, 0) / 1e6:,.0f}",
                    f"{fill.sizes.get(name, 0) / max(fill.rows.get(name, 0), 1):,.0f}",
                ]
                for name in COLUMNS
            ],
        )
    )
    total = sum(fill.sizes.values())
    print(
        f"total {total / 1e9:,.2f} GB, {total / 1e9 / (rows / 1e6):,.2f} GB per million "
        f"transactions (with their settlements, statuses, alerts, cases); fill: "
        + ", ".join(f"{step} {seconds:,.0f} s" for step, seconds in fill.seconds.items())
    )


# --- main ----------------------------------------------------------------------------------


def arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The collector's costs on an empty database and on one filled with "
        "90 days of history, in the same run: ingest, alert latency, overdue sweep, REST API."
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=None,
        help="transactions of history (10,000,000; 1,000,000 with --sqlite)",
    )
    parser.add_argument("--sqlite", action="store_true", help="SQLite files instead of PostgreSQL")
    parser.add_argument(
        "--statuses-per-txn",
        type=float,
        default=1.0,
        help="status messages of history per transaction (1)",
    )
    parser.add_argument("--messages", type=int, default=20_000, help="ingest: transactions (20000)")
    parser.add_argument("--failures", type=int, default=200, help="failed settlements (200)")
    parser.add_argument("--overdue", type=int, default=50, help="T0 sales that go overdue (50)")
    parser.add_argument("--seconds", type=float, default=20, help="alert phase, seconds (20)")
    parser.add_argument("--load-rate", type=float, default=1000, help="background msgs/s (1000)")
    parser.add_argument("--sweeps", type=int, default=50, help="idle overdue sweeps timed (50)")
    parser.add_argument("--due", type=int, default=1000, help="sales due in the timed sweep (1000)")
    parser.add_argument("--requests", type=int, default=100, help="calls per API route (100)")
    parser.add_argument(
        "--route-seconds",
        type=float,
        default=10,
        help="at most this long per route, at least 5 calls (10)",
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("POSMON_TEST_POSTGRES", POSTGRES_ADMIN_DEFAULT),
        help="admin URL to make the databases with (POSMON_TEST_POSTGRES)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the filled database (PostgreSQL: posmon_growth_ROWS; SQLite: "
        "in the current folder)",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="use a kept filled database instead of filling it again",
    )
    parser.add_argument("--timeout", type=float, default=600, help="per wait, seconds (600)")
    args = parser.parse_args(argv)
    args.rows = args.rows or (1_000_000 if args.sqlite else 10_000_000)
    return args


def fill(url: str, rows: int, statuses_per_txn: float, sqlite: bool) -> FillReport:
    """Write `rows` transactions of history and what goes with them, printing progress."""
    history = History(rows, statuses_per_txn, datetime.now(UTC))
    began = time.monotonic()

    def progress(done: int) -> None:
        if done % max(rows // 10, 100_000) < 100_000:
            spent = time.monotonic() - began
            print(f"  {done:,} transactions in {spent:,.0f} s ({done / spent:,.0f}/s)", flush=True)

    return (fill_sqlite if sqlite else fill_postgres)(url, history, progress)


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(argv)
    rows = args.rows
    quiet_logging()
    print(f"machine: {machine()}")
    kind = "SQLite" if args.sqlite else "PostgreSQL"
    print(
        f"{kind}: empty against {rows:,} transactions of history; ingest {args.messages:,} "
        f"messages; alerts: {args.failures} failures and {args.overdue} T0 sales over "
        f"{args.seconds:g} s under {args.load_rate:,.0f} msgs/s",
        flush=True,
    )
    with workspace() as workdir, ExitStack() as stack:

        def database(name: str, keep: bool, reuse: bool) -> tuple[str, bool]:
            if args.sqlite:
                folder = Path.cwd() if keep else workdir
                return stack.enter_context(sqlite_database(folder, name, keep, reuse))
            return stack.enter_context(postgres_database(args.postgres, name, keep, reuse))

        # A name of its own: another run's empty database is not this one's to drop.
        empty_url, _ = database(f"posmon_growth_empty_{uuid.uuid4().hex[:8]}", False, False)
        shared = args.keep or args.reuse  # the kept database's name is known in advance
        name = f"posmon_growth_{rows}" + ("" if shared else f"_{uuid.uuid4().hex[:8]}")
        full_url, reused = database(name, args.keep, args.reuse)
        migrate(empty_url)
        if reused:
            print(f"reusing {full_url.rsplit('/', 1)[-1]} (measured before: not as filled)")
            filled = FillReport(table_rows(full_url), {}, table_sizes(full_url))
        else:
            migrate(full_url)
            filled = fill(full_url, rows, args.statuses_per_txn, args.sqlite)
        print_fill(filled, rows)
        if not args.sqlite:
            print(server(full_url))
        broker = Broker(workdir / "broker")
        broker.start()
        stack.callback(broker.stop)
        empty = measure("empty", empty_url, workdir, broker, args, explain_slow=False)
        full = measure(f"{rows:,} rows", full_url, workdir, broker, args, explain_slow=True)
    report(empty, full, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
