"""What the host-link tap costs (issue #18): the relay's added latency and the decode rate.

- **added latency**: a terminal that sends a 0200 sale and waits for the 0210 before the
  next one, against a front end that answers at once, each in its own process. The same
  terminal runs through the relay (the tap's `RelayThread` and `DecodeWorker` in a third
  process, as in the agent) and directly to the front end, in alternating blocks so that
  both see the same machine load. Printed: round-trip p50/p99 of each, and the relay's
  added latency per message (relayed minus direct, at p50 and at p99).
- **decode rate**: messages/s through `TapStream` (split, decode, mask, pair, build the
  contract events) on one core, by `time.process_time()`, and through `Decoder.decode`
  alone.

    .venv/bin/python benchmarks/tap_relay.py [--messages 5000] [--blocks 10]
        [--decode 20000]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.tap.codec import Decoder, encode  # noqa: E402
from agent.tap.pairing import Pairer  # noqa: E402
from agent.tap.relay import Copy, CopyQueue, Direction, Relay, RelayThread  # noqa: E402
from agent.tap.spec import cup_pos  # noqa: E402
from agent.tap.stream import DecodeWorker, TapStream  # noqa: E402

TPDU, HEADER = "6000030000", "603100000000"


def sale(stan: int) -> bytes:
    return encode(
        "0200",
        {
            "2": "6222021234567890123",
            "3": "000000",
            "4": "000000012800",
            "11": f"{stan % 1000000:06d}",
            "22": "051",
            "25": "00",
            "35": "6222021234567890123D49121010000000000",
            "41": "10000001",
            "42": "898100012340001",
            "49": "156",
            "52": "0123456789ABCDEF",
            "55": "9F2608AABBCCDDEEFF00119F2701809F101307010103A0A802010A010000000000",
            "60": "22000042000",
            "64": "0011223344556677",
        },
        cup_pos(),
        tpdu=TPDU,
        header=HEADER,
    )


def approval(stan: bytes) -> bytes:
    return encode(
        "0210",
        {
            "2": "6222021234567890123",
            "3": "000000",
            "4": "000000012800",
            "11": stan.hex(),
            "12": "103015",
            "13": "1125",
            "37": "402511000017",
            "38": "A1B2C3",
            "39": "00",
            "41": "10000001",
            "42": "898100012340001",
            "49": "156",
            "60": "22000042000",
        },
        cup_pos(),
        tpdu="6000000003",
        header=HEADER,
    )


def _read_message(sock: socket.socket) -> bytes:
    head = _read_exactly(sock, 2)
    return head + _read_exactly(sock, int.from_bytes(head, "big"))


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return bytes(data)


def front_end(ready: Connection) -> None:
    """Answers every 0200 with a 0210 at once (its STAN copied): the acquirer's side."""
    server = socket.create_server(("127.0.0.1", 0))
    ready.send(server.getsockname()[1])
    while True:
        conn, _ = server.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            try:
                while True:
                    message = _read_message(conn)
                    # Field 11 sits after length, TPDU+header, MTI, bitmap, 2, 3 and 4.
                    stan_at = 2 + 11 + 2 + 8 + 11 + 3 + 6
                    conn.sendall(approval(message[stan_at : stan_at + 3]))
            except (ConnectionError, OSError):
                continue


def relay_process(upstream: int, ready: Connection) -> None:
    """The tap as the agent runs it: relay thread plus decode worker, events counted."""
    spec = cup_pos()
    copies = CopyQueue()
    counted = {"events": 0}

    def sink(event: object) -> None:
        counted["events"] += 1

    stream = TapStream(Decoder(spec), Pairer(spec, "bench", ZoneInfo("Asia/Shanghai")))
    worker = DecodeWorker(copies, stream, sink)
    relay = Relay(("127.0.0.1", 0), ("127.0.0.1", upstream), copies)
    runner = RelayThread([relay])
    runner.start()
    worker.start()
    ready.send(relay.port)
    ready.recv()  # until told to stop
    runner.stop()
    worker.stop()
    ready.send((stream.decoded, counted["events"], copies.dropped))


