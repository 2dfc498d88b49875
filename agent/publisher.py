"""Drains the outbox to the broker: QoS 1, in order, an event removed only after its PUBACK.

One thread owns the MQTT client: it connects (with backoff and jitter), keeps up to
`inflight` events handed to the client, and deletes each from the outbox when the broker
acknowledges it. After a reconnect the client re-sends what was in flight, in order, and
the drain carries on from the outbox; after a restart the whole outbox is replayed. A
repeat is possible in both cases and carries the same event_id, so consumers drop it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from agent.outbox import Outbox
from posmon.mqtt import MqttClient

logger = logging.getLogger(__name__)

LOOP_TIMEOUT_S = 0.02
IDLE_WAIT_S = 0.1
# Deletes are batched: a lost delete only means a repeat after a crash, and each delete
# is a commit.
REMOVE_EVERY_S = 0.5


class Publisher:
    """Moves events from the outbox to the broker until stopped."""

    def __init__(
        self,
        outbox: Outbox,
        client: MqttClient,
        *,
        presence: Callable[[bool], tuple[str, bytes]],
        inflight: int,
    ) -> None:
        self.outbox = outbox
        self.client = client
        self.presence = presence
        self.inflight = inflight
        self.published = 0
        self.presence_stale = threading.Event()
        # Set by whoever adds to the outbox; set at start so a restart replays the backlog.
        self.outbox_changed = threading.Event()
        self.outbox_changed.set()
        self._more = False
        self._handed: dict[int, int] = {}  # mid -> outbox id, in flight
        self._acked: list[int] = []
        self._other_acks: set[int] = set()  # presence messages
        self._last_id = 0
        self._last_remove = 0.0
        client.on_connected = self._connected
        client.on_published = self._published

    def run(
        self,
        stop: threading.Event,
        drain_s: float = 2.0,
        *,
        every: tuple[float, Callable[[], None]] | None = None,
    ) -> None:
        """Publish until `stop` is set, then give in-flight events `drain_s` to be acked.

        `every=(seconds, duty)` calls `duty` every so often from this loop (the agent's
        stats line), so that it needs no thread of its own.
        """
        next_duty = time.monotonic() + every[0] if every else float("inf")
        while not stop.is_set():
            try:
                if every and time.monotonic() >= next_duty:
                    next_duty += every[0]
                    every[1]()
                busy = self.step()
            except Exception:
                # One bad turn must not end publishing: the outbox keeps everything.
                logger.exception("publisher: unexpected error; carrying on")
                busy = False
            if not busy:
                stop.wait(LOOP_TIMEOUT_S)  # no connection yet
            elif self._idle():
                # Nothing in flight, nothing new: sleep until the outbox changes, waking
                # now and then for the keep-alive and the batched deletes. Polling would
                # cost CPU on a small box.
                self.outbox_changed.wait(IDLE_WAIT_S)
        deadline = time.monotonic() + drain_s
        while self._handed and self.client.connected and time.monotonic() < deadline:
            self.client.loop(LOOP_TIMEOUT_S)
        self._flush_removes()
        if self.client.connected:
            topic, payload = self.presence(False)
            mid = self.client.publish(topic, payload, retain=True)
            deadline = time.monotonic() + 1.0
            while (
                mid not in self._other_acks
                and self.client.connected
                and time.monotonic() < deadline
            ):
                self.client.loop(LOOP_TIMEOUT_S)
        self.client.disconnect()

    def step(self) -> bool:
        """One turn: connect if due, network I/O, hand over new events, record acks.

        Returns False while there is no connection (the caller waits a little).
        """
        self.client.connect_when_due()
        if self.client.connected:
            if self.presence_stale.is_set():
                self.presence_stale.clear()
                topic, payload = self.presence(True)
                self.client.publish(topic, payload, retain=True)
            if self.outbox_changed.is_set() or self._more:
                self.outbox_changed.clear()
                self._hand_over()
        # Waiting for PUBACKs, those of what was just handed over included: block on the
        # socket a little, so that one turn (one wake-up) carries an event through.
        # Otherwise just do what is due.
        if not self.client.loop(LOOP_TIMEOUT_S if self._handed else 0.0):
            return False
        now = time.monotonic()
        if self._acked and now - self._last_remove >= REMOVE_EVERY_S:
            self._flush_removes()
        return True

    def _connected(self, session_present: bool) -> None:
        self.presence_stale.set()

    def _hand_over(self) -> None:
        room = self.inflight - len(self._handed)
        if room <= 0:
            self._more = True
            return
        entries = self.outbox.peek(self._last_id, room)
        self._more = len(entries) == room  # a full window: there may be more behind it
        for entry in entries:
            mid = self.client.publish(entry.topic, entry.payload)
            self._handed[mid] = entry.id
            self._last_id = entry.id

    def _idle(self) -> bool:
        return not (
            self._handed
            or self._more
            or self.outbox_changed.is_set()
            or self.presence_stale.is_set()
        )

    def _published(self, mid: int) -> None:
        outbox_id = self._handed.pop(mid, None)
        if outbox_id is not None:
            self._acked.append(outbox_id)
            self.published += 1
        else:
            self._other_acks.add(mid)

    def _flush_removes(self) -> None:
        self.outbox.remove(self._acked)
        self._acked = []
        self._last_remove = time.monotonic()
