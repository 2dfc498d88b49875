"""One logging set-up for every posmon command: readable text or JSON lines, PANs masked.

Every record is formatted first and then passed through `posmon.pan.scrub`, so a card
number that slips into a message, an argument or a traceback leaves the process masked.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

from posmon.pan import scrub

_TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class ScrubbingFormatter(logging.Formatter):
    """Human-readable lines, card numbers masked."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line (ts, level, logger, msg, [exc]), card numbers masked."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return scrub(json.dumps(entry, ensure_ascii=False))


def setup_logging(
    level: str = "INFO", *, json_lines: bool = False, stream: TextIO | None = None
) -> None:
    """Route every logger to one handler on stderr (or `stream`), replacing earlier set-ups."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else ScrubbingFormatter(_TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # paho logs every packet at DEBUG; keep it quiet unless asked for by name.
    logging.getLogger("paho").setLevel(max(root.level, logging.INFO))
    # alembic narrates every plugin and migration step at INFO.
    logging.getLogger("alembic").setLevel(max(root.level, logging.WARNING))
