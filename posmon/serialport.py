"""The one adapter to pyserial: open a port by device path or pyserial URL, list USB ports.

Agent and simulators read and write through the small `SerialPort` protocol, so their
logic runs the same over a real RS-232/USB port, a pseudo-terminal or `loop://`.
"""

from __future__ import annotations

import termios
from dataclasses import dataclass
from typing import Protocol

import serial
import serial.tools.list_ports


class SerialPortError(OSError):
    """A port that cannot be opened, read or written (gone, busy, no permission)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SerialPort(Protocol):
    """What posmon needs of an open port."""

    def read(self, size: int = 1) -> bytes: ...
    def write(self, data: bytes, /) -> int | None: ...
    def close(self) -> None: ...
    @property
    def in_waiting(self) -> int: ...


class _Port:
    """A pyserial port whose failures come out as `SerialPortError`."""

    def __init__(self, port: serial.Serial) -> None:
        self._port = port

    def read(self, size: int = 1) -> bytes:
        try:
            return bytes(self._port.read(size))
        except (serial.SerialException, OSError) as exc:
            raise SerialPortError(f"read: {exc}") from exc

    def write(self, data: bytes, /) -> int | None:
        try:
            written = self._port.write(data)
            self._port.flush()
        except (serial.SerialException, OSError, termios.error) as exc:
            # tcdrain raises termios.error, not OSError, when the line drops mid-write.
            raise SerialPortError(f"write: {exc}") from exc
        return written

    def close(self) -> None:
        self._port.close()

    @property
    def in_waiting(self) -> int:
        try:
            return int(self._port.in_waiting)
        except (serial.SerialException, OSError) as exc:
            raise SerialPortError(f"status: {exc}") from exc


def open_port(
    url: str, baudrate: int = 115200, *, timeout: float = 0.05, exclusive: bool = True
) -> SerialPort:
    """Open a device path (`/dev/ttyUSB0`) or pyserial URL (`socket://`, `loop://`) as 8N1.

    Device paths are locked for exclusive use, so a second reader (a `doctor` while the
    agent runs) is told the port is busy rather than stealing frames.
    """
    try:
        if "://" in url or not exclusive:
            # URL handlers reject the locking option.
            port = serial.serial_for_url(url, baudrate=baudrate, timeout=timeout, write_timeout=1.0)
        else:
            port = serial.Serial(
                url, baudrate=baudrate, timeout=timeout, write_timeout=1.0, exclusive=True
            )
    except (serial.SerialException, OSError, ValueError) as exc:
        raise SerialPortError(str(exc)) from exc
    return _Port(port)


@dataclass(frozen=True, slots=True)
class PortInfo:
    """A serial device the system knows of."""

    device: str
    description: str
    hwid: str
    usb: bool


def list_ports() -> list[PortInfo]:
    """Serial devices present now, USB ones flagged (what `doctor` shows a technician)."""
    return [
        PortInfo(info.device, info.description, info.hwid, info.vid is not None)
        for info in sorted(serial.tools.list_ports.comports(), key=lambda item: item.device)
    ]
