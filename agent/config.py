"""The agent's configuration: one TOML file, `POSMON_<SECTION>__<KEY>` overrides."""

from __future__ import annotations

import socket
from enum import StrEnum
from pathlib import Path
from typing import Self

from pydantic import Field, field_validator, model_validator

from agent.tap.config import TapSection
from posmon.config import RoleSettings, Section, TimeZoneName
from posmon.mqtt import MqttSettings


class AgentSection(Section):
    """Who this agent is and how its terminals keep time and money."""

    id: str = Field(
        default_factory=lambda: socket.gethostname().split(".")[0] or "agent",
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="Agent id, unique in the fleet; used in topics. Default: the host name.",
    )
    timezone: TimeZoneName = Field(
        "Asia/Shanghai", description="Time zone of the terminals' clocks (IANA name)."
    )
    currency: str = Field(
        "CNY", pattern=r"^[A-Z]{3}$", description="Currency of batch totals (BAT has no CUR)."
    )
    state_dir: Path = Field(
        Path("/var/lib/posmon-agent"), description="Folder for the outbox database."
    )


class PortSection(Section):
    """One serial port with one terminal (or several, on a multi-drop line) behind it."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9._-]{1,64}$", description="Short name for logs, e.g. counter-1."
    )
    url: str = Field(
        min_length=1,
        description="Device path (/dev/ttyUSB0, /dev/serial/by-id/...) or pyserial URL.",
    )
    baudrate: int = Field(115200, description="9600 to 115200, 8N1.")
    tids: list[str] = Field(
        default_factory=list,
        description="Terminal ids expected here: announced before their first frame.",
    )

    @field_validator("baudrate")
    @classmethod
    def _baud(cls, value: int) -> int:
        if value not in (9600, 19200, 38400, 57600, 115200):
            raise ValueError("baudrate must be one of 9600, 19200, 38400, 57600, 115200")
        return value

    @field_validator("tids")
    @classmethod
    def _tids(cls, value: list[str]) -> list[str]:
        for tid in value:
            if len(tid) != 8 or not tid.isalnum():
                raise ValueError(f"terminal id {tid!r} is not 8 letters or digits")
        return value


class Fsync(StrEnum):
    """How hard an outbox commit presses the data to disk."""

    FULL = "full"
    NORMAL = "normal"


class OutboxSection(Section):
    """The durable queue between the serial ports and the broker."""

    path: Path | None = Field(None, description="SQLite file; default: <state_dir>/outbox.sqlite3.")
    max_events: int = Field(
        200_000,
        ge=100,
        description="Capacity, at least 100 events; when full, status events are dropped first.",
    )
    fsync: Fsync = Field(
        Fsync.FULL,
        description=(
            "full: every frame is on disk before its ACK (survives power loss); "
            "normal: survives a crash of the agent, not of the machine."
        ),
    )


class AgentConfig(RoleSettings):
    """Everything `posmon agent run` needs."""

    agent: AgentSection = Field(default_factory=AgentSection)
    ports: list[PortSection] = Field(default_factory=list)
    taps: list[TapSection] = Field(default_factory=list)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    outbox: OutboxSection = Field(default_factory=OutboxSection)

    @model_validator(mode="after")
    def _unique_ports(self) -> Self:
        names = [port.name for port in self.ports]
        urls = [port.url for port in self.ports]
        if len(set(names)) != len(names):
            raise ValueError("ports: two ports share a name")
        if len(set(urls)) != len(urls):
            raise ValueError("ports: two ports share a url")
        taps = [tap.name for tap in self.taps]
        if len(set(taps)) != len(taps):
            raise ValueError("taps: two taps share a name")
        listens = [tap.listen for tap in self.taps]
        if len(set(listens)) != len(listens):
            raise ValueError("taps: two taps share a listen address")
        return self

    @property
    def outbox_path(self) -> Path:
        return self.outbox.path or self.agent.state_dir / "outbox.sqlite3"
