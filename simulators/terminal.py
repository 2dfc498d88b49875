"""A simulated POS terminal: a message source paced onto a byte link, stop-and-wait.

`SimulatedTerminal` is the IO half. It takes messages from a source (generated traffic or
a script), numbers them (SEQ 0..65535, wrapping), frames them, injects the configured
faults and writes them to its link, one at a time: `sender.StopAndWait` decides when to
resend and when to give up. It adds heartbeats every `heartbeat_interval` seconds.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo

from posmon.wire.codec import SEQ_MAX
from posmon.wire.frames import FrameError
from simulators.faults import (
    Faults,
    corrupt_lrc,
    make_invalid,
    noise_burst,
    split_frame,
    unknown_message,
)
from simulators.link import ByteLink, LinkDown
from simulators.messages import Message, MessageSource, heartbeat, terminal_time
from simulators.sender import ACK_TIMEOUT_S, MAX_RESENDS, Settled, StopAndWait

logger = logging.getLogger(__name__)

# Longest the terminal stays in one wait, so stop and unplug requests are seen quickly.
_POLL_S = 0.05


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class TerminalConfig:
    """How a simulated terminal paces, numbers and frames its traffic.

    `rate` is messages per second taken from the source (0: as fast as ACKs come);
    heartbeats come on top. `reader_wait` is how long to wait, at start and after each
    replug, for the agent to open the line (seconds; None waits until it does, 0 not at
    all, as a real terminal would). `seed` drives the fault draws only; the traffic has
    its own seed.
    """

    tid: str
    tz: tzinfo = field(default_factory=lambda: ZoneInfo("Asia/Shanghai"))
    rate: float = 5.0
    heartbeat_interval: float = 30.0
    ack_timeout: float = ACK_TIMEOUT_S
    max_resends: int = MAX_RESENDS
    first_seq: int = 0
    faults: Faults = field(default_factory=Faults)
    seed: int | None = None
    reader_wait: float | None = 10.0

    def __post_init__(self) -> None:
        if len(self.tid) != 8 or not (self.tid.isascii() and self.tid.isalnum()):
            raise ValueError(f"TID must be 8 letters or digits, got {self.tid!r}")
        if self.rate < 0 or self.heartbeat_interval < 0:
            raise ValueError("rate and heartbeat_interval must be >= 0")
        if not 0 <= self.first_seq <= SEQ_MAX:
            raise ValueError("first_seq must be in 0..65535")


@dataclass(frozen=True, slots=True)
class TerminalCounters:
    """A snapshot of what a terminal has done.

    The first six are the stop-and-wait counts (see `sender.SenderCounters`); the rest
    count heartbeats and the faults injected.
    """

    sent: int = 0
    acked: int = 0
    naks: int = 0
    resends: int = 0
    timeouts: int = 0
    given_up: int = 0
    stray_bytes: int = 0
    messages: int = 0
    heartbeats: int = 0
    noise_bytes: int = 0
    corrupted: int = 0
    split: int = 0
    invalid: int = 0
    unknown_type: int = 0
    unplugs: int = 0
    link_errors: int = 0
    skipped: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters by name, in declaration order."""
        return asdict(self)


@dataclass(slots=True)
class _Injected:
    messages: int = 0
    heartbeats: int = 0
    noise_bytes: int = 0
    corrupted: int = 0
    split: int = 0
    invalid: int = 0
    unknown_type: int = 0
    unplugs: int = 0
    link_errors: int = 0
    skipped: int = 0


@dataclass(frozen=True, slots=True)
class Delivery:
    """A frame's fate, for observers: the message as sent (SEQ set) and how it ended."""

    message: Message
    seq: int | None
    settled: Settled
    attempts: int


