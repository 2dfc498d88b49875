"""`posmon settlement import`: a settlement file (CSV) into the collector's database."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from collector.cli.common import ConfigOption, load_config

settlement_app = typer.Typer(
    help="Settlement results from the acquirer: import settlement files.", no_args_is_help=True
)


@settlement_app.command(
    "import",
    short_help="Import a settlement file (CSV) into the collector's database.",
    help=(
        "Import a settlement file (CSV, a header row naming posmon.settlement/1 fields) into "
        "the collector's database. Rows already imported are skipped; a bad row is reported "
        "with its line number and the rest imported. Exit status: 0 all imported or already "
        "there, 1 some rows bad, 2 the file or the configuration could not be used."
    ),
)
def import_file(
    file: Annotated[Path, typer.Argument(metavar="FILE.csv", help="CSV file with a header row.")],
    encoding: Annotated[
        str, typer.Option("--encoding", "-e", help="The file's encoding, e.g. gbk.")
    ] = "utf-8",
    config: ConfigOption = None,
    chunk: Annotated[
        int, typer.Option("--chunk", min=1, max=100_000, help="Rows stored per transaction.")
    ] = 5000,
    listed: Annotated[
        int, typer.Option("--show-bad", min=0, help="Bad rows listed (all are counted).")
    ] = 100,
) -> None:
    """`posmon settlement import`: a settlement file into the store, with a summary."""
    # Alembic's INFO lines (plugins, migrations) say nothing an operator importing a file
    # needs; it logs some as soon as it is imported.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from sqlalchemy.exc import SQLAlchemyError  # noqa: PLC0415

    from collector.service import make_clock  # noqa: PLC0415 - keeps `--help` fast
    from collector.settlement_import import (  # noqa: PLC0415
        SettlementFileError,
        import_settlements,
    )
    from collector.store import Store  # noqa: PLC0415
    from collector.terms import SettlementTerms  # noqa: PLC0415

    settings = load_config(config)
    if not file.is_file():
        typer.echo(f"{file}: no such file", err=True)
        raise typer.Exit(2)
    store = Store(
        settings.database.url,
        SettlementTerms(settings),
        collector_id=settings.collector.id,
        clock=make_clock(settings).now,
        skew_days=settings.settlement.skew_days,
    )
    try:
        store.migrate()
        with _file_progress(file) as progress:
            result = import_settlements(
                file, store, encoding=encoding, chunk_size=chunk, listed=listed, progress=progress
            )
    except SettlementFileError as exc:
        typer.echo(f"{file}: {exc}; nothing imported", err=True)
        raise typer.Exit(2) from exc
    except SQLAlchemyError as exc:
        # The driver's own message: SQLAlchemy's would quote the statement and its values.
        typer.echo(
            f"database error: {getattr(exc, 'orig', None) or type(exc).__name__}\n"
            "Chunks stored before it stay stored; importing again skips them.",
            err=True,
        )
        raise typer.Exit(2) from exc
    finally:
        store.close()
    typer.echo(
        f"{file}: {result.rows:,} rows read, {result.imported:,} imported, "
        f"{result.repeats:,} already imported, {result.bad:,} bad "
        f"({result.elapsed_s:.1f} s, {result.rows_per_s:,.0f} rows/s)"
    )
    if result.bad_rows:
        typer.echo("bad rows (not imported):")
        for bad in result.bad_rows:
            typer.echo(f"  line {bad.line}: {bad.reason}\n    {bad.text}")
        if result.bad > len(result.bad_rows):
            typer.echo(f"  ... and {result.bad - len(result.bad_rows):,} more")
    if result.stopped is not None:
        typer.echo(f"{file}: stopped at {result.stopped}", err=True)
        raise typer.Exit(2)
    if result.bad:
        raise typer.Exit(1)


@contextlib.contextmanager
def _file_progress(file: Path) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar by bytes read, on a terminal only (no escape codes in logs)."""
    from rich.progress import (  # noqa: PLC0415
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = Console(stderr=True)
    if not console.is_terminal:
        yield None
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[rows]:,} rows"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(file.name, total=file.stat().st_size, rows=0)
        yield lambda done, rows: bar.update(task, completed=done, rows=rows)
