"""The SQL of alerts: alerts and their history, silences, the notification queue.

One open alert per condition is the database's promise, not the code's: `open_fingerprint`
is unique and is cleared when the alert resolves, so two collectors firing the same
condition at once store it once, and only the one whose insert won queues notifications.
An alert, its history line and its notifications are written in one transaction, so an
alert that is stored is always delivered (collector.notify works the queue).

It hands out typed rows (`StoredAlert`, `StoredSilence`, `AlertHistoryEntry`,
`BankFailure`, `Queued`: `collector.alerts.rows`), never the database's mappings.

One module of about 500 lines on purpose: every method is the SQL of the `alerts` table
and what hangs off it, and the lifecycle's promises (an alert, its history and its
notifications in one transaction; one open alert per fingerprint) are kept by methods
that share its private helpers (`_open`, `_must`, `_history`, `_queue`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, func, select, update
from sqlalchemy.exc import IntegrityError

from collector.alerts.facts import FactReader
from collector.alerts.rows import (
    AlertHistoryEntry,
    BankFailure,
    Queued,
    StoredAlert,
    StoredSilence,
    alert_event,
)
from collector.rules import Candidate
from collector.schema import UtcDateTime, alert_history, alerts, notifications, silences

OPEN = ("firing", "acknowledged")


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
        # What the engine reads besides alerts: the followed tables, cursors, evidence.
        self.facts = FactReader(engine, self.reads, collector_id)

    # --- the lifecycle ------------------------------------------------------------------

    def fire(
        self,
        candidate: Candidate,
        now: datetime,
        *,
        silence: StoredSilence | None = None,
        group_id: str | None = None,
        case_id: str | None = None,
        alert_id: str | None = None,
    ) -> StoredAlert | None:
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
            "occurred_at": candidate.occurred_at,
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
                stored = StoredAlert.from_row(
                    {**row, "resolved_at": None, "acked_at": None, "acked_by": None}
                )
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
    ) -> StoredAlert | None:
        """Resolve the open alert of a condition; None when none is open."""
        with self.engine.begin() as conn:
            row = self._open(conn, fingerprint)
            if row is None:
                return None
            conn.execute(
                update(alerts)
                .where(alerts.c.alert_id == row.alert_id)
                .values(status="resolved", resolved_at=now, updated_at=now, open_fingerprint=None)
            )
            self._history(
                conn, row.alert_id, now, "resolved", by=actor or self.collector_id, note=note
            )
            stored = self._must(conn, row.alert_id)
            # Resolutions follow their firing: a muted or grouped alert stays quiet.
            queued = self._queue(conn, stored) if row.notified_at is not None else []
        self.on_queued(queued)
        return stored

    def acknowledge(self, alert_id: str, actor: str, now: datetime, note: str = "") -> StoredAlert:
        """Mark a firing alert acknowledged (re-notification stops)."""
        with self.engine.begin() as conn:
            row = self._must(conn, alert_id)
            if row.status != "firing":
                raise AlertError(f"alert {alert_id} is {row.status}, not firing")
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

    def renotify_due(self, every: timedelta) -> list[StoredAlert]:
        """Queue again each critical alert still firing (unacknowledged) `every` after its
        last notification (wall-clock time, also under a simulation's accelerated clock)."""
        key = alerts.c
        now = wall_clock()
        before = now - every
        queued: list[Queued] = []
        with self.engine.begin() as conn:
            rows = [
                StoredAlert.from_row(row)
                for row in conn.execute(
                    select(alerts).where(
                        key.status == "firing",
                        key.severity == "critical",
                        key.notified_at.is_not(None),
                        key.notified_at <= before,
                        key.collector_id == self.collector_id,
                    )
                ).mappings()
            ]
            for row in rows:
                conn.execute(
                    update(alerts).where(key.alert_id == row.alert_id).values(notified_at=now)
                )
                self._history(
                    conn, row.alert_id, now, "renotified", by=self.collector_id, note=None
                )
                queued.extend(self._queue(conn, row))
        self.on_queued(queued)
        return rows

    # --- reading ------------------------------------------------------------------------

    def get(self, alert_id: str) -> StoredAlert | None:
        """An alert as stored, for the readers (API, commands, evidence packages)."""
        with self.reads.connect() as conn:
            row = conn.execute(select(alerts).where(alerts.c.alert_id == alert_id)).mappings()
            found = row.first()
            return StoredAlert.from_row(found) if found is not None else None

    def open_alert(self, fingerprint: str) -> StoredAlert | None:
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
    ) -> list[StoredAlert]:
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
            return [StoredAlert.from_row(row) for row in conn.execute(query).mappings()]

    def history(self, alert_id: str) -> list[AlertHistoryEntry]:
        """An alert's steps, oldest first."""
        with self.reads.connect() as conn:
            rows = conn.execute(
                select(alert_history)
                .where(alert_history.c.alert_id == alert_id)
                .order_by(alert_history.c.id)
            ).mappings()
            return [AlertHistoryEntry.from_row(row) for row in rows]

    def recent(self, types: Iterable[str], bank_code: str, since: datetime) -> list[StoredAlert]:
        """Alerts of `types` at one bank started since `since` (any state)."""
        key = alerts.c
        with self.reads.connect() as conn:
            rows = conn.execute(
                select(alerts).where(
                    key.type.in_(list(types)), key.bank_code == bank_code, key.started_at >= since
                )
            ).mappings()
            return [StoredAlert.from_row(row) for row in rows]

    def bank_failures(
        self,
        types: Iterable[str],
        causes: Iterable[str],
        bank_code: str,
        start: datetime,
        end: datetime,
    ) -> list[BankFailure]:
        """Unresolved alerts of `types` with `causes` at one bank whose fault happened
        (`occurred_at`, else when they started) from `start` to `end`."""
        key = alerts.c
        at = func.coalesce(key.occurred_at, key.started_at, type_=UtcDateTime())
        with self.reads.connect() as conn:
            rows = conn.execute(
                select(
                    key.alert_id, key.fingerprint, at.label("at"), key.amount_at_risk, key.currency
                ).where(
                    key.type.in_(list(types)),
                    key.cause.in_(list(causes)),
                    key.bank_code == bank_code,
                    key.status != "resolved",
                    at.between(start, end),
                )
            )
            return [
                BankFailure(row.alert_id, row.fingerprint, row.at, row.amount_at_risk, row.currency)
                for row in rows
            ]

    def open_fingerprints(self) -> set[str]:
        key = alerts.c
        with self.reads.connect() as conn:
            rows = conn.execute(select(key.open_fingerprint).where(key.status.in_(OPEN)))
            return {str(value) for value in rows.scalars()}

    def open_of_type(self, alert_type: str) -> list[StoredAlert]:
        key = alerts.c
        with self.reads.connect() as conn:
            rows = conn.execute(
                select(alerts).where(key.type == alert_type, key.status.in_(OPEN))
            ).mappings()
            return [StoredAlert.from_row(row) for row in rows]

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

    def silences(self, now: datetime | None = None) -> list[StoredSilence]:
        """Silences, or those not yet over at `now`."""
        query = select(silences).order_by(silences.c.starts_at)
        if now is not None:
            query = query.where(silences.c.ends_at > now)
        with self.reads.connect() as conn:
            return [StoredSilence.from_row(row) for row in conn.execute(query).mappings()]

    def silence(self, silence_id: str) -> StoredSilence | None:
        with self.reads.connect() as conn:
            query = select(silences).where(silences.c.silence_id == silence_id)
            row = conn.execute(query).mappings().first()
            return StoredSilence.from_row(row) if row is not None else None

    def silences_in_force(self, now: datetime) -> list[StoredSilence]:
        """Silences and maintenance windows not yet over at `now` (what the engine mutes by)."""
        return self.silences(now)

    # --- the notification queue ---------------------------------------------------------

    def due(self, channel: str, now: datetime, limit: int = 50) -> list[Queued]:
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
            return [Queued(row["id"], row["channel"], row["payload"]) for row in rows]

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

    # --- inside a transaction -----------------------------------------------------------

    def _must(self, conn: Connection, alert_id: str) -> StoredAlert:
        row = conn.execute(select(alerts).where(alerts.c.alert_id == alert_id)).mappings().first()
        if row is None:
            raise AlertError(f"no alert {alert_id}")
        return StoredAlert.from_row(row)

    def _open(self, conn: Connection, fingerprint: str) -> StoredAlert | None:
        row = (
            conn.execute(select(alerts).where(alerts.c.open_fingerprint == fingerprint))
            .mappings()
            .first()
        )
        return StoredAlert.from_row(row) if row is not None else None

    def _history(
        self, conn: Connection, alert_id: str, at: datetime, event: str, *, by: str, note: Any
    ) -> None:
        conn.execute(
            alert_history.insert().values(
                alert_id=alert_id, at=at, event=event, actor=by[:64], note=note
            )
        )

    def _queue(self, conn: Connection, row: StoredAlert) -> list[Queued]:
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
                    alert_id=row.alert_id,
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
