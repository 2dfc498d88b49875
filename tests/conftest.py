"""Shared fixtures: real mosquitto brokers on free ports, MQTT listeners, unique prefixes,
a fresh database per test (SQLite file or PostgreSQL database), and a private influxd."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from posmon.mqtt import Message, MqttClient
from simulators.broker import PrivateBroker as Broker
from simulators.broker import free_port

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def wait_until(predicate: object, timeout: float, message: str = "condition") -> None:
    """Poll `predicate()` until true or fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout} s waiting for {message}")


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


# --- InfluxDB ----------------------------------------------------------------------------


class Influxd:
    """A private influxd (InfluxDB 1.x from Debian): own folders, own free ports.

    Its configuration keeps everything under `workdir` (meta, data, WAL) and listens on
    127.0.0.1 only; usage reporting, the internal monitor store and query logging are off.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.started_once = False
        for name in ("meta", "data", "wal"):
            (workdir / name).mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "influxdb.conf"
        self._draw_ports()

    def _draw_ports(self) -> None:
        """Pick the HTTP and backup-RPC ports and write the configuration for them."""
        workdir = self.workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.conf.write_text(
            "reporting-disabled = true\n"
            f'bind-address = "127.0.0.1:{free_port()}"\n'  # the backup RPC port
            f'[meta]\n  dir = "{workdir / "meta"}"\n'
            f'[data]\n  dir = "{workdir / "data"}"\n  wal-dir = "{workdir / "wal"}"\n'
            "  query-log-enabled = false\n"
            "[monitor]\n  store-enabled = false\n"
            f'[http]\n  bind-address = "127.0.0.1:{self.port}"\n  log-enabled = false\n'
            '[logging]\n  level = "warn"\n'
        )

    def start(self) -> None:
        """Start (or restart on the same port), waiting until /ping answers.

        A free port is only free when drawn: another test's broker may bind it before
        influxd does. The first start then draws new ports and tries again; a restart
        keeps its port, since clients already hold the URL.
        """
        binary = shutil.which("influxd")
        if binary is None:
            pytest.fail(
                "influxd is not installed (Debian: apt-get install influxdb; "
                "./scripts/test installs it)",
                pytrace=False,
            )
        for _ in range(5):
            failure = self._run(binary)
            if failure is None:
                self.started_once = True
                return
            if self.started_once or "address already in use" not in failure:
                break
            self._draw_ports()
        pytest.fail(f"influxd did not answer /ping on {self.port}:\n{failure}")

    def _run(self, binary: str) -> str | None:
        """Start influxd once: None when it answers /ping, else the end of its log."""
        log_path = self.workdir / "influxd.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        log = log_path.open("ab")
        self.process = subprocess.Popen(
            [binary, "run", "-config", str(self.conf)], stdout=log, stderr=log
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as answer:
                    if answer.status == 204:
                        return None
            except OSError:
                time.sleep(0.05)
        self.stop()
        with log_path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.process = None

    def query(self, database: str, statement: str) -> list[dict[str, object]]:
        """Run InfluxQL through /query; the series of the (single) statement's result."""
        params = urllib.parse.urlencode({"db": database, "q": statement, "epoch": "s"})
        with urllib.request.urlopen(f"{self.url}/query?{params}", timeout=30) as answer:
            body = json.load(answer)
        result = body["results"][0]
        if "error" in result:
            raise ValueError(f"{statement}: {result['error']}")
        series: list[dict[str, object]] = result.get("series", [])
        return series

    def create_database(self, name: str) -> None:
        data = urllib.parse.urlencode({"q": f'CREATE DATABASE "{name}"'}).encode()
        with urllib.request.urlopen(f"{self.url}/query", data=data, timeout=30) as answer:
            answer.read()


@pytest.fixture(scope="session")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influxd]:
    """One influxd for the session; each test writes to its own database."""
    instance = Influxd(tmp_path_factory.mktemp("influxd"))
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture
def influx_db(influxd: Influxd) -> str:
    """A fresh database name on the session's influxd (created by the test or the sink)."""
    return f"posmon_test_{uuid.uuid4().hex[:8]}"
