"""From the relay's copies to events: splitting, decoding and pairing, off the forwarding path.

`TapStream` is pure: it takes the relay's items (`Copy`, `Closed`, `ConnectFailed`) with
the wall and monotonic time of now, and returns events. `DecodeWorker` is the thread that
drains the relay's queue into a `TapStream` and hands the events to a sink (the agent's
outbox). A decode error is counted by its reason and the stream goes on: it never reaches
the relay, which has already forwarded the bytes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from agent.tap.codec import Decoder, Splitter, TapDecodeError
from agent.tap.pairing import Event, Pairer, Seen
from agent.tap.relay import Closed, ConnectFailed, Copy, CopyQueue, Direction, Item

logger = logging.getLogger(__name__)

# How often a quiet worker checks for requests that timed out.
EXPIRE_EVERY_S = 0.5


class TapStream:
    """Splits each connection's two directions, decodes, pairs; values in, events out."""

    def __init__(self, decoder: Decoder, pairer: Pairer) -> None:
        self.decoder = decoder
        self.pairer = pairer
        self.decoded = 0
        self.errors: Counter[str] = Counter()
        self.oversized = 0
        self._splitters: dict[tuple[int, Direction], Splitter] = {}

    def take(self, item: Item, now: datetime, mono: float) -> list[Event]:
        """Events completed by one item from the relay."""
        at = now - timedelta(seconds=max(0.0, mono - item.mono))
        if isinstance(item, ConnectFailed):
            return self.pairer.connect_failed(at)
        if isinstance(item, Closed):
            for direction in Direction:
                splitter = self._splitters.pop((item.connection, direction), None)
                if splitter is not None:
                    self.oversized += splitter.oversized
            return []
        return self._copy(item, at)

    def expire(self, now: datetime, mono: float) -> list[Event]:
        """Link failures for requests that waited too long."""
        return self.pairer.expire(mono, now)

    def _copy(self, item: Copy, at: datetime) -> list[Event]:
        key = (item.connection, item.direction)
        splitter = self._splitters.get(key)
        if splitter is None:
            splitter = Splitter(self.decoder.spec.framing.max_message)
            self._splitters[key] = splitter
        events: list[Event] = []
        for data in splitter.feed(item.data):
            try:
                message = self.decoder.decode(data)
            except TapDecodeError as exc:
                self.errors[exc.reason] += 1
                logger.debug("host-link message not decoded: %s", exc.reason)
                continue
            self.decoded += 1
            events.extend(self.pairer.observe(Seen(message, at, item.mono)))
        return events


class DecodeWorker:
    """The thread that turns the relay's copies into events for `sink`."""

    def __init__(
        self,
        copies: CopyQueue,
        stream: TapStream,
        sink: Callable[[Event], None],
        *,
        name: str = "tap-decode",
    ) -> None:
        self.copies = copies
        self.stream = stream
        self.sink = sink
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Decode what the relay already queued, then end the thread."""
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        next_expiry = time.monotonic() + EXPIRE_EVERY_S
        while True:
            item = self.copies.get(timeout=EXPIRE_EVERY_S)
            if item is None and self._stop.is_set():
                return
            mono, now = time.monotonic(), datetime.now(UTC)
            try:
                events = [] if item is None else self.stream.take(item, now, mono)
                if mono >= next_expiry:
                    events.extend(self.stream.expire(now, mono))
                    next_expiry = mono + EXPIRE_EVERY_S
            except Exception:
                # One bad message never stops the tap's decoding.
                logger.exception("tap decoder: item dropped")
                continue
            for event in events:
                try:
                    self.sink(event)
                except Exception:
                    # Nor does a failing sink: the next event gets its own chance.
                    logger.exception("tap decoder: %s event not handed on", event.SCHEMA)
