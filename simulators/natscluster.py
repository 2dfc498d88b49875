"""A local NATS cluster for tests and for trying posmon on NATS: `posmon simulate cluster`.

Each node is a `nats-server` with JetStream (its own store folder), cluster routes to the
others and an MQTT 3.1.1 listener, all on free loopback ports, run as the calling user.
NATS's MQTT listener needs JetStream and a `server_name`: it keeps MQTT sessions, QoS 1
deliveries and retained messages in streams of its own. It speaks QoS 0 and 1 (2.9: no
QoS 2), keeps retained messages and sends wills. An MQTT topic `a/b/c` is the NATS
subject `a.b.c`, so a JetStream stream over `posmon.v1.>` captures what agents publish.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from posmon.mqtt import MqttClient, MqttSettings
from simulators.broker import free_port

CLUSTER_NAME = "posmon-local"
READY_TIMEOUT_S = 30.0


class ClusterError(RuntimeError):
    """nats-server is missing, or a node did not start or join; the message says why."""


def nats_server_binary() -> str | None:
    """The nats-server executable, if installed (Debian: /usr/sbin/nats-server)."""
    found = shutil.which("nats-server")
    if found:
        return found
    return "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None


def _distinct_ports(count: int) -> list[int]:
    """`count` free ports, no two alike (each `free_port()` is checked alone)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@dataclass(slots=True)
class NatsNode:
    """One nats-server of the cluster: its name, ports, folder and process."""

    name: str
    folder: Path
    client_port: int
    route_port: int
    mqtt_port: int
    monitor_port: int
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def monitor(self, path: str) -> dict[str, object]:
        """A monitoring endpoint's JSON (`/jsz`, `/healthz`, ...)."""
        url = f"http://127.0.0.1:{self.monitor_port}{path}"
        with urllib.request.urlopen(url, timeout=2) as response:
            result: dict[str, object] = json.loads(response.read())
            return result


