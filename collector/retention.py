"""The retention worker: every `[retention] every_s`, old rows go (collector/store/retention.py).

Collectors sharing a PostgreSQL database take turns: a run holds a session advisory lock,
and a collector that cannot take it skips its turn, so two never archive or delete the
same rows. A run that fails (the database away) is logged and tried again at the next
turn; what it had already removed stays removed, what it had not stays.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from collector.config import RetentionSection
from collector.store.retention import Archive, Cutoffs, Retention, RetentionReport

logger = logging.getLogger(__name__)

# pg_try_advisory_lock's key for retention runs ("posmon retention", as a number).
ADVISORY_KEY = 0x706F736D6F6E7274


class RetentionWorker:
    """Runs retention on a timer, one collector at a time."""

    def __init__(
        self, writes: Engine, settings: RetentionSection, clock: Callable[[], datetime]
    ) -> None:
        self.writes = writes
        self.settings = settings
        self.clock = clock
        self.retention = Retention(writes, batch_rows=settings.batch_rows, pause_s=settings.pause_s)
        self.runs = 0
        self.removed = 0

    def cutoffs(self) -> Cutoffs:
        s = self.settings
        return Cutoffs.of_ages(
            self.clock(), s.statuses_days, s.deadletters_days, s.transactions_days, s.closed_days
        )

    def run_once(self, stop: Callable[[], bool] = lambda: False) -> RetentionReport | None:
        """One run now; None when another collector holds the turn."""
        with self.writes.connect() as lock:
            postgres = self.writes.dialect.name == "postgresql"
            if postgres:
                taken = lock.execute(select(func.pg_try_advisory_lock(ADVISORY_KEY))).scalar()
                lock.commit()  # the lock is the session's: no transaction held open
                if not taken:
                    return None
            try:
                archive = None
                if self.settings.archive_dir is not None:
                    stamp = self.clock().strftime("%Y%m%dT%H%M%SZ")
                    archive = Archive(self.settings.archive_dir / stamp)
                try:
                    report = self.retention.run(self.cutoffs(), archive, stop=stop)
                finally:
                    if archive is not None:
                        archive.close()
            finally:
                if postgres:
                    lock.execute(select(func.pg_advisory_unlock(ADVISORY_KEY)))
                    lock.commit()
        self.runs += 1
        self.removed += sum(report.rows.values())
        if report.rows:
            logger.info(
                "retention: removed %s in %d batches, %.1f s (longest batch %.0f ms)",
                ", ".join(f"{n} {table}" for table, n in sorted(report.rows.items())),
                report.batches,
                report.seconds,
                report.longest_batch_s * 1000,
            )
        return report

    def run(self, stop: threading.Event) -> None:
        """A run every `every_s` (the first one `every_s` after the start), until stopped."""
        while not stop.wait(self.settings.every_s):
            try:
                self.run_once(stop.is_set)
            except SQLAlchemyError as exc:
                logger.warning("retention: the run failed (%s); again in %g s",
                               str(exc).split("\n")[0], self.settings.every_s)  # fmt: skip
