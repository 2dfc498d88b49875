"""`posmon alerts ...`: list, show, acknowledge and silence alerts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from collector.cli.common import ConfigOption, console, database, parse_duration, when

if TYPE_CHECKING:
    from collector.alerts import AlertStore

alerts_app = typer.Typer(help="Alerts: list, show, acknowledge, silence.", no_args_is_help=True)


@contextlib.contextmanager
def _alert_store(config: Path | None) -> Iterator[AlertStore]:
    from collector.alerts import AlertStore  # noqa: PLC0415 - keeps `--help` fast

    with database(config) as store:
        yield AlertStore(store.engine, store.collector_id, [])


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
    from collector.alerts import alert_event  # noqa: PLC0415

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
        status_text = row.status + (" (muted)" if row.silence_id else "")
        table.add_row(
            row.alert_id,
            row.type.value,
            row.severity.value,
            status_text,
            row.cause.value,
            when(row.started_at),
            row.summary,
        )
    console().print(table)
    if not rows:
        typer.echo("no alerts")


@alerts_app.command("show")
def show_alert(
    alert_id: Annotated[str, typer.Argument(help="The alert's id.")],
    config: ConfigOption = None,
) -> None:
    """One alert: what, why (the evidence), and its history."""
    import json  # noqa: PLC0415

    from collector.alerts import alert_event  # noqa: PLC0415

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
        note = f": {item.note}" if item.note else ""
        typer.echo(f"  {when(item.at)} {item.event} by {item.actor}{note}")


@alerts_app.command("ack")
def ack_alert(
    alert_ids: Annotated[list[str], typer.Argument(help="One or more alert ids.")],
    by: Annotated[str, typer.Option("--by", help="Who acknowledges.")],
    note: Annotated[str, typer.Option(help="Why, or what is being done.")] = "",
    config: ConfigOption = None,
) -> None:
    """Acknowledge firing alerts: someone is on it, so they are not notified again."""
    from collector.alerts import AlertError  # noqa: PLC0415

    failed = False
    with _alert_store(config) as store:
        for alert_id in alert_ids:
            try:
                row = store.acknowledge(alert_id, by, datetime.now(UTC), note)
            except AlertError as exc:
                typer.echo(exc.reason, err=True)
                failed = True
                continue
            typer.echo(f"{alert_id} acknowledged by {by}: {row.summary}")
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
    from collector.alerts import AlertError  # noqa: PLC0415

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
    typer.echo(f"silence {silence_id}: {when(begin)} to {when(finish)}")


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
        matchers = (
            ("type", row.type),
            ("bank_code", row.bank_code),
            ("mid", row.mid),
            ("tid", row.tid),
        )
        matches = ", ".join(f"{key}={value}" for key, value in matchers if value)
        table.add_row(
            row.silence_id,
            matches,
            when(row.starts_at),
            when(row.ends_at),
            "yes" if row.maintenance else "",
            row.created_by,
            row.reason,
        )
    console().print(table)
