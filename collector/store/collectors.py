"""Collectors' records: each collector says it is alive, with its subscriptions and counters.

`collector status` and the API's metrics read them back, one row per collector.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from sqlalchemy import Engine, select

from collector.schema import collectors
from collector.store.rows import CollectorRecord
from collector.store.writes import BulkWriter


class CollectorRecords:
    """The collectors table, written by one collector and read for all."""

    def __init__(
        self, collector_id: str, writes: Engine, reads: Engine, writer: BulkWriter
    ) -> None:
        self.collector_id = collector_id
        self._writes = writes
        self._reads = reads
        self._writer = writer

    def record(
        self, started_at: datetime, subscriptions: Sequence[str], counters: Mapping[str, object]
    ) -> None:
        """Say this collector is alive, with what it subscribes to and its counters."""
        row = {
            "collector_id": self.collector_id,
            "started_at": started_at,
            "seen_at": datetime.now(UTC),
            "subscriptions": list(subscriptions),
            "counters": dict(counters),
        }
        statement = self._writer.insert(collectors).values(row)
        with self._writes.begin() as conn:
            conn.execute(
                statement.on_conflict_do_update(
                    index_elements=["collector_id"],
                    set_={name: statement.excluded[name] for name in row if name != "collector_id"},
                )
            )

    def read(self) -> list[CollectorRecord]:
        """Every collector's record, by collector id."""
        with self._reads.connect() as conn:
            return [
                CollectorRecord.from_row(row)
                for row in conn.execute(
                    select(collectors).order_by(collectors.c.collector_id)
                ).mappings()
            ]
