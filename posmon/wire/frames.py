"""POSMON-SL/1 framing, sans-IO: `STX | DATA | ETX | LRC` in, frames and replies out.

`FrameDecoder` is fed bytes and the current time and hands back what it found: good
frames (their DATA), bad frames (with the reason, to be NAKed) and how many bytes of line
noise it threw away. It never touches a port or a clock. Model: h11's `receive_data()`.
"""

from __future__ import annotations

import functools
import operator
import re
from dataclasses import dataclass
from enum import StrEnum

STX = 0x02
ETX = 0x03
ACK = b"\x06"
NAK = b"\x15"
FS = 0x1C
MAX_DATA = 1024
_STX = bytes((STX,))
_STX_OR_ETX = re.compile(b"[\\x02\\x03]")
# Control bytes other than FS (0x1C), and DEL.
_CONTROL = re.compile(b"[\\x00-\\x1b\\x1d-\\x1f\\x7f]")
FRAME_TIMEOUT_S = 2.0


class FrameError(ValueError):
    """A frame the link layer refuses; `reason` is one of `BadFrameReason`."""

    def __init__(self, reason: str, raw: bytes = b"") -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = raw


class BadFrameReason(StrEnum):
    LRC = "lrc"
    TOO_LONG = "too_long"
    EMPTY = "empty"
    CONTROL_BYTE = "control_byte"
    NOT_UTF8 = "not_utf8"


@dataclass(frozen=True, slots=True)
class GoodFrame:
    """A frame whose LRC and DATA are sound; `data` is the DATA bytes."""

    data: bytes


@dataclass(frozen=True, slots=True)
class BadFrame:
    """A frame to NAK. Its bytes are not kept: they may hold a card number."""

    reason: BadFrameReason


def lrc(data: bytes) -> int:
    """The frame check byte: XOR of every DATA byte and ETX."""
    return functools.reduce(operator.xor, data, ETX)


def check_data(data: bytes) -> None:
    """Raise `FrameError` unless `data` may stand as the DATA of a frame."""
    if not data:
        raise FrameError(BadFrameReason.EMPTY, data)
    if len(data) > MAX_DATA:
        raise FrameError(BadFrameReason.TOO_LONG, data)
    if _CONTROL.search(data):
        raise FrameError(BadFrameReason.CONTROL_BYTE, data)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FrameError(BadFrameReason.NOT_UTF8, data) from exc


def encode_frame(data: bytes) -> bytes:
    """Wrap DATA into a frame; raises `FrameError` for DATA the protocol forbids."""
    check_data(data)
    return bytes((STX,)) + data + bytes((ETX, lrc(data)))


class _State(StrEnum):
    IDLE = "idle"
    DATA = "data"
    LRC = "lrc"


@dataclass(slots=True)
class FrameCounters:
    """What the decoder has seen since it was made."""

    frames: int = 0
    bad_frames: int = 0
    noise_bytes: int = 0
    resyncs: int = 0
    timeouts: int = 0


class FrameDecoder:
    """Turns a byte stream into frames. Memory is bounded by one frame of `max_data` bytes.

    - bytes outside a frame are noise: discarded and counted;
    - an STX inside a frame abandons it and starts a new one (resynchronisation);
    - DATA longer than `max_data` is refused at once and the rest of it is noise;
    - a frame not finished within `timeout` seconds of its STX is dropped, without a NAK:
      the terminal resends when no ACK comes.
    """

    def __init__(self, *, max_data: int = MAX_DATA, timeout: float = FRAME_TIMEOUT_S) -> None:
        self.max_data = max_data
        self.timeout = timeout
        self.counters = FrameCounters()
        self._state = _State.IDLE
        self._buffer = bytearray()
        self._started = 0.0

    @property
    def in_frame(self) -> bool:
        """Whether a frame has started and not yet ended."""
        return self._state is not _State.IDLE

    def expire(self, now: float) -> bool:
        """Drop an unfinished frame older than the timeout; return whether one was dropped."""
        if self._state is not _State.IDLE and now - self._started > self.timeout:
            self.counters.timeouts += 1
            self._reset()
            return True
        return False

    def feed(self, data: bytes, now: float) -> list[GoodFrame | BadFrame]:
        """Consume bytes received at time `now`; return the frames they completed, in order."""
        self.expire(now)
        out: list[GoodFrame | BadFrame] = []
        # Runs of ordinary bytes are taken whole (find/search in C), not byte by byte.
        position, end = 0, len(data)
        while position < end:
            if self._state is _State.IDLE:
                start = data.find(_STX, position)
                skipped = (end if start < 0 else start) - position
                self.counters.noise_bytes += skipped
                if start < 0:
                    break
                self._start(now)
                position = start + 1
            elif self._state is _State.DATA:
                position = self._in_data(data, position, now, out)
            else:
                self._finish(data[position], out)
                position += 1
        return out

    def _in_data(
        self, data: bytes, position: int, now: float, out: list[GoodFrame | BadFrame]
    ) -> int:
        """Take DATA bytes up to the next STX or ETX; return where to go on from."""
        marker = _STX_OR_ETX.search(data, position)
        stop = len(data) if marker is None else marker.start()
        room = self.max_data - len(self._buffer)
        if stop - position > room:
            # One byte too many: refuse the frame; that byte and the rest are noise.
            self._reject(BadFrameReason.TOO_LONG, out)
            self.counters.noise_bytes += 1
            return position + room + 1
        self._buffer += data[position:stop]
        if marker is None:
            return stop
        if data[stop] == STX:
            self.counters.resyncs += 1
            self._start(now)
        else:
            self._state = _State.LRC
        return stop + 1

    def _finish(self, check: int, out: list[GoodFrame | BadFrame]) -> None:
        data = bytes(self._buffer)
        if check != lrc(data):
            self._reject(BadFrameReason.LRC, out)
            return
        try:
            check_data(data)
        except FrameError as exc:
            self._reject(BadFrameReason(exc.reason), out)
            return
        self.counters.frames += 1
        out.append(GoodFrame(data))
        self._reset()

    def _reject(self, reason: BadFrameReason, out: list[GoodFrame | BadFrame]) -> None:
        self.counters.bad_frames += 1
        out.append(BadFrame(reason))
        self._reset()

    def _start(self, now: float) -> None:
        self._state = _State.DATA
        self._buffer.clear()
        self._started = now

    def _reset(self) -> None:
        self._state = _State.IDLE
        self._buffer.clear()
