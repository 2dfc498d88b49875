"""`posmon collector ...`: run the collector, its status, the OpenAPI document, an example
configuration."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from collector.cli.common import ConfigOption, database, load_config
from collector.config import CollectorConfig
from posmon.config import example_toml
from posmon.lifecycle import stop_on_signals

if TYPE_CHECKING:
    from collector.store.rows import CollectorRecord, CounterValue

app = typer.Typer(help="The collector: ingest, correlation, overdue watch.", no_args_is_help=True)


@app.command()
def run(config: ConfigOption = None) -> None:
    """Run the collector until SIGTERM or Ctrl-C."""
    from collector.service import Collector  # noqa: PLC0415 - keeps `--help` fast

    settings = load_config(config)
    stop = stop_on_signals()
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
        "unknown terminals",
        "clock steps",
        "subscriptions",
    ):
        table.add_column(column)
    for record in store.collectors():
        counters = record.counters
        stored = sum(_count(counters, k) for k in counters if k.startswith("stored."))
        lag = counters.get("lag_s")
        table.add_row(
            record.collector_id,
            f"{(now - record.seen_at).total_seconds():.0f} s ago",
            "-" if lag is None else f"{lag:.2f} s",
            str(counters.get("received", 0)),
            str(stored),
            str(counters.get("deadletters", 0)),
            str(counters.get("unknown_terminal", 0)),
            _clock_steps(counters),
            "\n".join(record.subscriptions),
        )
    console.print(table)
    _print_metrics_sink(console, store.collectors())
    counts = Table(title="database")
    counts.add_column("what")
    counts.add_column("rows", justify="right")
    for name, value in store.counts().items():
        counts.add_row(name, str(value))
    console.print(counts)
    store.close()


def _count(counters: Mapping[str, CounterValue], name: str) -> int:
    """A counter's value as a whole number (0 when it is missing)."""
    value = counters.get(name, 0)
    return int(value) if isinstance(value, int | float) else 0


def _clock_steps(counters: Mapping[str, CounterValue]) -> str:
    """Steps of the collector's wall clock since it started (posmon/clockwatch.py)."""
    steps, last = counters.get("clock_steps", 0), counters.get("clock_last_step_s")
    return f"{steps} (last {last:+d} s)" if steps and last is not None else str(steps)


SINK_COUNTERS = ("written", "dropped", "rejected", "failures", "buffered")


def _print_metrics_sink(console: Console, records: Sequence[CollectorRecord]) -> None:
    """Each collector's InfluxDB sink (docs/metrics.md): points written, dropped (the
    buffer full), rejected (a 4xx), failed writes (retried) and points still buffered."""
    sinks = [r for r in records if any(key.startswith("metrics.") for key in r.counters)]
    if not sinks:
        console.print("metrics sink: off (no [metrics] url), or no collector has reported yet")
        return
    table = Table(title="metrics sink (InfluxDB)")
    table.add_column("collector")
    for name in SINK_COUNTERS:
        table.add_column(name, justify="right")
    table.add_column("state")
    for record in sinks:
        values = {name: _count(record.counters, f"metrics.{name}") for name in SINK_COUNTERS}
        retrying = values["failures"] and values["buffered"]
        state = "retrying: InfluxDB not answering" if retrying else "ok"
        table.add_row(record.collector_id, *(str(values[n]) for n in SINK_COUNTERS), state)
    console.print(table)


@app.command("openapi")
def openapi(
    path: Annotated[Path, typer.Argument(help="Where the document goes.")] = Path(
        "docs/openapi.json"
    ),
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; exit 1 when the file is stale.")
    ] = False,
) -> None:
    """Write the REST API's OpenAPI document, or with --check fail when it is stale."""
    from collector.api import openapi as spec  # noqa: PLC0415 - FastAPI only when asked

    if check:
        drift = spec.check(path)
        if not drift.clean:
            state = "stale" if drift.stale else "missing"
            typer.echo(f"{state}: {path}\nRun: posmon collector openapi {path}", err=True)
            raise typer.Exit(1)
        typer.echo(f"{path}: current")
        return
    typer.echo(f"wrote {spec.write(path)}")


EXAMPLE: dict[str, dict[str, Any]] = {
    "collector": {"id": "collector-1"},
    "database": {"url": "sqlite:////var/lib/posmon-collector/posmon.db"},
    "merchants": {"mid": "898100012340001", "mode": "D0", "fee_bp": 60},
}


