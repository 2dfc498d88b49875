"""A subscriber's fast read path: paho's client reading its socket in chunks, PUBLISH
packets taken whole from that buffer, QoS 1 acks joined into one write.

This is the only module that touches paho's private internals, for speed (see
`BufferedPaho`; benchmarks/collector_ingest.py measures it against bare paho). Each
private name it overrides, calls or reads is listed once, with why, in `PAHO_INTERNALS`;
pyproject pins paho-mqtt to `PAHO_REQUIREMENT`, the versions those were checked on, and
tests/test_mqtt_paho_internals.py fails, naming the entry, when the installed paho no
longer has one in the shape used here.
"""

from __future__ import annotations

import select
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version as distribution_version
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

try:
    from paho.mqtt.exception import MalformedPacket
except ImportError as exc:  # paho < 2.2: say what is wrong, not just what is missing
    raise ImportError(
        f"posmon.mqtt needs paho-mqtt>=2.2,<2.3, not {distribution_version('paho-mqtt')}: its fast "
        "read path uses paho internals (PAHO_INTERNALS in posmon/mqtt/fastread.py)"
    ) from exc

# What pyproject allows for paho-mqtt (every extra that needs it): the releases on which
# every entry of PAHO_INTERNALS was checked. Widen it only after that test passes on the
# new release (scripts/lowest-versions installs the lowest).
PAHO_REQUIREMENT = "paho-mqtt>=2.2,<2.3"

READ_CHUNK = 65536
# MQTT 3.1.1 PUBACK, and MQTT 5's with reason code 0 and no properties (MQTT 5 §3.4.2.1).
_PUBACK = 0x40


@dataclass(frozen=True, slots=True)
class PahoInternal:
    """A private name of paho that `BufferedPaho` depends on.

    `kind`: "override" (a `paho.Client` method replaced here, falling back to paho's own),
    "method" (a `paho.Client` method called), "attribute" (an instance attribute of
    `paho.Client` read or written), or "module" (a name in a paho module: `where`).
    `parameters`: a method's parameter names after self, as paho declares them.
    """

    name: str
    kind: str
    why: str
    parameters: tuple[str, ...] = ()
    where: str = "paho.mqtt.client"


PAHO_INTERNALS: tuple[PahoInternal, ...] = (
    PahoInternal(
        "_sock_recv",
        "override",
        "paho's one socket read; served from a buffer filled by one recv of what has arrived",
        ("bufsize",),
    ),
    PahoInternal(
        "_packet_read",
        "override",
        "a packet whole in the buffer is handled in one step instead of byte by byte",
    ),
    PahoInternal(
        "_handle_publish",
        "override",
        "an incoming PUBLISH to on_publish_bytes, without paho's per-message objects",
    ),
    PahoInternal("_packet_handle", "method", "dispatches the packet `_packet_read` took whole"),
    PahoInternal(
        "_easy_log",
        "method",
        "logs a malformed packet as paho's _packet_read does",
        ("level", "fmt", "args"),
    ),
    PahoInternal("_send_puback", "method", "acks a QoS 1 PUBLISH taken by the fast path", ("mid",)),
    PahoInternal(
        "_packet_queue",
        "method",
        "queues the joined PUBACKs of ack_many as one write",
        ("command", "packet", "mid", "qos", "info"),
    ),
    PahoInternal(
        "_reset_sockets",
        "method",
        "closes the socket and paho's wake-up pair in close() (paho leaves them to __del__)",
        ("sockpair_only",),
    ),
    PahoInternal("_sock", "attribute", "the socket the read-ahead buffer belongs to"),
    PahoInternal(
        "_in_packet",
        "attribute",
        "the packet being read: set as paho's _packet_read leaves it for its handlers",
    ),
    PahoInternal("_msgtime_mutex", "attribute", "guards _last_bytes_received, as in paho"),
    PahoInternal(
        "_last_bytes_received",
        "attribute",
        "the keep-alive's clock of the last read (paho 2.1 called it _last_msg_in)",
    ),
    PahoInternal("_protocol", "attribute", "MQTT 5 PUBLISH packets carry properties to skip"),
    PahoInternal("_in_callback_mutex", "attribute", "held around the handler, as paho holds it"),
    PahoInternal("_manual_ack", "attribute", "whether QoS 1 messages are acked by the owner"),
    PahoInternal("time_func", "module", "the clock paho stamps _last_bytes_received with"),
    PahoInternal(
        "MalformedPacket",
        "module",
        "what _packet_handle raises on a bad packet (paho >= 2.2)",
        where="paho.mqtt.exception",
    ),
)


