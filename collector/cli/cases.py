"""`posmon cases ...`: list, show and move re-remittance cases; their evidence for the bank."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from collector.cli.common import ConfigOption, console, database, when
from posmon.money import format_money

if TYPE_CHECKING:
    from collector.alerts import AlertStore
    from collector.casestore import CaseStore

cases_app = typer.Typer(
    help="Re-remittance (补划款) cases: list, show, advance, evidence.", no_args_is_help=True
)


@contextlib.contextmanager
def _case_stores(config: Path | None) -> Iterator[tuple[CaseStore, AlertStore]]:
    from collector.alerts import AlertStore  # noqa: PLC0415 - keeps `--help` fast
    from collector.casestore import CaseStore  # noqa: PLC0415

    with database(config) as store:
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
        rows = cases.search(
            state=None if state == "all" else state, tid=tid, mid=mid, cause=cause, limit=limit
        )
    table = Table(title=f"cases ({state})")
    for column in ("case", "state", "since", "cause", "TID", "RRN", "amount", "remedy"):
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(
            row.case_id,
            row.state.value,
            when(row.state_since),
            row.cause.value,
            row.tid,
            row.rrn,
            format_money(row.amount, row.currency),
            row.remedy or "-",
        )
    console().print(table)
    if not rows:
        typer.echo("no cases")


@cases_app.command("show")
def show_case(
    case_id: Annotated[str, typer.Argument(help="The case's id.")],
    config: ConfigOption = None,
) -> None:
    """One case and its audit log."""
    from collector.cases import TRANSITIONS  # noqa: PLC0415

    with _case_stores(config) as (cases, _alerts):
        case = cases.get(case_id)
        if case is None:
            typer.echo(f"no case {case_id}", err=True)
            raise typer.Exit(1)
        events = cases.audit_log(case_id)
    for key, value in case.columns().items():
        shown = value.isoformat(timespec="seconds") if isinstance(value, datetime) else value
        typer.echo(f"{key:26} {shown if shown is not None else '-'}")
    allowed = sorted(state.value for state in TRANSITIONS[case.state])
    typer.echo(f"{'next':26} {', '.join(allowed) or '(none: the case is over)'}")
    typer.echo("audit log:")
    for item in events:
        note = f": {item.note}" if item.note else ""
        before = item.from_state.value if item.from_state else "-"
        typer.echo(f"  {when(item.at)} {before} -> {item.to_state.value} by {item.actor}{note}")


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
    typer.echo(f"{case_id}: {case.state.value}")


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
