"""One logging set-up for every posmon command: readable text or JSON lines, PANs masked.

Two guards, so that no logger can get a card number out, posmon's or a library's:
- every record is scrubbed when it is made (`logging.setLogRecordFactory`): its message,
  its arguments, its traceback and stack. This holds for records that a library sends to a
  handler of its own (uvicorn, alembic, SQLAlchemy, paho), not only for posmon's;
- posmon's handler formats the line and scrubs it again as a whole.
Uncaught exceptions, in the main thread or any other, are logged through the same path
instead of being printed by Python.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TextIO

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


def _scrubbed_arg(value: object) -> object:
    # Numbers stay numbers (a `%d` must still format); anything else that shows a card
    # number when printed is replaced by its scrubbed text.
    if isinstance(value, str):
        return scrub(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    text = str(value)
    cleaned = scrub(text)
    return value if cleaned == text else cleaned


def scrub_record(record: logging.LogRecord) -> logging.LogRecord:
    """Mask card numbers in a record's message, arguments, traceback and stack, in place.

    The arguments keep their shape (a tuple stays a tuple of the same length), since some
    formatters unpack them (uvicorn's access log does).
    """
    if isinstance(record.msg, str):
        record.msg = scrub(record.msg)
    elif record.msg is not None and not isinstance(record.msg, int | float):
        record.msg = scrub(str(record.msg))
    if isinstance(record.args, tuple):
        record.args = tuple(_scrubbed_arg(arg) for arg in record.args)
    elif isinstance(record.args, Mapping):
        record.args = {key: _scrubbed_arg(arg) for key, arg in record.args.items()}
    if record.exc_info and not record.exc_text:
        record.exc_text = scrub(_TRACEBACKS.formatException(record.exc_info))
    elif record.exc_text:
        record.exc_text = scrub(record.exc_text)
    if record.stack_info:
        record.stack_info = scrub(record.stack_info)
    return record


_TRACEBACKS = logging.Formatter()
_plain_factory = logging.getLogRecordFactory()


def _scrubbing_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    return scrub_record(_plain_factory(*args, **kwargs))


def _log_uncaught(
    kind: type[BaseException], value: BaseException, tb: TracebackType | None, where: str
) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    logging.getLogger("posmon.uncaught").critical(
        "uncaught exception in %s", where, exc_info=(kind, value, tb)
    )


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None:
        return
    where = f"thread {args.thread.name}" if args.thread is not None else "a thread"
    _log_uncaught(args.exc_type, args.exc_value, args.exc_traceback, where)


def install_guards() -> None:
    """Scrub every log record when it is made, and log uncaught exceptions (idempotent)."""
    if logging.getLogRecordFactory() is not _scrubbing_factory:
        logging.setLogRecordFactory(_scrubbing_factory)
    sys.excepthook = _main_excepthook
    threading.excepthook = _thread_excepthook


def _main_excepthook(
    kind: type[BaseException], value: BaseException, tb: TracebackType | None
) -> None:
    _log_uncaught(kind, value, tb, "the main thread")


def setup_logging(
    level: str = "INFO", *, json_lines: bool = False, stream: TextIO | None = None
) -> None:
    """Route every logger to one handler on stderr (or `stream`), replacing earlier set-ups."""
    install_guards()
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
