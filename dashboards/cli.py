"""`posmon dashboards`: build the Grafana dashboards' JSON from the modules, or check it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Grafana dashboards as code (grafanalib).", no_args_is_help=True)


@app.command("build")
def build(
    check: Annotated[
        bool,
        typer.Option("--check", help="Write nothing; exit 1 when the JSON is stale."),
    ] = False,
    directory: Annotated[
        Path | None,
        typer.Option(
            "--out", file_okay=False, help="Folder for the JSON; default dashboards/json."
        ),
    ] = None,
) -> None:
    """Write each dashboard's JSON (Fleet overview, Settlement health, Terminal, Cases)
    for Grafana's provisioning, or with --check fail when the committed JSON is stale."""
    from dashboards import build as builder  # noqa: PLC0415 - grafanalib only when asked

    folder = directory or builder.JSON_DIR
    if check:
        drift = builder.check(folder)
        if not drift.clean:
            for what, names in (
                ("stale", drift.stale),
                ("missing", drift.missing),
                ("not generated", drift.unexpected),
            ):
                for name in names:
                    typer.echo(f"{what}: {folder / name}", err=True)
            typer.echo("Run: posmon dashboards build", err=True)
            raise typer.Exit(1)
        typer.echo(f"{folder}: {len(builder.DASHBOARDS)} dashboards, all current")
        return
    for path in builder.write(folder):
        typer.echo(f"wrote {path}")
