"""One tap's configuration: the `[[taps]]` section the agent's TOML file will carry.

Checked when the file loads, like every section (posmon.config): a bad address or a spec
file that does not load is a `ConfigError` naming the file and the key, for example
`agent.toml: taps.0.spec: Value error, variant.toml: framing.tpdu_bytes: ...`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from posmon.config import Section
from posmon.wire.models import Network

if TYPE_CHECKING:
    from agent.tap.spec import Spec

MAX_PORT = 65535
# As agent/tap/relay.py's defaults; not imported from it, because the agent reads this
# section whether or not it runs a tap, and the relay brings asyncio (about 2 MB of RSS).
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_QUEUE_SIZE = 10_000


def parse_address(value: str) -> tuple[str, int]:
    """`host:port` (`[v6]:port` for IPv6) as a (host, port) pair; raises ValueError."""
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= MAX_PORT:
        raise ValueError(f"{value!r} is not host:port")
    return host, int(port)


class TapSection(Section):
    """A host-link tap: the terminal connects to `listen`, the tap relays to `upstream`."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9._-]{1,64}$", description="Short name for logs, e.g. counter-1."
    )
    listen: str = Field(
        description="host:port the terminal is pointed at, e.g. 0.0.0.0:5000.",
    )
    upstream: str = Field(description="host:port of the acquirer's front end.")
    spec: Path | None = Field(
        None, description="ISO 8583 layout file (docs/tap.md); default: China UnionPay POS."
    )
    tid: str | None = Field(
        None,
        pattern=r"^[0-9A-Za-z]{8}$",
        description="Terminal id behind the tap: failures before its first message count for it.",
    )
    network: Network = Field(Network.ETH, description="How the terminal reaches the tap.")
    connect_timeout_s: float = Field(
        DEFAULT_CONNECT_TIMEOUT_S,
        gt=0,
        le=60,
        description="Wait for the front end's connection; then the terminal's is reset.",
    )
    response_timeout_s: float = Field(
        60.0, gt=0, le=600, description="A request unanswered this long is a host timeout."
    )
    queue_size: int = Field(
        DEFAULT_QUEUE_SIZE,
        ge=10,
        le=1_000_000,
        description="Copies waiting for the decoder; more are dropped, never the bytes.",
    )

    @field_validator("listen", "upstream")
    @classmethod
    def _address(cls, value: str) -> str:
        parse_address(value)
        return value

    @field_validator("spec")
    @classmethod
    def _spec_loads(cls, value: Path | None) -> Path | None:
        if value is not None:
            from agent.tap.spec import SpecError, load_spec  # noqa: PLC0415 - see load_spec

            try:
                load_spec(value)
            except SpecError as exc:
                raise ValueError(exc.reason) from None
        return value

    def load_spec(self) -> Spec:
        """The layout this tap decodes."""
        # Imported here: the agent reads this section even with no tap configured, and
        # need not build the specification's models then.
        from agent.tap.spec import cup_pos, load_spec  # noqa: PLC0415

        return cup_pos() if self.spec is None else load_spec(self.spec)