class SimulatedTerminal:
    """One POS terminal speaking POSMON-SL/1 over a `ByteLink` (see the module docstring).

    `run()` blocks; `start()` runs it in a thread. `stop()` and `request_unplug()` may be
    called from any thread. `on_delivery` is called, in the terminal's thread, with the
    fate of every frame.
    """

    def __init__(
        self,
        link: ByteLink,
        source: MessageSource,
        config: TerminalConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = _utc_now,
        on_delivery: Callable[[Delivery], None] | None = None,
    ) -> None:
        self.link = link
        self.source = source
        self.config = config
        self.on_delivery = on_delivery
        self._clock = clock
        self._wall_clock = wall_clock
        self._sender = StopAndWait(ack_timeout=config.ack_timeout, max_resends=config.max_resends)
        self._rng = random.Random(config.seed)  # noqa: S311 - fault draws, not secrets
        self._seq = config.first_seq
        self._injected = _Injected()
        self._stop = threading.Event()
        self._unplug_request: float | None = None
        self._link_ok = True

    @property
    def counters(self) -> TerminalCounters:
        """What the terminal has done so far."""
        return TerminalCounters(**asdict(self._sender.counters), **asdict(self._injected))

    @property
    def next_seq(self) -> int:
        """The SEQ the next new frame will carry."""
        return self._seq

    def stop(self) -> None:
        """Ask `run()` to end soon; a frame in flight is abandoned."""
        self._stop.set()

    def request_unplug(self, seconds: float) -> None:
        """Pull the cable for `seconds` after the frame in flight is settled."""
        self._unplug_request = seconds

    def start(
        self, *, count: int | None = None, duration: float | None = None, close_batch: bool = False
    ) -> threading.Thread:
        """Run in a new thread (same arguments as `run`); `stop()` then join it."""
        thread = threading.Thread(
            target=self._run_logged,
            args=(count, duration, close_batch),
            name=f"terminal-{self.config.tid}",
            daemon=True,
        )
        thread.start()
        return thread

    def run(
        self, *, count: int | None = None, duration: float | None = None, close_batch: bool = False
    ) -> TerminalCounters:
        """Send traffic until `count` messages, `duration` seconds, the source's end or `stop()`.

        Heartbeats are not counted in `count`. With `close_batch` the open batch is closed
        (a BAT sent) at the end, unless the run was stopped.
        """
        config = self.config
        start = self._clock()
        end = None if duration is None else start + duration
        self._await_reader()
        interval = 1 / config.rate if config.rate > 0 else 0.0
        beat = config.heartbeat_interval
        next_due = self._clock()
        next_beat = next_due + beat if beat > 0 else None
        taken = 0
        exhausted = False
        while not self._stop.is_set():
            now = self._clock()
            if end is not None and now >= end:
                break
            if self._unplug_request is not None:
                seconds, self._unplug_request = self._unplug_request, None
                self._unplug_for(seconds)
                continue
            if next_beat is not None and now >= next_beat:
                next_beat = max(next_beat + beat, now)
                self._injected.heartbeats += 1
                self._deliver(heartbeat(config.tid, self._wall_clock(), config.tz))
                continue
            if exhausted or (count is not None and taken >= count):
                break
            if now < next_due:
                self._idle(min(t for t in (next_due, next_beat, end) if t is not None) - now)
                continue
            message = self.source.next_message(self._wall_clock())
            if message is None:
                exhausted = True
                continue
            taken += 1
            self._injected.messages += 1
            next_due = max(next_due + interval, now)
            self._deliver(message)
            every = config.faults.unplug_every
            if every and taken % every == 0:
                self._unplug_for(config.faults.unplug_for)
        if close_batch and not self._stop.is_set():
            closing = self.source.close_batch(self._wall_clock())
            if closing is not None:
                self._deliver(closing)
        return self.counters

    # --- one message ------------------------------------------------------------------

    def _deliver(self, message: Message) -> None:
        faults, rng = self.config.faults, self._rng
        if faults.unknown_type and rng.random() < faults.unknown_type:
            self._injected.unknown_type += 1
            stamp = terminal_time(self._wall_clock(), self.config.tz)
            self._transmit(unknown_message(self.config.tid, rng, stamp))
        if faults.invalid and message.type != "HBT" and rng.random() < faults.invalid:
            self._injected.invalid += 1
            message = make_invalid(message, rng)
        self._transmit(message)

    def _transmit(self, message: Message) -> None:
        if "SEQ" not in message.fields:
            message = message.with_seq(self._seq)
        seq = message.seq
        if seq is not None:
            self._seq = (seq + 1) % (SEQ_MAX + 1)
        try:
            frame = message.to_frame()
        except FrameError as exc:
            self._injected.skipped += 1
            logger.warning("terminal %s: cannot frame %s: %s", self.config.tid, message.type, exc)
            return
        faults, rng = self.config.faults, self._rng
        if faults.noise and rng.random() < faults.noise:
            burst = noise_burst(rng, faults.noise_max)
            self._injected.noise_bytes += len(burst)
            self._write(burst)
        first = None
        if faults.corrupt_lrc and rng.random() < faults.corrupt_lrc:
            self._injected.corrupted += 1
            first = corrupt_lrc(frame)
        sender = self._sender
        self._write_frame(sender.send(frame, self._clock(), first=first))
        attempts = 1
        while True:
            if self._stop.is_set():
                sender.abandon()
                return
            deadline = sender.deadline
            assert deadline is not None
            data = self._read(deadline - self._clock())
            now = self._clock()
            step = sender.receive(data, now)
            if not step.write and step.settled is None:
                step = sender.poll(now)
            if step.write:
                attempts += 1
                self._write_frame(step.write)
            if step.settled is not None:
                break
        if step.settled is Settled.GIVEN_UP:
            logger.warning(
                "terminal %s: gave up on %s SEQ %s after %d sends",
                self.config.tid,
                message.type,
                seq,
                attempts,
            )
        if self.on_delivery is not None:
            self.on_delivery(Delivery(message, seq, step.settled, attempts))

    # --- the link -----------------------------------------------------------------------

    def _write_frame(self, frame: bytes) -> None:
        faults = self.config.faults
        if faults.split and self._rng.random() < faults.split:
            self._injected.split += 1
            pieces = split_frame(frame, self._rng)
            for index, piece in enumerate(pieces):
                if index:
                    self._stop.wait(faults.split_gap)
                self._write(piece)
        else:
            self._write(frame)

    def _write(self, data: bytes) -> None:
        try:
            self.link.write(data)
        except LinkDown as exc:
            self._link_failed(exc)
        else:
            self._link_back()

    def _read(self, timeout: float) -> bytes:
        timeout = max(0.0, min(timeout, _POLL_S))
        try:
            data = self.link.read(timeout)
        except LinkDown as exc:
            self._link_failed(exc)
            self._stop.wait(timeout)
            return b""
        self._link_back()
        return data

    def _idle(self, seconds: float) -> None:
        # Nothing is in flight: what arrives now is a late answer, counted as stray.
        self._sender.receive(self._read(seconds), self._clock())

    def _link_failed(self, exc: LinkDown) -> None:
        self._injected.link_errors += 1
        if self._link_ok:
            self._link_ok = False
            logger.warning("terminal %s: link %s down: %s", self.config.tid, self.link.name, exc)

    def _link_back(self) -> None:
        if not self._link_ok:
            self._link_ok = True
            logger.info("terminal %s: link %s back", self.config.tid, self.link.name)

    def _unplug_for(self, seconds: float) -> None:
        self._injected.unplugs += 1
        logger.info(
            "terminal %s: unplugging %s for %.1f s", self.config.tid, self.link.name, seconds
        )
        self.link.unplug()
        self._stop.wait(seconds)
        while not self._stop.is_set():
            try:
                self.link.replug()
                break
            except LinkDown as exc:
                logger.warning("terminal %s: cannot replug: %s", self.config.tid, exc)
                self._stop.wait(0.5)
        self._await_reader()

    def _await_reader(self) -> None:
        wait = self.config.reader_wait
        if wait == 0:
            return
        deadline = None if wait is None else self._clock() + wait
        while not self._stop.is_set():
            try:
                if self.link.wait_for_reader(0.1):
                    return
            except LinkDown:
                self._stop.wait(0.1)
            if deadline is not None and self._clock() >= deadline:
                logger.warning(
                    "terminal %s: nobody opened %s within %.0f s; sending anyway",
                    self.config.tid,
                    self.link.name,
                    wait,
                )
                return

    def _run_logged(self, count: int | None, duration: float | None, close_batch: bool) -> None:
        try:
            self.run(count=count, duration=duration, close_batch=close_batch)
        except Exception:
            logger.exception("terminal %s: stopped by an error", self.config.tid)
