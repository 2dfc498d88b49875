"""`posmon collector ...` and `posmon settlement ...`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from collector.config import CollectorConfig
from posmon.cli import load_config_or_exit, stop_on_signals
from posmon.config import example_toml

app = typer.Typer(help="The collector: ingest, correlation, overdue watch.", no_args_is_help=True)

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="Collector TOML file.")]


def load_config(path: Path | None) -> CollectorConfig:
    """Load the configuration or exit 2 naming the file and key."""
    return load_config_or_exit(CollectorConfig, path)


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


alerts_app = typer.Typer(help="Alerts: list, show, acknowledge, silence.", no_args_is_help=True)

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """'90s', '30m', '2h', '1d' -> a timedelta; anything else is a usage error."""
    value, unit = text[:-1], text[-1:].lower()
    if unit not in _DURATION_UNITS or not value.isdigit() or int(value) == 0:
        raise typer.BadParameter(f"{text!r}: give a number and s, m, h or d, e.g. 2h")
    return timedelta(seconds=int(value) * _DURATION_UNITS[unit])


@contextlib.contextmanager
def _database(config: Path | None) -> Iterator[Any]:
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


@contextlib.contextmanager
def _alert_store(config: Path | None) -> Iterator[Any]:
    from collector.alertstore import AlertStore  # noqa: PLC0415 - keeps `--help` fast

    with _database(config) as store:
        yield AlertStore(store.engine, store.collector_id, [])


def _console() -> Console:
    """A terminal's own width; piped output (a log, grep) gets wide lines, not folded ones."""
    console = Console()
    return console if console.is_terminal else Console(width=200)


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "-"


@alerts_app.command("list")
def list_alerts(
    config: ConfigOption = None,
    status: Annotated[
        str,
        typer.Option(help="open (firing or acknowledged), firing, acknowledged, resolved, all."),
    ] = "open",
    alert_type: Annotated[
        str | None, typer.Option("--type", help="e.g. SETTLEMENT_FAILED.")
    ] = None,
    tid: Annotated[str | None, typer.Option(help="Terminal id.")] = None,
    bank: Annotated[str | None, typer.Option(help="Bank code.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON alert per line.")] = False,
) -> None:
    """List alerts, newest first."""
    from collector.alertstore import alert_event  # noqa: PLC0415

    if status not in ("open", "firing", "acknowledged", "resolved", "all"):
        raise typer.BadParameter(f"unknown status {status!r}", param_hint="--status")
    with _alert_store(config) as store:
        rows = store.find(
            status=None if status == "all" else status,
            alert_type=alert_type,
            tid=tid,
            bank_code=bank,
            limit=limit,
        )
    if as_json:
        for row in rows:
            typer.echo(alert_event(row).to_json().decode())
        return
    table = Table(title=f"alerts ({status})")
    for column in ("alert", "type", "severity", "status", "cause", "since"):
        table.add_column(column, no_wrap=True)
    table.add_column("summary", overflow="fold")
    for row in rows:
        status_text = row["status"] + (" (muted)" if row["silence_id"] else "")
        table.add_row(
            row["alert_id"],
            row["type"],
            row["severity"],
            status_text,
            row["cause"],
            _when(row["started_at"]),
            row["summary"],
        )
    _console().print(table)
    if not rows:
        typer.echo("no alerts")


@alerts_app.command("show")
def show_alert(
    alert_id: Annotated[str, typer.Argument(help="The alert's id.")],
    config: ConfigOption = None,
) -> None:
    """One alert: what, why (the evidence), and its history."""
    import json  # noqa: PLC0415

    from collector.alertstore import alert_event  # noqa: PLC0415

    with _alert_store(config) as store:
        row = store.get(alert_id)
        if row is None:
            typer.echo(f"no alert {alert_id}", err=True)
            raise typer.Exit(1)
        history = store.history(alert_id)
    event = alert_event(row)
    typer.echo(json.dumps(json.loads(event.to_json()), indent=2, ensure_ascii=False))
    typer.echo("history:")
    for item in history:
        note = f": {item['note']}" if item["note"] else ""
        typer.echo(f"  {_when(item['at'])} {item['event']} by {item['actor']}{note}")


