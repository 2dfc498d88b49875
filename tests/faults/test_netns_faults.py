"""A real network partition (issue #17): the agent runs in a Linux network namespace of
its own, joined to the broker's by a veth pair; taking the pair's link down cuts it off
with no FIN and no RST, as a pulled cable or a dead switch would, while the terminal keeps
sending. Namespaces need root and iproute2; without them this fault is skipped, and says
so. Everything stays inside the namespace the test makes and on a /30 of its own.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import AgentProcess, Listener
from test_network_faults import (
    KEEPALIVE_S,
    PARTITION_S,
    RATE,
    _logged_after,
    finish,
    pty,  # noqa: F401 - a fixture this module uses
    recovered,
    start_line,
)

from simulators.broker import PrivateBroker, free_port
from simulators.pty import PtyLink

pytestmark = pytest.mark.faults

POSMON = Path(sys.executable).parent / "posmon"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass(frozen=True)
class Namespace:
    name: str
    outside: str  # the veth end in the broker's namespace
    broker_ip: str
    agent_ip: str


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2: this fault is not run here")
    tag = uuid.uuid4().hex[:6]
    net = random.Random(tag).randrange(1, 250)
    made = Namespace(f"posmon-{tag}", f"pmo{tag}", f"10.213.{net}.1", f"10.213.{net}.2")
    inside = f"pmi{tag}"
    ip("netns", "add", made.name)
    try:
        ip("link", "add", made.outside, "type", "veth", "peer", "name", inside)
        ip("link", "set", inside, "netns", made.name)
        ip("addr", "add", f"{made.broker_ip}/30", "dev", made.outside)
        ip("link", "set", made.outside, "up")
        ip("-n", made.name, "addr", "add", f"{made.agent_ip}/30", "dev", inside)
        ip("-n", made.name, "link", "set", inside, "up")
        ip("-n", made.name, "link", "set", "lo", "up")
        yield made
    finally:
        subprocess.run(["ip", "link", "del", made.outside], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", made.name], capture_output=True, check=False)


@pytest.fixture
def netns_broker(
    tmp_path: Path, namespace: Namespace
) -> Iterator[tuple[PrivateBroker, int, Namespace]]:
    """posmon's broker on loopback (collector, listener) and on the veth (the agent)."""
    outer = free_port()
    broker = PrivateBroker(tmp_path / "broker", extra=[f"listener {outer} {namespace.broker_ip}"])
    broker.start()
    yield broker, outer, namespace
    broker.stop()


def agent_in(namespace: Namespace) -> type[AgentProcess]:
    class NamespacedAgent(AgentProcess):
        """`posmon agent run` inside the namespace."""

        def start(self) -> None:
            with self.log.open("ab") as log:
                self.process = subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        namespace.name,
                        str(POSMON),
                        "agent",
                        "run",
                        "--config",
                        str(self.config),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )

    return NamespacedAgent


def test_a_partition_between_agent_and_broker(
    tmp_path: Path,
    netns_broker: tuple[PrivateBroker, int, Namespace],
    prefix: str,
    pty: PtyLink,  # noqa: F811 - the fixture imported above
    listener_factory: Callable[..., Listener],
) -> None:
    broker, outer, namespace = netns_broker
    count = int(RATE * (PARTITION_S + 15))
    line = start_line(tmp_path, broker, prefix, pty, listener_factory, agent_port=outer,
                      collector_port=broker.port, count=count, agent_host=namespace.broker_ip,
                      agent_class=agent_in(namespace))  # fmt: skip
    time.sleep(3)
    cut_at = time.monotonic()
    ip("link", "set", namespace.outside, "down")  # the cable pulled
    detect_s = _logged_after(line.agent.log, r"MQTT connection lost", cut_at, PARTITION_S)
    time.sleep(max(0.0, PARTITION_S - (time.monotonic() - cut_at)))
    acked_during = line.counters().acked
    ip("link", "set", namespace.outside, "up")
    recover_s = recovered(line, time.monotonic())
    figures = finish(line, f"agent-broker partition {PARTITION_S:g} s (netns, link down)",
                     detect_s=detect_s, recover_s=recover_s,
                     expected_alerts={"TERMINAL_OFFLINE"},
                     notes=f"terminal kept going: {acked_during} acked by then")  # fmt: skip
    assert detect_s is not None and detect_s <= 2 * KEEPALIVE_S, detect_s
    assert figures.stored == count
