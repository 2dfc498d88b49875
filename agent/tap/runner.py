"""Runs configured taps: one relay thread for all of them, one decode thread each.

The caller (the agent) gives a sink for the events; the taps never touch the outbox or
MQTT themselves.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import tzinfo

from agent.tap.codec import Decoder
from agent.tap.config import TapSection, parse_address
from agent.tap.pairing import Event, Pairer
from agent.tap.relay import CopyQueue, Relay, RelayThread
from agent.tap.stream import DecodeWorker, TapStream

logger = logging.getLogger(__name__)


class Taps:
    """The relays and decoders of a set of `[[taps]]` sections."""

    def __init__(
        self,
        sections: list[TapSection],
        *,
        agent_id: str,
        tz: tzinfo,
        currency: str,
        sink: Callable[[str, Event], None],
    ) -> None:
        self.sections = sections
        self.relays: list[Relay] = []
        self.streams: dict[str, TapStream] = {}
        self.queues: dict[str, CopyQueue] = {}
        self.workers: list[DecodeWorker] = []
        for section in sections:
            spec = section.load_spec()
            copies = CopyQueue(section.queue_size)
            relay = Relay(
                parse_address(section.listen),
                parse_address(section.upstream),
                copies,
                connect_timeout_s=section.connect_timeout_s,
            )
            pairer = Pairer(
                spec,
                agent_id,
                tz,
                currency=currency,
                timeout_s=section.response_timeout_s,
                network=section.network,
                tid=section.tid,
            )
            stream = TapStream(Decoder(spec), pairer)
            name = section.name
            self.relays.append(relay)
            self.streams[name] = stream
            self.queues[name] = copies
            self.workers.append(
                DecodeWorker(
                    copies,
                    stream,
                    functools.partial(sink, name),
                    name=f"tap-{name}",
                )
            )
        self._relays = RelayThread(self.relays)

    def start(self) -> None:
        """Listen on every tap's address (OSError if one is taken), then decode."""
        self._relays.start()
        for worker in self.workers:
            worker.start()
        for section, relay in zip(self.sections, self.relays, strict=True):
            logger.info(
                "tap %s: listening on port %s, relaying to %s",
                section.name,
                relay.port,
                section.upstream,
            )

    def stop(self) -> None:
        """Stop listening, reset open connections, decode what was queued."""
        self._relays.stop()
        for worker in self.workers:
            worker.stop()

    def stats(self) -> dict[str, dict[str, object]]:
        """Counters worth a log line, per tap."""
        return {
            section.name: {
                "connections": relay.connections,
                "connect_failures": relay.connect_failures,
                "copies_dropped": self.queues[section.name].dropped,
                "decoded": self.streams[section.name].decoded,
                "decode_errors": sum(self.streams[section.name].errors.values()),
                "pending": self.streams[section.name].pairer.pending,
                "skipped": sum(self.streams[section.name].pairer.skipped.values()),
            }
            for section, relay in zip(self.sections, self.relays, strict=True)
        }
