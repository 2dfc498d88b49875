"""What the fault suite is made of: a fault-injecting TCP proxy and the figures line.

This kernel has no `netem` qdisc, so latency, jitter, loss and throughput limits are made
by `FaultProxy`, a small TCP proxy between a client (an agent, the collector) and the
broker. Per direction, a reader thread takes what arrives and a writer thread sends each
chunk when it is due, so a delay holds every chunk for that long without slowing the
stream (order kept). Faults, changed while traffic flows:

- `delay_s` and `jitter_s`: each chunk is held `delay_s` plus a uniform draw of up to
  `jitter_s` (never overtaking the chunk before it);
- `stall_p` and `stall_s`: each chunk is, with probability `stall_p`, held `stall_s` more.
  Over TCP a lost segment is retransmitted after a timeout, so what an application sees
  of packet loss is exactly this: some data arriving a retransmission timeout late;
- `rate_bps`: bytes per second per direction;
- `blackhole()`: nothing is read or sent any more, and nothing is closed: to both ends the
  connection is half-open, as when a link dies without a FIN or RST; new connections are
  accepted and then get no answer, as a SYN would across a partition;
- `heal()`: traffic flows again (connections that stayed open carry on);
- `cut()`: every connection is closed now (a reset).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

from simulators.broker import free_port

CHUNK = 65536
# The suite's figures, one JSON line per fault, appended (scripts/faults prints the table).
FIGURES = Path(__file__).resolve().parents[2] / "runs" / "faults" / "figures.jsonl"


@dataclass(frozen=True, slots=True)
class FaultFigures:
    """One fault's line: what went in, what came out, how soon it was seen and mended."""

    fault: str
    sent: int  # events the terminals sent
    acknowledged: int  # frames the agent ACKed to the terminals
    stored: int  # distinct events the collector stored
    duplicates: int  # rows stored twice (must be 0: the store dedupes)
    lost: int  # acknowledged and never stored (must be 0)
    false_alerts: int  # alerts no fault explains (must be 0)
    detect_s: float | None  # from the fault to the first sign of it (log line, alert)
    recover_s: float | None  # from the fault's end to everything stored
    notes: str = ""

    def write(self) -> None:
        FIGURES.parent.mkdir(parents=True, exist_ok=True)
        with FIGURES.open("a") as out:
            out.write(json.dumps(asdict(self) | {"at": time.time()}) + "\n")
        print(f"fault figures: {json.dumps(asdict(self))}")


@dataclass
class _Direction:
    source: socket.socket
    target: socket.socket
    queue: deque[tuple[float, bytes]] = field(default_factory=deque)
    ready: threading.Condition = field(default_factory=threading.Condition)
    last_due: float = 0.0
    closed: bool = False


class FaultProxy:
    """A TCP proxy from a free local port to `upstream_port`, with faults (see module)."""

    def __init__(self, upstream_port: int, *, seed: int = 17) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.delay_s = 0.0
        self.jitter_s = 0.0
        self.stall_p = 0.0
        self.stall_s = 0.0
        self.rate_bps = 0.0
        self._holed = threading.Event()
        self._stop = threading.Event()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.1)
        self._thread = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)
        self._thread.start()

    # --- faults -------------------------------------------------------------------------

    def blackhole(self) -> None:
        self._holed.set()

    def heal(self) -> None:
        self._holed.clear()

    def cut(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                sock.close()

    def close(self) -> None:
        self._stop.set()
        self.cut()
        self._listener.close()
        self._thread.join(timeout=5)

    # --- the proxy ------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        with self._lock:
            self._sockets.append(client)
        while self._holed.is_set():  # a partition: the SYN is answered by nobody
            if self._stop.wait(0.05):
                return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
        except OSError:
            client.close()
            return
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(0.1)
        with self._lock:
            self._sockets.append(upstream)
            self.connections += 1
        for source, target in ((client, upstream), (upstream, client)):
            direction = _Direction(source, target)
            threading.Thread(target=self._read, args=(direction,), daemon=True).start()
            threading.Thread(target=self._write, args=(direction,), daemon=True).start()

    def _due(self, direction: _Direction) -> float:
        hold = self.delay_s + self._random.uniform(0, self.jitter_s)
        if self.stall_p and self._random.random() < self.stall_p:
            hold += self.stall_s
        direction.last_due = max(direction.last_due, time.monotonic() + hold)
        return direction.last_due

    def _read(self, direction: _Direction) -> None:
        while not self._stop.is_set() and not direction.closed:
            if self._holed.is_set():
                time.sleep(0.02)  # read nothing: the sender's data waits in its buffers
                continue
            try:
                data = direction.source.recv(CHUNK)
            except TimeoutError:
                continue
            except OSError:
                data = b""
            with direction.ready:
                direction.queue.append((self._due(direction), data))
                direction.ready.notify()
            if not data:
                return

    def _write(self, direction: _Direction) -> None:
        while not self._stop.is_set():
            with direction.ready:
                while not direction.queue and not self._stop.is_set():
                    direction.ready.wait(0.1)
                if self._stop.is_set():
                    return
                due, data = direction.queue[0]
            while (wait := due - time.monotonic()) > 0 or self._holed.is_set():
                time.sleep(min(max(wait, 0.0), 0.05) or 0.02)
            with direction.ready:
                direction.queue.popleft()
            if not data:
                direction.closed = True
                with contextlib.suppress(OSError):
                    direction.target.shutdown(socket.SHUT_WR)
                return
            try:
                direction.target.sendall(data)
            except OSError:
                direction.closed = True
                return
            if self.rate_bps:
                time.sleep(len(data) / self.rate_bps)


def table(path: Path = FIGURES) -> str:
    """The figures lines as a Markdown table, latest line of each fault."""
    latest: dict[str, dict[str, object]] = {}
    for text in path.read_text().splitlines() if path.exists() else []:
        row = json.loads(text)
        latest[str(row["fault"])] = row
    columns = ["fault", "sent", "acknowledged", "stored", "duplicates", "lost",
               "false_alerts", "detect_s", "recover_s", "notes"]  # fmt: skip
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in latest.values():
        cells = ["-" if row.get(name) is None else str(row[name]) for name in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own (initdb on a free port, trust on loopback),
    so it can be restarted or crashed without touching the machine's server. Run as the
    `postgres` user, which initdb needs; its folder is outside pytest's (root-only) tmp."""

    def __init__(self) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if not bins or os.geteuid() != 0:
            raise RuntimeError("needs Debian's postgresql binaries and root (to run as postgres)")
        self.bin = bins[-1].parent
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="posmon-pg-"))
        shutil.chown(self.folder, "postgres", "postgres")
        self.data = self.folder / "data"
        self._as_postgres(self.bin / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.folder}'\nfsync = on\n"
            )
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *command: object) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *map(str, command)],
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        self._as_postgres(self.bin / "pg_ctl", "-D", self.data, "-w", "-l",
                          self.folder / "log", "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """`fast` (a clean shutdown) or `immediate` (a crash: recovery at the next start)."""
        self._as_postgres(self.bin / "pg_ctl", "-D", self.data, "-w", "-m", mode, "stop")

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


if __name__ == "__main__":
    print(table())
