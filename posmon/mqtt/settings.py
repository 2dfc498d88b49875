"""The `[mqtt]` section of every role: where the broker is and how to hold a session."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr, model_validator

from posmon.config import Section

DEFAULT_PREFIX = "posmon/v1"


class Protocol(StrEnum):
    V311 = "3.1.1"
    V5 = "5"


class TlsSettings(Section):
    """TLS towards the broker."""

    enabled: bool = Field(False, description="Connect with TLS.")
    ca_file: Path | None = Field(None, description="CA bundle that signed the broker's cert.")
    cert_file: Path | None = Field(None, description="Client certificate (mutual TLS).")
    key_file: Path | None = Field(None, description="Client certificate's private key.")
    insecure: bool = Field(
        False, description="Skip the broker host name check (test set-ups only)."
    )

    @model_validator(mode="after")
    def _pairs(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class MqttSettings(Section):
    """Where the broker is and how to hold a session with it."""

    host: str = Field("127.0.0.1", description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 for TLS).")
    hosts: list[str] = Field(
        default_factory=list,
        description=(
            "Brokers to use in turn, `host:port` each (the MQTT listeners of a NATS "
            "cluster, docs/scaling.md); empty: `host` and `port`. After a lost connection "
            "or a failed attempt the client tries the next, with the same backoff."
        ),
    )
    protocol: Protocol = Field(Protocol.V311, description="MQTT protocol: 3.1.1 or 5.")
    client_id: str = Field(
        "", max_length=128, description="Client id; empty: derived from the role and its id."
    )
    username: str | None = Field(None, description="Login name, if the broker wants one.")
    password: SecretStr | None = Field(None, description="Login password.")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keep-alive in seconds.")
    topic_prefix: str = Field(
        DEFAULT_PREFIX,
        pattern=r"^[^#+]+[^/#+]$",
        description="Prefix of every posmon topic, without a trailing slash.",
    )
    inflight: int = Field(
        20, ge=1, le=65535, description="QoS 1 messages sent and not yet acknowledged."
    )
    session_expiry_s: int = Field(
        7 * 24 * 3600,
        ge=0,
        description="MQTT 5: how long the broker keeps the session while we are away.",
    )
    reconnect_min_s: float = Field(0.5, gt=0, description="First reconnect delay.")
    reconnect_max_s: float = Field(60.0, gt=0, description="Longest reconnect delay.")
    tls: TlsSettings = Field(default_factory=TlsSettings)

    @model_validator(mode="after")
    def _hosts(self) -> MqttSettings:
        for entry in self.hosts:
            name, _, port = entry.rpartition(":")
            if not name or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"hosts: {entry!r} is not host:port")
        return self

    @property
    def brokers(self) -> list[tuple[str, int]]:
        """(host, port) of every broker to try, in order."""
        if not self.hosts:
            return [(self.host, self.port)]
        return [(name, int(port)) for name, _, port in (h.rpartition(":") for h in self.hosts)]

    @model_validator(mode="after")
    def _delays(self) -> MqttSettings:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must not be below reconnect_min_s")
        return self
