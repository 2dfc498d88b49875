"""The SQL of the terminals view: each terminal's last status, its agent's presence, its
recent transactions (card numbers only ever stored masked), as typed rows."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, RowMapping, func, select

from collector.schema import presence, status_events, transactions
from collector.store.rows import StoredTransaction


@dataclass(frozen=True, slots=True)
class TerminalStatusRow:
    """A terminal's status message as stored (`status_events`)."""

    id: int
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

    @classmethod
    def from_row(cls, row: RowMapping | Mapping[str, Any]) -> TerminalStatusRow:
        return cls(
            id=row["id"],
            event_id=row["event_id"],
            agent_id=row["agent_id"],
            tid=row["tid"],
            link_up=bool(row["link_up"]),
            network=row["network"],
            saf_pending=row["saf_pending"],
            serial_ok=bool(row["serial_ok"]),
            heartbeat_only=bool(row["heartbeat_only"]),
            observed_at=row["observed_at"],
            rssi_dbm=row["rssi_dbm"],
            host_rtt_ms=row["host_rtt_ms"],
            battery_pct=row["battery_pct"],
            paper=row["paper"],
            firmware=row["firmware"],
        )


@dataclass(frozen=True, slots=True)
class AgentPresence:
    """An agent's last presence message (`presence`): online or offline, its terminals."""

    agent_id: str
    state: str  # online, offline
    tids: tuple[str, ...]
    version: str
    observed_at: datetime

    @classmethod
    def from_row(cls, row: RowMapping | Mapping[str, Any]) -> AgentPresence:
        return cls(
            agent_id=row["agent_id"],
            state=row["state"],
            tids=tuple(str(tid) for tid in row["tids"] or ()),
            version=row["version"],
            observed_at=row["observed_at"],
        )


class TerminalStore:
    """Reads for the REST API's terminals, on the collector's read engine."""

    def __init__(self, reads: Engine) -> None:
        self.reads = reads

    def latest_statuses(self, tid: str | None = None) -> dict[str, TerminalStatusRow]:
        """tid -> its latest status by when its agent saw it (of one terminal when `tid`
        is given): a status replayed late from an agent's outbox does not hide a newer one.

        One index seek per terminal on (tid, observed_at), not a scan of every status
        stored: the terminals are walked in tid order (each the smallest tid above the
        last), and each one's newest status is read from the end of its index range.
        """
        key = status_events.c
        if tid is not None:
            one = (
                select(status_events)
                .where(key.tid == tid)
                .order_by(key.observed_at.desc(), key.id.desc())
                .limit(1)
            )
            return {row["tid"]: TerminalStatusRow.from_row(row) for row in self._rows(one)}
        walk = select(func.min(key.tid).label("tid")).cte("tids", recursive=True)
        walk = walk.union_all(
            select(select(func.min(key.tid)).where(key.tid > walk.c.tid).scalar_subquery()).where(
                walk.c.tid.is_not(None)
            )
        )
        newest = (
            select(key.id)
            .where(key.tid == walk.c.tid)
            .order_by(key.observed_at.desc(), key.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        ids = select(newest.label("id")).where(walk.c.tid.is_not(None)).subquery("newest")
        query = select(status_events).join(ids, key.id == ids.c.id)
        return {row["tid"]: TerminalStatusRow.from_row(row) for row in self._rows(query)}

    def agents(self) -> list[AgentPresence]:
        """Every agent's last presence message, with the terminals it serves."""
        query = select(presence).order_by(presence.c.agent_id)
        return [AgentPresence.from_row(row) for row in self._rows(query)]

    def recent_transactions(self, tid: str, limit: int) -> list[StoredTransaction]:
        """A terminal's transactions, newest first."""
        key = transactions.c
        query = (
            select(transactions)
            .where(key.tid == tid)
            .order_by(key.terminal_time.desc(), key.id.desc())
            .limit(limit)
        )
        return [StoredTransaction.from_row(row) for row in self._rows(query)]

    def _rows(self, query: Any) -> list[RowMapping]:
        with self.reads.connect() as conn:
            return list(conn.execute(query).mappings())
