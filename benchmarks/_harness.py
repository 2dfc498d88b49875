"""What the benchmarks share: a private broker, the agent as a process, a counting subscriber.

Everything here runs real peers, as the tests do: mosquitto with posmon's own broker
configuration on a free port, `posmon agent run` as a subprocess (so the RSS and CPU read
from /proc are the agent's own), pseudo-terminals for the serial side, and a subscriber
built on `posmon.mqtt.MqttClient`. The broker set-up mirrors `tests/conftest.py`'s
`Broker`, rewritten here so that the benchmarks need neither pytest nor the test suite.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import platform
import select
import sqlite3
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
import tty
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from posmon.mqtt import Message, MqttClient, MqttSettings
from posmon.wire.frames import ACK, NAK
from simulators.broker import PrivateBroker
from simulators.stream import TrafficGenerator, TrafficProfile

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
TID = "10000001"

_TIOCPKT: int | None = getattr(termios, "TIOCPKT", None)


def quiet_logging() -> None:
    """Warnings only; the planned broker outages would otherwise log a line per retry."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("posmon.mqtt").setLevel(logging.ERROR)
    logging.getLogger("simulators").setLevel(logging.ERROR)


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    """A temporary folder for one run, removed afterwards, that mosquitto can write to.

    Started as root, mosquitto drops to its own user, which must reach its data folder.
    """
    with tempfile.TemporaryDirectory(prefix="posmon-bench-") as tmp:
        os.chmod(tmp, 0o711)
        yield Path(tmp)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate()` until true; raise TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> int | None:
    """SIGTERM, then SIGKILL if it does not end in `timeout` s; the exit code."""
    if process is None:
        return None
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    return process.returncode


# --- /proc readings ---------------------------------------------------------------------


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After "pid (comm)": state is field 3, utime 14 and stime 15 (1-based, man 5 proc).
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (resident peak) of a process, in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            values[key] = int(rest.split()[0])
    return values


def mib(kib: float) -> float:
    return kib / 1024


def machine() -> str:
    """One line describing where the figures come from."""
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}, load average {load}; posmon {revision()}"
    )


def fsync_latency(folder: Path, count: int = 100) -> str:
    """Median and 90th percentile of write+fdatasync of 4 KiB in `folder`, in ms.

    The outbox with fsync=full waits for one of these per frame: when other work shares
    the disk, this is the figure that moves.
    """
    path = folder / "fsync-probe"
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(count):
            start = time.perf_counter()
            os.write(fd, b"\0" * 4096)
            os.fdatasync(fd)
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()
    times.sort()
    return (
        f"write+fdatasync of 4 KiB: median {1000 * times[count // 2]:.2f} ms, "
        f"p90 {1000 * times[count * 9 // 10]:.2f} ms"
    )


def revision() -> str:
    """The commit measured, marked when tracked files differ from it."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", "HEAD"], check=False)
    except (OSError, subprocess.CalledProcessError):
        return "(not a git checkout)"
    return commit + (" + uncommitted changes" if dirty.returncode else "")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain text table, numbers right-aligned."""
    cells = [[str(item) for item in headers]] + [
        [f"{item:,.1f}" if isinstance(item, float) else str(item) for item in row] for row in rows
    ]
    widths = [max(len(row[index]) for row in cells) for index in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(width) if index == 0 else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=True))
        )

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


# --- the broker -------------------------------------------------------------------------


class Broker(PrivateBroker):
    """posmon's broker configuration on a free port (simulators.broker), clients
    reconnecting fast: a benchmark's outage ends when its broker is back."""

    def settings(self, prefix: str, **overrides: object) -> MqttSettings:
        values: dict[str, object] = {"reconnect_min_s": 0.05, "reconnect_max_s": 0.2}
        values.update(overrides)
        return super().settings(prefix, **values)


# --- the agent --------------------------------------------------------------------------


class AgentProcess:
    """`posmon agent run` as its own process, with a configuration file and a log."""

    def __init__(
        self,
        workdir: Path,
        broker: Broker,
        prefix: str,
        port_url: str,
        *,
        inflight: int = 20,
        fsync: str = "full",
        agent_id: str | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.config = workdir / "agent.toml"
        self.log = workdir / "agent.log"
        self.outbox = workdir / "state" / "outbox.sqlite3"
        # A fresh id (so a fresh MQTT session) each time: runs must not inherit state.
        self.agent_id = agent_id or f"bench-{uuid.uuid4().hex[:8]}"
        # reconnect_max_s is kept short so that the replay benchmark's "broker back" to
        # "agent connected" gap is small; 0.5 s is what the tests use.
        self.config.write_text(
            f'[agent]\nid = "{self.agent_id}"\nstate_dir = "{workdir / "state"}"\n'
            f'[[ports]]\nname = "bench"\nurl = "{port_url}"\ntids = ["{TID}"]\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\ntopic_prefix = "{prefix}"\n'
            f"inflight = {inflight}\nreconnect_min_s = 0.1\nreconnect_max_s = 0.5\n"
            f'[outbox]\nfsync = "{fsync}"\n'
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(BIN / "posmon"), "agent", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int | None:
        code = stop_process(self.process)
        self.process = None
        return code

    def outbox_size(self) -> int:
        """Events waiting in the agent's outbox (read-only; the agent keeps writing)."""
        if not self.outbox.exists():
            return 0
        with sqlite3.connect(f"file:{self.outbox}?mode=ro", uri=True, timeout=5) as db:
            (count,) = db.execute("SELECT count(*) FROM events").fetchone()
        return int(count)

    def outbox_entries(self) -> list[tuple[str, bytes]]:
        """Every (topic, payload) waiting in the outbox, oldest first."""
        with sqlite3.connect(f"file:{self.outbox}?mode=ro", uri=True, timeout=5) as db:
            rows = db.execute("SELECT topic, payload FROM events ORDER BY id").fetchall()
        return [(str(topic), bytes(payload)) for topic, payload in rows]

    def log_tail(self, lines: int = 20) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


# --- the subscriber ---------------------------------------------------------------------


class Subscriber:
    """Counts events under `prefix/terminals/` and `prefix/deadletter` from a background loop.

    Persistent session, QoS 1: subscribed once while the broker is up, it is sent what was
    published while it was away, including across a broker restart.
    """

    def __init__(self, broker: Broker, prefix: str) -> None:
        self.prefix = prefix
        self.client = MqttClient(broker.settings(prefix), f"bench-sub-{uuid.uuid4().hex[:8]}")
        self.client.on_message = self._received
        self.client.on_connected = self._connected
        self.connected_at: list[float] = []  # time.monotonic() of every CONNACK
        self.count = 0
        self.payload_bytes = 0
        self.first: float | None = None
        self.last: float | None = None
        self.online = threading.Event()  # the agent's retained presence says "online"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="subscriber", daemon=True)

    def __enter__(self) -> Subscriber:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def wait_subscribed(self, timeout: float = 10.0) -> None:
        if not self._subscribed.wait(timeout):
            raise TimeoutError("subscriber could not connect")
        time.sleep(0.1)  # the SUBACK follows the CONNACK

    def wait_for(self, count: int, timeout: float) -> bool:
        """Wait until `count` events have arrived; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count >= count:
                return True
            time.sleep(0.005)
        return self.count >= count

    def reset(self) -> None:
        with self._lock:
            self.count = 0
            self.payload_bytes = 0
            self.first = self.last = None

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.client.disconnect()

    def _received(self, message: Message) -> None:
        now = time.monotonic()
        topic = message.topic
        if topic.startswith((f"{self.prefix}/terminals/", f"{self.prefix}/deadletter")):
            with self._lock:
                self.count += 1
                self.payload_bytes += len(message.payload)
                if self.first is None:
                    self.first = now
                self.last = now
        elif topic.endswith("/presence") and b'"online"' in message.payload:
            self.online.set()

    def _connected(self, session_present: bool) -> None:
        self.connected_at.append(time.monotonic())
        self.client.subscribe([f"{self.prefix}/#"])

    def _loop(self) -> None:
        client = self.client
        pending = False  # CONNECT sent, CONNACK not yet seen
        sent_at = 0.0
        while not self._stop.is_set():
            # Calling connect() again while a CONNACK is on its way would drop that
            # connection and start over; a broker that has just started (and is loading
            # its persistence file on a busy machine) can then keep us out for a minute.
            if not client.connected and (not pending or time.monotonic() - sent_at > 5.0):
                try:
                    client.connect()
                except OSError:
                    pending = False
                    time.sleep(0.05)
                    continue
                pending, sent_at = True, time.monotonic()
            if not client.loop(0.02):
                pending = False
                time.sleep(0.02)
                continue
            if client.connected:
                pending = False
                self._subscribed.set()


# --- the serial side --------------------------------------------------------------------


def make_frames(
    count: int, profile: TrafficProfile | None = None, *, seed: int = 1, tid: str = TID
) -> list[bytes]:
    """`count` POSMON-SL/1 frames of one terminal's generated traffic, SEQ 0, 1, 2 ..."""
    source = TrafficGenerator(tid, profile, seed=seed)
    now = datetime.now(UTC)
    frames = []
    for index in range(count):
        message = source.next_message(now)
        frames.append(message.with_seq(index % 65536).to_frame())
    return frames


def txn_profile() -> TrafficProfile:
    """Transactions only (after the one STS a terminal sends at start): no BAT, no STS."""
    return TrafficProfile(batch_size=0, status_every=10**9, link_flap=0.0)


class RawPty:
    """A raw pseudo-terminal whose master side the benchmark drives itself, never dropping.

    `simulators.pty.PtyLink` drops bytes nobody reads (as a wire would); a pipelined writer
    must instead wait for room, so it gets the master file descriptor to `select` on.
    """

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # binary frames: no echo, no CR/LF translation
        os.set_blocking(self.master, False)
        if _TIOCPKT is not None:
            # Packet mode tells us when the reader opens (pyserial flushes the line).
            fcntl.ioctl(self.master, _TIOCPKT, struct.pack("i", 1))
        self.url = os.ttyname(self.slave)
        self.attached = _TIOCPKT is None

    def read(self) -> bytes:
        """Whatever the reader wrote (one packet); b"" for none or a control packet."""
        try:
            packet = os.read(self.master, 4096)
        except BlockingIOError:
            return b""
        if _TIOCPKT is None:
            return packet
        if packet and packet[0] == 0:
            return packet[1:]
        self.attached = True
        return b""

    def reader_attached(self, timeout: float = 0.05) -> bool:
        """Whether the reader has opened the line, waiting at most `timeout` s for it."""
        if not self.attached and select.select([self.master], [], [], timeout)[0]:
            self.read()
        return self.attached

    def wait_for_reader(self, timeout: float) -> None:
        wait_until(self.reader_attached, timeout, f"a reader to open {self.url}")

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


@dataclass(frozen=True, slots=True)
class PipelineResult:
    """What a pipelined writer saw: when it started and finished, and the answers."""

    first_write: float
    last_ack: float
    acks: int
    naks: int

    @property
    def seconds(self) -> float:
        return self.last_ack - self.first_write


def write_pipelined(pty: RawPty, frames: Sequence[bytes], timeout: float) -> PipelineResult:
    """Write `frames` back to back (only the kernel's pty buffer limits how far ahead) and
    count the ACK/NAK bytes that come back until every frame is answered."""
    data = memoryview(b"".join(frames))
    expected = len(frames)
    acks = naks = 0
    first_write = last_ack = 0.0
    deadline = time.monotonic() + timeout
    while acks + naks < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{acks + naks} of {expected} frames answered")
        readable, writable, _ = select.select([pty.master], [pty.master] if data else [], [], 0.5)
        if writable:
            try:
                written = os.write(pty.master, data[:4096])
            except BlockingIOError:
                written = 0
            if written and not first_write:
                first_write = time.monotonic()
            data = data[written:]
        if readable:
            answer = pty.read()
            if answer:
                acks += answer.count(ACK)
                naks += answer.count(NAK)
                last_ack = time.monotonic()
    return PipelineResult(first_write, last_ack, acks, naks)


def start_echo_reader(url: str) -> subprocess.Popen[bytes]:
    """The baseline reader (see _echo_ack.py) as its own process, like the agent."""
    return subprocess.Popen([sys.executable, str(Path(__file__).with_name("_echo_ack.py")), url])
