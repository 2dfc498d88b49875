"""Following the stored facts: each table read by id from a cursor stored per collector.

The alert engine follows `outcome_log` (this collector's settlement outcomes),
`status_events`, `batches`, `transactions` and `conflicts`. Each new row is handed to the
metrics (`on_fact`) and to the engine's handler for its table. Settlement outcomes come
first, and again whenever the ingest has woken the engine meanwhile: a failure's alert
never waits behind a backlog of status rows. A restart misses nothing: the cursors are
saved, and rows followed again after a crash fire nothing twice (fingerprints).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, TypeVar

from collector.alerts.facts import FactReader
from collector.alerts.rows import BatchRow, ConflictRow, FactRow, OutcomeRow, StatusRow, TxnRow

# A gap in a followed table's ids (a transaction that took an id and has not committed
# yet, on PostgreSQL) is waited for this long before it is taken to be a rollback.
GAP_WAIT_S = 10.0
TAIL_BATCH = 500
# Status, batch and transaction rows are read in smaller batches: a failed settlement
# woken in meanwhile waits for the read of at most 100 of them (between two rows handled,
# the engine looks at settlement outcomes first).
BACKGROUND_BATCH = 100
SAVE_EVERY_S = 1.0


class HasId(Protocol):
    @property
    def id(self) -> int: ...


Row = TypeVar("Row", bound=HasId)
Fact = TypeVar("Fact", bound=FactRow)


@dataclass(slots=True)
class Tail:
    """Reads a table by increasing id without skipping rows that commit out of order."""

    position: int
    seen: set[int] = field(default_factory=set)
    gap_since: float | None = None

    def take(self, rows: Iterable[Row]) -> list[Row]:
        """The rows not seen before; moves `position` over every contiguous id."""
        fresh = [row for row in rows if row.id not in self.seen]
        self.seen.update(row.id for row in fresh)
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

    def rewind(self, state: tuple[int, set[int], float | None], handled: list[Row]) -> None:
        """Back to `state`, then past the rows handled since: the others are read again."""
        self.position, self.seen, self.gap_since = state
        self.take(handled)

    def _advance(self) -> None:
        while self.position + 1 in self.seen:
            self.position += 1
            self.seen.discard(self.position)


class Handlers(Protocol):
    """What takes each followed table's new rows (the engine)."""

    def outcome(self, row: OutcomeRow) -> None: ...
    def status(self, row: StatusRow) -> None: ...
    def batch(self, row: BatchRow) -> None: ...
    def txn(self, row: TxnRow) -> None: ...
    def conflict(self, row: ConflictRow) -> None: ...


class Feed:
    """The followed tables, their cursors, and the order they are read in."""

    def __init__(
        self,
        facts: FactReader,
        handlers: Handlers,
        clock: Callable[[], datetime],
        wake: threading.Event,
        on_fact: Callable[[str, FactRow], None],
    ) -> None:
        self.facts = facts
        self.handlers = handlers
        self.clock = clock
        self.wake = wake  # set by the ingest after each commit
        self.on_fact = on_fact
        self.tails: dict[str, Tail] = {}
        self._unsaved = False
        self._next_save = 0.0

    def start(self) -> None:
        """Load the cursors, or start at the end of each table."""
        positions = self.facts.positions()
        if positions is None:
            positions = self.facts.end_positions()
            self.facts.save_positions(positions, self.clock())
        self.tails = {name: Tail(position) for name, position in positions.items()}

    def follow(self) -> bool:
        """One round over the followed tables; True when a table had a full batch."""
        full = False
        self.outcomes()
        for read in (self._statuses, self._batches, self._txns, self._conflicts):
            self.outcomes_if_woken()
            full = read() == BACKGROUND_BATCH or full
        if self._unsaved and time.monotonic() >= self._next_save:
            self.save_positions()
        return full

    def outcomes(self) -> int:
        return self._read("outcome_log", self.facts.outcome_rows, self.handlers.outcome)

    def outcomes_if_woken(self) -> None:
        """Settlement outcomes stored since the last look, when the ingest has said so."""
        if self.wake.is_set():
            self.wake.clear()
            self.outcomes()

    def save_positions(self) -> None:
        """Store how far each table has been followed.

        At most every `SAVE_EVERY_S` (and on the way out): on SQLite each save is a write
        that queues with the ingest's commits. After a crash, the rows since the last save
        are followed again: an alert still open is not fired twice (its fingerprint).
        """
        positions = {name: tail.position for name, tail in self.tails.items()}
        self.facts.save_positions(positions, self.clock())
        self._unsaved = False
        self._next_save = time.monotonic() + SAVE_EVERY_S

    def stop(self) -> None:
        if self._unsaved:
            self.save_positions()

    def _statuses(self) -> int:
        return self._read(
            "status_events", self.facts.status_rows, self.handlers.status, BACKGROUND_BATCH
        )

    def _batches(self) -> int:
        return self._read("batches", self.facts.batch_rows, self.handlers.batch, BACKGROUND_BATCH)

    def _txns(self) -> int:
        return self._read("transactions", self.facts.txn_rows, self.handlers.txn, BACKGROUND_BATCH)

    def _conflicts(self) -> int:
        return self._read(
            "conflicts", self.facts.conflict_rows, self.handlers.conflict, BACKGROUND_BATCH
        )

    def _read(
        self,
        name: str,
        read: Callable[[int, int], list[Fact]],
        handle: Callable[[Fact], None],
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
                    self.outcomes_if_woken()  # a failure's alert waits for no status row
                self.on_fact(name, row)
                handle(row)
            except Exception:
                # A write that failed (the database gone for a moment): this row and the
                # ones after it are read again at the next turn, not passed over.
                tail.rewind(before, fresh[:index])
                raise
        return len(fresh)
