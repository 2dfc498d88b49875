"""How soon a newly registered agent can publish: `posmon broker provision --reload` to the
new agent's first message accepted by the broker and delivered to the collector's login.

A private mosquitto runs posmon's broker configuration with the files `posmon broker
provision` writes (read through `include_dir`, as deployed). Each round registers one more
agent in the fleet file and runs, as an operator would,

    posmon broker provision --fleet F --out DIR --listener 127.0.0.1:PORT --reload --pid PID

as its own process. The new agent tries to log in every few milliseconds from the moment
that command returns; once in, it publishes a `posmon.txn/1` on its terminal (QoS 1), and
the clock stops when a subscriber logged in as the collector receives it. Figures:

- command: the provisioning process from start to exit (Python and typer start-up,
  provisioning, the SIGHUP);
- reload: from the command's exit to the new agent's CONNACK (mosquitto reads the
  password and ACL files in its main loop after the signal);
- total: from the command's start to the message at the collector's login.

A real agent retries with its own backoff (`reconnect_min_s` 0.5 s, doubling, with
jitter), which comes on top.

    .venv/bin/python benchmarks/broker_reload.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from _harness import BIN, machine, quiet_logging, table, workspace

from posmon.broker import fleet as registry
from posmon.broker.provision import Listener, provision
from posmon.mqtt import Message, MqttClient, MqttSettings, Topics
from posmon.wire.models import TxnEvent, TxnKind
from simulators.broker import PrivateBroker, free_port


def settings(port: int, prefix: str, out: Path, login: str) -> MqttSettings:
    secret = (out / "credentials" / f"{login}.secret").read_text().strip()
    return MqttSettings.model_validate(
        {"port": port, "topic_prefix": prefix, "username": login, "password": secret}
    )


def txn(agent_id: str, tid: str) -> bytes:
    now = datetime.now(UTC)
    return TxnEvent(
        event_id=uuid.uuid4(),
        agent_id=agent_id,
        tid=tid,
        mid="898100012340001",
        kind=TxnKind.SALE,
        amount=100,
        currency="CNY",
        pan_masked="622202*********0123",
        rc="00",
        approved=True,
        rrn="402511000001",
        stan="000001",
        batch="000001",
        terminal_time=now,
        observed_at=now,
    ).to_json()


def round_trip(
    number: int, fleet_file: Path, out: Path, *, port: int, pid: int, collector: MqttClient
) -> tuple[float, float, float]:
    """One new agent: (command, reload, total) in ms."""
    agent_id, tid = f"new-{number}", f"{40000000 + number}"
    fleet = registry.load(fleet_file)
    registry.save(fleet.with_agent(agent_id, [tid]), fleet_file)
    received: list[Message] = []
    collector.on_message = received.append
    command = [
        str(BIN / "posmon"),
        "broker",
        "provision",
        "--fleet",
        str(fleet_file),
        "--out",
        str(out),
        "--listener",
        f"127.0.0.1:{port}",
        "--reload",
        "--pid",
        str(pid),
    ]
    start = time.monotonic()
    subprocess.run(command, check=True, capture_output=True)
    returned = time.monotonic()
    agent = MqttClient(settings(port, fleet.topic_prefix, out, agent_id), agent_id)
    while not agent.connected:
        agent.connect()
        while agent.loop(0.001) and not agent.connected:
            pass
        if time.monotonic() - returned > 10:
            raise TimeoutError(f"{agent_id} not let in within 10 s of the reload")
    connected = time.monotonic()
    agent.publish(Topics(fleet.topic_prefix).terminal(tid, "txn"), txn(agent_id, tid))
    while not received:
        agent.loop(0.0005)
        collector.loop(0.0005)
        if time.monotonic() - connected > 10:
            raise TimeoutError("the collector's login did not receive the new agent's message")
    delivered = time.monotonic()
    agent.disconnect()
    return (
        (returned - start) * 1000,
        (connected - returned) * 1000,
        (delivered - start) * 1000,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="posmon broker provision --reload to a new agent's first accepted publish."
    )
    parser.add_argument("--rounds", type=int, default=20, help="new agents, one per round (20)")
    args = parser.parse_args(argv)
    quiet_logging()
    print(f"machine: {machine()}", flush=True)
    rows = []
    with workspace() as workdir:
        prefix = f"bench/{uuid.uuid4().hex[:8]}"
        fleet_file, out = workdir / "fleet.toml", workdir / "posmon.d"
        fleet = registry.Fleet.model_validate(
            {"topic_prefix": prefix, "agents": {"a1": {"tids": ["10000001"]}}, "collectors": ["c1"]}
        )
        registry.save(fleet, fleet_file)
        port = free_port()
        provision(fleet, out, listeners=[Listener(port, "127.0.0.1")])
        broker = PrivateBroker(workdir / "broker")
        with broker.conf.open("a") as conf:  # last, as in posmon.conf
            conf.write(f"include_dir {out}\n")
        broker.start()
        assert broker.process is not None
        collector = MqttClient(settings(port, prefix, out, "c1"), "c1")
        collector.on_connected = lambda present: collector.subscribe(
            [Topics(prefix).terminal("+", "txn")]
        )
        try:
            collector.connect()
            while not collector.connected:
                collector.loop(0.01)
            collector.loop(0.2)
            for number in range(args.rounds):
                rows.append(
                    round_trip(
                        number,
                        fleet_file,
                        out,
                        port=port,
                        pid=broker.process.pid,
                        collector=collector,
                    )
                )
        finally:
            collector.disconnect()
            broker.stop()
    columns = list(zip(*rows, strict=True))
    print(f"{args.rounds} new agents, one per provision --reload:")
    print(
        table(
            ["ms", "median", "min", "max"],
            [
                [name, statistics.median(values), min(values), max(values)]
                for name, values in zip(("command", "reload", "total"), columns, strict=True)
            ],
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
