"""The `posmon` command. Each role adds its own sub-commands; only working ones are listed.

`posmon agent run` is the one long-running command on a small box, where the agent's
memory budget is 40 MB: plain `posmon agent run [-c FILE]` starts the agent without
typer and the command layer (about 2 MB). Everything else, `posmon agent run --help`
and mistyped options included, goes through typer, which is imported only then.

Typer is imported inside `_root_app()`, so this module has no postponed annotations:
the options' `Annotated[...]` hints must be objects when typer reads them.
"""

import importlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from posmon import __version__
from posmon.logs import setup_logging

if TYPE_CHECKING:
    import typer

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# What click reads as a boolean in an environment variable (POSMON_LOG_JSON).
_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"", "0", "false", "f", "no", "n", "off"})


def _root_app() -> "typer.Typer":
    """The typer application with the global options and `posmon schema export`."""
    import typer  # noqa: PLC0415 - see the module docstring

    app = typer.Typer(
        name="posmon",
        help="Monitoring for card-payment POS terminals: settlement failures caught as they "
        "happen.",
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
            bool,
            typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
        ] = False,
    ) -> None:
        """Set up logging once for whichever command runs."""
        if log_level.upper() not in LOG_LEVELS:
            raise typer.BadParameter(f"unknown level {log_level!r}", param_hint="--log-level")
        setup_logging(log_level, json_lines=log_json)

    @schema_app.command("export")
    def schema_export(
        directory: Annotated[
            Path, typer.Argument(help="Folder for the *.schema.json files.")
        ] = Path("docs/schemas"),
        check: Annotated[
            bool, typer.Option("--check", help="Write nothing; fail if the folder is stale.")
        ] = False,
    ) -> None:
        """Write the JSON Schema of every wire message, or check the committed ones are current."""
        from posmon import schemas  # noqa: PLC0415

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

    return app


def _register_roles(app: "typer.Typer", words: list[str]) -> None:
    # Each role's commands live with the role; a role whose extras are not installed
    # (an agent-only box has no collector) simply contributes no commands. Only the role
    # being run is imported: `posmon agent doctor` must not carry the collector's
    # libraries in its memory.
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
    ("collector.cli.collector", "app", "collector"),
    ("collector.cli.settlement", "settlement_app", "settlement"),
    ("collector.cli.alerts", "alerts_app", "alerts"),
    ("collector.cli.cases", "cases_app", "cases"),
    ("collector.cli.tokens", "tokens_app", "tokens"),
    ("simulators.cli", "app", "simulate"),
    ("simulators.cli", "demo_app", "demo"),
    ("dashboards.cli", "app", "dashboards"),
    ("posmon.broker.cli", "fleet_app", "fleet"),
    ("posmon.broker.cli", "broker_app", "broker"),
    ("posmon.broker.pki_cli", "app", "pki"),
]


def main() -> None:
    """Entry point of the `posmon` console script."""
    argv = sys.argv[1:]
    agent_run = _agent_run_options(argv, os.environ)
    if agent_run is not None:
        from agent.service import serve  # noqa: PLC0415

        setup_logging(agent_run.log_level, json_lines=agent_run.log_json)
        serve(agent_run.config)
        return
    app = _root_app()
    _register_roles(app, _command_words(argv))
    app()


def _command_words(argv: list[str]) -> list[str]:
    """The arguments after the global options (whose values are not command names)."""
    words = list(argv)
    while words and words[0].startswith("-"):
        option = words.pop(0)
        if option in ("--log-level",) and words:
            words.pop(0)
    return words


@dataclass(frozen=True, slots=True)
class AgentRun:
    """The options of a plain `posmon agent run`."""

    log_level: str
    log_json: bool
    config: Path | None


def _agent_run_options(argv: list[str], environ: Mapping[str, str]) -> AgentRun | None:
    """A plain `posmon [--log-level L] [--log-json] agent run [-c FILE]`, read as typer would.

    None for anything else: typer then runs it, or explains what is wrong with it.
    """
    log_level = environ.get("POSMON_LOG_LEVEL", "INFO")
    json_env = environ.get("POSMON_LOG_JSON", "").strip().lower()
    if json_env not in _TRUE | _FALSE:
        return None
    log_json = json_env in _TRUE
    words = list(argv)
    while words and words[0].startswith("-"):
        name, equals, value = words.pop(0).partition("=")
        if name == "--log-level" and not equals and words:
            log_level = words.pop(0)
        elif name == "--log-level" and equals:
            log_level = value
        elif name == "--log-json" and not equals:
            log_json = True
        else:
            return None  # --version, --help, or a mistake
    if words[:2] != ["agent", "run"] or log_level.upper() not in LOG_LEVELS:
        return None
    config = _config_option(words[2:])
    if config == "":
        return None
    return AgentRun(log_level, log_json, None if config is None else Path(config))


def _config_option(options: list[str]) -> str | None:
    """The FILE of `-c FILE`, `-cFILE`, `--config FILE` or `--config=FILE`; "" if unclear."""
    config = None
    options = list(options)
    while options:
        option = options.pop(0)
        if option in ("-c", "--config") and options and not options[0].startswith("-"):
            config = options.pop(0)
        elif option.startswith("--config="):
            config = option.removeprefix("--config=")
        elif option.startswith("-c") and len(option) > 2:
            config = option[2:]
        else:
            return ""
    return config
