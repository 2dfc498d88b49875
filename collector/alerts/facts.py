"""The SQL of what alerting reads: the followed tables by id, their cursors, and the
evidence a settlement alert's cause is read from.

Nothing here writes an alert (that is `collector.alerts.store`); the only write is the
cursor of how far this collector has followed each table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    Engine,
    Select,
    String,
    bindparam,
    case,
    exists,
    func,
    literal,
    select,
    true,
    union_all,
    update,
)

from collector.alerts.rows import (
    BatchRow,
    Columns,
    ConflictRow,
    Evidence,
    OfflineAgent,
    OutcomeRow,
    StatusRow,
    TerminalState,
    TxnRow,
    UnclosedBatch,
)
from collector.classify import OFFLINE_APPROVALS, TerminalContext
from collector.correlate import CREDITED_OUTCOMES, Outcome
from collector.schema import (
    UtcDateTime,
    aggregate_time,
    alert_cursors,
    batches,
    conflicts,
    outcome_log,
    presence,
    settlements,
    status_events,
    transactions,
)
from collector.store.rows import StoredSettlement, StoredTransaction

OPEN_OUTCOMES = ("PENDING", "OVERDUE")
# The tables the alert engine follows by id.
FOLLOWED = (outcome_log, status_events, batches, transactions, conflicts)
# Outcomes that say the acquirer had the transaction: a settlement result of any kind.
SETTLED = sorted(
    outcome.value
    for outcome in (
        *CREDITED_OUTCOMES,
        Outcome.FAILED,
        Outcome.RETURNED,
        Outcome.REVERSED_BUT_SETTLED,
    )
)

Row = TypeVar("Row")


class FactReader:
    """What the alert engine reads, on the collector's engines (reads on `reads`)."""

    def __init__(self, engine: Engine, reads: Engine, collector_id: str) -> None:
        self.engine = engine
        self.reads = reads
        self.collector_id = collector_id
        self._evidence = _evidence_statement()

    # --- cursors ------------------------------------------------------------------------

    def positions(self) -> dict[str, int] | None:
        with self.reads.connect() as conn:
            value = conn.execute(
                select(alert_cursors.c.positions).where(
                    alert_cursors.c.collector_id == self.collector_id
                )
            ).scalar()
        return {str(k): int(v) for k, v in value.items()} if isinstance(value, dict) else None

    def save_positions(self, positions: dict[str, int], now: datetime) -> None:
        with self.engine.begin() as conn:
            done = conn.execute(
                update(alert_cursors)
                .where(alert_cursors.c.collector_id == self.collector_id)
                .values(positions=positions, updated_at=now)
            )
            if not done.rowcount:
                conn.execute(
                    alert_cursors.insert().values(
                        collector_id=self.collector_id, positions=positions, updated_at=now
                    )
                )

    def end_positions(self) -> dict[str, int]:
        """Where a collector new to this database starts following: the end of each table."""
        with self.reads.connect() as conn:
            return {
                table.name: int(conn.execute(select(func.max(table.c.id))).scalar() or 0)
                for table in FOLLOWED
            }

    # --- the followed tables ------------------------------------------------------------

    def outcome_rows(self, after: int, limit: int) -> list[OutcomeRow]:
        """This collector's outcome changes after id `after`, with the business key (and
        the transaction's terminal, batch and time: what `evidence` looks up by)."""
        log, txn, settled = outcome_log.c, transactions.c, settlements.c
        query = (
            select(
                log.id,
                log.transaction_id,
                log.settlement_id,
                log.outcome,
                log.previous,
                log.note,
                func.coalesce(txn.tid, settled.tid).label("tid"),
                func.coalesce(txn.rrn, settled.rrn).label("rrn"),
                txn.batch.label("txn_batch"),
                txn.observed_at.label("txn_observed_at"),
                # For the metrics (collector/metrics.py): amounts, bank, time to money.
                func.coalesce(txn.mid, settled.mid).label("mid"),
                func.coalesce(txn.amount, settled.amount).label("amount"),
                txn.expected_net,
                txn.terminal_time,
                txn.deadline,  # a credit settled after it was late, whenever it came
                settled.net_amount,
                settled.bank_code,
                settled.settled_at,
            )
            .select_from(
                outcome_log.outerjoin(transactions, txn.id == log.transaction_id).outerjoin(
                    settlements, settled.settlement_id == log.settlement_id
                )
            )
            .where(log.id > after, log.collector_id == self.collector_id)
            .order_by(log.id)
            .limit(limit)
        )
        return self._rows(query, OutcomeRow.from_row)

    def status_rows(self, after: int, limit: int) -> list[StatusRow]:
        key = status_events.c
        columns = (
            *(key.id, key.tid, key.link_up, key.saf_pending, key.observed_at),
            # For the metrics (collector/metrics.py).
            *(key.serial_ok, key.rssi_dbm, key.host_rtt_ms, key.battery_pct),
        )
        query = select(*columns).where(key.id > after).order_by(key.id).limit(limit)
        return self._rows(query, StatusRow.from_row)

    def batch_rows(self, after: int, limit: int) -> list[BatchRow]:
        key = batches.c
        columns = (key.id, key.tid, key.mid, key.batch, key.count, key.total, key.currency)
        query = select(*columns, key.result).where(key.id > after).order_by(key.id).limit(limit)
        return self._rows(query, BatchRow.from_row)

    def conflict_rows(self, after: int, limit: int) -> list[ConflictRow]:
        key = conflicts.c
        query = select(conflicts).where(key.id > after).order_by(key.id).limit(limit)
        return self._rows(query, ConflictRow.from_row)

    def txn_rows(self, after: int, limit: int) -> list[TxnRow]:
        key = transactions.c
        columns = (
            key.id,
            key.tid,
            key.mid,
            key.approved,
            key.rc,
            key.kind,
            key.batch,
            key.amount,
            key.currency,
            key.terminal_time,
        )
        query = select(*columns).where(key.id > after).order_by(key.id).limit(limit)
        return self._rows(query, TxnRow.from_row)

    # --- what the rules look at ---------------------------------------------------------

    def evidence(self, row: OutcomeRow, *, window: timedelta) -> Evidence:
        """Everything the classification of an outcome row (`outcome_rows`) looks at, read
        in one statement: one round trip instead of six, each of which waits its turn for
        the database and then for the GIL when the collector is busy.

        The transaction and the settlement; the terminal's state when the sale was made (as
        `TerminalContext`): how many status events it sent within `window` before the sale
        (and the latest one before that), and the link, SAF and serial line of its latest
        status up to the sale. Not what happened after (a link that went down after an
        online approval did not keep that sale's money back), nor a trouble that had
        cleared before it; the latest close of its batch.
        """
        observed = row.txn_observed_at
        params = {
            "txn_id": row.transaction_id,
            "settlement_id": row.settlement_id,
            "tid": row.tid if row.transaction_id is not None else None,
            "batch": row.txn_batch,
            "start": observed - window if observed is not None else None,
            "end": observed,
        }
        with self.reads.connect() as conn:
            found = conn.execute(self._evidence, params).mappings().one()
        txn = None
        if found["t__id"] is not None:
            txn = StoredTransaction.from_row(_prefixed(found, "t__", transactions))
        settlement = None
        if found["s__settlement_id"] is not None:
            settlement = StoredSettlement.from_row(_prefixed(found, "s__", settlements))
        terminal = None
        if txn is not None:
            terminal = TerminalContext(
                statuses=int(found["statuses"]),
                link_down=bool(found["link_down"]),
                saf_max=int(found["saf_max"] or 0),
                serial_down=bool(found["serial_down"]),
            )
        return Evidence(
            txn=txn,
            settlement=settlement,
            terminal=terminal,
            batch_closed=bool(found["batch_closed"]) if txn is not None else None,
            batch_result=found["batch_result"] if txn is not None else None,
            offline_settled=int(found["offline_settled"] or 0) if txn is not None else 0,
        )

    def settlement_by_id(self, settlement_id: str) -> StoredSettlement | None:
        query = select(settlements).where(settlements.c.settlement_id == settlement_id)
        rows = self._rows(query, StoredSettlement.from_row)
        return rows[0] if rows else None

    # --- where the engine starts from ---------------------------------------------------

    def latest_statuses(self) -> list[TerminalState]:
        """Each terminal's latest status (for the engine's start-up)."""
        key = status_events.c
        latest = select(func.max(key.id).label("id")).group_by(key.tid).subquery()
        query = select(key.tid, key.link_up, key.saf_pending, key.observed_at).join(
            latest, latest.c.id == key.id
        )
        return self._rows(
            query,
            lambda row: TerminalState(
                row["tid"], bool(row["link_up"]), row["saf_pending"], row["observed_at"]
            ),
        )

    def offline_agents(self) -> list[OfflineAgent]:
        key = presence.c
        return self._rows(
            select(key.agent_id, key.tids, key.observed_at).where(key.state == "offline"),
            lambda row: OfflineAgent(row["agent_id"], tuple(row["tids"]), row["observed_at"]),
        )

    def unclosed_batches(self) -> list[UnclosedBatch]:
        """(tid, batch) with open approved transactions and no BAT: first time, count, total."""
        txn, closed = transactions.c, batches.c
        no_close = ~exists().where(closed.tid == txn.tid, closed.batch == txn.batch)
        query = (
            select(
                txn.tid,
                txn.batch,
                func.min(txn.mid).label("mid"),
                func.min(txn.currency).label("currency"),
                func.min(txn.terminal_time).label("first_time"),
                func.count().label("count"),
                func.sum(txn.amount).label("total"),
            )
            .where(txn.outcome.in_(OPEN_OUTCOMES), no_close)
            .group_by(txn.tid, txn.batch)
        )
        return self._rows(
            query,
            lambda row: UnclosedBatch(
                tid=row["tid"],
                batch=row["batch"],
                mid=row["mid"],
                currency=row["currency"],
                first_time=_present(aggregate_time(row["first_time"])),
                count=int(row["count"]),
                total=int(row["total"]),
            ),
        )

    def _rows(self, query: Select[Any], make: Callable[[Columns], Row]) -> list[Row]:
        with self.reads.connect() as conn:
            return [make(row) for row in conn.execute(query).mappings()]


