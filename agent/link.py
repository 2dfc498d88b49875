"""One serial port: bytes in, frames decoded, events handed on, ACK/NAK written back.

The reader owns the port and its codec. It writes a frame's reply only after the sink has
stored what the frame carried, so an ACK always means "kept". When the device disappears
or fails it tells the sink (status `serial_ok: false`), then reopens with backoff.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from posmon.mqtt import Backoff
from posmon.serialport import SerialPort, SerialPortError, open_port
from posmon.wire.codec import Received, SerialCodec

logger = logging.getLogger(__name__)

# A read returns as soon as a byte arrives; the timeout only paces the frame-timeout
# check and the stop check on a quiet line.
READ_TIMEOUT_S = 0.25


class FrameSink(Protocol):
    """Where a reader hands what it decoded."""

    def store(self, received: Received, port: str) -> bool:
        """Keep the frame's message; False when it cannot (the frame is then not ACKed)."""
        ...

    def port_state(self, port: str, ok: bool, reason: str) -> None:
        """The port opened (ok) or failed."""
        ...


def utc_now() -> datetime:
    return datetime.now(UTC)


class PortReader:
    """Reads one port until stopped; survives unplugging and errors."""

    def __init__(
        self,
        name: str,
        url: str,
        baudrate: int,
        codec: SerialCodec,
        sink: FrameSink,
        *,
        opener: Callable[[str, int], SerialPort] = lambda url, baud: open_port(
            url, baud, timeout=READ_TIMEOUT_S
        ),
        clock: Callable[[], datetime] = utc_now,
        backoff: Backoff | None = None,
    ) -> None:
        self.name = name
        self.url = url
        self.baudrate = baudrate
        self.codec = codec
        self.sink = sink
        self.opener = opener
        self.clock = clock
        self.backoff = backoff or Backoff(0.2, 5.0)
        self.ok = False
        self.unacked = 0  # frames left unanswered because they could not be stored

    def run(self, stop: threading.Event) -> None:
        """Open, read and answer until `stop` is set."""
        announced_down = False
        while not stop.is_set():
            try:
                port = self.opener(self.url, self.baudrate)
            except SerialPortError as exc:
                if not announced_down:
                    self._down(f"cannot open {self.url}: {exc.reason}")
                    announced_down = True
                stop.wait(self.backoff.next_delay())
                continue
            self.backoff.reset()
            self.ok = True
            announced_down = False
            logger.info("port %s: opened %s at %s baud", self.name, self.url, self.baudrate)
            self.sink.port_state(self.name, True, "opened")
            try:
                self._serve(port, stop)
            except SerialPortError as exc:
                self._down(f"{self.url}: {exc.reason}")
                announced_down = True
                stop.wait(self.backoff.next_delay())
            finally:
                port.close()

    def _serve(self, port: SerialPort, stop: threading.Event) -> None:
        while not stop.is_set():
            data = port.read(1)  # waits for a byte, at most READ_TIMEOUT_S
            if data and (waiting := port.in_waiting):
                data += port.read(waiting)  # the rest of what came: a frame, usually
            now = self.clock()
            if not data:
                self.codec.expire(now)
                continue
            for received in self.codec.feed(data, now):
                self._answer(port, received)

    def _answer(self, port: SerialPort, received: Received) -> None:
        if received.message is not None:
            try:
                kept = self.sink.store(received, self.name)
            except Exception:
                logger.exception("port %s: could not store a frame; not ACKing it", self.name)
                kept = False
            if not kept:
                self.codec.forget(received)
                self.unacked += 1
                return
        elif received.reason is not None:
            logger.warning("port %s: frame %s: %s", self.name, received.outcome, received.reason)
        port.write(received.reply)

    def _down(self, reason: str) -> None:
        self.ok = False
        logger.error("port %s: %s", self.name, reason)
        self.sink.port_state(self.name, False, reason)
