"""The one adapter to paho-mqtt: settings, topics, and a client driven by its owner's loop.

Agent and collector depend on `MqttClient`'s small surface (connect, loop, publish,
subscribe, ack) and never import paho. The client does not start threads of its own: the
owner calls `loop()` and decides when to reconnect, so reconnection follows posmon's
backoff with jitter rather than paho's fixed doubling.
"""

from __future__ import annotations

import contextlib
import logging
import random
import select
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import Field, SecretStr, model_validator

from posmon.config import Section

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = "posmon/v1"
DRAIN_PACKETS = 500
CONNACK_WAIT_S = 5.0
# How long disconnect() waits for the socket to take what is queued (the DISCONNECT last).
DISCONNECT_FLUSH_S = 1.0
READ_CHUNK = 65536
# MQTT 3.1.1 PUBACK, and MQTT 5's with reason code 0 and no properties (MQTT 5 §3.4.2.1).
_PUBACK = 0x40


class _BufferedPaho(paho.Client):
    """paho's client, reading its socket in chunks of up to `READ_CHUNK` bytes.

    paho reads each packet with three or more `recv` calls (one byte of packet type, the
    remaining length a byte at a time, then the rest), and the owner's drain loop asks
    `select` before each packet: five system calls for a message of a few hundred bytes.
    Here `_sock_recv`, paho's one read primitive, serves those reads from a buffer filled
    by one `recv` of whatever has arrived, so a busy subscriber reads a few hundred
    messages per system call. paho's parsing, state and errors are unchanged: a short or
    failed `recv` surfaces exactly as before (BlockingIOError, b"" for a closed peer).
    The buffer belongs to one socket: a reconnect starts with an empty one.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_sock: object = None
        self._read_buffer = b""
        self._read_pos = 0
        # (topic, payload, qos, retain, mid) of each PUBLISH, in place of on_message.
        self.on_publish_bytes: Callable[[str, bytes, int, bool, int], None] | None = None

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._read_sock is not self._sock:
            self._read_sock, self._read_buffer, self._read_pos = self._sock, b"", 0
        buffer, pos = self._read_buffer, self._read_pos
        if pos >= len(buffer):
            buffer = super()._sock_recv(max(bufsize, READ_CHUNK))
            if not buffer:
                return buffer
            self._read_buffer, pos = buffer, 0
        end = pos + bufsize
        self._read_pos = end
        return buffer[pos:end]

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
        """Whether bytes already read from the current socket wait to be parsed."""
        return self._read_sock is self._sock and self._read_pos < len(self._read_buffer)

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


class MqttError(ConnectionError):
    """The broker could not be reached, refused us, or the connection was lost."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Protocol(StrEnum):
    V311 = "3.1.1"
    V5 = "5"