def round_trips(port: int, messages: list[bytes]) -> list[float]:
    """Seconds from each sale's send to its answer's last byte, one sale in flight."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    with sock:
        for message in messages:
            start = time.perf_counter()
            sock.sendall(message)
            _read_message(sock)
            times.append(time.perf_counter() - start)
    return times


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def decode_rate(count: int) -> tuple[float, float]:
    """(messages/s through TapStream, messages/s through Decoder.decode) on one core."""
    spec = cup_pos()
    requests = [sale(i) for i in range(count // 2)]
    answers = [approval(bytes.fromhex(f"{i % 1000000:06d}")) for i in range(count // 2)]
    stream = TapStream(Decoder(spec), Pairer(spec, "bench", ZoneInfo("Asia/Shanghai")))
    now = datetime.now(UTC)
    start = time.process_time()
    for request, answer in zip(requests, answers, strict=True):
        stream.take(Copy(1, Direction.TO_HOST, request, 0.0), now, 0.0)
        stream.take(Copy(1, Direction.TO_TERMINAL, answer, 0.001), now, 0.001)
    full = time.process_time() - start
    decoder = Decoder(spec)
    bodies = [m[2:] for pair in zip(requests, answers, strict=True) for m in pair]
    start = time.process_time()
    for body in bodies:
        decoder.decode(body)
    alone = time.process_time() - start
    assert stream.decoded == len(bodies)
    return len(bodies) / full, len(bodies) / alone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000, help="Sales per path.")
    parser.add_argument("--blocks", type=int, default=10, help="Alternating blocks per path.")
    parser.add_argument("--decode", type=int, default=20000, help="Messages for the rate.")
    args = parser.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    print(
        f"# {platform.node()} {platform.machine()} {os.cpu_count()} cores, "
        f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}, posmon {commit}, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    context = mp.get_context("spawn")
    front_parent, front_child = context.Pipe()
    front = context.Process(target=front_end, args=(front_child,), daemon=True)
    front.start()
    upstream = front_parent.recv()
    tap_parent, tap_child = context.Pipe()
    tap = context.Process(target=relay_process, args=(upstream, tap_child), daemon=True)
    tap.start()
    relayed_port = tap_parent.recv()

    per_block = max(1, args.messages // args.blocks)
    direct: list[float] = []
    relayed: list[float] = []
    warm = [sale(i) for i in range(200)]
    round_trips(upstream, warm)
    round_trips(relayed_port, warm)
    for block in range(args.blocks):
        messages = [sale(block * per_block + i) for i in range(per_block)]
        # Alternate which path goes first, so neither always follows the other.
        order = [(upstream, direct), (relayed_port, relayed)]
        for port, results in order if block % 2 == 0 else reversed(order):
            results.extend(round_trips(port, messages))
    tap_parent.send("stop")
    decoded, events, dropped = tap_parent.recv()
    tap.join(timeout=30)
    front.kill()

    def micro(seconds: float) -> str:
        return f"{seconds * 1e6:8.0f} µs"

    print(f"round trip, one sale in flight, {len(direct)} sales per path:")
    for name, values in (("direct ", direct), ("relayed", relayed)):
        print(
            f"  {name}  p50 {micro(percentile(values, 0.50))}  "
            f"p99 {micro(percentile(values, 0.99))}"
        )
    print(
        f"  added by the relay: p50 "
        f"{micro(percentile(relayed, 0.50) - percentile(direct, 0.50))}, p99 "
        f"{micro(percentile(relayed, 0.99) - percentile(direct, 0.99))} per sale "
        f"(request and answer: two relayed messages)"
    )
    print(f"  tap process: {decoded} messages decoded, {events} events, {dropped} copies dropped")
    full, alone = decode_rate(args.decode)
    print(f"decode rate, one core: {full:,.0f} messages/s split+decode+mask+pair+events,")
    print(f"                       {alone:,.0f} messages/s decode alone")


if __name__ == "__main__":
    main()