class NatsCluster:
    """`nodes` nats-servers (1 or 3 usually) with JetStream and MQTT, under `workdir`."""

    def __init__(self, workdir: Path, nodes: int = 3) -> None:
        if nodes < 1:
            raise ClusterError("a cluster needs at least one node")
        self.workdir = workdir
        ports = _distinct_ports(4 * nodes)
        self.nodes = [
            NatsNode(
                name=f"n{index + 1}",
                folder=workdir / f"n{index + 1}",
                client_port=ports[4 * index],
                route_port=ports[4 * index + 1],
                mqtt_port=ports[4 * index + 2],
                monitor_port=ports[4 * index + 3],
            )
            for index in range(nodes)
        ]
        for node in self.nodes:
            node.folder.mkdir(parents=True, exist_ok=True)
            (node.folder / "nats.conf").write_text(self._config(node))

    @property
    def nats_urls(self) -> list[str]:
        return [node.nats_url for node in self.nodes]

    @property
    def mqtt_urls(self) -> list[str]:
        return [node.mqtt_url for node in self.nodes]

    def _config(self, node: NatsNode) -> str:
        lines = [
            f"server_name: {node.name}",
            f"listen: 127.0.0.1:{node.client_port}",
            f"http: 127.0.0.1:{node.monitor_port}",
            "jetstream {",
            f'  store_dir: "{node.folder / "jetstream"}"',
            "  max_memory_store: 256MB",
            "  max_file_store: 4GB",
            "}",
            # The MQTT listener: sessions, QoS 1 deliveries and retained messages are
            # JetStream streams, replicated like the cluster's (up to 3).
            "mqtt {",
            f"  listen: 127.0.0.1:{node.mqtt_port}",
            # Left to itself, the listener sizes its streams by the nodes it sees at the
            # first MQTT connection: 2 of 3 during start-up, and then losing one node
            # stalls every session ("$MQTT_sess has NO quorum").
            f"  stream_replicas: {min(3, len(self.nodes))}",
            "}",
            f'log_file: "{node.folder / "nats.log"}"',
        ]
        if len(self.nodes) > 1:
            routes = ", ".join(
                f"nats-route://127.0.0.1:{other.route_port}"
                for other in self.nodes
                if other is not node
            )
            lines += [
                "cluster {",
                f"  name: {CLUSTER_NAME}",
                f"  listen: 127.0.0.1:{node.route_port}",
                f"  routes: [{routes}]",
                # Clients learn only the URLs they are given, not the routes' addresses.
                "  no_advertise: true",
                "}",
            ]
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        """Start every node; returns once JetStream has a meta leader and MQTT listens."""
        for index in range(len(self.nodes)):
            self.start_node(index, wait=False)
        self.wait_ready()
        self._make_mqtt_streams()

    def _make_mqtt_streams(self) -> None:
        """Connect over MQTT once: the listener makes its streams ($MQTT_sess, $MQTT_msgs
        ...) at the first connection, which takes seconds on a cluster. Made now, the
        first agent does not wait, and collectors can bind their consumer to $MQTT_msgs."""
        client = MqttClient(self.mqtt_settings(0, "posmon/v1"), "posmon-cluster-start")
        deadline = time.monotonic() + READY_TIMEOUT_S
        try:
            while not client.connected:
                if time.monotonic() > deadline:
                    raise ClusterError(f"MQTT listener of n1 did not accept: {client.last_error}")
                client.connect_when_due()
                client.loop(0.05)
        finally:
            client.disconnect()

    def start_node(self, index: int, *, wait: bool = True) -> None:
        """Start (or restart, on its ports and data) one node."""
        binary = nats_server_binary()
        if binary is None:
            raise ClusterError("nats-server is not installed (Debian: apt-get install nats-server)")
        node = self.nodes[index]
        if node.running:
            return
        node.process = subprocess.Popen(
            [binary, "-c", str(node.folder / "nats.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Wait until every running node answers, sees a JetStream meta leader, and its
        MQTT listener accepts connections."""
        deadline = time.monotonic() + timeout
        waiting = [node for node in self.nodes if node.process is not None]
        while waiting:
            node = waiting[0]
            if not node.running:
                raise ClusterError(f"nats-server {node.name} exited:\n{self.log(node)}")
            if self._ready(node):
                waiting.pop(0)
                continue
            if time.monotonic() > deadline:
                raise ClusterError(f"nats-server {node.name} not ready:\n{self.log(node)}")
            time.sleep(0.1)

    def _ready(self, node: NatsNode) -> bool:
        try:
            jsz = node.monitor("/jsz")
        except OSError:
            return False
        if len(self.nodes) > 1:
            meta = jsz.get("meta_cluster")
            if not isinstance(meta, dict) or not meta.get("leader"):
                return False
        elif jsz.get("disabled"):
            return False
        try:
            with socket.create_connection(("127.0.0.1", node.mqtt_port), timeout=0.2):
                return True
        except OSError:
            return False

    def log(self, node: NatsNode, lines: int = 30) -> str:
        path = node.folder / "nats.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def kill(self, index: int) -> None:
        """SIGKILL one node, as a crash: no goodbye to its peers or clients."""
        node = self.nodes[index]
        if node.process is not None and node.process.poll() is None:
            node.process.send_signal(signal.SIGKILL)
            node.process.wait(timeout=10)
        node.process = None

    def stop(self) -> None:
        """Stop every node gracefully (SIGTERM, JetStream flushed), killing laggards."""
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait(timeout=5)
            node.process = None

    def mqtt_settings(self, index: int, prefix: str, **overrides: object) -> MqttSettings:
        """MQTT client settings for one node's listener, reconnecting fast."""
        values: dict[str, object] = {
            "host": "127.0.0.1",
            "port": self.nodes[index].mqtt_port,
            "topic_prefix": prefix,
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 1.0,
        }
        values.update(overrides)
        return MqttSettings.model_validate(values)

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
