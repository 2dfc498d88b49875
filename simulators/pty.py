"""A pseudo-terminal as a terminal's serial cable, reachable at a stable symlink.

`PtyLink` opens a pty pair (`os.openpty`), puts the slave side in raw mode at once (no
echo, no CR/LF translation: POSMON-SL/1 is binary) and keeps the slave open itself, so
the agent can close and reopen the port without hanging the line up. The agent is given
`path`, a symlink to the current `/dev/pts/N`, the way udev's `/dev/serial/by-id` links
name USB serial devices:

- `unplug()` closes both sides and removes the symlink (as udev does): the agent's next
  read fails, and reopening the path fails until the cable is back;
- `replug()` opens a new pty and points the symlink at it atomically (a symlink under a
  temporary name, then `os.replace`).

The master side runs in packet mode (`TIOCPKT`), where the kernel reports the slave's
input being flushed. pyserial flushes when it opens a port, so `wait_for_reader()` can
tell that the agent has opened the line.
"""

from __future__ import annotations

import fcntl
import logging
import os
import select
import struct
import termios
import threading
import time
import tty
from pathlib import Path
from types import TracebackType

from simulators.link import LinkDown

logger = logging.getLogger(__name__)

# Packet mode is Linux and BSD; without it the link cannot tell when a reader opens it.
_TIOCPKT: int | None = getattr(termios, "TIOCPKT", None)
_TIOCPKT_DATA = 0
_SLICE_S = 0.02
_WRITE_TIMEOUT_S = 0.2
_READ_SIZE = 4096


class PtyLink:
    """A raw-mode pseudo-terminal behind a symlink, with unplug and replug (see module doc)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise ValueError(f"{self.path} is a directory; give the path of the symlink")
        self.dropped_bytes = 0
        self._lock = threading.Lock()
        self._master: int | None = None
        self._slave: int | None = None
        self._device: str | None = None
        self._attached = False
        self._pending = bytearray()
        self._plug()

    def __enter__(self) -> PtyLink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def name(self) -> str:
        """The symlink the agent opens."""
        return str(self.path)

    @property
    def device(self) -> str | None:
        """The `/dev/pts/N` the symlink points at, None while unplugged."""
        return self._device

    @property
    def up(self) -> bool:
        return self._master is not None

    def write(self, data: bytes) -> None:
        """Put bytes on the line; bytes nobody reads for a while are dropped, as on a wire."""
        with self._lock:
            master = self._require()
            view = memoryview(data)
            deadline = time.monotonic() + _WRITE_TIMEOUT_S
            while view:
                try:
                    view = view[os.write(master, view) :]
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        self.dropped_bytes += len(view)
                        logger.debug("pty %s: nobody reads; %d bytes lost", self.path, len(view))
                        return
                    select.select([], [master], [], _SLICE_S)
                except OSError as exc:
                    raise LinkDown(f"write: {exc}") from exc

    def read(self, timeout: float) -> bytes:
        """Bytes the agent wrote (ACK, NAK), waiting at most `timeout` s; b"" if none."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                master = self._require()
                if self._pending:
                    data = bytes(self._pending)
                    self._pending.clear()
                    return data
                wait = min(max(0.0, deadline - time.monotonic()), _SLICE_S)
                if select.select([master], [], [], wait)[0]:
                    data = self._read_packet(master)
                    if data:
                        return data
            if time.monotonic() >= deadline:
                return b""

    def wait_for_reader(self, timeout: float) -> bool:
        """Wait until someone opens the slave with a flush (pyserial does); True if so.

        Always True without packet mode, where there is no way to tell.
        """
        if _TIOCPKT is None:
            return True
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                master = self._require()
                if self._attached:
                    return True
                wait = min(max(0.0, deadline - time.monotonic()), _SLICE_S)
                if select.select([master], [], [], wait)[0]:
                    self._pending += self._read_packet(master)
            if time.monotonic() >= deadline:
                return self._attached

    def unplug(self) -> None:
        """Close both sides and remove the symlink; the reader's next read fails."""
        with self._lock:
            if self._master is None:
                return
            self._remove_symlink()
            for fd in (self._master, self._slave):
                if fd is not None:
                    os.close(fd)
            logger.info("pty %s: unplugged (%s)", self.path, self._device)
            self._master = self._slave = self._device = None
            self._pending.clear()

    def replug(self) -> None:
        """Open a new pty and point the symlink at it; nothing happens if plugged in."""
        with self._lock:
            if self._master is None:
                try:
                    self._plug()
                except OSError as exc:
                    raise LinkDown(f"replug: {exc}") from exc

    def close(self) -> None:
        """Unplug for good."""
        self.unplug()

    def _plug(self) -> None:
        master, slave = os.openpty()
        try:
            # Raw before anything crosses the line: an echoing, CR/LF-translating tty
            # would send frames back to us and change 0x0D/0x0A bytes in them.
            tty.setraw(slave)
            os.set_blocking(master, False)
            if _TIOCPKT is not None:
                fcntl.ioctl(master, _TIOCPKT, struct.pack("i", 1))
            device = os.ttyname(slave)
            temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            temporary.unlink(missing_ok=True)
            os.symlink(device, temporary)
            os.replace(temporary, self.path)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        self._master, self._slave, self._device = master, slave, device
        self._attached = False
        logger.info("pty %s -> %s: plugged in", self.path, device)

    def _require(self) -> int:
        if self._master is None:
            raise LinkDown("unplugged")
        return self._master

    def _read_packet(self, master: int) -> bytes:
        try:
            packet = os.read(master, _READ_SIZE)
        except BlockingIOError:
            return b""
        except OSError as exc:
            raise LinkDown(f"read: {exc}") from exc
        if _TIOCPKT is None:
            return packet
        if packet and packet[0] == _TIOCPKT_DATA:
            return packet[1:]
        # A control packet: the slave was flushed or its flow control changed, which is
        # what opening and configuring the port does.
        self._attached = True
        return b""

    def _remove_symlink(self) -> None:
        try:
            if os.readlink(self.path) == self._device:
                self.path.unlink()
        except OSError:
            pass  # already gone or replaced by someone else: not ours to remove
