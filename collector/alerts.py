"""The alert engine: stored facts in, classified alerts with a lifecycle out.

It follows four tables by id, from a cursor stored per collector so that a restart
misses nothing: `outcome_log` (this collector's settlement outcomes: FAILED, OVERDUE ...),
`status_events` (link, SAF, heartbeats), `batches` and `transactions` (decline rates).
The ingest wakes it after each commit, so an alert follows its cause within milliseconds;
a sweep every `alerts.sweep_s` checks what time alone decides (no heartbeat, a link down
for N s, a batch not closed by the cut-off, an outage that has passed, re-notification).

An alert fires once per condition (its fingerprint) and resolves when the condition
clears; silences and maintenance windows mute the notification but the alert is stored.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from collector.alertstore import AlertStore, Evidence, Silence, new_alert_id
from collector.cases import (
    CaseError,
    CaseState,
    original_arrived,
    remittance_arrived,
    remittance_failed,
)
from collector.casestore import OPEN_CASE_STATES, CaseStore
from collector.classify import Classification, Facts, classify
from collector.config import CollectorConfig
from collector.correlate import EXPECTS_MONEY, Outcome
from collector.rules import (
    BANK_FAILURES,
    CLEARED_BY_ANY_CHANGE,
    OUTCOME_ALERT,
    AlertType,
    Candidate,
    DeclineWatch,
    LinkWatch,
    txn_fingerprint,
)
from posmon.reasons import remedy_for
from posmon.wire.models import Cause

logger = logging.getLogger(__name__)

# Alerts whose transaction is owed money a re-remittance can bring.
CASE_ALERTS = frozenset(
    {AlertType.SETTLEMENT_FAILED, AlertType.SETTLEMENT_RETURNED, AlertType.SETTLEMENT_OVERDUE}
)
# Causes that a cluster of failures at one bank can stand for.
BANK_CAUSES = frozenset({Cause.BANK_SYSTEM.value})
# A gap in a followed table's ids (a transaction that took an id and has not committed
# yet, on PostgreSQL) is waited for this long before it is taken to be a rollback.
GAP_WAIT_S = 10.0
TAIL_BATCH = 500
# Status, batch and transaction rows are read in smaller batches: a failed settlement
# woken in meanwhile waits for the read of at most 100 of them (between two rows handled,
# the engine looks at settlement outcomes first).
BACKGROUND_BATCH = 100
SAVE_EVERY_S = 1.0


def money(amount: int | None, currency: str | None) -> str:
    """Minor units as text: 12800, CNY -> '128.00 CNY' (no float on the way)."""
    if amount is None:
        return "an unknown amount"
    sign = "-" if amount < 0 else ""
    whole, cents = divmod(abs(amount), 100)
    return f"{sign}{whole}.{cents:02d} {currency or ''}".rstrip()


@dataclass(slots=True)
class OpenBatch:
    """A terminal's batch with approved sales and no BAT yet."""

    mid: str
    currency: str
    first_time: datetime
    count: int
    total: int

    def add(self, amount: int, at: datetime) -> None:
        self.count += 1
        self.total += amount
        self.first_time = min(self.first_time, at)


