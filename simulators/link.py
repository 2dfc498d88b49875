"""The line between a simulated terminal and the agent: a small byte-link protocol.

Two links implement it: `simulators.pty.PtyLink` (a pseudo-terminal behind a stable
symlink, what tests and demos use) and `SerialLink` here (any device path or pyserial URL
opened through `posmon.serialport`, e.g. a USB serial adapter on a null-modem cable to
the agent's port, or `socket://host:port` towards a serial-to-network converter).
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from posmon.serialport import SerialPort, SerialPortError, open_port

logger = logging.getLogger(__name__)

_READ_SLICE_S = 0.02
_REOPEN_EVERY_S = 0.5


class LinkDown(OSError):
    """The link is unplugged, gone or failing; `reason` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ByteLink(Protocol):
    """What a simulated terminal needs of its line: bytes out, bytes in, a plug."""

    @property
    def name(self) -> str:
        """Where the agent connects: a path or URL (for messages to the user)."""
        ...

    @property
    def up(self) -> bool:
        """Whether the link is plugged in."""
        ...

    def write(self, data: bytes) -> None:
        """Send bytes; raises `LinkDown` when unplugged or failing."""
        ...

    def read(self, timeout: float) -> bytes:
        """Bytes the agent sent, waiting at most `timeout` s; b"" if none; raises `LinkDown`."""
        ...

    def wait_for_reader(self, timeout: float) -> bool:
        """Wait until the far end is opened; True when it is, or when the link cannot tell."""
        ...

    def unplug(self) -> None:
        """Pull the cable: the far end sees an error or end of file."""
        ...

    def replug(self) -> None:
        """Plug the cable back in; raises `LinkDown` if that fails."""
        ...

    def close(self) -> None:
        """Release everything the link holds."""
        ...


class SerialLink:
    """A device path or pyserial URL as a byte link; reopens by itself after a failure."""

    def __init__(self, url: str, baudrate: int = 115200) -> None:
        self.url = url
        self.baudrate = baudrate
        self._port: SerialPort | None = None
        self._plugged = True
        self._next_open = 0.0
        self._open()

    @property
    def name(self) -> str:
        return self.url

    @property
    def up(self) -> bool:
        return self._port is not None

    def write(self, data: bytes) -> None:
        port = self._ensure_open()
        try:
            port.write(data)
        except SerialPortError as exc:
            self._drop(exc.reason)
            raise LinkDown(exc.reason) from exc

    def read(self, timeout: float) -> bytes:
        port = self._ensure_open()
        deadline = time.monotonic() + timeout
        try:
            while True:
                data = port.read(max(1, port.in_waiting))
                if data or time.monotonic() >= deadline:
                    return data
        except SerialPortError as exc:
            self._drop(exc.reason)
            raise LinkDown(exc.reason) from exc

    def wait_for_reader(self, timeout: float) -> bool:
        # A serial line or socket does not tell whether anyone listens at the other end.
        return True

    def unplug(self) -> None:
        self._plugged = False
        self._drop("unplugged")

    def replug(self) -> None:
        self._plugged = True
        self._next_open = 0.0
        self._open()

    def close(self) -> None:
        self.unplug()

    def _open(self) -> None:
        self._next_open = time.monotonic() + _REOPEN_EVERY_S
        try:
            self._port = open_port(self.url, self.baudrate, timeout=_READ_SLICE_S)
        except SerialPortError as exc:
            raise LinkDown(f"cannot open {self.url}: {exc.reason}") from exc
        logger.info("link %s: open", self.url)

    def _ensure_open(self) -> SerialPort:
        if self._port is not None:
            return self._port
        if not self._plugged:
            raise LinkDown("unplugged")
        if time.monotonic() < self._next_open:
            raise LinkDown(f"{self.url} is closed; reopening soon")
        self._open()
        assert self._port is not None
        return self._port

    def _drop(self, reason: str) -> None:
        if self._port is not None:
            logger.warning("link %s: closed (%s)", self.url, reason)
            self._port.close()
            self._port = None
