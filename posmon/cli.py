"""The `posmon` command. Each role adds its own sub-commands; only working ones are listed."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from posmon import __version__, schemas
from posmon.config import ConfigError, Settings, load
from posmon.logs import setup_logging

app = typer.Typer(
    name="posmon",
    help="Monitoring for card-payment POS terminals: settlement failures caught as they happen.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
schema_app = typer.Typer(help="JSON Schemas of the wire messages.", no_args_is_help=True)
app.add_typer(schema_app, name="schema")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"posmon {__version__}")
        raise typer.Exit


@app.callback()
def main_options(
    log_level: Annotated[
        str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.", envvar="POSMON_LOG_LEVEL")
    ] = "INFO",
    log_json: Annotated[
        bool,
        typer.Option(
            "--log-json", help="Log JSON lines instead of text.", envvar="POSMON_LOG_JSON"
        ),
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Set up logging once for whichever command runs."""
    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise typer.BadParameter(f"unknown level {log_level!r}", param_hint="--log-level")
    setup_logging(log_level, json_lines=log_json)


@schema_app.command("export")
def schema_export(
    directory: Annotated[Path, typer.Argument(help="Folder for the *.schema.json files.")] = Path(
        "docs/schemas"
    ),
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; fail if the folder is stale.")
    ] = False,
) -> None:
    """Write the JSON Schema of every wire message, or check the committed ones are current."""
    if check:
        drift = schemas.check(directory)
        for label, names in (
            ("stale", drift.stale),
            ("missing", drift.missing),
            ("not generated", drift.unexpected),
        ):
            for name in names:
                typer.echo(f"{label}: {directory / name}", err=True)
        if not drift.clean:
            typer.echo(f"Run: posmon schema export {directory}", err=True)
            raise typer.Exit(1)
        typer.echo(f"{directory}: {len(schemas.schema_files())} schemas, all current")
        return
    for path in schemas.export(directory):
        typer.echo(f"wrote {path}")


def load_config_or_exit(model: type[Settings], path: Path | None) -> Settings:
    """Load a role's configuration, or exit 2 with the file (or variable), key and problem."""
    try:
        return load(model, path)
    except ConfigError as exc:
        typer.echo(f"configuration error:\n{exc}", err=True)
        raise typer.Exit(2) from exc


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT (Ctrl-C): how a long-running command is ended."""
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    return stop


def _register_roles(words: list[str]) -> None:
    # Each role's commands live with the role; a role whose extras are not installed
    # (an agent-only box has no collector) simply contributes no commands. Only the role
    # being run is imported: `posmon agent run` must not carry the collector's libraries
    # in its memory.
    import importlib  # noqa: PLC0415

    first = words[0] if words else None
    known = {name for _, _, name in ROLE_COMMANDS} | {"schema"}
    only = first if first in known else None  # else: help or a typo, so list them all
    for module_name, attribute, name in ROLE_COMMANDS:
        if only is not None and name != only:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] in ROLE_PACKAGES:
                raise
            continue
        app.add_typer(getattr(module, attribute), name=name)


ROLE_PACKAGES = ("agent", "collector", "simulators", "dashboards", "posmon")
# (module, Typer attribute, command name) for every role that has commands.
ROLE_COMMANDS: list[tuple[str, str, str]] = [
    ("agent.cli", "app", "agent"),
    ("collector.cli", "app", "collector"),
    ("collector.cli", "settlement_app", "settlement"),
    ("simulators.cli", "app", "simulate"),
]


def main() -> None:
    """Entry point of the `posmon` console script."""
    _register_roles(_command_words(sys.argv[1:]))
    app()


def _command_words(argv: list[str]) -> list[str]:
    """The arguments after the global options (whose values are not command names)."""
    words = list(argv)
    while words and words[0].startswith("-"):
        option = words.pop(0)
        if option in ("--log-level",) and words:
            words.pop(0)
    return words
