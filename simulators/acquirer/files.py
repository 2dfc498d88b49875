"""The acquirer simulator's files: settlement CSVs per virtual day, and the ground truth.

Settlement files follow CONTRACT §2 "Settlement files": a header row naming the
`posmon.settlement/1` fields, one settlement per row, money in integer fen, UTF-8 unless
GBK is asked for. There is one file per settlement day (the local date of `settled_at`),
`settlements-YYYYMMDD.csv`, as acquirers deliver them. A run starts each file it writes
afresh, so a second run does not add to the first's rows.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable
from datetime import tzinfo
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TextIO

from posmon.wire.models import SettlementEvent
from simulators.acquirer.truth import TruthRecord

logger = logging.getLogger(__name__)

ENCODINGS = ("utf-8", "gbk")
MONEY_COLUMNS = ("amount", "fee", "net_amount")


def csv_columns() -> list[str]:
    """The CSV header: every `posmon.settlement/1` field except `schema`, in model order."""
    return [name for name in SettlementEvent.model_fields if name != "schema_"]


class SettlementFiles:
    """Appends settlements to one CSV file per local settlement day under `directory`."""

    def __init__(self, directory: Path, tz: tzinfo, encoding: str = "utf-8") -> None:
        if encoding.lower() not in ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}")
        self.directory = directory
        self.tz = tz
        self.encoding = encoding.lower()
        self.rows = 0
        self._started: set[Path] = set()
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def paths(self) -> list[Path]:
        """The files this run has written, oldest day first."""
        return sorted(self._started)

    def path_for(self, settlement: SettlementEvent) -> Path:
        """`settlements-YYYYMMDD.csv` of the day the settlement was made (local date)."""
        day = settlement.settled_at.astimezone(self.tz).date()
        return self.directory / f"settlements-{day:%Y%m%d}.csv"

    def write(self, settlements: Iterable[SettlementEvent]) -> None:
        """Add each settlement as a row of its day's file."""
        by_path: dict[Path, list[dict[str, Any]]] = {}
        for settlement in settlements:
            row = settlement.model_dump(mode="json", exclude={"schema_"})
            by_path.setdefault(self.path_for(settlement), []).append(row)
        columns = csv_columns()
        for path, rows in by_path.items():
            fresh = path not in self._started
            self._started.add(path)
            # errors="strict": a reason text GBK cannot hold is a bug, not something to hide.
            with path.open("w" if fresh else "a", encoding=self.encoding, newline="") as file:
                writer = csv.DictWriter(file, fieldnames=columns, restval="")
                if fresh:
                    writer.writeheader()
                writer.writerows(
                    {key: "" if value is None else value for key, value in row.items()}
                    for row in rows
                )
            self.rows += len(rows)


def read_settlement_csv(path: Path, encoding: str = "utf-8") -> list[SettlementEvent]:
    """Read a settlement CSV back into validated messages; raises `MessageError` on a bad row."""
    with path.open(encoding=encoding, newline="") as file:
        rows = list(csv.DictReader(file))
    settlements = []
    for row in rows:
        values: dict[str, Any] = {"schema": SettlementEvent.SCHEMA}
        for key, value in row.items():
            if value == "":
                continue
            values[key] = int(value) if key in MONEY_COLUMNS else value
        settlements.append(SettlementEvent.from_json(json.dumps(values)))
    return settlements


class TruthLog:
    """The ground-truth file: JSON lines, UTF-8, started afresh, flushed after each write."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO = path.open("w", encoding="utf-8")

    def write(self, records: Iterable[TruthRecord]) -> None:
        """Append one line per record."""
        wrote = False
        for record in records:
            self._file.write(record.to_json_line() + "\n")
            self.lines += 1
            wrote = True
        if wrote:
            self._file.flush()

    def close(self) -> None:
        """Flush and close the file."""
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def read_truth(path: Path) -> list[dict[str, Any]]:
    """The ground-truth lines of `path`, as dictionaries."""
    with path.open(encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]
