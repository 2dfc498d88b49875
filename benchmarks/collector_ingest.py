"""How fast one collector takes transactions from MQTT into its database, against bare paho.

Every run publishes the same `--messages` valid `posmon.txn/1` payloads (QoS 1, spread
over 200 terminals) to a private mosquitto running posmon's broker configuration, with
`_bare_publisher.py` (a bare paho QoS 1 publisher in its own process). Measured in the
same run, on the same broker:

- bare paho: a subscriber in its own process (QoS 1, automatic acknowledgement, nothing
  else), which IS the baseline; msgs/s from the first message received to the last;
- collector: `posmon collector run` as its own process (SQLite, then PostgreSQL): every
  message parsed, validated, stored with its expectation (deadline, expected net) and
  acknowledged after the commit; msgs/s from the first stored to the last stored (the
  `stored_at` the collector writes), and from the first publish to the last stored.

Two modes: `live` (subscriber or collector connected while the publisher runs: a
collector keeping up with agents) and `backlog` (everything published while it is away,
on its persistent session, then drained on start: a collector catching up after an
outage). The target is a collector ratio of at least 0.6 of the bare subscriber's rate.

`--profile` instead runs the collector's ingest loop in this process under cProfile on a
backlog and prints where the time goes.

`--tls` instead measures what mutual TLS costs (issue #14): each row runs twice on the
same broker, interleaved, once on its plain listener and once on a mutual-TLS listener
made by posmon's PKI (`posmon pki broker-conf`'s options, EC P-256 certificates, TLS 1.3),
the publisher and the collector both with client certificates. It prints both collector
rates and their ratio; the target is at least 0.9 of the plain rate.

    .venv/bin/python benchmarks/collector_ingest.py [--messages 20000]
        [--databases sqlite postgresql] [--modes live backlog] [--rounds 1] [--profile]
        [--tls]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _harness import (
    Broker,
    cpu_times,
    machine,
    quiet_logging,
    stop_process,
    table,
    wait_until,
    workspace,
)

BIN = Path(sys.executable).parent
TLS_TARGET = 0.9
POSTGRES_ADMIN_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TERMINALS = 200
TARGET = 0.6


# --- the messages -------------------------------------------------------------------------


def make_payloads(count: int, rrn_prefix: str = "") -> list[tuple[str, bytes]]:
    """(tid, payload) of `count` approved sales over TERMINALS terminals, unique RRNs
    (starting with `rrn_prefix`, to keep clear of RRNs a database already holds)."""
    from posmon.wire.models import TxnEvent, TxnKind

    now = datetime.now(UTC)
    payloads = []
    for index in range(count):
        tid = f"1{index % TERMINALS:07d}"
        at = now - timedelta(seconds=count - index)
        event = TxnEvent(
            event_id=uuid.uuid4(),
            agent_id="bench-agent",
            tid=tid,
            mid="898100012340001",
            kind=TxnKind.SALE,
            amount=100 + index % 50_000,
            currency="CNY",
            pan_masked="622202*********0123",
            rc="00",
            approved=True,
            rrn=f"{rrn_prefix}{index:0{12 - len(rrn_prefix)}d}",
            stan=f"{index % 1_000_000:06d}",
            batch="000001",
            terminal_time=at,
            observed_at=at,
            auth_code="A1B2C3",
            issuer="0102",
        )
        payloads.append((tid, event.to_json()))
    return payloads


@dataclass(frozen=True, slots=True)
class Transport:
    """How the publisher and the collector reach the broker: its plain listener, or its
    mutual-TLS listener with a client certificate each."""

    label: str
    port: int
    ca: Path | None = None
    publisher: tuple[Path, Path] | None = None  # certificate, key
    collector: tuple[Path, Path] | None = None
    alerts: tuple[Path, Path] | None = None  # the collector's alert channel ([notify])


def plain(broker: Broker) -> Transport:
    return Transport("", broker.port)


def mutual_tls(workdir: Path) -> tuple[list[str], Transport]:
    """A PKI in `workdir`: the broker's extra configuration lines (a second listener, with
    mutual TLS) and the transport over it."""
    from posmon.broker.fleet import Role
    from posmon.broker.pki import CertificateAuthority, render_broker_conf
    from simulators.broker import free_port

    ca = CertificateAuthority.init(workdir / "pki")
    server = ca.issue_server("localhost", ["127.0.0.1"])
    files = workdir / "broker-tls"
    files.mkdir()
    for source, name in (
        (ca.ca_cert_path, "ca.crt"),
        (ca.crl_path, "crl.pem"),
        (server.cert_path, "server.crt"),
        (server.key_path, "server.key"),
    ):
        assert source is not None
        (files / name).write_bytes(source.read_bytes())
    port = free_port()
    lines = render_broker_conf(str(files), port=port, bind="127.0.0.1").splitlines()
    pairs = []
    for name in ("bench-publisher", "bench-collector", "bench-collector-alerts"):
        issued = ca.issue_client(name, Role.AGENT)
        assert issued.cert_path is not None and issued.key_path is not None
        pairs.append((issued.cert_path, issued.key_path))
    transport = Transport(", mTLS", port, ca.ca_cert_path, pairs[0], pairs[1], pairs[2])
    return [line for line in lines if not line.startswith("#")], transport


def write_messages(path: Path, prefix: str, payloads: list[tuple[str, bytes]]) -> Path:
    """The JSON lines `_bare_publisher.py` reads."""
    with path.open("w") as out:
        for tid, payload in payloads:
            line = {"topic": f"{prefix}/terminals/{tid}/txn", "payload": payload.decode()}
            out.write(json.dumps(line) + "\n")
    return path


def publish(
    broker: Broker, messages: Path, timeout: float, transport: Transport | None = None
) -> dict[str, float]:
    """Run the bare publisher (window 100: the broker's own in-flight limit); its times."""
    transport = transport or plain(broker)
    tls = []
    if transport.publisher is not None:
        tls = ["--tls", str(transport.ca), *map(str, transport.publisher)]
    run = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("_bare_publisher.py")),
            "--port",
            str(transport.port),
            "--inflight",
            "100",
            "--messages",
            str(messages),
            *tls,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if run.returncode != 0:
        raise RuntimeError(f"bare publisher failed:\n{run.stdout}{run.stderr}")
    times: dict[str, float] = json.loads(run.stdout)
    return times


