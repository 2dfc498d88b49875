"""`posmon agent ...`: run the agent, check an installation, print a sample configuration."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from agent.config import AgentConfig
from posmon.config import example_toml
from posmon.lifecycle import load_config_or_exit

if TYPE_CHECKING:
    from rich.console import Console

    from agent.doctor import Report

app = typer.Typer(help="The terminal-side agent: serial in, MQTT out.", no_args_is_help=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Agent TOML file (see `posmon agent config-example`)."),
]

EXAMPLE_PORTS: dict[str, dict[str, Any]] = {
    "ports": {
        "name": "counter-1",
        "url": "/dev/serial/by-id/usb-POS_Terminal-if00",
        "baudrate": 115200,
        "tids": ["10000001"],
    },
    "agent": {"id": "shop-042"},
}


def load_config(path: Path | None) -> AgentConfig:
    """Load the configuration or exit 2 naming the file and key."""
    return load_config_or_exit(AgentConfig, path)


@app.command()
def run(config: ConfigOption = None) -> None:
    """Run the agent until SIGTERM or Ctrl-C."""
    # A plain `posmon agent run` does not come here: posmon.cli.main() calls serve()
    # itself, without typer. This is the way of `--help` and of typer's own tests.
    from agent.service import serve  # noqa: PLC0415 - keeps `--help` fast

    serve(config)


@app.command("config-example")
def config_example() -> None:
    """Print a commented configuration file to start from."""
    header = (
        "# posmon agent configuration. Every key can be overridden from the environment:\n"
        "# POSMON_<SECTION>__<KEY>, e.g. POSMON_MQTT__HOST=broker.example.\n"
        "# Across any network you do not control, reach the broker over mutual TLS: port = "
        "8883\n# and [mqtt.tls] enabled = true with the files of `posmon pki issue-agent "
        "ID`\n# (docs/security.md); a password login travels in clear.\n"
    )
    typer.echo(header + example_toml(AgentConfig, EXAMPLE_PORTS), nl=False)


@app.command()
def doctor(
    config: ConfigOption = None,
    listen_seconds: Annotated[
        float,
        typer.Option(
            "--listen-seconds",
            min=0.1,
            help="How long to listen for frames on the ports (all at once).",
        ),
    ] = 5.0,
) -> None:
    """Check an installation: serial ports and frames, broker, outbox. Exit 1 on a failure."""
    from rich.console import Console  # noqa: PLC0415 - keeps `--help` fast

    from agent.doctor import diagnose  # noqa: PLC0415

    settings = load_config(config)
    console = Console(highlight=False)
    console.print(
        f"posmon agent doctor: agent [bold]{settings.agent.id}[/], "
        f"config {config or 'defaults and environment'}"
    )
    if settings.ports:
        Console(stderr=True, highlight=False).print(
            f"Listening to {len(settings.ports)} port(s) for {listen_seconds:g} s "
            "(only listening: the doctor never answers a terminal) ..."
        )
    with _quiet("posmon.mqtt", "paho"):
        report = diagnose(settings, listen_seconds)
    _print_report(console, report)
    raise typer.Exit(0 if report.ok else 1)


@contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Keep the MQTT client's log lines out of the report: the table already says it."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [item.level for item in loggers]
    for item in loggers:
        item.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for item, level in zip(loggers, levels, strict=True):
            item.setLevel(level)


def _print_report(console: Console, report: Report) -> None:
    from rich.markup import escape  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    from agent.doctor import Status  # noqa: PLC0415

    styles = {
        Status.OK: "bold green",
        Status.WARN: "bold yellow",
        Status.FAIL: "bold red",
        Status.SKIP: "yellow",
    }
    table = Table(title="Checks", title_justify="left")
    table.add_column("check", no_wrap=True)
    table.add_column("target")
    table.add_column("result", no_wrap=True)
    table.add_column("detail / hint")
    for check in report.checks:
        detail = Text(check.detail)
        if check.hint:
            detail.append("\n" + check.hint, style="italic cyan")
        table.add_row(
            check.name, check.target, Text(check.status.value, style=styles[check.status]), detail
        )
    console.print(table)
    devices = Table(title="Serial devices present", title_justify="left")
    for column in ("device", "description", "USB", "hardware id", "configured as"):
        devices.add_column(column)
    for device in report.devices:
        devices.add_row(
            device.device,
            device.description,
            "yes" if device.usb else "no",
            device.hwid,
            ", ".join(device.configured_as),
        )
    if not report.devices:
        devices.add_row("(none found)", "", "", "", "")
    console.print(devices)
    failed = report.failed
    skipped = sum(check.status is Status.SKIP for check in report.checks)
    warned = "".join(
        f"; [bold yellow]WARN[/]: {check.name} {escape(check.target)}: {escape(check.detail)}"
        for check in report.warnings
    )
    if failed:
        names = ", ".join(f"{check.name} {check.target}" for check in failed)
        console.print(
            f"[bold red]FAIL[/]: {len(failed)} of {len(report.checks)} checks failed: {names}"
            + warned,
            soft_wrap=True,
        )
    else:
        passed = len(report.checks) - skipped
        console.print(
            f"[bold green]OK[/]: all {passed} checks passed"
            + (f", {skipped} skipped" if skipped else "")
            + warned,
            soft_wrap=True,
        )