class BufferedPaho(paho.Client):
    """paho's client, reading its socket in chunks of up to `READ_CHUNK` bytes.

    paho reads each packet with three or more `recv` calls (one byte of packet type, the
    remaining length a byte at a time, then the rest), and the owner's drain loop asks
    `select` before each packet: five system calls for a message of a few hundred bytes.
    Here `_sock_recv`, paho's one read primitive, serves those reads from a buffer filled
    by one `recv` of whatever has arrived, so a busy subscriber reads a few hundred
    messages per system call. paho's parsing, state and errors are unchanged: a short or
    failed `recv` surfaces exactly as before (BlockingIOError, b"" for a closed peer).
    The buffer belongs to one socket: a reconnect starts with an empty one.

    Over TLS one read returns one TLS record, and mosquitto sends every packet in a record
    of its own: the buffer is filled with every record that has arrived (up to
    `READ_CHUNK`), else it would hold one message and each went paho's byte-by-byte way
    (measured: one read, one `pending()` and one `select` per message). An end or error
    met after the first record surfaces once the records before it are parsed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_sock: object = None
        self._read_buffer = b""
        self._read_pos = 0
        self._read_later: Exception | None = None  # what the socket said after the buffer
        # (topic, payload, qos, retain, mid) of each PUBLISH, in place of on_message.
        self.on_publish_bytes: Callable[[str, bytes, int, bool, int], None] | None = None

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._read_sock is not self._sock:
            self._read_sock, self._read_buffer, self._read_pos = self._sock, b"", 0
            self._read_later = None
        buffer, pos = self._read_buffer, self._read_pos
        if pos >= len(buffer):
            if self._read_later is not None:
                later, self._read_later = self._read_later, None
                if isinstance(later, EOFError):
                    return b""
                raise later
            buffer = super()._sock_recv(max(bufsize, READ_CHUNK))
            if not buffer:
                return buffer
            if isinstance(self._sock, ssl.SSLSocket):
                buffer = self._more_records(buffer)
            self._read_buffer, pos = buffer, 0
        end = pos + bufsize
        self._read_pos = end
        return buffer[pos:end]

    def _more_records(self, first: bytes) -> bytes:
        """`first` and the TLS records that have arrived after it, up to `READ_CHUNK`."""
        parts, size = [first], len(first)
        while size < READ_CHUNK:
            try:
                part = super()._sock_recv(READ_CHUNK - size)
            except BlockingIOError:
                break  # nothing more yet
            except Exception as exc:  # paho's to handle, after what was read before it
                self._read_later = exc
                break
            if not part:
                self._read_later = EOFError()
                break
            parts.append(part)
            size += len(part)
        return b"".join(parts)

    def _packet_read(self) -> MQTTErrorCode:
        """A packet whole in the read-ahead buffer is taken in one step; anything else
        (a packet begun, or not all read yet) goes paho's byte-by-byte way.

        The state paho's packet handlers read (`_in_packet`) is set as paho's own
        `_packet_read` leaves it for them, and reset and time-stamped after, as it does.
        """
        whole = self._whole_packet()
        if whole is None:
            return super()._packet_read()
        command, start, end = whole
        self._read_pos = end
        self._in_packet = _in_packet(command, bytearray(memoryview(self._read_buffer)[start:end]))
        try:
            code = self._packet_handle()
        except MalformedPacket as exc:
            self._easy_log(paho.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            code = MQTTErrorCode.MQTT_ERR_PROTOCOL
        self._in_packet = _in_packet(0, bytearray())
        with self._msgtime_mutex:
            self._last_bytes_received = paho.time_func()
        return code

    def _whole_packet(self) -> tuple[int, int, int] | None:
        """(packet type byte, start, end) of a packet held whole in the buffer, if one is."""
        if self._in_packet["command"] != 0 or self._read_sock is not self._sock:
            return None
        buffer, pos = self._read_buffer, self._read_pos
        remaining = _variable_int(buffer, pos + 1)  # the fixed header's remaining length
        if remaining is None:
            return None
        length, index = remaining
        if index + length > len(buffer):
            return None
        return buffer[pos], index, index + length

    def _handle_publish(self) -> MQTTErrorCode:
        """An incoming PUBLISH straight to `on_publish_bytes`, without paho's per-message objects.

        paho builds an MQTTMessage, its properties, a log line and a topic-filter match for
        every message, most of a subscriber's time. posmon needs the topic, payload, QoS,
        retain flag and packet id, read here from the packet as MQTT 3.1.1 §3.3 and MQTT 5
        §3.3 lay it out (MQTT 5's properties skipped: posmon sends none). QoS 2, a topic
        that is not UTF-8 or a packet too short for its lengths go the way paho goes.
        """
        handler = self.on_publish_bytes
        command = self._in_packet["command"]
        qos = (command & 0x06) >> 1
        packet = self._in_packet["packet"]
        if handler is None or qos >= 2:  # QoS 2, or 3 (malformed): paho's way
            return super()._handle_publish()
        offsets = _publish_offsets(packet, qos, v5=self._protocol == paho.MQTTv5)
        if offsets is None:
            return super()._handle_publish()
        topic_end, start = offsets
        try:
            topic = packet[2:topic_end].decode("utf-8")
        except UnicodeDecodeError:
            return super()._handle_publish()
        mid = (packet[topic_end] << 8) | packet[topic_end + 1] if qos else 0
        with self._in_callback_mutex:  # as paho: a publish from the handler is queued
            handler(topic, bytes(packet[start:]), qos, bool(command & 0x01), mid)
        if qos == 1 and not self._manual_ack:
            return self._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def close(self, flush_s: float) -> None:
        """Write what is queued (a DISCONNECT, so no will is sent) for up to `flush_s`,
        then close the socket and paho's wake-up socket pair. paho leaves both to its
        `__del__`, which a garbage cycle may run after the sockets' own finalizers (a
        ResourceWarning for each)."""
        deadline = time.monotonic() + flush_s
        while self.want_write() and self._sock is not None and time.monotonic() < deadline:
            select.select([], [self._sock], [], max(deadline - time.monotonic(), 0))
            if self.loop_write() is not MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            if self.want_write():
                time.sleep(0.005)  # TLS may want to read first: do not spin meanwhile
        self._reset_sockets()

    def buffered(self) -> bool:
        """Whether bytes already read from the current socket wait to be parsed (or an end
        or error read after them waits to be reported)."""
        return self._read_sock is self._sock and (
            self._read_pos < len(self._read_buffer) or self._read_later is not None
        )

    def ack_many(self, mids: list[int]) -> MQTTErrorCode:
        """Acknowledge QoS 1 messages with their PUBACKs queued as one write.

        Each `ack()` would queue its 4-byte PUBACK and write it at once: a system call
        per message. The packets are the same; only the writes are joined.
        """
        if not self._manual_ack or not mids:  # paho acks by itself without manual_ack
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        blob = b"".join(struct.pack("!BBH", _PUBACK, 2, mid) for mid in mids)
        return self._packet_queue(_PUBACK, blob, 0, 1)


def _in_packet(command: int, packet: bytearray) -> Any:
    """paho's state of the packet being read, complete (as paho leaves it for its handlers)."""
    return {
        "command": command,
        "have_remaining": 1 if command else 0,
        "remaining_count": [],
        "remaining_mult": 1,
        "remaining_length": len(packet),
        "packet": packet,
        "to_process": 0,
        "pos": 0,
    }


def _variable_int(data: bytes | bytearray, index: int) -> tuple[int, int] | None:
    """An MQTT variable byte integer (1 to 4 bytes, MQTT 5 §1.5.5) at `index`: its value and
    the index after it; None when `data` ends first or it runs past 4 bytes."""
    value = shift = 0
    while True:
        if index >= len(data) or shift > 21:
            return None
        byte = data[index]
        index += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, index


def _publish_offsets(packet: bytes | bytearray, qos: int, *, v5: bool) -> tuple[int, int] | None:
    """Where a PUBLISH's topic ends and its payload starts; None when its lengths do not fit.

    After the fixed header: the topic's length (2 bytes) and text, the packet id (QoS 1
    and 2), and in MQTT 5 the properties' length (a variable byte integer) and properties.
    """
    size = len(packet)
    if size < 2:
        return None
    topic_end = 2 + ((packet[0] << 8) | packet[1])
    start = topic_end + (2 if qos else 0)
    if topic_end == 2 or start > size:  # an empty topic: MQTT 5's topic alias, paho's way
        return None
    if v5:
        properties = _variable_int(packet, start)  # their length, then the properties
        if properties is None:
            return None
        length, start = properties
        start += length
        if start > size:
            return None
    return topic_end, start
