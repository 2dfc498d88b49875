"""An agent with several brokers (`[mqtt] hosts`) fails over when its broker dies (issue #16).

`posmon agent run` reads a simulated terminal on a pty and publishes to the MQTT listener
of one node of a 3-node NATS cluster; a collector (`[ingest] source = "nats"`) stores
what reaches JetStream. The agent's node is SIGKILLed mid-burst: the agent goes on to the
next node, its unacknowledged events are sent again from there, and every transaction
the terminal saw ACKed is stored exactly once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import AgentProcess, wait_until
from test_agent_e2e import terminal, txn_burst
from test_nats_ingest import Running, collector_config, reader, rrn_counts

from posmon.mqtt import MqttSettings
from simulators.natscluster import NatsCluster
from simulators.pty import PtyLink


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    instance = NatsCluster(tmp_path / "nats", 3)
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture
def pty(tmp_path: Path) -> Iterator[PtyLink]:
    link = PtyLink(tmp_path / "ttyPOS0")
    yield link
    link.close()


def test_hosts_are_host_port_pairs() -> None:
    settings = MqttSettings(hosts=["nats-1:1883", "10.0.0.2:1884"])
    assert settings.brokers == [("nats-1", 1883), ("10.0.0.2", 1884)]
    assert MqttSettings(host="b", port=1885).brokers == [("b", 1885)]
    with pytest.raises(ValueError, match="host:port"):
        MqttSettings(hosts=["nats-1"])


@pytest.mark.slow
def test_agent_fails_over_to_another_node_and_loses_nothing(
    cluster: NatsCluster,
    pty: PtyLink,
    tmp_path: Path,
    agent_factory: Callable[..., AgentProcess],
) -> None:
    prefix = f"test/{uuid.uuid4().hex[:12]}"
    url = f"sqlite:///{tmp_path}/posmon.db"
    config = collector_config(cluster, prefix, url, "c1")
    config["mqtt"]["port"] = cluster.nodes[1].mqtt_port  # its alert channel: not the victim
    collector = Running(config)
    store = reader(url)
    try:
        wait_until(lambda: collector.collector.ingestor.connected, 15, "collector on NATS")
        time.sleep(0.5)  # its consumer is made: from now on $MQTT_msgs keeps our messages
        hosts = ", ".join(f'"127.0.0.1:{node.mqtt_port}"' for node in cluster.nodes)
        first = SimpleNamespace(port=cluster.nodes[0].mqtt_port)
        agent = agent_factory(
            first, prefix, {"counter-1": str(pty.path)}, extra=f"hosts = [{hosts}]\n"
        )
        agent.start()
        total = 1000
        messages, _ = txn_burst(total)
        sim = terminal(pty, messages)
        thread = sim.start()
        wait_until(lambda: len(rrn_counts(store)) >= 150, 60, "the first transactions")
        cluster.kill(0)  # the agent's broker
        killed_at = len(rrn_counts(store))
        thread.join(timeout=180)
        assert sim.counters.acked == total
        assert sim.counters.given_up == 0
        wait_until(lambda: len(rrn_counts(store)) == total, 90, f"all {total} stored")
        time.sleep(1)
        counts = rrn_counts(store)
        assert set(counts) == {f"{index:012d}" for index in range(total)}
        assert set(counts.values()) == {1}
        assert killed_at < total, "the burst ended before the kill"
        log = agent.log_text()
        assert f"connected to 127.0.0.1:{cluster.nodes[1].mqtt_port}" in log or (
            f"connected to 127.0.0.1:{cluster.nodes[2].mqtt_port}" in log
        ), log[-3000:]
        assert agent.stop() == 0
    finally:
        collector.close()
        store.close()
