"""Shared fixtures: real mosquitto brokers on free ports, MQTT listeners, unique prefixes,
and a fresh database per test (SQLite file or PostgreSQL database)."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from posmon.mqtt import Message, MqttClient, MqttSettings

ROOT = Path(__file__).resolve().parent.parent
BROKER_CONF = ROOT / "deploy" / "mosquitto" / "posmon.conf"
POSTGRES_ADMIN_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def free_port() -> int:
    """A free port below the kernel's ephemeral range.

    Ports the kernel hands out (port 0, and every outgoing connection) could be taken by
    another client while a test restarts its broker on the same port; ports below the
    ephemeral range are only ever taken on purpose.
    """
    for _ in range(200):
        port = random.randint(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 32000")


def wait_until(predicate: object, timeout: float, message: str = "condition") -> None:
    """Poll `predicate()` until true or fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout} s waiting for {message}")


class Broker:
    """A mosquitto running posmon's broker configuration on a free port, in its own folder."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        data = workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        lines = []
        for line in BROKER_CONF.read_text().splitlines():
            key = line.split(" ", 1)[0]
            if key in ("listener", "persistence_location", "password_file", "allow_anonymous"):
                continue
            lines.append(line)
        lines += [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            f"persistence_location {data}/",
            f"log_dest file {workdir}/mosquitto.log",
        ]
        if os.geteuid() == 0:
            # Started as root, mosquitto drops to user `mosquitto`, which cannot write the
            # test's folder: persistence would silently fail.
            lines.append("user root")
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        """Start (or restart on the same port), waiting until it accepts connections."""
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        log_path = self.workdir / "mosquitto.log"
        for _attempt in range(3):
            self.process = subprocess.Popen([binary, "-c", str(self.conf)])
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                        return
                except OSError:
                    time.sleep(0.05)
            log = log_path.read_text() if log_path.exists() else ""
            if "Address already in use" not in log.rstrip().rsplit("\n", 1)[-1]:
                break
            time.sleep(1)  # the old socket is still being torn down: try again
        self.stop()
        raise RuntimeError(f"mosquitto did not start on {self.port}:\n{log}")

    def stop(self) -> None:
        """Stop gracefully (SIGTERM): mosquitto writes its persistence file first."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def settings(self, prefix: str, **overrides: object) -> MqttSettings:
        values: dict[str, object] = {
            "host": "127.0.0.1",
            "port": self.port,
            "topic_prefix": prefix,
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 1.0,
        }
        values.update(overrides)
        return MqttSettings.model_validate(values)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One broker for the session; each test keeps to its own topic prefix."""
    instance = Broker(tmp_path_factory.mktemp("broker"))
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker for one test, which it may stop and start."""
    instance = Broker(tmp_path / "broker")
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture
def prefix() -> str:
    return f"test/{uuid.uuid4().hex[:12]}"


@dataclass
class Listener:
    """Collects every message under a prefix, in arrival order, from a background loop."""

    client: MqttClient
    messages: list[Message] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None

    def on(self, topic_suffix: str) -> list[Message]:
        with self.lock:
            return [m for m in self.messages if m.topic.endswith(topic_suffix)]

    def topics(self) -> list[str]:
        with self.lock:
            return [m.topic for m in self.messages]


def listen(broker: Broker, prefix: str) -> Listener:
    """Subscribe to `prefix/#` with a persistent session and collect messages."""
    client = MqttClient(broker.settings(prefix), f"listener-{uuid.uuid4().hex[:8]}")
    listener = Listener(client)

    def received(message: Message) -> None:
        with listener.lock:
            listener.messages.append(message)

    client.on_message = received
    client.on_connected = lambda session_present: client.subscribe([f"{prefix}/#"])
    ready = threading.Event()

    def loop() -> None:
        while not listener.stop.is_set():
            if not client.connected:
                try:
                    client.connect()
                except OSError:
                    time.sleep(0.1)
                    continue
            client.loop(0.02)
            if client.connected:
                ready.set()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("listener could not connect")
    time.sleep(0.1)  # let the SUBACK arrive before the test publishes
    listener.thread = thread
    return listener


def close(listener: Listener) -> None:
    listener.stop.set()
    if listener.thread is not None:
        listener.thread.join(timeout=5)
    listener.client.disconnect()


@pytest.fixture
def listener_factory() -> Iterator[object]:
    """`listener_factory(broker, prefix)` -> Listener, closed when the test ends."""
    made: list[Listener] = []

    def make(broker: Broker, prefix: str) -> Listener:
        made.append(listen(broker, prefix))
        return made[-1]

    yield make
    for item in made:
        close(item)


class AgentProcess:
    """`posmon agent run` as a real process, with its configuration file and its log."""

    def __init__(
        self,
        workdir: Path,
        broker: Broker,
        prefix: str,
        ports: dict[str, str],
        *,
        agent_id: str = "agent-1",
        extra: str = "",
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "agent.toml"
        self.log = workdir / "agent.log"
        self.outbox = workdir / "state" / "outbox.sqlite3"
        port_blocks = "".join(
            f'[[ports]]\nname = "{name}"\nurl = "{url}"\n' for name, url in ports.items()
        )
        self.config.write_text(
            f'[agent]\nid = "{agent_id}"\nstate_dir = "{workdir / "state"}"\n'
            f"{port_blocks}"
            f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\ntopic_prefix = "{prefix}"\n'
            "reconnect_min_s = 0.1\nreconnect_max_s = 0.5\n"
            f"{extra}"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        posmon = Path(sys.executable).parent / "posmon"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(posmon), "agent", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> int:
        """SIGTERM and wait: the agent drains and says it goes offline."""
        assert self.process is not None
        self.process.terminate()
        code = self.process.wait(timeout=15)
        self.process = None
        return code

    def kill(self) -> None:
        """SIGKILL: no goodbye, no flush."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=15)
        self.process = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[object]:
    """`agent_factory(broker, prefix, {port: url})` -> AgentProcess, stopped at the end."""
    made: list[AgentProcess] = []

    def make(broker: Broker, prefix: str, ports: dict[str, str], **kwargs: str) -> AgentProcess:
        made.append(AgentProcess(tmp_path / f"agent{len(made)}", broker, prefix, ports, **kwargs))
        return made[-1]

    yield make
    for agent in made:
        if agent.process is not None:
            agent.kill()


# --- databases ---------------------------------------------------------------------------


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database for one test, dropped afterwards; yields its URL.

    Made through the admin URL in POSMON_TEST_POSTGRES (the README's test command sets it
    and starts PostgreSQL). PostgreSQL missing is a failure, not a skip: the collector's
    multi-collector guarantees are only tested there.
    """
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    admin_url = make_url(os.environ.get("POSMON_TEST_POSTGRES", POSTGRES_ADMIN_DEFAULT))
    name = f"posmon_test_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        problem = None
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        except OperationalError as exc:
            problem = str(exc.orig).strip()
        if problem is not None:
            pytest.fail(
                f"PostgreSQL is needed by this test and is not reachable at "
                f"{admin_url.render_as_string(hide_password=True)} "
                f"(set POSMON_TEST_POSTGRES, or run ./scripts/test, which starts it): {problem}",
                pytrace=False,
            )
        try:
            yield admin_url.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database for one test: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/posmon.db"
        return
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database, for tests of several collectors sharing one."""
    with fresh_postgres_database() as url:
        yield url