@app.command("config-example")
def config_example() -> None:
    """Print a commented configuration file to start from."""
    header = (
        "# posmon collector configuration. Every key can be overridden from the environment:\n"
        "# POSMON_<SECTION>__<KEY>, e.g. POSMON_DATABASE__URL=postgresql+psycopg://...\n"
    )
    typer.echo(header + example_toml(CollectorConfig, EXAMPLE), nl=False)


BeforeOption = Annotated[
    str | None,
    typer.Option(
        "--before",
        help="Every family's cutoff: YYYY-MM-DD (midnight UTC) or an ISO time with an offset. "
        "Without it, the ages the configuration's retention section gives.",
    ),
]


def _cutoffs(settings: CollectorConfig, before: str | None) -> Any:
    from collector.store.retention import Cutoffs  # noqa: PLC0415

    if before is None:
        r = settings.retention
        return Cutoffs.of_ages(
            datetime.now(UTC),
            r.statuses_days,
            r.deadletters_days,
            r.transactions_days,
            r.closed_days,
        )
    try:
        moment = datetime.fromisoformat(before)
    except ValueError:
        message = f"{before!r} is not a date or an ISO time"
        raise typer.BadParameter(message, param_hint="--before") from None
    if moment.tzinfo is None:
        if len(before) > 10:
            raise typer.BadParameter("a time needs a UTC offset", param_hint="--before")
        moment = moment.replace(tzinfo=UTC)
    return Cutoffs.before(moment)


def _print_rows(title: str, rows: Mapping[str, int]) -> None:
    table = Table(title=title)
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, count in sorted(rows.items()):
        table.add_row(name, str(count))
    table.add_row("all", str(sum(rows.values())))
    Console().print(table)


@app.command()
def archive(
    out: Annotated[Path, typer.Option("--out", help="Folder for the archive (made if missing).")],
    before: BeforeOption = None,
    config: ConfigOption = None,
) -> None:
    """Write what retention would remove to OUT (gzip JSON lines per table); remove nothing."""
    from collector.store.retention import Archive, Retention  # noqa: PLC0415

    settings = load_config(config)
    with database(config) as store, Archive(out) as folder:
        report = Retention(store.engine, batch_rows=settings.retention.batch_rows).run(
            _cutoffs(settings, before), folder, remove=False
        )
    _print_rows(f"archived to {out}", report.rows)


@app.command()
def retention(
    before: BeforeOption = None,
    archive_to: Annotated[
        Path | None,
        typer.Option("--archive", help="Write what is removed to this folder first."),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Remove old rows now, in batches, by the configured ages or --before; open cases
    and open alerts keep what they need."""
    from collector.store.retention import Archive, Retention  # noqa: PLC0415

    settings = load_config(config)
    r = settings.retention
    cutoffs = _cutoffs(settings, before)
    with database(config) as store:
        worker = Retention(store.engine, batch_rows=r.batch_rows, pause_s=r.pause_s)
        if archive_to is None:
            report = worker.run(cutoffs)
        else:
            with Archive(archive_to) as folder:
                report = worker.run(cutoffs, folder)
    _print_rows("removed", report.rows)
    typer.echo(
        f"{report.batches} batches in {report.seconds:.1f} s, "
        f"longest {report.longest_batch_s * 1000:.0f} ms"
    )


@app.command()
def restore(
    folder: Annotated[Path, typer.Argument(help="An archive folder (from archive or retention).")],
    config: ConfigOption = None,
) -> None:
    """Put an archive's rows back, with their ids (rows already there are refused)."""
    from sqlalchemy.exc import IntegrityError  # noqa: PLC0415

    from collector.store.retention import restore as restore_rows  # noqa: PLC0415

    if not folder.is_dir():
        raise typer.BadParameter(f"{folder} is not a folder", param_hint="FOLDER")
    settings = load_config(config)
    with database(config) as store:
        try:
            rows = restore_rows(store.engine, folder, batch_rows=settings.retention.batch_rows)
        except IntegrityError as exc:
            typer.echo(f"error: a row of the archive is already stored ({exc.orig})", err=True)
            raise typer.Exit(1) from None
    _print_rows(f"restored from {folder}", rows)