@dataclass(slots=True)
class Tail:
    """Reads a table by increasing id without skipping rows that commit out of order."""

    position: int
    seen: set[int] = field(default_factory=set)
    gap_since: float | None = None

    def take(self, rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows not seen before; moves `position` over every contiguous id."""
        fresh = [row for row in rows if row["id"] not in self.seen]
        self.seen.update(row["id"] for row in fresh)
        self._advance()
        if self.seen:
            now = time.monotonic()
            if self.gap_since is None:
                self.gap_since = now
            elif now - self.gap_since > GAP_WAIT_S:
                self.position = min(self.seen) - 1  # the gap was a rollback: move on
                self._advance()
                self.gap_since = None
        else:
            self.gap_since = None
        return fresh

    def state(self) -> tuple[int, set[int], float | None]:
        return self.position, set(self.seen), self.gap_since

    def rewind(
        self, state: tuple[int, set[int], float | None], handled: list[dict[str, Any]]
    ) -> None:
        """Back to `state`, then past the rows handled since: the others are read again."""
        self.position, self.seen, self.gap_since = state
        self.take(handled)

    def _advance(self) -> None:
        while self.position + 1 in self.seen:
            self.position += 1
            self.seen.discard(self.position)


class AlertEngine:
    """Turns stored facts into alerts; see the module docstring."""

    def __init__(
        self,
        config: CollectorConfig,
        store: AlertStore,
        clock: Callable[[], datetime],
        *,
        on_queued: Callable[[], None] = lambda: None,
        on_fact: Callable[[str, dict[str, Any]], None] = lambda table, row: None,
        on_alert: Callable[[dict[str, Any]], None] = lambda row: None,
        cases: CaseStore | None = None,
    ) -> None:
        self.config = config
        self.settings = config.alerts
        self.cases = cases
        self.case_causes = {cause.value for cause in config.cases.open_for}
        # Transactions with a case still open -> its id: their settlements move the case.
        self.case_txns: dict[int, str] = {}
        self.store = store
        self.clock = clock
        self.on_queued = on_queued
        # Each new row of a followed table, and each alert fired or resolved (metrics).
        self.on_fact = on_fact
        self.on_alert = on_alert
        self.wake = threading.Event()
        self.fired = 0
        self.resolved = 0
        self.zone = ZoneInfo(config.settlement.timezone)
        self.merchants = {rule.mid: rule for rule in config.merchants}
        self.links = LinkWatch(self.settings.saf_threshold)
        self.declines = DeclineWatch(
            self.settings.decline_window,
            self.settings.decline_baseline_min,
            self.settings.decline_factor,
            self.settings.decline_min_rate,
        )
        self.last_seen: dict[str, datetime] = {}  # tid -> latest status (agent's wall clock)
        # (tid, batch) -> what its approved sales add up to, until its BAT arrives.
        self.open_batches: dict[tuple[str, str], OpenBatch] = {}
        self._seeded_upto = 0  # transactions up to this id are in open_batches already
        self.tails: dict[str, Tail] = {}
        self._unsaved = False
        self._next_save = 0.0
        # Silences and maintenance windows not yet over, refreshed at each sweep.
        self.silences: list[dict[str, Any]] = []
        # Fingerprints of the open alerts, refreshed at each sweep: a status or batch that
        # clears nothing costs no query, and a condition that persists is not re-fired.
        self.open: set[str] = set()
        self._next_sweep = 0.0

    # --- start-up -----------------------------------------------------------------------

    def start(self) -> None:
        """Load the cursors (or start at the end of each table) and the terminals' state."""
        positions = self.store.positions()
        if positions is None:
            positions = self.store.end_positions()
            self.store.save_positions(positions, self.clock())
        self.tails = {name: Tail(position) for name, position in positions.items()}
        if self.cases is not None:
            for case in self.cases.find(state="open", limit=1_000_000):
                self.case_txns[case["transaction_id"]] = case["case_id"]
        self.open = self.store.open_fingerprints()
        self._seeded_upto = self.store.end_positions()["transactions"]
        for row in self.store.unclosed_batches():
            self.open_batches[(row["tid"], row["batch"])] = OpenBatch(
                row["mid"], row["currency"], row["first_time"], row["count"], row["total"]
            )
        for row in self.store.latest_statuses():
            self.last_seen[row["tid"]] = row["observed_at"]
            self.links.feed(row["tid"], row["link_up"], row["saf_pending"], row["observed_at"])
        now = self.clock()
        for window in self.settings.maintenance:
            self.store.add_silence(
                silence_id=f"config-{window.bank_code or window.mid or window.tid}-"
                f"{int(window.start.timestamp())}",
                starts_at=window.start,
                ends_at=window.end,
                reason=window.reason,
                created_by="configuration",
                now=now,
                bank_code=window.bank_code,
                mid=window.mid,
                tid=window.tid,
                maintenance=True,
            )

    # --- the loop -----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Follow the tables and sweep until `stop` is set."""
        self.start()
        while not stop.is_set():
            try:
                self.step()
            except Exception:
                logger.exception("alert engine step failed; trying again")
                stop.wait(1.0)
            self.wake.wait(self.settings.sweep_s)
            self.wake.clear()
        if self._unsaved:
            self.save_positions()

    def step(self) -> None:
        """Take every new fact, and sweep when it is time."""
        while self._follow():
            pass
        if time.monotonic() >= self._next_sweep:
            self.sweep()
            self._next_sweep = time.monotonic() + self.settings.sweep_s

    def _follow(self) -> bool:
        """One round over the followed tables; True when a table had a full batch.

        Settlement outcomes come first, and again whenever the ingest has woken the engine
        meanwhile: a failure's alert never waits behind a backlog of status rows.
        """
        full = False
        readers = (
            ("status_events", self.store.status_rows, self._status),
            ("batches", self.store.batch_rows, self._batch),
            ("transactions", self.store.txn_rows, self._txn),
        )
        self._read("outcome_log", self.store.outcome_rows, self._outcome)
        for name, read, handle in readers:
            self._outcomes_if_woken()
            full = self._read(name, read, handle, BACKGROUND_BATCH) == BACKGROUND_BATCH or full
        if self._unsaved and time.monotonic() >= self._next_save:
            self.save_positions()
        return full

    def save_positions(self) -> None:
        """Store how far each table has been followed.

        At most every `SAVE_EVERY_S` (and on the way out): on SQLite each save is a write
        that queues with the ingest's commits. After a crash, the rows since the last save
        are followed again: an alert still open is not fired twice (its fingerprint).
        """
        positions = {name: tail.position for name, tail in self.tails.items()}
        self.store.save_positions(positions, self.clock())
        self._unsaved = False
        self._next_save = time.monotonic() + SAVE_EVERY_S

    def _outcomes_if_woken(self) -> None:
        """Settlement outcomes stored since the last look, when the ingest has said so."""
        if self.wake.is_set():
            self.wake.clear()
            self._read("outcome_log", self.store.outcome_rows, self._outcome)

    def _read(
        self,
        name: str,
        read: Callable[[int, int], list[dict[str, Any]]],
        handle: Callable[[dict[str, Any]], None],
        limit: int = TAIL_BATCH,
    ) -> int:
        """Handle the new rows of one table; returns how many there were."""
        tail = self.tails.setdefault(name, Tail(0))
        before = tail.state()
        fresh = tail.take(read(tail.position, limit))
        self._unsaved = self._unsaved or bool(fresh)
        background = name != "outcome_log"
        for index, row in enumerate(fresh):
            try:
                if background:
                    self._outcomes_if_woken()  # a failure's alert waits for no status row
                self.on_fact(name, row)
                handle(row)
            except Exception:
                # A write that failed (the database gone for a moment): this row and the
                # ones after it are read again at the next turn, not passed over.
                tail.rewind(before, fresh[:index])
                raise
        return len(fresh)

    # --- settlement outcomes ------------------------------------------------------------

    def _outcome(self, row: dict[str, Any]) -> None:
        outcome = Outcome(row["outcome"])
        previous = Outcome(row["previous"]) if row["previous"] else None
        tid, rrn = row["tid"], row["rrn"]
        now = self.clock()
        if row["transaction_id"] is not None and tid and rrn:
            if previous is not None and previous != outcome:
                cleared = OUTCOME_ALERT.get(previous)
                if cleared in CLEARED_BY_ANY_CHANGE:
                    self._resolve(
                        txn_fingerprint(cleared, tid, rrn),
                        now,
                        f"the transaction is now {outcome.value}",
                    )
            if row["settlement_id"]:
                self._resolve(
                    f"{AlertType.ORPHAN_SETTLEMENT.value}:{row['settlement_id']}",
                    now,
                    f"matched to TID {tid} RRN {rrn}",
                )
                if self.cases is not None:
                    self._case_settlement(row, now)
        alert_type = OUTCOME_ALERT.get(outcome)
        if alert_type is None:
            return
        if outcome is Outcome.ORPHAN and self.cases is not None and self._by_reference(row, now):
            return  # a re-remittance under its own RRN, naming its case: no orphan
        candidate, txn = self._settlement_candidate(alert_type, outcome, row, now)
        # A failure about the merchant or its account says nothing about the bank.
        at_bank = (
            candidate.bank_code is not None
            and alert_type in BANK_FAILURES
            and candidate.cause in BANK_CAUSES
        )
        group_id = None
        if at_bank:
            group = self.store.open_alert(f"{AlertType.BANK_OUTAGE.value}:{candidate.bank_code}")
            group_id = group["alert_id"] if group else None
        case_id = None
        alert_id = new_alert_id()  # made first, so the case opened before it can name it
        if alert_type in CASE_ALERTS and txn is not None:
            case_id = self._open_case(txn, candidate, now, alert_id)
        fired = self._fire(candidate, now, group_id=group_id, case_id=case_id, alert_id=alert_id)
        if fired and at_bank and group_id is None and candidate.bank_code:
            self._bank_outage(candidate.bank_code, now)

    # --- re-remittance cases --------------------------------------------------------------

    def _open_case(
        self, txn: dict[str, Any], candidate: Candidate, now: datetime, alert_id: str
    ) -> str | None:
        """The transaction's case, opened (once) when its cause calls for a re-remittance."""
        if self.cases is None or candidate.cause.value not in self.case_causes:
            return None
        txn_id = int(txn["id"])
        settlement = (candidate.details or {}).get("settlement") or {}
        remedy = remedy_for(settlement.get("reason_code"))
        opened = self.cases.open(
            txn,
            cause=candidate.cause.value,
            now=now,
            actor=f"collector:{self.store.collector_id}",
            alert_id=alert_id,
            remedy=remedy,
            bank_code=candidate.bank_code,
        )
        case = opened.case
        if case["state"] in OPEN_CASE_STATES:
            self.case_txns[txn_id] = case["case_id"]
        if opened.created:
            logger.warning(
                "case %s opened for TID %s RRN %s (%s, %s)",
                case["case_id"],
                case["tid"],
                case["rrn"],
                case["cause"],
                money(case["amount"], case["currency"]),
            )
        return str(case["case_id"])

    def _case_settlement(self, row: dict[str, Any], now: datetime) -> None:
        """A settlement of a transaction with an open case: the money arrived, or the
        original credit came after all."""
        assert self.cases is not None
        case_id = self.case_txns.get(row["transaction_id"])
        settlement = self.store.settlement_by_id(row["settlement_id"]) if case_id else None
        if case_id is None or settlement is None:
            return
        case = self.cases.get(case_id)
        if case is None:
            return
        if settlement["kind"] == "REREMITTANCE" and settlement["status"] in ("FAILED", "RETURNED"):
            self._remittance_failed(case, settlement, now)
            return
        if settlement["status"] != "CREDITED":
            return
        state = CaseState(case["state"])
        if settlement["kind"] == "REREMITTANCE":
            move = remittance_arrived(
                state, expected=case["amount"], credited=settlement["net_amount"]
            )
            values = {"remittance_settlement_id": settlement["settlement_id"]}
        else:
            move, values = original_arrived(state), {}
        if move is None:
            return
        try:
            self.cases.apply(
                case, move, actor=f"collector:{self.store.collector_id}", now=now, values=values
            )
        except CaseError as exc:
            logger.info(
                "case %s not moved by settlement %s: %s", case_id, row["settlement_id"], exc
            )
            return
        logger.info("case %s %s: %s", case_id, move.to.value, move.note)
        if move.to.value not in OPEN_CASE_STATES:
            self.case_txns.pop(row["transaction_id"], None)

    def _remittance_failed(
        self, case: dict[str, Any], settlement: dict[str, Any], now: datetime
    ) -> None:
        """The bank refused or returned the re-remittance: the case is REJECTED."""
        assert self.cases is not None
        reason = " ".join(
            str(part)
            for part in (settlement["status"], settlement["reason_code"], settlement["reason_text"])
            if part
        )
        move = remittance_failed(CaseState(case["state"]), f"bank: {reason}")
        if move is None:
            return
        try:
            self.cases.apply(
                case,
                move,
                actor=f"collector:{self.store.collector_id}",
                now=now,
                values={"rejection_reason": move.note[:256]},
            )
        except CaseError as exc:
            logger.info("case %s not rejected: %s", case["case_id"], exc)
            return
        logger.warning("case %s REJECTED by the bank: %s", case["case_id"], reason)

    def _by_reference(self, row: dict[str, Any], now: datetime) -> bool:
        """A REREMITTANCE that matches no transaction but names its case (or the original
        settlement): it moves that case, and the original failure's alerts resolve."""
        assert self.cases is not None
        settlement = (
            self.store.settlement_by_id(row["settlement_id"]) if row["settlement_id"] else None
        )
        if settlement is None or settlement["kind"] != "REREMITTANCE":
            return False
        case = self.cases.get(settlement["case_id"]) if settlement["case_id"] else None
        original_id = settlement["original_settlement_id"]
        if case is None and original_id:
            original = self.store.settlement_by_id(original_id)
            if original is not None and original["transaction_id"] is not None:
                case = self.cases.for_transaction(int(original["transaction_id"]))
        if case is None:
            return False
        actor = f"collector:{self.store.collector_id}"
        if settlement["status"] in ("FAILED", "RETURNED"):
            self._remittance_failed(case, settlement, now)
        elif settlement["status"] == "CREDITED":
            move = remittance_arrived(
                CaseState(case["state"]), expected=case["amount"], credited=settlement["net_amount"]
            )
            if move is None:
                return False  # short, excess or a second remittance: the orphan alert stays
            values = {"remittance_settlement_id": settlement["settlement_id"]}
            try:
                self.cases.apply(case, move, actor=actor, now=now, values=values)
            except CaseError:
                return False
            self.case_txns.pop(case["transaction_id"], None)
            for cleared in CLEARED_BY_ANY_CHANGE:
                self._resolve(
                    txn_fingerprint(cleared, case["tid"], case["rrn"]),
                    now,
                    f"re-remitted under case {case['case_id']} ({settlement['settlement_id']})",
                )
        logger.info(
            "re-remittance %s (%s) is case %s's",
            settlement["settlement_id"],
            settlement["status"],
            case["case_id"],
        )
        return True

    def _case_slas(self, now: datetime) -> None:
        """CASE_SLA_BREACHED for a case held in a state too long; resolved once it moves."""
        assert self.cases is not None
        for case in self.cases.past_sla(self.config.cases.sla_hours, now):
            hours = self.config.cases.sla_hours[case["state"]]
            self._fire(
                Candidate(
                    type=AlertType.CASE_SLA_BREACHED,
                    fingerprint=f"{AlertType.CASE_SLA_BREACHED.value}:{case['case_id']}:{case['state']}",
                    cause=Cause(case["cause"]),
                    summary=f"Case {case['case_id']} (TID {case['tid']} RRN {case['rrn']}) "
                    f"{case['state']} for more than {hours:g} h",
                    tid=case["tid"],
                    mid=case["mid"],
                    rrn=case["rrn"],
                    amount_at_risk=case["amount"],
                    currency=case["currency"],
                    details={
                        "evidence": [f"{case['state']} since {case['state_since'].isoformat()}"],
                        "case_id": case["case_id"],
                        "state": case["state"],
                        "sla_hours": hours,
                    },
                ),
                now,
            )
            self.cases.annotate(case["case_id"], sla_breached_state=case["state"])
        prefix = f"{AlertType.CASE_SLA_BREACHED.value}:"
        for fingerprint in [f for f in self.open if f.startswith(prefix)]:
            _, case_id, state = fingerprint.split(":", 2)
            current = self.cases.get(case_id)
            if current is None or current["state"] != state:
                moved = current["state"] if current else "gone"
                self._resolve(fingerprint, now, f"the case moved on to {moved}")

    def _settlement_candidate(
        self, alert_type: AlertType, outcome: Outcome, row: dict[str, Any], now: datetime
    ) -> tuple[Candidate, dict[str, Any] | None]:
        """The alert for a settlement outcome, and the transaction it is about (if any)."""
        evidence = self.store.evidence(
            row,
            window=timedelta(seconds=self.settings.context_window_s),
            bank_types=_types(BANK_FAILURES),
            bank_causes=sorted(BANK_CAUSES),
            since=now - timedelta(minutes=self.settings.bank_outage_window_min),
        )
        txn, settlement = evidence.txn, evidence.settlement
        tid = (txn or settlement or {}).get("tid") or row["tid"]
        rrn = (txn or settlement or {}).get("rrn") or row["rrn"]
        mid = (txn or settlement or {}).get("mid")
        bank_code = evidence.bank_code
        facts = self._facts(outcome, evidence, now)
        result = classify(facts, self.settings.reason_codes)
        currency = (txn or settlement or {}).get("currency")
        amount = self._at_risk(outcome, txn, settlement)
        details: dict[str, Any] = {
            "evidence": result.evidence,
            "outcome": outcome.value,
            "note": row.get("note"),
        }
        if txn is not None:
            details["transaction"] = {
                "kind": txn["kind"],
                "amount": txn["amount"],
                "expected_net": txn["expected_net"],
                "pan_masked": txn["pan_masked"],
                "stan": txn["stan"],
                "batch": txn["batch"],
                "terminal_time": txn["terminal_time"].isoformat(),
                "deadline": txn["deadline"].isoformat() if txn["deadline"] else None,
            }
        if settlement is not None:
            details["settlement"] = {
                key: settlement[key]
                for key in ("settlement_id", "status", "net_amount", "reason_code", "reason_text")
                if settlement[key] is not None
            }
        if alert_type is AlertType.ORPHAN_SETTLEMENT:
            fingerprint = f"{alert_type.value}:{row['settlement_id']}"
        else:
            fingerprint = txn_fingerprint(alert_type, tid, rrn)
        summary = _summary(alert_type, tid, rrn, money(amount, currency), result)
        candidate = Candidate(
            type=alert_type,
            fingerprint=fingerprint,
            cause=result.cause,
            summary=summary,
            tid=tid,
            mid=mid,
            rrn=rrn,
            bank_code=bank_code,
            amount_at_risk=amount,
            currency=currency if amount is not None else None,
            details=details,
        )
        return candidate, txn

    def _facts(self, outcome: Outcome, evidence: Evidence, now: datetime) -> Facts:
        txn, settlement, bank_code = evidence.txn, evidence.settlement, evidence.bank_code
        mid = (txn or settlement or {}).get("mid")
        rule = self.merchants.get(mid) if mid else None
        failures = 0
        maintenance = None
        if bank_code:
            failures = evidence.bank_failures + 1
            maintenance = self._maintenance_for(bank_code, now)
        return Facts(
            outcome=outcome,
            reason_code=settlement["reason_code"] if settlement else None,
            rc=txn["rc"] if txn else None,
            merchant_status=rule.status if rule else "active",
            terminal=evidence.terminal,
            batch_closed=evidence.batch_closed,
            batch_result=evidence.batch_result,
            bank_code=bank_code,
            bank_failures=failures,
            bank_outage_threshold=self.settings.bank_outage_failures,
            maintenance=maintenance,
            expected_net=txn["expected_net"] if txn else None,
            credited_net=settlement["net_amount"] if settlement else None,
        )

    @staticmethod
    def _at_risk(
        outcome: Outcome, txn: dict[str, Any] | None, settlement: dict[str, Any] | None
    ) -> int | None:
        """The merchant's money this alert is about."""
        expected: int | None = txn["expected_net"] if txn else None
        credited: int | None = settlement["net_amount"] if settlement else None
        if outcome is Outcome.MISMATCH and expected is not None and credited is not None:
            return abs(expected - credited)
        if outcome in (Outcome.DUPLICATE, Outcome.ORPHAN, Outcome.REVERSED_BUT_SETTLED):
            return credited
        return expected if expected is not None else credited

    def _bank_outage(self, bank_code: str, now: datetime) -> None:
        """Gather the failures at one bank into a BANK_OUTAGE once there are enough."""
        since = now - timedelta(minutes=self.settings.bank_outage_window_min)
        members = [
            row for row in self._bank_failures(bank_code, since) if row["status"] != "resolved"
        ]
        if len(members) < self.settings.bank_outage_failures:
            return
        at_risk = sum(row["amount_at_risk"] or 0 for row in members)
        currency = next((row["currency"] for row in members if row["currency"]), None)
        window = self.settings.bank_outage_window_min
        candidate = Candidate(
            type=AlertType.BANK_OUTAGE,
            fingerprint=f"{AlertType.BANK_OUTAGE.value}:{bank_code}",
            cause=Cause.BANK_SYSTEM,
            summary=f"Bank {bank_code}: {len(members)} settlement failures within "
            f"{window:g} min, {money(at_risk, currency)} not credited",
            bank_code=bank_code,
            amount_at_risk=at_risk if currency else None,
            currency=currency,
            details={
                "evidence": [f"{len(members)} failures at bank {bank_code} within {window:g} min"],
                "failures": len(members),
                "members": [row["alert_id"] for row in members],
            },
        )
        group = self._fire(candidate, now)
        if group is not None:
            self.store.join_group(group["alert_id"], [row["alert_id"] for row in members], now)

    def _bank_failures(self, bank_code: str, since: datetime) -> list[dict[str, Any]]:
        """Failures at one bank since `since` that may be the bank's doing."""
        rows = self.store.recent(_types(BANK_FAILURES), bank_code, since)
        return [row for row in rows if row["cause"] in BANK_CAUSES]

    # --- terminal status, batches, transactions -----------------------------------------

    def _status(self, row: dict[str, Any]) -> None:
        tid, at = row["tid"], row["observed_at"]
        if tid not in self.last_seen or at >= self.last_seen[tid]:
            self.last_seen[tid] = at
        now = self.clock()
        self._resolve(
            f"{AlertType.TERMINAL_OFFLINE.value}:{tid}", now, "the terminal reports again"
        )
        if self.links.feed(tid, row["link_up"], row["saf_pending"], at):
            self._resolve(
                f"{AlertType.HOST_LINK_DOWN.value}:{tid}",
                now,
                f"LINK=UP, SAF {row['saf_pending']}",
            )

    def _batch(self, row: dict[str, Any]) -> None:
        tid, batch, now = row["tid"], row["batch"], self.clock()
        self.open_batches.pop((tid, batch), None)
        self._resolve(
            f"{AlertType.BATCH_NOT_CLOSED.value}:{tid}:{batch}", now, "the batch was closed"
        )
        fingerprint = f"{AlertType.BATCH_UNBALANCED.value}:{tid}:{batch}"
        if row["result"] == "OK":
            self._resolve(fingerprint, now, "the batch closed balanced")
            return
        self._fire(
            Candidate(
                type=AlertType.BATCH_UNBALANCED,
                fingerprint=fingerprint,
                cause=Cause.OPERATOR,
                summary=f"Batch {batch} of TID {tid} closed {row['result']}: "
                f"{row['count']} transactions, {money(row['total'], row['currency'])}",
                tid=tid,
                mid=row["mid"],
                amount_at_risk=row["total"],
                currency=row["currency"],
                details={
                    "evidence": [f"BAT RESULT={row['result']} from the terminal"],
                    "batch": batch,
                    "count": row["count"],
                    "total": row["total"],
                },
            ),
            now,
        )

    def _txn(self, row: dict[str, Any]) -> None:
        if row["approved"] and row["kind"] in EXPECTS_MONEY and row["id"] > self._seeded_upto:
            key = (row["tid"], row["batch"])
            batch = self.open_batches.get(key)
            if batch is None:
                batch = self.open_batches[key] = OpenBatch(
                    row["mid"], row["currency"], row["terminal_time"], 0, 0
                )
            batch.add(row["amount"], row["terminal_time"])
        declined = not row["approved"]
        for key, label in ((row["tid"], "TID"), (row["mid"], "MID")):
            change = self.declines.feed(f"{label}:{key}", declined)
            if change is None:
                continue
            state, rate, baseline = change
            fingerprint = f"{AlertType.DECLINE_SPIKE.value}:{label}:{key}"
            now = self.clock()
            if state == "end":
                self._resolve(fingerprint, now, f"decline rate back to {rate:.0%}")
                continue
            window = self.settings.decline_window
            self._fire(
                Candidate(
                    type=AlertType.DECLINE_SPIKE,
                    fingerprint=fingerprint,
                    cause=Cause.UNKNOWN,
                    summary=f"{label} {key}: {rate:.0%} of the last {window} transactions "
                    f"declined (baseline {baseline:.0%})",
                    tid=row["tid"] if label == "TID" else None,
                    mid=row["mid"],
                    details={
                        "evidence": [
                            f"decline rate {rate:.0%} over the last {window} transactions, "
                            f"against {baseline:.0%} before"
                        ],
                        "rate": round(rate, 4),
                        "baseline": round(baseline, 4),
                        "last_rc": row["rc"],
                    },
                ),
                now,
            )

    # --- the sweep ----------------------------------------------------------------------

    def sweep(self) -> None:
        """What time alone decides."""
        self.open = self.store.open_fingerprints()
        self.silences = self.store.silences(self.clock())
        now = self.clock()
        wall = datetime.now(UTC)
        self._offline(now, wall)
        self._outcomes_if_woken()  # between the sweep's stages, a failure does not wait
        for tid, since in self.links.due(wall, self.settings.link_down_s):
            link_up, saf = self.links.last.get(tid, (True, 0))
            trouble = "LINK=DOWN" if not link_up else f"SAF backlog {saf}"
            self._fire(
                Candidate(
                    type=AlertType.HOST_LINK_DOWN,
                    fingerprint=f"{AlertType.HOST_LINK_DOWN.value}:{tid}",
                    cause=Cause.NETWORK,
                    summary=f"TID {tid}: {trouble} since {since.isoformat(timespec='seconds')}",
                    tid=tid,
                    details={
                        "evidence": [f"the terminal reports {trouble}"],
                        "since": since.isoformat(),
                        "saf_pending": saf,
                        "link_up": link_up,
                    },
                ),
                now,
            )
        self._outcomes_if_woken()
        self._unclosed_batches(now)
        self._outages_over(now)
        self._outcomes_if_woken()
        if self.cases is not None:
            self._case_slas(now)
            self._outcomes_if_woken()
        for row in self.store.renotify_due(timedelta(minutes=self.settings.renotify_min)):
            logger.info(
                "alert %s (%s) still unacknowledged: notified again", row["alert_id"], row["type"]
            )
            self.on_queued()

    def _offline(self, now: datetime, wall: datetime) -> None:
        timeout = timedelta(seconds=self.settings.heartbeat_timeout_s)
        silent = {tid: seen for tid, seen in self.last_seen.items() if wall - seen > timeout}
        offline_agents = self.store.offline_agents()
        for offline in offline_agents:
            for tid in offline["tids"]:
                silent.setdefault(tid, offline["observed_at"])
        for tid, seen in silent.items():
            agent: dict[str, Any] | None = next(
                (a for a in offline_agents if tid in a["tids"]), None
            )
            evidence = (
                [f"agent {agent['agent_id']} went offline (its MQTT will)"]
                if agent
                else [f"no status or heartbeat for {int((wall - seen).total_seconds())} s"]
            )
            self._fire(
                Candidate(
                    type=AlertType.TERMINAL_OFFLINE,
                    fingerprint=f"{AlertType.TERMINAL_OFFLINE.value}:{tid}",
                    cause=Cause.NETWORK,
                    summary=f"TID {tid} offline: last heard {seen.isoformat(timespec='seconds')}",
                    tid=tid,
                    details={"evidence": evidence, "last_seen": seen.isoformat()},
                ),
                now,
            )

    def _unclosed_batches(self, now: datetime) -> None:
        """BATCH_NOT_CLOSED: approved sales with no BAT by the cut-off after the first."""
        for (tid, batch_no), batch in self.open_batches.items():
            fingerprint = f"{AlertType.BATCH_NOT_CLOSED.value}:{tid}:{batch_no}"
            if fingerprint in self.open:
                continue
            cutoff = self._cutoff_after(batch.mid, batch.first_time)
            if now < cutoff:
                continue
            self._fire(
                Candidate(
                    type=AlertType.BATCH_NOT_CLOSED,
                    fingerprint=fingerprint,
                    cause=Cause.OPERATOR,
                    summary=f"Batch {batch_no} of TID {tid} not closed by "
                    f"{cutoff.isoformat(timespec='minutes')}: {batch.count} approved "
                    f"sales, {money(batch.total, batch.currency)} waiting",
                    tid=tid,
                    mid=batch.mid,
                    amount_at_risk=batch.total,
                    currency=batch.currency,
                    details={
                        "evidence": ["no BAT from the terminal for this batch by the cut-off"],
                        "batch": batch_no,
                        "count": batch.count,
                        "cutoff": cutoff.isoformat(),
                    },
                ),
                now,
            )

    def _cutoff_after(self, mid: str, moment: datetime) -> datetime:
        """The merchant's first cut-off after `moment` (local time of the settlement zone)."""
        rule = self.merchants.get(mid)
        cutoff_time = (rule.cutoff if rule and rule.cutoff else None) or (
            self.config.settlement.cutoff
        )
        local = moment.astimezone(self.zone)
        cutoff = datetime.combine(local.date(), cutoff_time, self.zone)
        return cutoff if cutoff > local else cutoff + timedelta(days=1)

    def _outages_over(self, now: datetime) -> None:
        window = timedelta(minutes=self.settings.bank_outage_window_min)
        for group in self.store.open_of_type(AlertType.BANK_OUTAGE.value):
            if not self._bank_failures(group["bank_code"], now - window):
                minutes = window.total_seconds() / 60
                note = f"no failure at bank {group['bank_code']} for {minutes:g} min"
                self._resolve(group["fingerprint"], now, note)

    # --- firing and resolving -----------------------------------------------------------

    def _fire(
        self,
        candidate: Candidate,
        now: datetime,
        *,
        group_id: str | None = None,
        case_id: str | None = None,
        alert_id: str | None = None,
    ) -> dict[str, Any] | None:
        if candidate.fingerprint in self.open:
            return None
        silence = self._silence_for(candidate, now)
        row = self.store.fire(
            candidate, now, silence=silence, group_id=group_id, case_id=case_id, alert_id=alert_id
        )
        self.open.add(candidate.fingerprint)
        if row is not None:
            self.fired += 1
            logger.warning(
                "alert %s %s (%s): %s%s",
                candidate.type.value,
                row["alert_id"],
                candidate.cause.value,
                candidate.summary,
                f" [muted: {silence.reason}]" if silence else "",
            )
            self.on_queued()
            self.on_alert(row)
        return row

    def _silence_for(self, candidate: Candidate, at: datetime) -> Silence | None:
        """The silence or maintenance window muting this alert at `at` (each matcher a
        silence sets must match; those it leaves empty match anything)."""
        wanted = {
            "type": candidate.type.value,
            "bank_code": candidate.bank_code,
            "mid": candidate.mid,
            "tid": candidate.tid,
        }
        for row in self.silences:
            if not row["starts_at"] <= at < row["ends_at"]:
                continue
            if all(row[key] is None or row[key] == value for key, value in wanted.items()):
                return Silence(row["silence_id"], row["reason"], bool(row["maintenance"]))
        return None

    def _maintenance_for(self, bank_code: str, at: datetime) -> str | None:
        """The reason of a maintenance window declared for this bank at `at`."""
        for row in self.silences:
            covers = row["starts_at"] <= at < row["ends_at"]
            if covers and row["maintenance"] and row["bank_code"] == bank_code:
                return str(row["reason"])
        return None

    def _resolve(self, fingerprint: str, now: datetime, note: str) -> None:
        if fingerprint not in self.open:
            return
        self.open.discard(fingerprint)
        row = self.store.resolve(fingerprint, now, note)
        if row is not None:
            self.resolved += 1
            logger.info("alert %s %s resolved: %s", row["type"], row["alert_id"], note)
            self.on_queued()
            self.on_alert(row)


def _types(types: Iterable[AlertType]) -> list[str]:
    return [alert_type.value for alert_type in types]


def _summary(alert_type: AlertType, tid: str, rrn: str, amount: str, result: Classification) -> str:
    what = {
        AlertType.SETTLEMENT_FAILED: f"settlement failed, {amount} not credited",
        AlertType.SETTLEMENT_RETURNED: f"credit of {amount} returned",
        AlertType.SETTLEMENT_OVERDUE: f"{amount} not credited by its deadline",
        AlertType.AMOUNT_MISMATCH: f"credited amount differs by {amount}",
        AlertType.DUPLICATE_SETTLEMENT: f"credited twice, {amount} extra",
        AlertType.ORPHAN_SETTLEMENT: f"settlement of {amount} matches no transaction",
        AlertType.REVERSED_BUT_SETTLED: f"voided or reversed, yet {amount} credited",
    }[alert_type]
    return f"TID {tid} RRN {rrn}: {what} (cause {result.cause.value})"
