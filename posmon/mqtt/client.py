"""`MqttClient`: a paho client with posmon's defaults, driven by its owner's loop.

QoS 1, a persistent session, no threads of its own; reconnects when its owner says so,
with `Backoff`. Reading goes through `fastread.BufferedPaho`; everything here uses paho's
public API.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from posmon.mqtt.backoff import Backoff
from posmon.mqtt.fastread import BufferedPaho
from posmon.mqtt.settings import MqttSettings, Protocol

logger = logging.getLogger(__name__)

DRAIN_PACKETS = 500
CONNACK_WAIT_S = 5.0
# How long disconnect() waits for the socket to take what is queued (the DISCONNECT last).
DISCONNECT_FLUSH_S = 1.0


class MqttError(ConnectionError):
    """The broker could not be reached, refused us, or the connection was lost."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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
        self._client = BufferedPaho(
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
        self._brokers = settings.brokers
        self._current = 0

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
        if awaiting:  # no CONNACK from this one: the next broker
            self._next_broker()
        host, port = self.broker
        try:
            if not self._started or (host, port) != (self._client.host, self._client.port):
                properties = None
                if settings.protocol is Protocol.V5:
                    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                    properties.SessionExpiryInterval = settings.session_expiry_s
                self._client.connect(
                    host,
                    port,
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
            self.last_error = f"{host}:{port}: {exc}"
            self._next_broker()
            raise MqttError(self.last_error) from exc

    @property
    def broker(self) -> tuple[str, int]:
        """(host, port) of the broker in use, or tried next."""
        return self._brokers[self._current]

    def _next_broker(self) -> None:
        """Go on to the next broker of `[mqtt] hosts` (the session and the messages not
        yet acknowledged go with the client: paho sends them again after the CONNACK)."""
        self._current = (self._current + 1) % len(self._brokers)

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

    def unsubscribe(self, topics: list[str]) -> None:
        """End subscriptions (the session's others stay)."""
        result, _ = self._client.unsubscribe(topics)
        if result is not MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MqttError(f"unsubscribe: {paho.error_string(result)}")

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
            *self.broker,
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
        self._next_broker()
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
