"""The SQL of alerts: alerts and their history, silences, the notification queue, cursors.

One open alert per condition is the database's promise, not the code's: `open_fingerprint`
is unique and is cleared when the alert resolves, so two collectors firing the same
condition at once store it once, and only the one whose insert won queues notifications.
An alert, its history line and its notifications are written in one transaction, so an
alert that is stored is always delivered (collector.notify works the queue).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
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
from sqlalchemy.exc import IntegrityError

from collector.classify import TerminalContext
from collector.rules import Candidate
from collector.schema import (
    UtcDateTime,
    aggregate_time,
    alert_cursors,
    alert_history,
    alerts,
    batches,
    notifications,
    outcome_log,
    presence,
    settlements,
    silences,
    status_events,
    transactions,
)
from posmon.wire.models import AlertEvent, AlertState

OPEN = ("firing", "acknowledged")
OPEN_OUTCOMES = ("PENDING", "OVERDUE")
# The tables the alert engine follows by id.
FOLLOWED = (outcome_log, status_events, batches, transactions)


def wall_clock() -> datetime:
    """Delivery runs on real time, whatever clock the alerts' own times come from."""
    return datetime.now(UTC)


class AlertError(Exception):
    """An alert or silence asked for does not exist, or cannot take that action."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def new_alert_id() -> str:
    """A new alert's id: short enough to type into `alerts ack`."""
    return f"A-{uuid.uuid4().hex[:16]}"


@dataclass(frozen=True, slots=True)
class Queued:
    """A notification written to the queue: handed to its channel once committed."""

    notification_id: int
    channel: str
    payload: str


@dataclass(frozen=True, slots=True)
class Silence:
    """A silence or maintenance window that applies."""

    silence_id: str
    reason: str
    maintenance: bool


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the classification of one settlement outcome looks at (`AlertStore.evidence`)."""

    txn: dict[str, Any] | None
    settlement: dict[str, Any] | None
    terminal: TerminalContext | None  # None without a transaction
    batch_closed: bool | None  # None without a transaction
    batch_result: str | None
    bank_failures: int  # earlier failures at the settlement's bank that may be the bank's

    @property
    def bank_code(self) -> str | None:
        """The settlement's bank, if there is a settlement and it names one."""
        return self.settlement["bank_code"] if self.settlement else None


def alert_event(row: Any) -> AlertEvent:
    """The `posmon.alert/1` message of a stored alert."""
    resolved = row["status"] == "resolved"
    details = dict(row["details"] or {})
    if row["acked_at"] is not None:
        details["acknowledged"] = {"by": row["acked_by"], "at": row["acked_at"].isoformat()}
    if row["group_id"]:
        details["group_id"] = row["group_id"]
    return AlertEvent(
        alert_id=row["alert_id"],
        fingerprint=row["fingerprint"],
        type=row["type"],
        severity=row["severity"],
        state=AlertState.RESOLVED if resolved else AlertState.FIRING,
        cause=row["cause"],
        summary=row["summary"],
        started_at=row["started_at"],
        updated_at=row["updated_at"],
        resolved_at=row["resolved_at"] if resolved else None,
        tid=row["tid"],
        mid=row["mid"],
        rrn=row["rrn"],
        bank_code=row["bank_code"],
        amount_at_risk=row["amount_at_risk"],
        currency=row["currency"] if row["amount_at_risk"] is not None else None,
        case_id=row["case_id"],
        details=details or None,
    )