# --- the baseline: a bare paho subscriber in its own process ------------------------------


def bare_subscriber_main(argv: Sequence[str]) -> int:
    """`--bare-subscriber`: subscribe, count, print first/last receive times as JSON.

    This is the one place that imports paho directly: it IS the baseline.
    """
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--client-id", default="")
    parser.add_argument("--subscribe-only", action="store_true")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args(argv)
    persistent = bool(args.client_id)
    state: dict[str, Any] = {"count": 0, "first": None, "last": None, "subscribed": False}

    def on_connect(client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        client.subscribe(args.topic, qos=1)

    def on_subscribe(client: paho.Client, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        state["subscribed"] = True
        print("ready", flush=True)

    def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        now = time.monotonic()
        if state["first"] is None:
            state["first"] = now
        state["last"] = now
        state["count"] += 1

    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=args.client_id or f"bench-bare-sub-{uuid.uuid4().hex[:8]}",
        clean_session=not persistent,
        protocol=paho.MQTTv311,
    )
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect("127.0.0.1", args.port, keepalive=30)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        client.loop(0.05)
        if args.subscribe_only and state["subscribed"]:
            break
        if state["count"] >= args.count:
            break
    client.disconnect()
    print(json.dumps({"first": state["first"], "last": state["last"], "count": state["count"]}))
    return 0 if args.subscribe_only or state["count"] >= args.count else 1


class BareSubscriber:
    """The baseline subscriber process."""

    def __init__(self, broker: Broker, prefix: str, count: int, client_id: str = "") -> None:
        self.command = [
            sys.executable,
            __file__,
            "--bare-subscriber",
            "--port",
            str(broker.port),
            "--topic",
            f"{prefix}/terminals/+/txn",
            "--count",
            str(count),
        ]
        if client_id:
            self.command += ["--client-id", client_id]
        self.process: subprocess.Popen[str] | None = None

    def start(self, *extra: str) -> None:
        self.process = subprocess.Popen(
            [*self.command, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"bare subscriber did not subscribe: {line}")

    def result(self, timeout: float) -> dict[str, float]:
        assert self.process is not None
        # Not communicate(): it reads the pipe's file descriptor, and what start()'s
        # readline() already buffered past "ready" (the subscribe-only run's result) is lost.
        self.process.wait(timeout=timeout)
        assert self.process.stdout is not None and self.process.stderr is not None
        out, err = self.process.stdout.read(), self.process.stderr.read()
        if self.process.returncode != 0:
            raise RuntimeError(f"bare subscriber failed ({self.process.returncode}): {out}{err}")
        result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
        return result


# --- the collector ------------------------------------------------------------------------


@contextlib.contextmanager
def database(kind: str, workdir: Path, admin_url: str) -> Iterator[str]:
    """A fresh database URL: a SQLite file, or a new PostgreSQL database dropped afterwards."""
    if kind == "sqlite":
        path = workdir / f"collector-{uuid.uuid4().hex[:8]}.db"
        yield f"sqlite:///{path}"
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = make_url(admin_url)
    name = f"posmon_bench_{uuid.uuid4().hex[:8]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield admin.set(database=name).render_as_string(hide_password=False)
        finally:
            with engine.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


class Reader:
    """Counts and stored_at span of the collector's transactions, read from its database."""

    def __init__(self, url: str) -> None:
        from sqlalchemy import create_engine

        self.engine = create_engine(url)

    def count(self, table: str = "transactions") -> int:
        from sqlalchemy import text

        try:
            with self.engine.connect() as conn:
                return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
        except Exception:
            return 0

    def span(self) -> tuple[datetime, datetime]:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            first, last = conn.execute(
                text("SELECT min(stored_at), max(stored_at) FROM transactions")
            ).one()
        return _aware(first), _aware(last)

    def close(self) -> None:
        self.engine.dispose()


def _aware(value: Any) -> datetime:
    if isinstance(value, str):  # SQLite hands back text
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class CollectorProcess:
    """`posmon collector run` with its own configuration file and log."""

    def __init__(
        self,
        workdir: Path,
        broker: Broker,
        prefix: str,
        url: str,
        batch_size: int,
        *,
        transport: Transport | None = None,
    ) -> None:
        name = f"bench-{uuid.uuid4().hex[:8]}"
        self.config = workdir / f"{name}.toml"
        self.log = workdir / f"{name}.log"
        transport = transport or plain(broker)
        tls = ""
        if transport.collector is not None:
            cert, key = transport.collector
            tls = (
                f'[mqtt.tls]\nenabled = true\nca_file = "{transport.ca}"\n'
                f'cert_file = "{cert}"\nkey_file = "{key}"\n'
            )
        if transport.alerts is not None:
            cert, key = transport.alerts
            tls += f'[notify]\ntls_certfile = "{cert}"\ntls_keyfile = "{key}"\n'
        self.config.write_text(
            f'[collector]\nid = "{name}"\n[database]\nurl = "{url}"\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {transport.port}\ntopic_prefix = "{prefix}"\n'
            "reconnect_min_s = 0.05\nreconnect_max_s = 0.2\n"
            f"{tls}[ingest]\nbatch_size = {batch_size}\n[http]\nenabled = false\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(BIN / "posmon"), "collector", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        code = stop_process(self.process)
        self.process = None
        if code not in (0, None):
            raise RuntimeError(f"collector exited {code}:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])


def wait_subscribed(broker: Broker, prefix: str, reader: Reader, timeout: float) -> None:
    """Publish a probe status event until the collector has stored it."""
    from posmon.mqtt import MqttClient
    from posmon.wire.models import Network, StatusEvent

    probe = StatusEvent(
        event_id=uuid.uuid4(),
        agent_id="probe",
        tid="99999999",
        link_up=True,
        network=Network.ETH,
        saf_pending=0,
        serial_ok=True,
        observed_at=datetime.now(UTC),
    ).to_json()
    client = MqttClient(broker.settings(prefix), f"bench-probe-{uuid.uuid4().hex[:8]}")
    client.connect()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if client.connected:
                client.publish(f"{prefix}/terminals/99999999/status", probe)
            client.loop(0.1)
            if reader.count("status_events") >= 1:
                return
        raise TimeoutError("the collector did not subscribe")
    finally:
        client.disconnect()


# --- one measured run ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Figure:
    label: str
    mode: str
    count: int
    first: float  # seconds, on one clock per figure
    last: float
    publish_start: float | None = None  # same clock as first/last
    publish_rate: float | None = None
    collector_cpu: float | None = None  # CPU seconds taking the messages in
    broker_cpu: float | None = None  # mosquitto's, from the first publish to the last stored

    @property
    def rate(self) -> float:
        return self.count / max(self.last - self.first, 1e-9)

    @property
    def rate_from_publish(self) -> float | None:
        if self.publish_start is None:
            return None
        return self.count / max(self.last - self.publish_start, 1e-9)


def bare_run(
    workdir: Path, broker: Broker, payloads: list[tuple[str, bytes]], mode: str, timeout: float
) -> Figure:
    prefix = f"bench/{uuid.uuid4().hex[:8]}"
    messages = write_messages(workdir / f"{uuid.uuid4().hex[:8]}.jsonl", prefix, payloads)
    count = len(payloads)
    if mode == "live":
        subscriber = BareSubscriber(broker, prefix, count)
        subscriber.start()
        times = publish(broker, messages, timeout)
        result = subscriber.result(timeout)
    else:
        # The one mode where the baseline keeps a session: it must be away while the
        # backlog builds.
        subscriber = BareSubscriber(broker, prefix, count, client_id=f"bare-{prefix[6:]}")
        subscriber.start("--subscribe-only")
        subscriber.result(timeout)
        times = publish(broker, messages, timeout)
        subscriber.start()
        result = subscriber.result(timeout)
    return Figure(
        "bare paho subscriber",
        mode,
        int(result["count"]),
        result["first"],
        result["last"],
        times["start"] if mode == "live" else None,
        count / (times["done"] - times["start"]),
    )


def collector_run(
    workdir: Path,
    broker: Broker,
    payloads: list[tuple[str, bytes]],
    *,
    mode: str,
    kind: str,
    admin_url: str,
    batch_size: int,
    timeout: float,
    transport: Transport | None = None,
) -> Figure:
    transport = transport or plain(broker)
    prefix = f"bench/{uuid.uuid4().hex[:8]}"
    messages = write_messages(workdir / f"{uuid.uuid4().hex[:8]}.jsonl", prefix, payloads)
    count = len(payloads)
    with database(kind, workdir, admin_url) as url:
        reader = Reader(url)
        collector = CollectorProcess(workdir, broker, prefix, url, batch_size, transport=transport)
        try:
            collector.start()
            wait_subscribed(broker, prefix, reader, 30)
            # Live: its CPU from here on. Backlog: the new process's, less what starting
            # and subscribing took this one.
            before = sum(cpu_times(collector.pid))
            assert broker.process is not None
            broker_before = sum(cpu_times(broker.process.pid))
            if mode == "backlog":
                collector.stop()
            wall_start = datetime.now(UTC)
            mono_start = time.monotonic()
            times = publish(broker, messages, timeout, transport)
            if mode == "backlog":
                collector.start()
            wait_until(lambda: reader.count() >= count, timeout, f"{count} stored ({kind})")
            collector_cpu = sum(cpu_times(collector.pid)) - before
            broker_cpu = sum(cpu_times(broker.process.pid)) - broker_before
            first, last = reader.span()
            collector.stop()
        finally:
            if collector.process is not None:
                stop_process(collector.process)
            reader.close()
    # stored_at is wall-clock time: put the publisher's start on the same clock.
    publish_start = (wall_start + timedelta(seconds=times["start"] - mono_start)).timestamp()
    return Figure(
        f"collector, {'SQLite' if kind == 'sqlite' else 'PostgreSQL'}{transport.label}",
        mode,
        count,
        first.timestamp(),
        last.timestamp(),
        publish_start if mode == "live" else None,
        count / (times["done"] - times["start"]),
        collector_cpu,
        broker_cpu,
    )


# --- profiling ----------------------------------------------------------------------------


def profile_run(
    workdir: Path,
    broker: Broker,
    payloads: list[tuple[str, bytes]],
    *,
    kind: str,
    admin_url: str,
    batch_size: int,
    timeout: float,
) -> None:
    """The collector's ingest loop in this process under cProfile, draining a backlog."""
    from collector.config import CollectorConfig
    from collector.service import Collector

    prefix = f"bench/{uuid.uuid4().hex[:8]}"
    messages = write_messages(workdir / f"{uuid.uuid4().hex[:8]}.jsonl", prefix, payloads)
    count = len(payloads)
    with database(kind, workdir, admin_url) as url:
        config = CollectorConfig(
            collector={"id": f"bench-profile-{uuid.uuid4().hex[:6]}"},
            database={"url": url},
            mqtt=broker.settings(prefix),
            ingest={"batch_size": batch_size},
            http={"enabled": False},
        )
        # Subscribe once (session kept), go away, let the backlog build, then drain it.
        first = Collector(config)
        stop = threading.Event()
        thread = threading.Thread(target=first.ingestor.run, args=(stop,))
        thread.start()
        reader = Reader(url)
        try:
            wait_subscribed(broker, prefix, reader, 30)
            stop.set()
            thread.join()
            first.store.close()
            publish(broker, messages, timeout)
            collector = Collector(config)
            stop = threading.Event()

            def watch() -> None:
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    if collector.ingestor.counters["stored.txn"] >= count:
                        break
                    time.sleep(0.01)
                stop.set()

            watcher = threading.Thread(target=watch)
            watcher.start()
            profiler = cProfile.Profile()
            started = time.monotonic()
            profiler.runcall(collector.ingestor.run, stop)
            elapsed = time.monotonic() - started
            watcher.join()
            collector.store.close()
        finally:
            reader.close()
    stored = collector.ingestor.counters["stored.txn"]
    batches = collector.ingestor.counters["batches"]
    print(
        f"\nprofile, collector on {kind}: {stored} stored in {elapsed:.2f} s under cProfile "
        f"({stored / elapsed:,.0f}/s), {batches} batches ({stored / max(batches, 1):.0f} per batch)"
    )
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(25)
        print(f"\n--- top 25 by {order}\n" + out.getvalue().split("\n", 6)[-1])


# --- main ---------------------------------------------------------------------------------


def spread(values: list[float]) -> str:
    middle = statistics.median(values)
    if len(values) == 1:
        return f"{middle:,.0f}"
    return f"{middle:,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def tls_comparison(
    workdir: Path,
    broker: Broker,
    payloads: list[tuple[str, bytes]],
    tls: Transport,
    args: argparse.Namespace,
) -> int:
    """Each (mode, database) without TLS and over mutual TLS, interleaved; the ratio."""
    pairs: dict[tuple[str, str], list[tuple[Figure, Figure]]] = {}
    for round_ in range(args.rounds):
        for mode in args.modes:
            for kind in args.databases:
                # Turn about, so neither side always runs second on a warmer machine.
                order = [plain(broker), tls][:: 1 if round_ % 2 == 0 else -1]
                ran = {
                    transport.label: collector_run(
                        workdir,
                        broker,
                        payloads,
                        mode=mode,
                        kind=kind,
                        admin_url=args.postgres,
                        batch_size=args.batch_size,
                        timeout=args.timeout,
                        transport=transport,
                    )
                    for transport in order
                }
                pair = (ran[""], ran[tls.label])
                pairs.setdefault((mode, kind), []).append(pair)
                print(
                    f"round {round_ + 1}, {mode}, {kind}: plain {pair[0].rate:,.0f}/s, "
                    f"mTLS {pair[1].rate:,.0f}/s, ratio {pair[1].rate / pair[0].rate:.2f}",
                    flush=True,
                )
    log = (broker.workdir / "mosquitto.log").read_text()
    if "u'bench-collector'" not in log or "u'bench-publisher'" not in log:
        raise RuntimeError("the mTLS runs did not log in with their certificates")
    rows = []
    met = True
    for (mode, kind), runs in pairs.items():
        ratio = statistics.median(tls_run.rate / plain_run.rate for plain_run, tls_run in runs)
        met = met and ratio >= TLS_TARGET
        per_10k = 10_000 / len(payloads)
        rows.append(
            [
                f"collector, {kind} ({mode})",
                spread([p.rate for p, _ in runs]),
                spread([t.rate for _, t in runs]),
                f"{ratio:.2f}",
                "yes" if ratio >= TLS_TARGET else "NO",
                cpu_spread([(p.collector_cpu or 0) * per_10k for p, _ in runs]),
                cpu_spread([(t.collector_cpu or 0) * per_10k for _, t in runs]),
                cpu_spread([(p.broker_cpu or 0) * per_10k for p, _ in runs]),
                cpu_spread([(t.broker_cpu or 0) * per_10k for _, t in runs]),
                spread([p.publish_rate or 0 for p, _ in runs]),
                spread([t.publish_rate or 0 for _, t in runs]),
            ]
        )
    print()
    print(
        table(
            [
                "who",
                "plain msgs/s",
                "mTLS msgs/s",
                "mTLS / plain",
                f">= {TLS_TARGET}",
                "collector CPU plain",
                "mTLS",
                "mosquitto CPU plain",
                "mTLS",
                "publisher plain",
                "mTLS",
            ],
            rows,
        )
    )
    print(
        "\nmsgs/s: first to last stored (the collector's stored_at). CPU: seconds per 10,000 "
        "messages (collector: its process taking them in; mosquitto: from the first publish "
        "to the last stored, the publisher's side included). mTLS: publisher and collector "
        "with client certificates on the broker's TLS listener (TLS 1.3)."
    )
    print("target met" if met else "target NOT met")
    return 0


def cpu_spread(values: list[float]) -> str:
    middle = statistics.median(values)
    if len(values) == 1:
        return f"{middle:.2f}"
    return f"{middle:.2f} ({min(values):.2f}-{max(values):.2f})"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--bare-subscriber"]:
        return bare_subscriber_main(argv[1:])
    parser = argparse.ArgumentParser(
        description="Collector ingest rate (MQTT to validated and stored) against a bare "
        "paho QoS 1 subscriber on the same broker, in the same run."
    )
    parser.add_argument("--messages", type=int, default=20_000, help="transactions (20000)")
    parser.add_argument(
        "--databases",
        nargs="+",
        choices=("sqlite", "postgresql"),
        default=["sqlite", "postgresql"],
        help="collector databases to measure (sqlite postgresql)",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=("live", "backlog"),
        default=["live", "backlog"],
        help="live: connected while publishing; backlog: drained after an absence",
    )
    parser.add_argument("--rounds", type=int, default=1, help="runs of each row (1)")
    parser.add_argument(
        "--batch-size", type=int, default=500, help="collector ingest.batch_size (500)"
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("POSMON_TEST_POSTGRES", POSTGRES_ADMIN_DEFAULT),
        help="admin URL to make a scratch database with (POSMON_TEST_POSTGRES)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile the collector's ingest loop (backlog, each database) instead",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="collector over mutual TLS against the same without TLS, instead",
    )
    parser.add_argument("--timeout", type=float, default=600, help="per step, seconds (600)")
    args = parser.parse_args(argv)
    quiet_logging()
    payloads = make_payloads(args.messages)
    size = sum(len(payload) for _, payload in payloads) / len(payloads)
    print(f"machine: {machine()}")
    print(
        f"{args.messages} posmon.txn/1 payloads ({size:.0f} bytes on average) over "
        f"{TERMINALS} terminals; collector batch_size {args.batch_size}",
        flush=True,
    )
    figures: dict[tuple[str, str], list[Figure]] = {}
    with workspace() as workdir, ExitStack() as stack:
        extra, tls = mutual_tls(workdir) if args.tls else ([], None)
        broker = Broker(workdir / "broker", extra)
        broker.start()
        stack.callback(broker.stop)
        if tls is not None:
            return tls_comparison(workdir, broker, payloads, tls, args)
        if args.profile:
            for kind in args.databases:
                profile_run(
                    workdir,
                    broker,
                    payloads,
                    kind=kind,
                    admin_url=args.postgres,
                    batch_size=args.batch_size,
                    timeout=args.timeout,
                )
            return 0
        for round_ in range(args.rounds):
            for mode in args.modes:
                runs = [bare_run(workdir, broker, payloads, mode, args.timeout)]
                for kind in args.databases:
                    runs.append(
                        collector_run(
                            workdir,
                            broker,
                            payloads,
                            mode=mode,
                            kind=kind,
                            admin_url=args.postgres,
                            batch_size=args.batch_size,
                            timeout=args.timeout,
                        )
                    )
                for figure in runs:
                    figures.setdefault((figure.mode, figure.label), []).append(figure)
                print(
                    f"round {round_ + 1}, {mode}: "
                    + ", ".join(f"{f.label} {f.rate:,.0f}/s" for f in runs),
                    flush=True,
                )
    rows = []
    met = True
    for mode in args.modes:
        bare = figures[(mode, "bare paho subscriber")]
        for (row_mode, label), runs in figures.items():
            if row_mode != mode:
                continue
            ratios = [run.rate / base.rate for run, base in zip(runs, bare, strict=True)]
            ratio = statistics.median(ratios)
            from_publish = [r.rate_from_publish for r in runs if r.rate_from_publish is not None]
            is_bare = label.startswith("bare")
            if not is_bare and ratio < TARGET:
                met = False
            rows.append(
                [
                    f"{label} ({mode})",
                    spread([run.rate for run in runs]),
                    spread(from_publish) if from_publish else "-",
                    spread([run.publish_rate or 0 for run in runs]),
                    "1.00" if is_bare else f"{ratio:.2f}",
                    "" if is_bare else ("yes" if ratio >= TARGET else "NO"),
                ]
            )
    print()
    print(
        table(
            [
                "who",
                "msgs/s first-last",
                "msgs/s from publish",
                "publisher msgs/s",
                "ratio",
                f">= {TARGET}",
            ],
            rows,
        )
    )
    print(
        "\nfirst-last: bare, first to last message received; collector, first to last "
        "stored (its stored_at). from publish: from the publisher's first message (live)."
    )
    print("target met" if met else "target NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
