"""The throughput baseline's reader: ACK every frame on a serial port, and do nothing else.

It opens the port as the agent does (`posmon.serialport.open_port`, pyserial, 50 ms read
timeout), reads as the agent's `PortReader` does and writes one ACK per frame, with the
same write-and-drain, but has no codec, no outbox and no MQTT. What the agent adds on top
of this is the cost of decoding, committing and publishing.

Usage: _echo_ack.py PORT_URL   (runs until SIGTERM or SIGINT)
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

from posmon.serialport import open_port
from posmon.wire.frames import ACK, ETX, STX


def count_frame_ends(data: bytes, state: list[int]) -> int:
    """Frames completed in `data` (STX ... ETX LRC); `state` carries over between reads.

    No LRC check, no parsing: the least a reader must do to know when to answer.
    state[0]: 0 between frames, 1 inside one, 2 the next byte is its LRC.
    """
    ends = 0
    phase = state[0]
    for byte in data:
        if phase == 2:
            ends += 1
            phase = 0
        elif byte == STX:
            phase = 1
        elif byte == ETX and phase == 1:
            phase = 2
    state[0] = phase
    return ends


def main(url: str) -> int:
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    port = open_port(url, 115200, timeout=0.05)
    state = [0]
    try:
        while not stop.is_set():
            data = port.read(max(1, port.in_waiting))
            for _ in range(count_frame_ends(data, state)):
                port.write(ACK)  # one reply per frame, as the agent writes them
    finally:
        port.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
