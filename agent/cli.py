"""`posmon agent ...`: run the agent, check an installation, print a sample configuration."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

from agent.config import AgentConfig
from posmon.config import ConfigError, example_toml, load

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
    """Load the agent configuration or exit 2 with the file, key and problem."""
    try:
        return load(AgentConfig, path)
    except ConfigError as exc:
        typer.echo(f"configuration error:\n{exc}", err=True)
        raise typer.Exit(2) from exc


@app.command()
def run(config: ConfigOption = None) -> None:
    """Run the agent until SIGTERM or Ctrl-C."""
    from agent.service import Agent  # noqa: PLC0415 - keeps `--help` fast

    settings = load_config(config)
    if not settings.ports:
        typer.echo(f"configuration error:\n{config}: ports: no port configured", err=True)
        raise typer.Exit(2)
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    Agent(settings).run(stop)


@app.command("config-example")
def config_example() -> None:
    """Print a commented configuration file to start from."""
    header = (
        "# posmon agent configuration. Every key can be overridden from the environment:\n"
        "# POSMON_<SECTION>__<KEY>, e.g. POSMON_MQTT__HOST=broker.example.\n"
    )
    typer.echo(header + example_toml(AgentConfig, EXAMPLE_PORTS), nl=False)
