"""The replay baseline: a bare paho-mqtt QoS 1 publisher, in its own process like the agent.

This file imports paho directly, on purpose: it IS the baseline the agent's publisher is
compared with (everywhere else posmon reaches paho only through `posmon.mqtt`). It
connects as the agent does (MQTT 3.1.1, persistent session, paho's in-flight limit set
to the same window), keeps that window full (a new publish as soon as a PUBACK frees a
slot, so paho never has to queue) and drives `loop()` in its own thread until the broker
has acknowledged every message. No outbox, no deletes: the least a QoS 1 publisher does.

Usage: _bare_publisher.py --port PORT --inflight N --messages FILE [--tls CA CERT KEY]
FILE holds JSON lines {"topic": ..., "payload": ...}. Prints one JSON line of
CLOCK_MONOTONIC times (comparable with the parent's `time.monotonic()` on Linux).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--inflight", type=int, default=20)
    parser.add_argument("--messages", type=Path, required=True)
    parser.add_argument(
        "--tls", nargs=3, metavar=("CA", "CERT", "KEY"), help="mutual TLS with these files"
    )
    args = parser.parse_args()
    messages = []
    with args.messages.open() as lines:
        for line in lines:
            item = json.loads(line)
            messages.append((item["topic"], item["payload"].encode()))
    acked = 0
    connected = False

    def on_connect(client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        nonlocal connected
        connected = not reason.is_failure

    def on_publish(client: paho.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        nonlocal acked
        acked += 1

    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"bench-bare-{uuid.uuid4().hex[:8]}",
        clean_session=False,
        protocol=paho.MQTTv311,
    )
    client.max_inflight_messages_set(args.inflight)
    client.max_queued_messages_set(0)
    client.on_connect = on_connect
    client.on_publish = on_publish
    if args.tls:
        ca, cert, key = args.tls
        client.tls_set(ca_certs=ca, certfile=cert, keyfile=key)
    client.connect("127.0.0.1", args.port, keepalive=30)
    deadline = time.monotonic() + 10
    while not connected and time.monotonic() < deadline:
        client.loop(0.05)
    if not connected:
        print("could not connect", file=sys.stderr)
        return 1
    start = time.monotonic()
    deadline = start + 600
    handed = 0
    while acked < len(messages) and time.monotonic() < deadline:
        while handed < len(messages) and handed - acked < args.inflight:
            topic, payload = messages[handed]
            client.publish(topic, payload, qos=1)
            handed += 1
        client.loop(0.02)
    done = time.monotonic()
    client.disconnect()
    print(json.dumps({"start": start, "done": done, "acked": acked}))
    return 0 if acked == len(messages) else 1


if __name__ == "__main__":
    sys.exit(main())