class AlertStore:
    """Alerts and what hangs off them, on the collector's database engine."""

    def __init__(
        self,
        engine: Engine,
        collector_id: str,
        channels: Sequence[str],
        *,
        reads: Engine | None = None,
    ) -> None:
        self.engine = engine
        # Reads must not queue for SQLite's write lock behind the ingest's commits.
        self.reads = reads or engine
        self.collector_id = collector_id
        # Called with what was queued once it is committed (the dispatchers' fast path).
        self.on_queued: Callable[[list[Queued]], None] = lambda queued: None
        self.channels = list(channels)
        self._evidence = _evidence_statement()

    # --- the lifecycle ------------------------------------------------------------------

    def fire(
        self,
        candidate: Candidate,
        now: datetime,
        *,
        silence: Silence | None = None,
        group_id: str | None = None,
        case_id: str | None = None,
        alert_id: str | None = None,
    ) -> dict[str, Any] | None:
        """Store a new alert and queue its notifications; None when it is already open.

        An open alert for the same condition gets the newer details instead (no new
        notification: the condition is the same). `alert_id` may be made beforehand
        (`new_alert_id()`), for a case that names its alert.
        """
        alert_id = alert_id or new_alert_id()
        details = dict(candidate.details)
        if silence is not None:
            details["silenced"] = silence.reason
        row = {
            "alert_id": alert_id,
            "fingerprint": candidate.fingerprint,
            "open_fingerprint": candidate.fingerprint,
            "type": candidate.type.value,
            "severity": candidate.severity.value,
            "status": "firing",
            "cause": candidate.cause.value,
            "summary": candidate.summary[:256],
            "started_at": now,
            "updated_at": now,
            "tid": candidate.tid,
            "mid": candidate.mid,
            "rrn": candidate.rrn,
            "bank_code": candidate.bank_code,
            "amount_at_risk": candidate.amount_at_risk,
            "currency": candidate.currency,
            "details": details,
            "group_id": group_id,
            "case_id": case_id,
            "silence_id": silence.silence_id if silence else None,
            "notified_at": None if silence or group_id else wall_clock(),
            "collector_id": self.collector_id,
        }
        queued: list[Queued] = []
        try:
            with self.engine.begin() as conn:
                conn.execute(alerts.insert().values(row))
                note = candidate.summary if silence is None else f"muted: {silence.reason}"
                self._history(conn, alert_id, now, "fired", by=self.collector_id, note=note)
                stored = {**row, "resolved_at": None, "acked_at": None, "acked_by": None}
                if silence is None and group_id is None:
                    queued = self._queue(conn, stored)
            self.on_queued(queued)
            return stored
        except IntegrityError:
            with self.engine.begin() as conn:
                conn.execute(
                    update(alerts)
                    .where(alerts.c.open_fingerprint == candidate.fingerprint)
                    .values(updated_at=now, details=details)
                )
            return None

    def resolve(
        self, fingerprint: str, now: datetime, note: str, actor: str | None = None
    ) -> dict[str, Any] | None:
        """Resolve the open alert of a condition; None when none is open."""
        with self.engine.begin() as conn:
            row = self._open(conn, fingerprint)
            if row is None:
                return None
            conn.execute(
                update(alerts)
                .where(alerts.c.alert_id == row["alert_id"])
                .values(status="resolved", resolved_at=now, updated_at=now, open_fingerprint=None)
            )
            self._history(
                conn, row["alert_id"], now, "resolved", by=actor or self.collector_id, note=note
            )
            stored = self._must(conn, row["alert_id"])
            # Resolutions follow their firing: a muted or grouped alert stays quiet.
            queued = self._queue(conn, stored) if row["notified_at"] is not None else []
        self.on_queued(queued)
        return stored

    def acknowledge(
        self, alert_id: str, actor: str, now: datetime, note: str = ""
    ) -> dict[str, Any]:
        """Mark a firing alert acknowledged (re-notification stops)."""
        with self.engine.begin() as conn:
            row = self._get(conn, alert_id)
            if row is None:
                raise AlertError(f"no alert {alert_id}")
            if row["status"] != "firing":
                raise AlertError(f"alert {alert_id} is {row['status']}, not firing")
            conn.execute(
                update(alerts)
                .where(alerts.c.alert_id == alert_id)
                .values(status="acknowledged", acked_at=now, acked_by=actor, updated_at=now)
            )
            self._history(conn, alert_id, now, "acknowledged", by=actor, note=note or None)
            return self._must(conn, alert_id)

    def join_group(self, group_id: str, alert_ids: Iterable[str], now: datetime) -> int:
        """Gather open alerts under a group alert (a BANK_OUTAGE); returns how many joined."""
        ids = list(alert_ids)
        if not ids:
            return 0
        with self.engine.begin() as conn:
            result = conn.execute(
                update(alerts)
                .where(alerts.c.alert_id.in_(ids), alerts.c.group_id.is_(None))
                .values(group_id=group_id, updated_at=now)
            )
            for alert_id in ids:
                self._history(conn, alert_id, now, "grouped", by=self.collector_id, note=group_id)
            return int(result.rowcount or 0)

    def renotify_due(self, every: timedelta) -> list[dict[str, Any]]:
        """Queue again each critical alert still firing (unacknowledged) `every` after its
        last notification (wall-clock time, also under a simulation's accelerated clock)."""
        key = alerts.c
        now = wall_clock()
        before = now - every
        queued: list[Queued] = []
        with self.engine.begin() as conn:
            rows = (
                conn.execute(
                    select(alerts).where(
                        key.status == "firing",
                        key.severity == "critical",
                        key.notified_at.is_not(None),
                        key.notified_at <= before,
                        key.collector_id == self.collector_id,
                    )
                )
                .mappings()
                .all()
            )
            for row in rows:
                conn.execute(
                    update(alerts).where(key.alert_id == row["alert_id"]).values(notified_at=now)
                )
                self._history(
                    conn, row["alert_id"], now, "renotified", by=self.collector_id, note=None
                )
                queued.extend(self._queue(conn, dict(row)))
        self.on_queued(queued)
        return [dict(row) for row in rows]

    # --- reading ------------------------------------------------------------------------

    def get(self, alert_id: str) -> dict[str, Any] | None:
        with self.reads.connect() as conn:
            return self._get(conn, alert_id)

    def open_alert(self, fingerprint: str) -> dict[str, Any] | None:
        with self.reads.connect() as conn:
            return self._open(conn, fingerprint)

    def find(
        self,
        *,
        status: str | None = None,
        alert_type: str | None = None,
        tid: str | None = None,
        bank_code: str | None = None,
        group_id: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Alerts newest first; `status` "open" means firing or acknowledged."""
        key = alerts.c
        query = select(alerts).order_by(key.started_at.desc(), key.alert_id).limit(limit)
        if status == "open":
            query = query.where(key.status.in_(OPEN))
        elif status is not None:
            query = query.where(key.status == status)
        for column, value in (
            (key.type, alert_type),
            (key.tid, tid),
            (key.bank_code, bank_code),
            (key.group_id, group_id),
        ):
            if value is not None:
                query = query.where(column == value)
        with self.reads.connect() as conn:
            return [dict(row) for row in conn.execute(query).mappings()]

    def history(self, alert_id: str) -> list[dict[str, Any]]:
        with self.reads.connect() as conn:
            rows = conn.execute(
                select(alert_history)
                .where(alert_history.c.alert_id == alert_id)
                .order_by(alert_history.c.id)
            ).mappings()
            return [dict(row) for row in rows]

    def recent(self, types: Iterable[str], bank_code: str, since: datetime) -> list[dict[str, Any]]:
        """Alerts of `types` at one bank started since `since` (any state)."""
        key = alerts.c
        with self.reads.connect() as conn:
            rows = conn.execute(
                select(alerts).where(
                    key.type.in_(list(types)), key.bank_code == bank_code, key.started_at >= since
                )
            ).mappings()
            return [dict(row) for row in rows]

    def open_fingerprints(self) -> set[str]:
        key = alerts.c
        with self.reads.connect() as conn:
            rows = conn.execute(select(key.open_fingerprint).where(key.status.in_(OPEN)))
            return {str(value) for value in rows.scalars()}

    def open_of_type(self, alert_type: str) -> list[dict[str, Any]]:
        key = alerts.c
        with self.reads.connect() as conn:
            rows = conn.execute(
                select(alerts).where(key.type == alert_type, key.status.in_(OPEN))
            ).mappings()
            return [dict(row) for row in rows]

    def counts(self, by: str = "type") -> dict[str, int]:
        """Open alerts by type (or by another column, such as "cause")."""
        column = alerts.c[by]
        with self.reads.connect() as conn:
            rows = conn.execute(
                select(column, func.count()).where(alerts.c.status.in_(OPEN)).group_by(column)
            )
            return {str(value): int(count) for value, count in rows}

    # --- silences -----------------------------------------------------------------------

    def add_silence(
        self,
        *,
        starts_at: datetime,
        ends_at: datetime,
        reason: str,
        created_by: str,
        now: datetime,
        alert_type: str | None = None,
        bank_code: str | None = None,
        mid: str | None = None,
        tid: str | None = None,
        maintenance: bool = False,
        silence_id: str | None = None,
    ) -> str:
        """Store a silence (or maintenance window); returns its id. Same id: replaced."""
        if ends_at <= starts_at:
            raise AlertError("a silence must end after it starts")
        if not any((alert_type, bank_code, mid, tid)):
            raise AlertError("a silence needs a type, bank, merchant or terminal to match")
        silence_id = silence_id or f"S-{uuid.uuid4().hex[:12]}"
        row = {
            "silence_id": silence_id,
            "type": alert_type,
            "bank_code": bank_code,
            "mid": mid,
            "tid": tid,
            "starts_at": starts_at,
            "ends_at": ends_at,
            "maintenance": maintenance,
            "reason": reason[:256],
            "created_by": created_by,
            "created_at": now,
        }
        with self.engine.begin() as conn:
            conn.execute(silences.delete().where(silences.c.silence_id == silence_id))
            conn.execute(silences.insert().values(row))
        return silence_id

    def silences(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Silences, or those not yet over at `now`."""
        query = select(silences).order_by(silences.c.starts_at)
        if now is not None:
            query = query.where(silences.c.ends_at > now)
        with self.reads.connect() as conn:
            return [dict(row) for row in conn.execute(query).mappings()]

    def silence(self, silence_id: str) -> dict[str, Any] | None:
        rows = self._rows(select(silences).where(silences.c.silence_id == silence_id))
        return rows[0] if rows else None

    # --- the notification queue ---------------------------------------------------------

    def due(self, channel: str, now: datetime, limit: int = 50) -> list[dict[str, Any]]:
        """Undelivered notifications of one channel whose next attempt is due, oldest first."""
        key = notifications.c
        with self.reads.connect() as conn:
            rows = conn.execute(
                select(notifications)
                .where(
                    key.collector_id == self.collector_id,
                    key.channel == channel,
                    key.delivered_at.is_(None),
                    key.next_attempt_at <= now,
                )
                .order_by(key.id)
                .limit(limit)
            ).mappings()
            return [dict(row) for row in rows]

    def next_due(self, channel: str) -> datetime | None:
        key = notifications.c
        with self.reads.connect() as conn:
            value = conn.execute(
                select(func.min(key.next_attempt_at)).where(
                    key.collector_id == self.collector_id,
                    key.channel == channel,
                    key.delivered_at.is_(None),
                )
            ).scalar()
        return value if isinstance(value, datetime) else None

    def delivered(self, notification_ids: Sequence[int], now: datetime) -> None:
        key = notifications.c
        with self.engine.begin() as conn:
            conn.execute(
                update(notifications)
                .where(key.id.in_(list(notification_ids)))
                .values(delivered_at=now, attempts=key.attempts + 1, last_error=None)
            )

    def failed(self, notification_id: int, error: str, retry_at: datetime) -> None:
        key = notifications.c
        with self.engine.begin() as conn:
            conn.execute(
                update(notifications)
                .where(key.id == notification_id)
                .values(attempts=key.attempts + 1, last_error=error[:512], next_attempt_at=retry_at)
            )

    def pending(self) -> dict[str, int]:
        """Undelivered notifications per channel."""
        key = notifications.c
        with self.reads.connect() as conn:
            rows = conn.execute(
                select(key.channel, func.count())
                .where(key.delivered_at.is_(None))
                .group_by(key.channel)
            )
            return {str(channel): int(count) for channel, count in rows}

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

    # --- the facts the rules look at ----------------------------------------------------

    def outcome_rows(self, after: int, limit: int) -> list[dict[str, Any]]:
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
        return self._rows(query)

    def status_rows(self, after: int, limit: int) -> list[dict[str, Any]]:
        key = status_events.c
        columns = (
            *(key.id, key.tid, key.link_up, key.saf_pending, key.observed_at),
            # For the metrics (collector/metrics.py).
            *(key.serial_ok, key.rssi_dbm, key.host_rtt_ms, key.battery_pct),
        )
        return self._rows(select(*columns).where(key.id > after).order_by(key.id).limit(limit))

    def batch_rows(self, after: int, limit: int) -> list[dict[str, Any]]:
        key = batches.c
        return self._rows(select(batches).where(key.id > after).order_by(key.id).limit(limit))

    def txn_rows(self, after: int, limit: int) -> list[dict[str, Any]]:
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
        return self._rows(select(*columns).where(key.id > after).order_by(key.id).limit(limit))

    def evidence(
        self,
        row: dict[str, Any],
        *,
        window: timedelta,
        bank_types: Sequence[str],
        bank_causes: Sequence[str],
        since: datetime,
    ) -> Evidence:
        """Everything the classification of an outcome row (`outcome_rows`) looks at, read
        in one statement: one round trip instead of six, each of which waits its turn for
        the database and then for the GIL when the collector is busy.

        The transaction and the settlement; the terminal's status events within `window`
        of the transaction's time and the latest one before (as `TerminalContext`); the
        latest close of its batch; and the alerts of `bank_types` with `bank_causes` at the
        settlement's bank since `since`.
        """
        observed = row["txn_observed_at"]
        params = {
            "txn_id": row["transaction_id"],
            "settlement_id": row["settlement_id"],
            "tid": row["tid"] if row["transaction_id"] is not None else None,
            "batch": row["txn_batch"],
            "start": observed - window if observed is not None else None,
            "end": observed + window if observed is not None else None,
            "bank_code": row["bank_code"],
            "bank_types": list(bank_types),
            "bank_causes": list(bank_causes),
            "since": since,
        }
        with self.reads.connect() as conn:
            found = conn.execute(self._evidence, params).mappings().one()
        txn = _prefixed(found, "t__", transactions) if found["t__id"] is not None else None
        settled = found["s__settlement_id"] is not None
        settlement = _prefixed(found, "s__", settlements) if settled else None
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
            bank_failures=int(found["bank_failures"]),
        )

    def settlement_by_id(self, settlement_id: str) -> dict[str, Any] | None:
        rows = self._rows(select(settlements).where(settlements.c.settlement_id == settlement_id))
        return rows[0] if rows else None

    def latest_statuses(self) -> list[dict[str, Any]]:
        """Each terminal's latest status (for the engine's start-up)."""
        key = status_events.c
        latest = select(func.max(key.id).label("id")).group_by(key.tid).subquery()
        return self._rows(
            select(key.tid, key.link_up, key.saf_pending, key.observed_at).join(
                latest, latest.c.id == key.id
            )
        )

    def offline_agents(self) -> list[dict[str, Any]]:
        key = presence.c
        return self._rows(select(presence).where(key.state == "offline"))

    def unclosed_batches(self) -> list[dict[str, Any]]:
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
        rows = self._rows(query)
        for row in rows:
            row["first_time"] = aggregate_time(row["first_time"])
            row["total"] = int(row["total"])
        return rows

    def _rows(self, query: Any) -> list[dict[str, Any]]:
        with self.reads.connect() as conn:
            return [dict(row) for row in conn.execute(query).mappings()]

    # --- inside a transaction -----------------------------------------------------------

    def _get(self, conn: Connection, alert_id: str) -> dict[str, Any] | None:
        row = conn.execute(select(alerts).where(alerts.c.alert_id == alert_id)).mappings().first()
        return dict(row) if row is not None else None

    def _must(self, conn: Connection, alert_id: str) -> dict[str, Any]:
        row = self._get(conn, alert_id)
        if row is None:
            raise AlertError(f"no alert {alert_id}")
        return row

    def _open(self, conn: Connection, fingerprint: str) -> dict[str, Any] | None:
        row = (
            conn.execute(select(alerts).where(alerts.c.open_fingerprint == fingerprint))
            .mappings()
            .first()
        )
        return dict(row) if row is not None else None

    def _history(
        self, conn: Connection, alert_id: str, at: datetime, event: str, *, by: str, note: Any
    ) -> None:
        conn.execute(
            alert_history.insert().values(
                alert_id=alert_id, at=at, event=event, actor=by[:64], note=note
            )
        )

    def _queue(self, conn: Connection, row: dict[str, Any]) -> list[Queued]:
        """One notification per channel; what was queued, handed on after the commit."""
        if not self.channels:  # a reader's store (the commands, the API) delivers nothing
            return []
        now = wall_clock()
        payload = alert_event(row).to_json().decode()
        queued: list[Queued] = []
        for channel in self.channels:
            notification_id = conn.execute(
                notifications.insert()
                .values(
                    alert_id=row["alert_id"],
                    channel=channel,
                    payload=payload,
                    created_at=now,
                    attempts=0,
                    next_attempt_at=now - timedelta(seconds=1),
                    collector_id=self.collector_id,
                )
                .returning(notifications.c.id)
            ).scalar_one()
            queued.append(Queued(int(notification_id), channel, payload))
        return queued


