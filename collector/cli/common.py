"""What the collector's commands share: the `--config` option, the database they open,
durations as typed, and how tables and times are printed."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from collector.config import CollectorConfig
from posmon.lifecycle import load_config_or_exit

if TYPE_CHECKING:
    from collector.store import Store

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="Collector TOML file.")]


def load_config(path: Path | None) -> CollectorConfig:
    """Load the configuration or exit 2 naming the file and key."""
    return load_config_or_exit(CollectorConfig, path)


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """'90s', '30m', '2h', '1d' -> a timedelta; anything else is a usage error."""
    value, unit = text[:-1], text[-1:].lower()
    if unit not in _DURATION_UNITS or not value.isdigit() or int(value) == 0:
        raise typer.BadParameter(f"{text!r}: give a number and s, m, h or d, e.g. 2h")
    return timedelta(seconds=int(value) * _DURATION_UNITS[unit])


@contextlib.contextmanager
def database(config: Path | None) -> Iterator[Store]:
    """The collector's Store over the configured database, migrated, closed afterwards."""
    from collector.store import Store  # noqa: PLC0415 - keeps `--help` fast
    from collector.terms import SettlementTerms  # noqa: PLC0415

    logging.getLogger("alembic").setLevel(logging.WARNING)
    settings = load_config(config)
    store = Store(
        settings.database.url, SettlementTerms(settings), collector_id=settings.collector.id
    )
    try:
        store.migrate()
        yield store
    finally:
        store.close()


def console() -> Console:
    """A terminal's own width; piped output (a log, grep) gets wide lines, not folded ones."""
    console = Console()
    return console if console.is_terminal else Console(width=200)


def when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "-"