def _present(value: datetime | None) -> datetime:
    """An aggregate time of a group that has rows (so never NULL)."""
    assert value is not None
    return value


def _prefixed(row: Columns, prefix: str, table: Any) -> Mapping[str, Any]:
    """One table's columns of the evidence statement's row, named as in the table."""
    return {column.name: row[prefix + column.name] for column in table.columns}


def _evidence_statement() -> Any:
    """The statement of `FactReader.evidence`, built once (its parameters are bound)."""
    tid = bindparam("tid", type_=String)
    batch = bindparam("batch", type_=String)
    start = bindparam("start", type_=UtcDateTime())
    status, closed = status_events.c, batches.c
    columns = (status.link_up, status.saf_pending, status.serial_ok)
    during = select(*columns).where(
        status.tid == tid,
        status.observed_at >= start,
        status.observed_at <= bindparam("end", type_=UtcDateTime()),
    )
    before = (
        select(*columns)
        .where(status.tid == tid, status.observed_at < start)
        .order_by(status.observed_at.desc())
        .limit(1)
        .subquery("before")
    )
    statuses = union_all(during, select(*before.c)).subquery("statuses")
    # The terminal's state when the sale was made: its latest status up to the sale (an
    # earlier trouble that had cleared by then did not touch the sale).
    latest = (
        select(*columns)
        .where(status.tid == tid, status.observed_at <= bindparam("end", type_=UtcDateTime()))
        .order_by(status.observed_at.desc())
        .limit(1)
        .subquery("latest")
    )
    terminal = (
        select(
            func.count().label("statuses"),
            func.max(case((latest.c.link_up.is_(False), 1), else_=0)).label("link_down"),
            func.max(latest.c.saf_pending).label("saf_max"),
            func.max(case((latest.c.serial_ok.is_(False), 1), else_=0)).label("serial_down"),
        )
        .select_from(statuses)
        .outerjoin(latest, true())
        .subquery("terminal")
    )
    batch_closed = exists().where(closed.tid == tid, closed.batch == batch)
    batch_result = (
        select(closed.result)
        .where(closed.tid == tid, closed.batch == batch)
        .order_by(closed.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    others = transactions.alias("others")
    offline_settled = (
        select(func.count())
        .where(
            others.c.tid == tid,
            others.c.batch == batch,
            others.c.rc.in_(OFFLINE_APPROVALS),
            others.c.outcome.in_(SETTLED),
            others.c.id != bindparam("txn_id"),
        )
        .scalar_subquery()
    )
    one = select(literal(1).label("one")).subquery("one")
    facts = (
        one.outerjoin(transactions, transactions.c.id == bindparam("txn_id"))
        .outerjoin(settlements, settlements.c.settlement_id == bindparam("settlement_id"))
        .join(terminal, true())
    )
    return select(
        *(column.label(f"t__{column.name}") for column in transactions.columns),
        *(column.label(f"s__{column.name}") for column in settlements.columns),
        *terminal.c,
        batch_closed.label("batch_closed"),
        batch_result.label("batch_result"),
        offline_settled.label("offline_settled"),
    ).select_from(facts)