def _prefixed(row: Any, prefix: str, table: Any) -> dict[str, Any]:
    return {column.name: row[prefix + column.name] for column in table.columns}


def _evidence_statement() -> Any:
    """The statement of `AlertStore.evidence`, built once (its parameters are bound)."""
    tid = bindparam("tid", type_=String)
    batch = bindparam("batch", type_=String)
    start = bindparam("start", type_=UtcDateTime())
    status, closed, fired = status_events.c, batches.c, alerts.c
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
    terminal = select(
        func.count().label("statuses"),
        func.sum(case((statuses.c.link_up.is_(False), 1), else_=0)).label("link_down"),
        func.max(statuses.c.saf_pending).label("saf_max"),
        func.sum(case((statuses.c.serial_ok.is_(False), 1), else_=0)).label("serial_down"),
    ).subquery("terminal")
    batch_closed = exists().where(closed.tid == tid, closed.batch == batch)
    batch_result = (
        select(closed.result)
        .where(closed.tid == tid, closed.batch == batch)
        .order_by(closed.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    bank_failures = (
        select(func.count())
        .where(
            fired.type.in_(bindparam("bank_types", expanding=True)),
            fired.cause.in_(bindparam("bank_causes", expanding=True)),
            fired.bank_code == bindparam("bank_code", type_=String),
            fired.started_at >= bindparam("since", type_=UtcDateTime()),
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
        bank_failures.label("bank_failures"),
    ).select_from(facts)
