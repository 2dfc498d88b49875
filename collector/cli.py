"""`posmon collector ...` and `posmon settlement ...`."""

from __future__ import annotations

import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from collector.config import CollectorConfig
from posmon.config import ConfigError, load

app = typer.Typer(help="The collector: ingest, correlation, overdue watch.", no_args_is_help=True)

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="Collector TOML file.")]


def load_config(path: Path | None) -> CollectorConfig:
    """Load the collector configuration or exit 2 naming the file and key."""
    try:
        return load(CollectorConfig, path)
    except ConfigError as exc:
        typer.echo(f"configuration error:\n{exc}", err=True)
        raise typer.Exit(2) from exc


@app.command()
def run(config: ConfigOption = None) -> None:
    """Run the collector until SIGTERM or Ctrl-C."""
    from collector.service import Collector  # noqa: PLC0415 - keeps `--help` fast

    settings = load_config(config)
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    Collector(settings).run(stop)


@app.command()
def status(config: ConfigOption = None) -> None:
    """Show each collector's subscriptions, lag and counts, and what the database holds."""
    from collector.store import Store  # noqa: PLC0415
    from collector.terms import SettlementTerms  # noqa: PLC0415

    settings = load_config(config)
    store = Store(settings.database.url, SettlementTerms(settings))
    store.migrate()
    console = Console()
    now = datetime.now(UTC)
    table = Table(title="collectors")
    for column in (
        "collector",
        "last seen",
        "lag",
        "received",
        "stored",
        "dead letters",
        "subscriptions",
    ):
        table.add_column(column)
    for row in store.collectors():
        counters = row["counters"]
        stored = sum(v for k, v in counters.items() if k.startswith("stored."))
        lag = counters.get("lag_s")
        table.add_row(
            row["collector_id"],
            f"{(now - row['seen_at']).total_seconds():.0f} s ago",
            "-" if lag is None else f"{lag:.2f} s",
            str(counters.get("received", 0)),
            str(stored),
            str(counters.get("deadletters", 0)),
            "\n".join(row["subscriptions"]),
        )
    console.print(table)
    counts = Table(title="database")
    counts.add_column("what")
    counts.add_column("rows", justify="right")
    for name, value in store.counts().items():
        counts.add_row(name, str(value))
    console.print(counts)
    store.close()
