"""The agent's durable outbox: every event is committed here before its frame is ACKed.

SQLite in WAL mode, one connection guarded by a lock (serial readers write, the publisher
reads and deletes). Events leave only after the broker's PUBACK, in insertion order, which
is the order per terminal.

When full, the oldest event of the lowest priority goes first: status and heartbeats,
then dead letters. Transactions and batches are never dropped: with only those left,
`put` raises `OutboxFull` and the reader stops ACKing, so the terminal keeps them.

Durability: with `fsync="full"` (the default) a commit reaches the disk before `put`
returns, so an ACKed frame survives power loss; with `"normal"` it survives a kill of the
agent (the WAL is in the OS cache) but not of the machine.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    priority INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_priority ON events (priority, id);
CREATE TABLE IF NOT EXISTS last_frame (
    tid TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    fingerprint BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


class Priority(IntEnum):
    """Which events give way when the outbox is full (lowest first)."""

    STATUS = 0
    DEADLETTER = 1
    KEEP = 2  # transactions and batches: never dropped


class OutboxFull(RuntimeError):
    """No room for an event that must not be dropped; the frame must not be ACKed."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored event, ready to publish."""

    id: int
    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class LastFrame:
    """The last frame accepted from a terminal: lets a restarted agent spot a resend."""

    tid: str
    seq: int
    fingerprint: bytes


class Outbox:
    """A bounded, ordered, crash-safe queue of (topic, payload) on SQLite."""

    def __init__(self, path: Path, *, max_events: int, fsync: str = "full") -> None:
        self.path = path
        self.max_events = max_events
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._synchronous = "FULL" if fsync == "full" else "NORMAL"
        self._db.execute(f"PRAGMA synchronous={self._synchronous}")
        self._db.execute("PRAGMA busy_timeout=5000")
        # A queue read from its head needs little cache; the default 2 MB is a twentieth
        # of the agent's memory budget.
        self._db.execute("PRAGMA cache_size=-256")
        self._db.executescript(_SCHEMA)
        (self._size,) = self._db.execute("SELECT count(*) FROM events").fetchone()

    def __len__(self) -> int:
        return int(self._size)

    def put(
        self,
        topic: str,
        payload: bytes,
        priority: Priority,
        last_frame: LastFrame | None = None,
    ) -> bool:
        """Commit one event; False if it was itself dropped for room (status only).

        Raises `OutboxFull` for a KEEP event when nothing droppable is left.
        """
        with self._lock:
            try:
                with self._transaction():
                    stored = self._make_room(priority)
                    if stored:
                        self._db.execute(
                            "INSERT INTO events (priority, topic, payload, created) "
                            "VALUES (?,?,?,?)",
                            (int(priority), topic, payload, time.time()),
                        )
                    if last_frame is not None:
                        self._db.execute(
                            "INSERT INTO last_frame (tid, seq, fingerprint) VALUES (?,?,?) "
                            "ON CONFLICT (tid) DO UPDATE SET seq=excluded.seq, "
                            "fingerprint=excluded.fingerprint",
                            (last_frame.tid, last_frame.seq, last_frame.fingerprint),
                        )
            except OutboxFull:
                self._bump("refused_keep")  # in its own (autocommit) statement
                raise
            if stored:
                self._size += 1
            return stored

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error. SQLite itself rolls the
        transaction back when a write finds the disk full (SQLITE_FULL); a ROLLBACK after
        that would fail again, hiding the real error behind `cannot rollback - no
        transaction is active`, so it is sent only while a transaction is open."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _make_room(self, priority: Priority) -> bool:
        if self._size < self.max_events:
            return True
        victim = self._db.execute(
            "SELECT id, priority FROM events WHERE priority < ? ORDER BY priority, id LIMIT 1",
            (min(int(priority) + 1, int(Priority.KEEP)),),
        ).fetchone()
        if victim is not None:
            self._db.execute("DELETE FROM events WHERE id = ?", (victim[0],))
            self._size -= 1
            dropped = Priority(victim[1]).name.lower()
            self._bump(f"dropped_{dropped}")
            logger.warning("outbox full (%d): dropped the oldest %s event", self._size, dropped)
            return True
        if priority is Priority.KEEP:
            raise OutboxFull(f"outbox full ({self._size} events it must keep)")
        self._bump(f"dropped_{priority.name.lower()}")
        logger.warning(
            "outbox full of transactions and batches: dropped a new %s event", priority.name.lower()
        )
        return False

    def _bump(self, name: str) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, 1) "
            "ON CONFLICT (name) DO UPDATE SET value = value + 1",
            (name,),
        )

    def peek(self, after_id: int, limit: int) -> list[Entry]:
        """Up to `limit` events with id above `after_id`, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload FROM events WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [Entry(row[0], row[1], bytes(row[2])) for row in rows]

    def remove(self, ids: list[int]) -> None:
        """Delete published events (the broker has acknowledged them)."""
        if not ids:
            return
        with self._lock:
            # A delete need not reach the disk at once (a lost one only repeats an event
            # after a crash); the next full commit of the WAL carries it.
            self._db.execute("PRAGMA synchronous=NORMAL")
            removed = 0
            try:
                with self._transaction():
                    for start in range(0, len(ids), 500):
                        chunk = ids[start : start + 500]
                        marks = ",".join("?" * len(chunk))
                        delete = f"DELETE FROM events WHERE id IN ({marks})"  # noqa: S608 - only placeholders
                        cursor = self._db.execute(delete, chunk)
                        removed += cursor.rowcount
            finally:
                self._db.execute(f"PRAGMA synchronous={self._synchronous}")
            self._size -= removed

    def last_frames(self) -> list[LastFrame]:
        """The last accepted frame of every terminal seen, to prime the codecs at start."""
        with self._lock:
            rows = self._db.execute("SELECT tid, seq, fingerprint FROM last_frame").fetchall()
        return [LastFrame(row[0], row[1], bytes(row[2])) for row in rows]

    def counters(self) -> dict[str, int]:
        """Drops and refusals since the outbox was created, plus its current size."""
        with self._lock:
            rows = self._db.execute("SELECT name, value FROM counters").fetchall()
        return {"size": self._size, **{name: value for name, value in rows}}

    def close(self) -> None:
        with self._lock:
            self._db.close()
