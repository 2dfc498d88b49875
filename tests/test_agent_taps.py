"""`posmon agent run` with a `[[taps]]` section: a terminal's ISO 8583 sale through the tap,
the front end's answer back, and the events on a real mosquitto."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import AgentProcess, Broker, Listener, wait_until

from agent.tap.codec import encode
from agent.tap.spec import cup_pos

WAIT_S = 30.0
SPEC = cup_pos()
PAN = "6222021234567890123"
TID, MID = "10000001", "898100012340001"
SALE = encode(
    "0200",
    {
        "2": PAN,
        "3": "000000",
        "4": "000000012800",
        "11": "000017",
        "35": PAN + "D49121010000000000",
        "41": TID,
        "42": MID,
        "49": "156",
        "52": "0123456789ABCDEF",
        "60": "22000042000",
    },
    SPEC,
    tpdu="6000030000",
    header="603100000000",
)
APPROVAL = encode(
    "0210",
    {
        "2": PAN,
        "11": "000017",
        "12": "103015",
        "13": "1125",
        "37": "402511000017",
        "38": "A1B2C3",
        "39": "00",
        "41": TID,
        "42": MID,
    },
    SPEC,
    tpdu="6000000003",
    header="603100000000",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def front_end() -> Iterator[int]:
    """An acquirer front end that approves one sale per connection."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(WAIT_S)

    def serve() -> None:
        try:
            while True:
                conn, _ = server.accept()
                with conn:
                    conn.settimeout(WAIT_S)
                    got = b""
                    while len(got) < len(SALE):
                        got += conn.recv(65536)
                    conn.sendall(APPROVAL)
                    conn.recv(1)
        except OSError:
            return

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def test_a_tapped_sale_reaches_the_broker_masked_and_the_terminal_unchanged(
    broker: Broker,
    prefix: str,
    front_end: int,
    listener_factory: Callable[..., Listener],
    agent_factory: Callable[..., AgentProcess],
) -> None:
    listen = free_port()
    listener = listener_factory(broker, prefix)
    agent = agent_factory(
        broker,
        prefix,
        {},
        extra=(
            f'[[taps]]\nname = "counter-9"\nlisten = "127.0.0.1:{listen}"\n'
            f'upstream = "127.0.0.1:{front_end}"\ntid = "{TID}"\n'
        ),
    )
    agent.start()
    wait_until(lambda: "tap counter-9: listening" in agent.log_text(), WAIT_S, "the tap")
    with socket.create_connection(("127.0.0.1", listen), timeout=WAIT_S) as sock:
        sock.sendall(SALE)
        answered = b""
        while len(answered) < len(APPROVAL):
            answered += sock.recv(65536)
    assert answered == APPROVAL

    wait_until(lambda: listener.on("/txn") and listener.on("/status"), WAIT_S, "tap events")
    (txn,) = [json.loads(message.payload) for message in listener.on("/txn")]
    assert txn["schema"] == "posmon.txn/1"
    assert (txn["tid"], txn["kind"], txn["rc"], txn["approved"]) == (TID, "SALE", "00", True)
    assert (txn["rrn"], txn["stan"], txn["batch"], txn["amount"]) == (
        "402511000017",
        "000017",
        "000042",
        12800,
    )
    assert txn["pan_masked"] == "622202*********0123"
    status = json.loads(listener.on("/status")[0].payload)
    assert status["link_up"] is True
    assert status["extra"]["source"] == "tap"
    presence = [json.loads(m.payload) for m in listener.on("/presence")]
    assert any(TID in p["tids"] for p in presence)

    assert agent.stop() == 0
    # No full card number, track or PIN block in anything the agent wrote.
    artefacts = [agent.log.read_bytes()] + [
        path.read_bytes() for path in Path(agent.outbox).parent.glob("*") if path.is_file()
    ]
    payloads = [message.payload for message in listener.messages]
    for blob in artefacts + payloads:
        assert PAN.encode() not in blob
        assert b"0123456789ABCDEF" not in blob.upper()
    assert "'taps': {'counter-9'" in agent.log_text()
