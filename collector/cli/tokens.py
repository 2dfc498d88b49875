"""`posmon tokens ...`: the REST API's bearer tokens (create, list, revoke)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from collector.cli.common import ConfigOption, console, database, when

if TYPE_CHECKING:
    from collector.tokens import TokenStore

tokens_app = typer.Typer(
    help="Bearer tokens of the REST API: viewer reads, operator acts, admin manages tokens.",
    no_args_is_help=True,
)


@contextlib.contextmanager
def _token_store(config: Path | None) -> Iterator[TokenStore]:
    from collector.tokens import TokenStore  # noqa: PLC0415 - keeps `--help` fast

    with database(config) as store:
        yield TokenStore(store.engine, reads=store.reads)


@tokens_app.command("create")
def create_token(
    name: Annotated[
        str, typer.Option("--name", help="Who uses it: recorded as the actor of its actions.")
    ],
    role: Annotated[
        str,
        typer.Option(
            "--role",
            help="viewer, operator or admin; acquirer for an acquirer's settlement feed "
            "(it may post settlements and nothing else).",
        ),
    ],
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
            f"{role!r}: one of {', '.join(Role)}", param_hint="--role"
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
            row.name,
            row.role,
            when(row.created_at),
            row.created_by,
            when(row.revoked_at) if row.revoked_at else "",
        )
    console().print(table)
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