@alerts_app.command("ack")
def ack_alert(
    alert_ids: Annotated[list[str], typer.Argument(help="One or more alert ids.")],
    by: Annotated[str, typer.Option("--by", help="Who acknowledges.")],
    note: Annotated[str, typer.Option(help="Why, or what is being done.")] = "",
    config: ConfigOption = None,
) -> None:
    """Acknowledge firing alerts: someone is on it, so they are not notified again."""
    from collector.alertstore import AlertError  # noqa: PLC0415

    failed = False
    with _alert_store(config) as store:
        for alert_id in alert_ids:
            try:
                row = store.acknowledge(alert_id, by, datetime.now(UTC), note)
            except AlertError as exc:
                typer.echo(exc.reason, err=True)
                failed = True
                continue
            typer.echo(f"{alert_id} acknowledged by {by}: {row['summary']}")
    if failed:
        raise typer.Exit(1)


@alerts_app.command("silence")
def silence_alerts(
    by: Annotated[str, typer.Option("--by", help="Who silences.")],
    reason: Annotated[str, typer.Option(help="Shown with every muted alert.")],
    duration: Annotated[
        str | None, typer.Option("--for", help="From now, e.g. 30m, 2h, 1d.")
    ] = None,
    start: Annotated[
        datetime | None, typer.Option(help="Start (ISO 8601 with offset); default now.")
    ] = None,
    end: Annotated[datetime | None, typer.Option(help="End (ISO 8601 with offset).")] = None,
    alert_type: Annotated[str | None, typer.Option("--type", help="Alert type.")] = None,
    bank: Annotated[str | None, typer.Option(help="Bank code.")] = None,
    mid: Annotated[str | None, typer.Option(help="Merchant id.")] = None,
    tid: Annotated[str | None, typer.Option(help="Terminal id.")] = None,
    maintenance: Annotated[
        bool, typer.Option(help="A declared maintenance window: also evidence of BANK_SYSTEM.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Mute notification of matching alerts for a while (they are still recorded)."""
    from collector.alertstore import AlertError  # noqa: PLC0415

    now = datetime.now(UTC)
    begin = start or now
    for name, value in (("--start", start), ("--end", end)):
        if value is not None and value.tzinfo is None:
            raise typer.BadParameter("give the UTC offset, e.g. +08:00", param_hint=name)
    if (duration is None) == (end is None):
        raise typer.BadParameter("give either --for or --end", param_hint="--for")
    finish = end if end is not None else begin + parse_duration(duration or "")
    with _alert_store(config) as store:
        try:
            silence_id = store.add_silence(
                starts_at=begin,
                ends_at=finish,
                reason=reason,
                created_by=by,
                now=now,
                alert_type=alert_type,
                bank_code=bank,
                mid=mid,
                tid=tid,
                maintenance=maintenance,
            )
        except AlertError as exc:
            typer.echo(exc.reason, err=True)
            raise typer.Exit(2) from exc
    typer.echo(f"silence {silence_id}: {_when(begin)} to {_when(finish)}")


@alerts_app.command("silences")
def list_silences(
    config: ConfigOption = None,
    everything: Annotated[bool, typer.Option("--all", help="Include those that are over.")] = False,
) -> None:
    """Silences and maintenance windows not yet over (or all)."""
    with _alert_store(config) as store:
        rows = store.silences(None if everything else datetime.now(UTC))
    table = Table(title="silences")
    for column in ("silence", "matches", "from", "to", "maintenance", "by", "reason"):
        table.add_column(column, overflow="fold")
    for row in rows:
        matches = ", ".join(
            f"{key}={row[key]}" for key in ("type", "bank_code", "mid", "tid") if row[key]
        )
        table.add_row(
            row["silence_id"],
            matches,
            _when(row["starts_at"]),
            _when(row["ends_at"]),
            "yes" if row["maintenance"] else "",
            row["created_by"],
            row["reason"],
        )
    _console().print(table)


cases_app = typer.Typer(
    help="Re-remittance (补划款) cases: list, show, advance, evidence.", no_args_is_help=True
)


@contextlib.contextmanager
def _case_stores(config: Path | None) -> Iterator[tuple[Any, Any]]:
    from collector.alertstore import AlertStore  # noqa: PLC0415 - keeps `--help` fast
    from collector.casestore import CaseStore  # noqa: PLC0415

    with _database(config) as store:
        yield (
            CaseStore(store.engine, reads=store.reads),
            AlertStore(store.engine, store.collector_id, [], reads=store.reads),
        )


@cases_app.command("list")
def list_cases(
    config: ConfigOption = None,
    state: Annotated[
        str, typer.Option(help="open (still being worked), a state such as SUBMITTED, or all.")
    ] = "open",
    tid: Annotated[str | None, typer.Option(help="Terminal id.")] = None,
    mid: Annotated[str | None, typer.Option(help="Merchant id.")] = None,
    cause: Annotated[str | None, typer.Option(help="e.g. ACCOUNT_INFO.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000)] = 50,
) -> None:
    """List cases, newest first."""
    with _case_stores(config) as (cases, _alerts):
        rows = cases.find(
            state=None if state == "all" else state, tid=tid, mid=mid, cause=cause, limit=limit
        )
    table = Table(title=f"cases ({state})")
    for column in ("case", "state", "since", "cause", "TID", "RRN", "amount", "remedy"):
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(
            row["case_id"],
            row["state"],
            _when(row["state_since"]),
            row["cause"],
            row["tid"],
            row["rrn"],
            _money(row["amount"], row["currency"]),
            row["remedy"] or "-",
        )
    _console().print(table)
    if not rows:
        typer.echo("no cases")


def _money(amount: int, currency: str) -> str:
    whole, cents = divmod(abs(amount), 100)
    return f"{'-' if amount < 0 else ''}{whole}.{cents:02d} {currency}"


@cases_app.command("show")
def show_case(
    case_id: Annotated[str, typer.Argument(help="The case's id.")],
    config: ConfigOption = None,
) -> None:
    """One case and its audit log."""
    from collector.cases import TRANSITIONS, CaseState  # noqa: PLC0415

    with _case_stores(config) as (cases, _alerts):
        case = cases.get(case_id)
        if case is None:
            typer.echo(f"no case {case_id}", err=True)
            raise typer.Exit(1)
        events = cases.events(case_id)
    for key, value in case.items():
        shown = value.isoformat(timespec="seconds") if isinstance(value, datetime) else value
        typer.echo(f"{key:26} {shown if shown is not None else '-'}")
    allowed = sorted(state.value for state in TRANSITIONS[CaseState(case["state"])])
    typer.echo(f"{'next':26} {', '.join(allowed) or '(none: the case is over)'}")
    typer.echo("audit log:")
    for item in events:
        note = f": {item['note']}" if item["note"] else ""
        typer.echo(
            f"  {_when(item['at'])} {item['from_state'] or '-'} -> {item['to_state']} "
            f"by {item['actor']}{note}"
        )


@cases_app.command("advance")
def advance_case(
    case_id: Annotated[str, typer.Argument(help="The case's id.")],
    to: Annotated[str, typer.Option("--to", help="The next state, e.g. VERIFYING, SUBMITTED.")],
    by: Annotated[str, typer.Option("--by", help="Who moves it.")],
    note: Annotated[
        str, typer.Option(help="Why; the bank's reason for REJECTED (required there).")
    ] = "",
    account: Annotated[
        str | None,
        typer.Option(help="Corrected settlement account; kept masked (last 4 digits)."),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Move a case to its next state; the workflow refuses moves it does not allow."""
    from collector.cases import CaseError, CaseState  # noqa: PLC0415

    try:
        target = CaseState(to.upper())
    except ValueError as exc:
        known = ", ".join(state.value for state in CaseState)
        raise typer.BadParameter(f"{to!r} is no case state ({known})", param_hint="--to") from exc
    with _case_stores(config) as (cases, _alerts):
        try:
            case = cases.advance(
                case_id, target, actor=by, now=datetime.now(UTC), note=note, account=account
            )
        except CaseError as exc:
            typer.echo(exc.reason, err=True)
            raise typer.Exit(1) from exc
    typer.echo(f"{case_id}: {case['state']}")


@cases_app.command("evidence")
def case_evidence(
    case_id: Annotated[str, typer.Argument(help="The case's id.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", file_okay=False, help="Folder to write into.")
    ] = Path("."),
    config: ConfigOption = None,
) -> None:
    """Write the case's evidence package for the bank: CASE.json and CASE.pdf."""
    from collector.evidence import gather, write_json, write_pdf  # noqa: PLC0415

    with _case_stores(config) as (cases, alerts):
        case = cases.get(case_id)
        if case is None:
            typer.echo(f"no case {case_id}", err=True)
            raise typer.Exit(1)
        data = gather(cases, alerts, case, datetime.now(UTC))
    out.mkdir(parents=True, exist_ok=True)
    written = [write_json(data, out / f"{case_id}.json"), write_pdf(data, out / f"{case_id}.pdf")]
    for path in written:
        typer.echo(str(path))


tokens_app = typer.Typer(
    help="Bearer tokens of the REST API: viewer reads, operator acts, admin manages tokens.",
    no_args_is_help=True,
)


@contextlib.contextmanager
def _token_store(config: Path | None) -> Iterator[Any]:
    from collector.tokens import TokenStore  # noqa: PLC0415 - keeps `--help` fast

    with _database(config) as store:
        yield TokenStore(store.engine, reads=store.reads)


@tokens_app.command("create")
def create_token(
    name: Annotated[
        str, typer.Option("--name", help="Who uses it: recorded as the actor of its actions.")
    ],
    role: Annotated[str, typer.Option("--role", help="viewer, operator or admin.")],
    by: Annotated[str, typer.Option("--by", help="Who makes it (recorded).")] = "cli",
    config: ConfigOption = None,
) -> None:
    """Make a token and print it: the only time it is shown (only its hash is stored)."""
    import re  # noqa: PLC0415

    from collector.tokens import NAME_PATTERN, Role, TokenError  # noqa: PLC0415

    try:
        wanted = Role(role.lower())
    except ValueError as exc:
        raise typer.BadParameter(
            f"{role!r}: one of viewer, operator, admin", param_hint="--role"
        ) from exc
    if not re.match(NAME_PATTERN, name):
        raise typer.BadParameter(
            "letters, digits and . _ @ - (up to 64), starting with a letter or digit",
            param_hint="--name",
        )
    with _token_store(config) as tokens:
        try:
            token = tokens.create(name, wanted, created_by=by, now=datetime.now(UTC))
        except TokenError as exc:
            typer.echo(exc.reason, err=True)
            raise typer.Exit(1) from exc
    typer.echo(f"{name} ({wanted}): shown once, keep it safe:", err=True)
    typer.echo(token)


@tokens_app.command("list")
def list_tokens(
    config: ConfigOption = None,
    everything: Annotated[bool, typer.Option("--all", help="Include revoked tokens.")] = False,
) -> None:
    """The tokens by name and role (never the tokens themselves)."""
    with _token_store(config) as tokens:
        rows = tokens.tokens(revoked=everything)
    table = Table(title="API tokens")
    for column in ("name", "role", "created", "by", "revoked"):
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(
            row["name"],
            row["role"],
            _when(row["created_at"]),
            row["created_by"],
            _when(row["revoked_at"]) if row["revoked_at"] else "",
        )
    _console().print(table)
    if not rows:
        typer.echo("no tokens")


@tokens_app.command("revoke")
def revoke_token(
    name: Annotated[str, typer.Argument(help="The token's name.")],
    config: ConfigOption = None,
) -> None:
    """Revoke a token: it stops working at once."""
    from collector.tokens import TokenError  # noqa: PLC0415

    with _token_store(config) as tokens:
        try:
            tokens.revoke(name, datetime.now(UTC))
        except TokenError as exc:
            typer.echo(exc.reason, err=True)
            raise typer.Exit(1) from exc
    typer.echo(f"{name}: revoked")
