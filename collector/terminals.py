"""The SQL of the terminals view: each terminal's last status, its agent's presence, its
recent transactions (card numbers only ever stored masked)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func, select

from collector.schema import presence, status_events, transactions


class TerminalStore:
    """Reads for the REST API's terminals, on the collector's read engine."""

    def __init__(self, reads: Engine) -> None:
        self.reads = reads

    def latest_statuses(self, tid: str | None = None) -> dict[str, dict[str, Any]]:
        """tid -> its latest status row (of one terminal when `tid` is given)."""
        key = status_events.c
        latest = select(func.max(key.id).label("id")).group_by(key.tid)
        if tid is not None:
            latest = latest.where(key.tid == tid)
        newest = latest.subquery()
        query = select(status_events).join(newest, key.id == newest.c.id)
        return {row["tid"]: row for row in self._rows(query)}

    def agents(self) -> list[dict[str, Any]]:
        """Every agent's last presence message, with the terminals it serves."""
        return self._rows(select(presence).order_by(presence.c.agent_id))

    def recent_transactions(self, tid: str, limit: int) -> list[dict[str, Any]]:
        """A terminal's transactions, newest first."""
        key = transactions.c
        return self._rows(
            select(transactions)
            .where(key.tid == tid)
            .order_by(key.terminal_time.desc(), key.id.desc())
            .limit(limit)
        )

    def _rows(self, query: Any) -> list[dict[str, Any]]:
        with self.reads.connect() as conn:
            return [dict(row) for row in conn.execute(query).mappings()]
