"""The tap's relay over real TCP: byte-exact both ways, fail-open, and the front end's
closes and refusals passed on to the terminal."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from agent.tap.codec import Decoder, encode
from agent.tap.pairing import Event, Pairer
from agent.tap.relay import (
    Closed,
    ConnectFailed,
    Copy,
    CopyQueue,
    Direction,
    Relay,
    RelayThread,
)
from agent.tap.spec import cup_pos
from agent.tap.stream import DecodeWorker, TapStream
from posmon.wire.models import StatusEvent, TxnEvent

SPEC = cup_pos()
# Upper bounds for a loaded machine: a test waits at most this long, never asserts speed.
WAIT_S = 30.0
TID, MID = "10000001", "898100012340001"


def frame(mti: str, **fields: str) -> bytes:
    return encode(
        mti, {"41": TID, "42": MID, **fields}, SPEC, tpdu="6000030000", header="603100000000"
    )


SALE = frame(
    "0200",
    **{
        "2": "6222021234567890123",
        "3": "000000",
        "4": "000000012800",
        "11": "000017",
        "35": "6222021234567890123D49121010000000000",
        "52": "0123456789ABCDEF",
        "60": "22000042000",
    },
)
APPROVAL = frame(
    "0210",
    **{"11": "000017", "12": "103015", "13": "1125", "37": "402511000017", "39": "00"},
)


class FrontEnd:
    """A scripted acquirer front end on a free port: records what it receives."""

    def __init__(self, reply: Callable[[socket.socket, bytes], None] | None = None) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.server.getsockname()[1]
        self.reply = reply
        self.received: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.server.settimeout(WAIT_S)
        try:
            while True:
                conn, _ = self.server.accept()
                threading.Thread(target=self._connection, args=(conn,), daemon=True).start()
        except OSError:
            return

    def _connection(self, conn: socket.socket) -> None:
        conn.settimeout(WAIT_S)
        data = bytearray()
        with conn:
            if self.reply is not None:
                self.reply(conn, bytes(data))
                return
            while chunk := conn.recv(65536):
                data += chunk
        self.received.append(bytes(data))

    def close(self) -> None:
        self.server.close()


@contextmanager
def relay_to(
    port: int, copies: CopyQueue | None = None, connect_timeout_s: float = 10.0
) -> Iterator[tuple[Relay, CopyQueue]]:
    copies = copies or CopyQueue()
    relay = Relay(
        ("127.0.0.1", 0), ("127.0.0.1", port), copies, connect_timeout_s=connect_timeout_s
    )
    runner = RelayThread([relay])
    runner.start()
    try:
        yield relay, copies
    finally:
        runner.stop()


def terminal(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    sock.settimeout(WAIT_S)
    return sock


def read_all(sock: socket.socket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


def hostile_stream() -> bytes:
    """Good messages mixed with garbage, a truncated message and an oversized one."""
    oversized = (60000).to_bytes(2, "big") + os.urandom(60000)
    return b"".join(
        [SALE, os.urandom(3000), SALE[: len(SALE) // 2], SALE, oversized, b"\x00\x00", SALE * 50]
    )


def test_both_directions_are_forwarded_byte_for_byte() -> None:
    to_terminal = hostile_stream()

    def answer(conn: socket.socket, _: bytes) -> None:
        received = read_all(conn)
        conn.sendall(to_terminal)
        front.received.append(received)

    front = FrontEnd(answer)
    to_host = hostile_stream()
    with relay_to(front.port) as (relay, _copies):
        sock = terminal(relay.port)
        with sock:
            for start in range(0, len(to_host), 7919):  # odd-sized writes
                sock.sendall(to_host[start : start + 7919])
            sock.shutdown(socket.SHUT_WR)
            got = read_all(sock)
    front.close()
    assert hashlib.sha256(got).digest() == hashlib.sha256(to_terminal).digest()
    assert hashlib.sha256(front.received[0]).digest() == hashlib.sha256(to_host).digest()


def test_a_full_decode_queue_drops_copies_not_bytes() -> None:
    front = FrontEnd()
    copies = CopyQueue(maxsize=1)  # and nobody reads it
    payload = SALE * 2000
    with relay_to(front.port, copies) as (relay, _):
        with terminal(relay.port) as sock:
            for start in range(0, len(payload), 1000):
                sock.sendall(payload[start : start + 1000])
        deadline = time.monotonic() + WAIT_S
        while not front.received and time.monotonic() < deadline:
            time.sleep(0.05)
    front.close()
    assert front.received == [payload]
    assert copies.dropped > 0


def test_a_connection_that_lost_a_copy_is_not_decoded_until_it_closes() -> None:
    copies = CopyQueue(maxsize=1)
    copies.offer(Copy(1, Direction.TO_HOST, b"a", 0.0))
    copies.offer(Copy(1, Direction.TO_HOST, b"bb", 0.0))  # no room: dropped
    assert copies.get(timeout=0) == Copy(1, Direction.TO_HOST, b"a", 0.0)
    copies.offer(Copy(1, Direction.TO_HOST, b"ccc", 0.0))  # room, but out of step
    copies.offer(Closed(1, 0.0))
    assert copies.get(timeout=0) == Closed(1, 0.0)
    copies.offer(Copy(1, Direction.TO_HOST, b"e", 0.0))  # a new stream: decoded again
    copies.offer(ConnectFailed(3, 0.0, "refused"))  # control items are never dropped
    assert [copies.get(timeout=0) for _ in range(2)] == [
        Copy(1, Direction.TO_HOST, b"e", 0.0),
        ConnectFailed(3, 0.0, "refused"),
    ]
    assert copies.get(timeout=0) is None
    assert (copies.dropped, copies.dropped_bytes) == (2, 5)


def test_decoded_pairs_reach_the_sink_and_a_failing_decoder_alters_nothing() -> None:
    def approve(conn: socket.socket, _: bytes) -> None:
        got = b""
        while len(got) < len(SALE):
            got += conn.recv(65536)
        conn.sendall(APPROVAL)
        front.received.append(got)
        conn.recv(1)  # until the terminal closes

    front = FrontEnd(approve)
    events: list[Event] = []
    failures = {"left": 1}

    def sink(event: Event) -> None:
        # The first event makes the sink fail: the worker logs it and goes on.
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("sink down")
        events.append(event)

    copies = CopyQueue()
    stream = TapStream(Decoder(SPEC), Pairer(SPEC, "agent-1", ZoneInfo("Asia/Shanghai")))
    worker = DecodeWorker(copies, stream, sink)
    worker.start()
    try:
        with relay_to(front.port, copies) as (relay, _):
            for _round in range(2):
                with terminal(relay.port) as sock:
                    sock.sendall(SALE)
                    got = b""
                    while len(got) < len(APPROVAL):
                        got += sock.recv(65536)
                    assert got == APPROVAL
            deadline = time.monotonic() + WAIT_S
            while len(events) < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        worker.stop()
        front.close()
    assert front.received == [SALE, SALE]
    # First pair: its status event hit the failing sink, its sale was kept. The second pair
    # repeats the STAN on a new connection: one more sale, no new status.
    assert [type(e) for e in events] == [TxnEvent, TxnEvent]
    assert stream.decoded == 4


def test_malformed_messages_never_stop_the_relay() -> None:
    front = FrontEnd()
    copies = CopyQueue()
    stream = TapStream(Decoder(SPEC), Pairer(SPEC, "agent-1", ZoneInfo("Asia/Shanghai")))
    worker = DecodeWorker(copies, stream, lambda event: None)
    worker.start()
    try:
        with relay_to(front.port, copies) as (relay, _):
            # Every bit of the bitmap set: a field the layout does not have.
            undecodable = (50).to_bytes(2, "big") + b"\xff" * 50
            for payload in (hostile_stream(), undecodable, SALE[:-3]):
                with terminal(relay.port) as sock:
                    sock.sendall(payload)
            deadline = time.monotonic() + WAIT_S
            while len(front.received) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        worker.stop()
        front.close()
    assert sorted(map(len, front.received)) == sorted([len(hostile_stream()), 52, len(SALE) - 3])
    # Garbage was decoded off the path, counted, and changed nothing.
    assert sum(stream.errors.values()) >= 1
    assert stream.oversized >= 1


def test_a_refused_connection_reaches_the_terminal_as_a_reset() -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    with relay_to(port) as (relay, copies):
        # The reset can beat the end of the terminal's connect() or follow it: either
        # way the terminal has a broken connection and no byte.
        with pytest.raises(ConnectionResetError), terminal(relay.port) as sock:
            sock.recv(1)
        item = copies.get(timeout=WAIT_S)
    assert isinstance(item, ConnectFailed)
    assert relay.connect_failures == 1


def test_the_front_end_closing_after_its_answer_closes_the_terminal_side_too() -> None:
    def answer_and_close(conn: socket.socket, _: bytes) -> None:
        got = b""
        while len(got) < len(SALE):
            got += conn.recv(65536)
        conn.sendall(APPROVAL)
        conn.shutdown(socket.SHUT_WR)
        front.received.append(got)

    front = FrontEnd(answer_and_close)
    with relay_to(front.port) as (relay, copies):
        with terminal(relay.port) as sock:
            sock.sendall(SALE)
            assert read_all(sock) == APPROVAL  # then end of stream, as from the host
        items = []
        deadline = time.monotonic() + WAIT_S
        while not any(isinstance(i, Closed) for i in items) and time.monotonic() < deadline:
            item = copies.get(timeout=0.5)
            if item is not None:
                items.append(item)
    front.close()
    copied = [i for i in items if isinstance(i, Copy)]
    assert b"".join(c.data for c in copied if c.direction == "to_host") == SALE
    assert b"".join(c.data for c in copied if c.direction == "to_terminal") == APPROVAL


def test_a_front_end_reset_reaches_the_terminal_as_a_reset() -> None:
    def reset(conn: socket.socket, _: bytes) -> None:
        conn.recv(65536)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    front = FrontEnd(reset)
    with relay_to(front.port) as (relay, _copies), terminal(relay.port) as sock:
        sock.sendall(SALE)
        with pytest.raises(ConnectionResetError):
            sock.recv(1)
    front.close()


def test_observed_times_come_from_the_relay_not_the_decoder() -> None:
    # A copy decoded late is dated when it was forwarded.
    stream = TapStream(Decoder(SPEC), Pairer(SPEC, "agent-1", ZoneInfo("Asia/Shanghai")))
    now = datetime(2026, 11, 25, 2, 30, 20, tzinfo=UTC)
    stream.take(Copy(1, "to_host", SALE, 100.0), now, 105.0)  # type: ignore[arg-type]
    (status, txn) = stream.take(Copy(1, "to_terminal", APPROVAL, 100.5), now, 105.0)  # type: ignore[arg-type]
    assert isinstance(status, StatusEvent)
    assert status.host_rtt_ms == 500
    assert isinstance(txn, TxnEvent)
    assert txn.observed_at == datetime(2026, 11, 25, 2, 30, 15, 500000, tzinfo=UTC)


def test_concurrent_terminals_each_get_their_own_bytes_back() -> None:
    def echo(conn: socket.socket, _: bytes) -> None:
        while chunk := conn.recv(65536):
            conn.sendall(chunk)

    front = FrontEnd(echo)
    payloads = [os.urandom(50_000) + SALE for _ in range(8)]
    results: dict[int, bytes] = {}

    def one_terminal(index: int, port: int) -> None:
        with terminal(port) as sock:
            sender = threading.Thread(
                target=lambda: (sock.sendall(payloads[index]), sock.shutdown(socket.SHUT_WR))
            )
            sender.start()
            results[index] = read_all(sock)
            sender.join()

    with relay_to(front.port) as (relay, _copies):
        threads = [
            threading.Thread(target=one_terminal, args=(index, relay.port))
            for index in range(len(payloads))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=WAIT_S)
    front.close()
    assert results == dict(enumerate(payloads))
    assert relay.connections == len(payloads)
