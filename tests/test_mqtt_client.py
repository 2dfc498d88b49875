"""posmon's MQTT client on a real mosquitto: what its own read path (chunked reads, PUBLISH
read without paho's message objects) and its joined PUBACKs deliver, on MQTT 3.1.1 and 5.

Publishers here are bare paho clients, so the packets are what any MQTT client sends,
MQTT 5 properties included; the packet-layout cases below them are byte strings as
MQTT 3.1.1 §3.3 and MQTT 5 §3.3 lay them out, some no conforming broker would send.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import paho.mqtt.client as paho
import pytest
from conftest import Broker, wait_until
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from posmon.mqtt import Message, MqttClient, Protocol
from posmon.mqtt.fastread import _publish_offsets


class Subscriber:
    """An MqttClient subscribed to `{prefix}/#`, looped on a thread, collecting messages."""

    def __init__(
        self,
        broker: Broker,
        prefix: str,
        protocol: Protocol,
        *,
        manual_ack: bool = False,
        keepalive_s: int = 30,
    ) -> None:
        self.client_id = f"sub-{uuid.uuid4().hex[:8]}"
        self.broker = broker
        self.prefix = prefix
        self.protocol = protocol
        self.manual_ack = manual_ack
        self.keepalive_s = keepalive_s
        self.messages: list[Message] = []
        self.unacked: list[Message] = []
        self.ack_when: Callable[[Message], bool] = lambda message: False
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.client = self._client()

    def _client(self) -> MqttClient:
        settings = self.broker.settings(
            self.prefix, protocol=self.protocol.value, keepalive_s=self.keepalive_s
        )
        client = MqttClient(settings, self.client_id, manual_ack=self.manual_ack)
        client.on_message = self._received
        client.on_connected = lambda present: client.subscribe([f"{self.prefix}/#"])
        return client

    def _received(self, message: Message) -> None:
        with self.lock:
            self.messages.append(message)
        if self.ack_when(message):
            self.unacked.append(message)

    def start(self) -> None:
        self.stop.clear()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        wait_until(lambda: self.client.connected, 10, "subscriber connected")
        time.sleep(0.1)  # the SUBACK

    def _loop(self) -> None:
        while not self.stop.is_set():
            self.client.connect_when_due()
            self.client.loop(0.01)
            if self.unacked:  # in batches, as the collector acks what it has stored
                batch, self.unacked = self.unacked, []
                self.client.ack_all(batch)

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(5)
        self.client.disconnect()

    def reopen(self) -> None:
        """A new client on the same persistent session."""
        self.client = self._client()
        self.start()

    def received(self) -> list[Message]:
        with self.lock:
            return list(self.messages)


@pytest.fixture(params=[Protocol.V311, Protocol.V5], ids=["mqtt3.1.1", "mqtt5"])
def protocol(request: pytest.FixtureRequest) -> Protocol:
    value: Protocol = request.param
    return value


@pytest.fixture
def publisher(broker: Broker) -> Iterator[paho.Client]:
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"pub-{uuid.uuid4().hex[:8]}",
        protocol=paho.MQTTv5,
    )
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    yield client
    client.loop_stop()
    client.disconnect()


def publish(client: paho.Client, topic: str, payload: bytes, **kwargs: object) -> None:
    client.publish(topic, payload, **kwargs).wait_for_publish(10)  # type: ignore[arg-type]


def test_topic_payload_qos_and_retain_arrive_as_sent(
    broker: Broker, prefix: str, protocol: Protocol, publisher: paho.Client
) -> None:
    publish(publisher, f"{prefix}/retained", b"kept", qos=1, retain=True)
    subscriber = Subscriber(broker, prefix, protocol)
    subscriber.start()
    try:
        user = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        user.UserProperty = ("source", "test")
        user.ContentType = "application/json"
        publish(publisher, f"{prefix}/a/qos1", b'{"n": 1}', qos=1, properties=user)
        publish(publisher, f"{prefix}/a/qos0", b"zero", qos=0)
        publish(publisher, f"{prefix}/utf8/收单", "到账".encode(), qos=1)
        publish(publisher, f"{prefix}/empty", b"", qos=1)
        wait_until(lambda: len(subscriber.received()) == 5, 10, "five messages")
        got = {m.topic.removeprefix(prefix + "/"): m for m in subscriber.received()}
        assert (got["retained"].payload, got["retained"].retain, got["retained"].qos) == (
            b"kept",
            True,
            1,
        )
        # MQTT 5 properties are skipped: the payload is the payload, nothing before it.
        assert got["a/qos1"].payload == b'{"n": 1}' and got["a/qos1"].qos == 1
        assert not got["a/qos1"].retain and got["a/qos1"].mid > 0
        assert (got["a/qos0"].payload, got["a/qos0"].qos) == (b"zero", 0)
        assert got["utf8/收单"].payload == "到账".encode()
        assert got["empty"].payload == b""
    finally:
        subscriber.close()


def test_a_burst_larger_than_one_read_arrives_whole_and_in_order(
    broker: Broker, prefix: str, protocol: Protocol, publisher: paho.Client
) -> None:
    """Packets cut across 64 KiB reads, and one bigger than a read, are put together."""
    subscriber = Subscriber(broker, prefix, protocol)
    subscriber.start()
    try:
        payloads = [(f"{i:05d}-".encode() * (1 + i % 97)) for i in range(3000)]
        payloads.insert(1500, b"x" * 200_000)
        for payload in payloads:
            publisher.publish(f"{prefix}/burst", payload, qos=1)
        wait_until(lambda: len(subscriber.received()) == len(payloads), 30, "the whole burst")
        assert [m.payload for m in subscriber.received()] == payloads
    finally:
        subscriber.close()


def test_joined_acks_take_every_message_off_the_session(
    broker: Broker, prefix: str, protocol: Protocol, publisher: paho.Client
) -> None:
    """Messages acked with ack_all are not sent again; those left unacked are."""
    subscriber = Subscriber(broker, prefix, protocol, manual_ack=True)
    subscriber.ack_when = lambda message: int(message.payload) < 290
    subscriber.start()
    for i in range(300):
        publisher.publish(f"{prefix}/n", str(i).encode(), qos=1)
    wait_until(lambda: len(subscriber.received()) == 300, 10, "300 messages")
    time.sleep(0.2)  # the last acks written
    subscriber.close()
    subscriber.messages.clear()
    subscriber.reopen()
    try:
        wait_until(lambda: len(subscriber.received()) == 10, 10, "the 10 unacked again")
        time.sleep(0.3)
        again = sorted(int(m.payload) for m in subscriber.received())
        assert again == list(range(290, 300))
    finally:
        subscriber.close()


def test_messages_of_an_earlier_connection_are_not_acked_on_the_next(
    broker: Broker, prefix: str, protocol: Protocol, publisher: paho.Client
) -> None:
    """After a reconnect the broker sends the unacked messages again, under the same
    packet ids. Acks for the first copies, come late (stored while the connection was
    lost), are not sent: they would take the new copies off the session before those
    are handled, or, once the ids are reused, other messages."""
    subscriber = Subscriber(broker, prefix, protocol, manual_ack=True)
    subscriber.start()
    for i in range(10):
        publisher.publish(f"{prefix}/n", str(i).encode(), qos=1)
    wait_until(lambda: len(subscriber.received()) == 10, 10, "10 messages")
    first = subscriber.received()
    subscriber.client._client.socket().shutdown(socket.SHUT_RDWR)  # the connection is lost
    wait_until(lambda: len(subscriber.received()) == 20, 10, "the 10 again after a reconnect")
    subscriber.unacked.extend(first)  # acked now, on the new connection
    time.sleep(0.3)
    subscriber.close()
    subscriber.messages.clear()
    subscriber.reopen()
    try:
        wait_until(lambda: len(subscriber.received()) == 10, 10, "the 10 still on the session")
        assert sorted(int(m.payload) for m in subscriber.received()) == list(range(10))
    finally:
        subscriber.close()


def test_nagle_is_off_on_the_first_connection_and_after_a_reconnect(
    broker: Broker, prefix: str, protocol: Protocol
) -> None:
    """A publish or a batch's acks go out at once: TCP_NODELAY is set on every connection's
    socket (paho leaves Nagle's algorithm on, which holds a small packet until the TCP
    acknowledgement of the one before it)."""
    subscriber = Subscriber(broker, prefix, protocol)
    subscriber.start()
    try:
        first = subscriber.client._client.socket()
        assert first.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        first.shutdown(socket.SHUT_RDWR)  # the connection is lost; the client reconnects
        wait_until(
            lambda: subscriber.client.connected and subscriber.client._client.socket() is not first,
            10,
            "a reconnect",
        )
        second = subscriber.client._client.socket()
        assert second.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        subscriber.close()


def test_keep_alive_answers_are_read_on_the_whole_packet_path(
    broker: Broker, prefix: str, publisher: paho.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """A PINGRESP (two bytes, no body) is taken like any other packet: paho logs it, the
    session stays up past the keep-alive and messages keep coming."""
    caplog.set_level(logging.DEBUG, logger="paho")
    subscriber = Subscriber(broker, prefix, Protocol.V311, keepalive_s=5)
    subscriber.start()
    try:
        wait_until(lambda: "Received PINGRESP" in caplog.text, 8, "a PINGRESP read")
        publish(publisher, f"{prefix}/after-ping", b"still here", qos=1)
        wait_until(lambda: len(subscriber.received()) == 1, 5, "a message after the ping")
        assert subscriber.client.connected
    finally:
        subscriber.close()


QOS1 = 0x32  # PUBLISH, QoS 1


@pytest.mark.parametrize(
    ("packet", "qos", "v5", "expected"),
    [
        # topic "a/b", packet id 7, payload "hi"
        (b"\x00\x03a/b\x00\x07hi", 1, False, (5, 7)),
        (b"\x00\x03a/bhi", 0, False, (5, 5)),
        # MQTT 5: properties length 0, then 3 bytes of properties
        (b"\x00\x03a/b\x00\x07\x00hi", 1, True, (5, 8)),
        (b"\x00\x03a/b\x00\x07\x03\x01\x01\x00hi", 1, True, (5, 11)),
        # a two-byte variable length: 128 bytes of properties, no payload
        (b"\x00\x01t\x00\x01\x80\x01" + b"\x00" * 128, 1, True, (3, 135)),
        # what paho must judge: an empty topic (MQTT 5 topic alias) or lengths past the end
        (b"\x00\x00\x00\x07\x00hi", 1, True, None),
        (b"\x00\x09a/b", 0, False, None),
        (b"\x00\x03a/b\x00", 1, False, None),
        (b"\x00\x03a/b\x00\x07\x05\x01", 1, True, None),
        (b"\x00\x03a/b\x00\x07\xff\xff\xff\xff\x7f", 1, True, None),
        (b"\x00", 0, False, None),
    ],
)
def test_publish_offsets_follow_the_packet_layout(
    packet: bytes, qos: int, v5: bool, expected: tuple[int, int] | None
) -> None:
    assert _publish_offsets(packet, qos, v5=v5) == expected
