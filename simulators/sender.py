"""Stop-and-wait sending of POSMON-SL/1 frames, sans-IO: the terminal side of CONTRACT §1.4.

`StopAndWait` holds at most one frame in flight. It is handed the frame and the current
time, is fed the bytes the agent answers and asked what to do when time passes; it hands
back the bytes to write and, once a frame is settled, whether it was ACKed or given up.
It never touches a port or a clock. A resend repeats the frame byte for byte (same SEQ).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from posmon.wire.frames import ACK, NAK

ACK_TIMEOUT_S = 1.0
MAX_RESENDS = 3


class Settled(StrEnum):
    """How a frame's sending ended."""

    ACKED = "acked"
    GIVEN_UP = "given_up"


@dataclass(slots=True)
class SenderCounters:
    """What a sender has done since it was made.

    `sent` counts frames (first transmissions), `resends` the transmissions after the
    first. Once nothing is in flight, `sent == acked + given_up` and
    `naks + timeouts == resends + given_up`.
    """

    sent: int = 0
    acked: int = 0
    naks: int = 0
    resends: int = 0
    timeouts: int = 0
    given_up: int = 0
    stray_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Step:
    """What the sender asks of its caller: bytes to write now, and the fate of the frame."""

    write: bytes = b""
    settled: Settled | None = None


_NOTHING = Step()


class StopAndWait:
    """One frame at a time: wait for ACK, resend on NAK or silence, give up after N resends."""

    def __init__(
        self, *, ack_timeout: float = ACK_TIMEOUT_S, max_resends: int = MAX_RESENDS
    ) -> None:
        if ack_timeout <= 0 or max_resends < 0:
            raise ValueError("ack_timeout must be > 0 and max_resends >= 0")
        self.ack_timeout = ack_timeout
        self.max_resends = max_resends
        self.counters = SenderCounters()
        self._frame: bytes | None = None
        self._deadline = 0.0
        self._resends = 0

    @property
    def busy(self) -> bool:
        """Whether a frame is waiting for its ACK."""
        return self._frame is not None

    @property
    def deadline(self) -> float | None:
        """When the in-flight frame's ACK wait runs out, on the caller's clock."""
        return self._deadline if self._frame is not None else None

    @property
    def attempts(self) -> int:
        """Transmissions of the in-flight frame so far (1 + resends)."""
        return self._resends + 1 if self._frame is not None else 0

    def send(self, frame: bytes, now: float, *, first: bytes | None = None) -> bytes:
        """Start sending `frame` at `now`; return the bytes to write.

        `first`, when given, replaces the first transmission only (a fault injector passes
        the frame with a broken LRC here); resends always carry `frame`.
        """
        if self._frame is not None:
            raise RuntimeError("a frame is already waiting for its ACK")
        self._frame = frame
        self._resends = 0
        self._deadline = now + self.ack_timeout
        self.counters.sent += 1
        return frame if first is None else first

    def receive(self, data: bytes, now: float) -> Step:
        """Consume bytes the agent wrote; settle or resend the frame on ACK or NAK."""
        for index, byte in enumerate(data):
            if self._frame is None:
                self.counters.stray_bytes += len(data) - index
                return _NOTHING
            if byte == ACK[0]:
                self.counters.acked += 1
                self._frame = None
                # An answer after the ACK cannot belong to this frame.
                self.counters.stray_bytes += len(data) - index - 1
                return Step(settled=Settled.ACKED)
            if byte == NAK[0]:
                self.counters.naks += 1
                # Nothing after it can answer the resend, which is not written yet.
                self.counters.stray_bytes += len(data) - index - 1
                return self._retry(now)
            self.counters.stray_bytes += 1
        return _NOTHING

    def poll(self, now: float) -> Step:
        """Let time pass: resend (or give up) when the ACK wait has run out."""
        if self._frame is None or now < self._deadline:
            return _NOTHING
        self.counters.timeouts += 1
        return self._retry(now)

    def abandon(self) -> None:
        """Drop the in-flight frame without settling it (the terminal is shutting down)."""
        self._frame = None

    def _retry(self, now: float) -> Step:
        assert self._frame is not None
        if self._resends >= self.max_resends:
            self.counters.given_up += 1
            self._frame = None
            return Step(settled=Settled.GIVEN_UP)
        self._resends += 1
        self.counters.resends += 1
        self._deadline = now + self.ack_timeout
        return Step(write=self._frame)