class TlsSettings(Section):
    """TLS towards the broker."""

    enabled: bool = Field(False, description="Connect with TLS.")
    ca_file: Path | None = Field(None, description="CA bundle that signed the broker's cert.")
    cert_file: Path | None = Field(None, description="Client certificate (mutual TLS).")
    key_file: Path | None = Field(None, description="Client certificate's private key.")
    insecure: bool = Field(
        False, description="Skip the broker host name check (test set-ups only)."
    )

    @model_validator(mode="after")
    def _pairs(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class MqttSettings(Section):
    """Where the broker is and how to hold a session with it."""

    host: str = Field("127.0.0.1", description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 for TLS).")
    protocol: Protocol = Field(Protocol.V311, description="MQTT protocol: 3.1.1 or 5.")
    client_id: str = Field(
        "", max_length=128, description="Client id; empty: derived from the role and its id."
    )
    username: str | None = Field(None, description="Login name, if the broker wants one.")
    password: SecretStr | None = Field(None, description="Login password.")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keep-alive in seconds.")
    topic_prefix: str = Field(
        DEFAULT_PREFIX,
        pattern=r"^[^#+]+[^/#+]$",
        description="Prefix of every posmon topic, without a trailing slash.",
    )
    inflight: int = Field(
        20, ge=1, le=65535, description="QoS 1 messages sent and not yet acknowledged."
    )
    session_expiry_s: int = Field(
        7 * 24 * 3600,
        ge=0,
        description="MQTT 5: how long the broker keeps the session while we are away.",
    )
    reconnect_min_s: float = Field(0.5, gt=0, description="First reconnect delay.")
    reconnect_max_s: float = Field(60.0, gt=0, description="Longest reconnect delay.")
    tls: TlsSettings = Field(default_factory=TlsSettings)

    @model_validator(mode="after")
    def _delays(self) -> MqttSettings:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must not be below reconnect_min_s")
        return self


class Topics:
    """The contract's topic names under one prefix."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix

    def terminal(self, tid: str, kind: str) -> str:
        """`{prefix}/terminals/{tid}/{txn|status|batch}`."""
        return f"{self.prefix}/terminals/{tid}/{kind}"

    def presence(self, agent_id: str) -> str:
        return f"{self.prefix}/agents/{agent_id}/presence"

    @property
    def settlements(self) -> str:
        return f"{self.prefix}/settlements"

    def alert(self, alert_type: str) -> str:
        return f"{self.prefix}/alerts/{alert_type}"

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}/deadletter"


class Backoff:
    """Exponential backoff with equal jitter: half the delay fixed, half random."""

    def __init__(self, minimum: float, maximum: float, rng: random.Random | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.attempts = 0
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography

    def next_delay(self) -> float:
        """The delay before the next attempt; grows until `maximum`."""
        ceiling = min(self.maximum, self.minimum * (2**self.attempts))
        self.attempts = min(self.attempts + 1, 32)
        return float(ceiling / 2 + self._rng.uniform(0, ceiling / 2))

    def reset(self) -> None:
        """Start again from the minimum, after a success."""
        self.attempts = 0


@dataclass(frozen=True, slots=True)
class Message:
    """A received message: bytes in, bytes out; `mid` is what `ack()` takes, on the
    connection (`connection`, counted from 1) it came on."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    connection: int = 0


class MqttClient:
    """A paho client with posmon's defaults: QoS 1, persistent session, no threads of its own."""

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        *,
        will: tuple[str, bytes] | None = None,
        manual_ack: bool = False,
    ) -> None:
        self.settings = settings
        self.client_id = settings.client_id or client_id
        self.on_connected: Callable[[bool], None] = lambda session_present: None
        self.on_disconnected: Callable[[str], None] = lambda reason: None
        self.on_published: Callable[[int], None] = lambda mid: None
        self.on_message: Callable[[Message], None] = lambda message: None
        self.connected = False
        self.last_error: str | None = None
        self._connection = 0  # connections opened so far: the messages' `connection`
        v5 = settings.protocol is Protocol.V5
        self._client = _BufferedPaho(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=None if v5 else False,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            manual_ack=manual_ack,
        )
        self._client.enable_logger(logging.getLogger("paho"))
        self._client.max_inflight_messages_set(settings.inflight)
        self._client.max_queued_messages_set(0)
        if settings.username is not None:
            password = settings.password.get_secret_value() if settings.password else None
            self._client.username_pw_set(settings.username, password)
        if settings.tls.enabled:
            self._client.tls_set(
                ca_certs=str(settings.tls.ca_file) if settings.tls.ca_file else None,
                certfile=str(settings.tls.cert_file) if settings.tls.cert_file else None,
                keyfile=str(settings.tls.key_file) if settings.tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
            self._client.tls_insecure_set(settings.tls.insecure)
        if will is not None:
            self._client.will_set(will[0], will[1], qos=1, retain=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message
        self._client.on_publish_bytes = self._on_publish_bytes
        self._started = False
        self._open = False  # a socket exists (CONNACK may still be on its way)
        self._backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s)
        self._next_attempt = 0.0
        self._connect_sent = 0.0

    # --- connection ---------------------------------------------------------------------

    def connect(self) -> None:
        """Open the TCP (and TLS) connection and send CONNECT; CONNACK arrives in `loop()`.

        While a CONNACK is still awaited (up to `CONNACK_WAIT_S`) this does nothing: a
        second CONNECT would cut off the first, and a busy broker restoring its sessions
        can keep a client out for a long time that way.
        """
        settings = self.settings
        awaiting = self._open and not self.connected
        if awaiting and time.monotonic() - self._connect_sent < CONNACK_WAIT_S:
            return
        try:
            if not self._started:
                properties = None
                if settings.protocol is Protocol.V5:
                    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                    properties.SessionExpiryInterval = settings.session_expiry_s
                self._client.connect(
                    settings.host,
                    settings.port,
                    keepalive=settings.keepalive_s,
                    clean_start=(
                        False
                        if settings.protocol is Protocol.V5
                        else paho.MQTT_CLEAN_START_FIRST_ONLY
                    ),
                    properties=properties,
                )
                self._started = True
            else:
                self._client.reconnect()
            # Counted when the socket opens, not at CONNACK: acks written before the
            # CONNACK is read would already go out on the new connection.
            self._connection += 1
            _no_delay(self._client.socket())
            self._open = True
            self._connect_sent = time.monotonic()
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.last_error = f"{settings.host}:{settings.port}: {exc}"
            raise MqttError(self.last_error) from exc

    def connect_when_due(self) -> None:
        """Connect if not connected and the backoff delay since the last try has passed.

        The owner's loop calls this every turn; failures are logged, never raised, and
        the delay grows (with jitter) until a CONNACK resets it.
        """
        if self.connected:
            return
        now = time.monotonic()
        if now < self._next_attempt:
            return
        delay = self._backoff.next_delay()
        self._next_attempt = now + delay
        try:
            self.connect()
        except MqttError as exc:
            logger.warning("MQTT: %s; retrying in %.1f s", exc.reason, delay)

    def loop(self, timeout: float = 0.1) -> bool:
        """Do network work for up to `timeout` s; return False when the connection is gone."""
        if not self._open:
            return False  # paho would log an error for every call without a socket
        # Bytes read ahead are invisible to paho's select: with some waiting, it must not wait.
        code = self._client.loop(0.0 if self._client.buffered() else timeout)
        if code is MQTTErrorCode.MQTT_ERR_SUCCESS:
            code = self._drain()
        if code is MQTTErrorCode.MQTT_ERR_SUCCESS:
            return True
        self._open = False
        if self.connected:
            self._lost(paho.error_string(code))
        return False

    def _drain(self, most: int = DRAIN_PACKETS) -> MQTTErrorCode:
        # paho's loop() reads one incoming packet per call: a subscriber would pay a full
        # loop (select, writes, keep-alive checks) per message. Read on while data waits:
        # in the read-ahead buffer, or (asking select only when that is empty) the socket.
        code = MQTTErrorCode.MQTT_ERR_SUCCESS
        client = self._client
        for _ in range(most):
            sock = client.socket()
            if sock is None:
                break
            if not client.buffered():
                pending = getattr(sock, "pending", None)  # TLS: bytes already decrypted
                if not (pending and pending()) and not select.select([sock], [], [], 0)[0]:
                    break
            code = client.loop_read()
            if code is not MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
        return code

    def disconnect(self) -> None:
        """Say goodbye cleanly (the will is not sent) and flush what the socket holds."""
        was_connected, self.connected = self.connected, False
        if was_connected:
            self._client.disconnect()
        self._client.close(DISCONNECT_FLUSH_S)
        self._open = False

    # --- messages -----------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1) -> int:
        """Queue a message; returns its mid, reported through `on_published` on PUBACK."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc is MQTTErrorCode.MQTT_ERR_CONN_LOST:
            # The message stays queued in the session and is re-sent after the reconnect.
            self._open = False
            if self.connected:
                self._lost(paho.error_string(info.rc))
        elif info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise MqttError(f"publish to {topic}: {paho.error_string(info.rc)}")
        return info.mid

    def subscribe(self, topics: list[str], qos: int = 1) -> None:
        """Subscribe (again after each reconnect: call from `on_connected`)."""
        result, _ = self._client.subscribe([(topic, qos) for topic in topics])
        if result is not MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MqttError(f"subscribe: {paho.error_string(result)}")

    def ack(self, message: Message) -> None:
        """Acknowledge a message received with manual_ack, once it is safely stored."""
        self.ack_all([message])

    def ack_all(self, messages: list[Message]) -> None:
        """Acknowledge many messages received with manual_ack, in one write where QoS 1.

        QoS 1 messages that came on an earlier connection are not acked: the broker sends
        them again on this one (a persistent session), and by the time the first copy is
        stored its packet id may name another message, stored or not. The new copy is
        acked. (A QoS 2 message is not sent again once received; its ack goes out.)
        """
        current = [m for m in messages if m.connection == self._connection or m.qos == 2]
        self._client.ack_many([m.mid for m in current if m.qos == 1])
        for message in current:
            if message.qos == 2:
                self._client.ack(message.mid, message.qos)

    # --- paho callbacks -----------------------------------------------------------------

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            self.last_error = f"broker refused the connection: {reason}"
            logger.warning("MQTT %s", self.last_error)
            return
        self.connected = True
        self.last_error = None
        self._backoff.reset()
        logger.info(
            "MQTT connected to %s:%s as %s (session present: %s)",
            self.settings.host,
            self.settings.port,
            self.client_id,
            flags.session_present,
        )
        self.on_connected(bool(flags.session_present))

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if self.connected:
            self._lost(str(reason))

    def _lost(self, reason: str) -> None:
        self.connected = False
        self.last_error = f"connection lost: {reason}"
        logger.warning("MQTT %s", self.last_error)
        self.on_disconnected(reason)

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: Any, props: Any
    ) -> None:
        self.on_published(mid)

    def _on_publish_bytes(
        self, topic: str, payload: bytes, qos: int, retain: bool, mid: int
    ) -> None:
        self.on_message(Message(topic, payload, qos, retain, mid, self._connection))

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self.on_message(
            Message(
                message.topic,
                bytes(message.payload),
                message.qos,
                message.retain,
                message.mid,
                self._connection,
            )
        )


def _no_delay(sock: Any) -> None:
    """Small packets go out at once. With Nagle's algorithm (paho leaves it on) a publish
    or an ack waits for the broker's TCP acknowledgement of the packet before it, which the
    broker's kernel may delay by tens of milliseconds."""
    # posmon connects over TCP (plain or TLS); a socket of another kind is left as it is.
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
