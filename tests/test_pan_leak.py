"""No full card number leaves posmon, at scale, through the real processes (issue #15).

100,000 POSMON-SL/1 frames from 40 terminals on four pseudo-terminals go through four
`posmon agent run` processes to mosquitto and one `posmon collector run` on PostgreSQL
(REST API on, metrics to a private influxd, every process logging at DEBUG, text or JSON).
Full PANs are written in every place a terminal can put one: the PAN field in every
separator style (plain, spaces, dashes, dots, mixed), the names and values of unknown keys
(`extra`), a MID key on STS and HBT frames (an unknown key there), the firmware text of
STS, frames that are dead-lettered (bad values, missing keys, unknown TYPE, bad PAN) or
NAKed (bad LRC), and line noise between frames. 10,000 settlement results published on
MQTT as the acquirer would, invalid ones among them (collector dead letters), a CSV import
and a few REST calls carry PANs in their free text (`reason_text` in every style and
inside words, notes, a silence's reason); failures and returns make alerts and
re-remittance cases, some of which are moved on and rejected by the bank.

Then every artefact is collected: everything published on the broker (a `#` subscriber
for the whole run; the test's own input messages are left out by identity), every row of
every table of the collector's database (each row as text), every REST list and detail
response, evidence JSON and PDF (CLI and API; PDF text by `pdftotext`), the agents'
outbox files (raw bytes and rows) and logs, the collector's log, the commands' output,
the broker's log and everything in InfluxDB (`SELECT * FROM /.*/`). A scanner written
here (not `posmon.pan`) reads all of it:

- full PANs: every run of digits joined by up to three blanks, dots or dashes (line
  breaks included), stripped of them, is searched for each injected number: this finds
  every written form of every PAN the test injected;
- any other card number: a contiguous run of 13-19 digits that passes Luhn, or of 16-19
  digits starting 62, is one, unless it is the fraction of a decimal number or a typed
  identifier, excluded by value: those the test generated (MIDs, settlement ids, RRNs,
  terminal times) and those the collector made (alert, case and silence ids, token
  hashes);
- over-exposure: 11 or more consecutive digits of an injected PAN (masking shows at most
  its first 6 and last 4, never 11 in a row).

A 14-digit run that reads as a time of this run (a PDF's creation date) is not counted
either. What each exclusion let through is counted in the report.

The figures (artefacts, bytes, PANs injected, PANs found) are printed on one line
starting `PAN leak scan:` (shown with `-s`, or under "PASSES" with `-rA`) and written to
`pan-leak.txt` in the test's folder, with what was injected where, the exclusions, the
artefacts by kind and the time of each phase.

The run found a PAN cut across a limit before it was masked (a collector dead letter's
64 KiB payload, a CSV import report's 40-character value): the two fast tests at the end
keep those mended.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import http.client
import json
import os
import random
import re
import select
import shutil
import sqlite3
import struct
import subprocess
import sys
import termios
import threading
import time
import tty
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from conftest import AgentProcess, Broker, Influxd, wait_until

from posmon.mqtt import Message, MqttClient
from posmon.reasons import DEFAULT_REASON_CODES
from posmon.wire.frames import ACK, NAK, encode_frame
from simulators.broker import free_port

PORTS = 4
TERMINALS_PER_PORT = 10
FRAMES = 100_000
SETTLEMENTS = 10_000
CSV_ROWS = 1_000
TZ = ZoneInfo("Asia/Shanghai")
FS = "\x1c"
POSMON = Path(sys.executable).parent / "posmon"
# How the settlements published on MQTT end (the rest are credited as expected).
FAILED, RETURNED, MISMATCHED, DUPLICATED, ORPHANS = 600, 200, 100, 50, 100
REJECTED_CASES = 10


# --- card numbers ---------------------------------------------------------------------------


def luhn_ok(digits: str) -> bool:
    """The Luhn check, written here so that the scanner owes nothing to posmon.pan."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def card_pool(seed: int = 15) -> list[str]:
    """Distinct PANs of every length and brand: Luhn-valid 13-19 digits, and UnionPay
    (62...) numbers of 16-19 digits that fail Luhn (not every UnionPay card has it)."""
    rng = random.Random(seed)
    specs: list[tuple[tuple[str, ...], int, int, bool]] = [
        (("4",), 16, 250, True),
        (("4",), 13, 60, True),
        (("34", "37"), 15, 100, True),
        (("51", "52", "53", "54", "55"), 16, 150, True),
        (("622202", "622848", "621700", "621661"), 19, 250, True),
        (("622588", "625807", "628288"), 16, 150, True),
        (("62",), 17, 40, True),
        (("62",), 18, 40, True),
        (("62",), 16, 60, False),
        (("62",), 19, 60, False),
        (("62",), 17, 20, False),
    ]
    pool: list[str] = []
    seen: set[str] = set()
    for prefixes, length, count, luhn in specs:
        made = 0
        while made < count:
            prefix = rng.choice(prefixes)
            body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix)))
            if luhn:
                body = body[:-1] + next(d for d in "0123456789" if luhn_ok(body[:-1] + d))
            elif luhn_ok(body):
                continue
            if body not in seen:
                seen.add(body)
                pool.append(body)
                made += 1
    rng.shuffle(pool)
    return pool


STYLES = ("plain", "spaces", "dashes", "dots", "mixed")
_MIXED = (" ", "-", ".", " - ", "  ", ".-")


def written(pan: str, style: str) -> str:
    """A PAN the way people write it: groups of 4 (4-6-5 for 15 digits), separated."""
    if style == "plain":
        return pan
    sizes = (4, 6, 5) if len(pan) == 15 else (4,) * (len(pan) // 4) + (len(pan) % 4,)
    groups, at = [], 0
    for size in sizes:
        if size:
            groups.append(pan[at : at + size])
            at += size
    if style == "mixed":
        text = groups[0]
        for index, group in enumerate(groups[1:]):
            text += _MIXED[(index + len(pan)) % len(_MIXED)] + group
        return text
    return {"spaces": " ", "dashes": "-", "dots": "."}[style].join(groups)


class Cards:
    """Hands out the pool's PANs in turn, in turn in every style, and counts what it gave."""

    def __init__(self, pool: list[str]) -> None:
        self.pool = pool
        self.given = 0
        self.forms: set[tuple[str, str]] = set()
        self.places: Counter[str] = Counter()
        self._next = 0

    def pan(self, place: str, style: str | None = None) -> str:
        """The next PAN, written in `style` (or the next style), counted under `place`."""
        number = self.pool[self._next % len(self.pool)]
        chosen = style or STYLES[(self._next // len(self.pool) + self._next) % len(STYLES)]
        self._next += 1
        self.given += 1
        self.forms.add((number, chosen))
        self.places[place] += 1
        return written(number, chosen)


# --- the terminals' traffic -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sale:
    """An approved sale as a settlement names it."""

    tid: str
    mid: str
    rrn: str
    stan: str
    batch: str
    amount: int
    txn_date: str


@dataclass
class Traffic:
    """What the test writes on each port, and what the system should make of it."""

    chunks: list[list[bytes]] = field(default_factory=lambda: [[] for _ in range(PORTS)])
    answers: list[int] = field(default_factory=lambda: [0] * PORTS)
    frames: int = 0
    txns: int = 0
    statuses: int = 0
    batches: int = 0
    dead: int = 0
    naks: int = 0
    sales: list[Sale] = field(default_factory=list)
    mids: set[str] = field(default_factory=set)
    rrns: set[str] = field(default_factory=set)
    times: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class TxnFields:
    """The keys of one TXN frame but its PAN."""

    seq: int
    tid: str
    mid: str
    amount: int
    rc: str
    rrn: str
    stan: str
    ts: str

    def parts(self, cards: Cards, pan: str | None = None) -> list[str]:
        """The frame's TYPE and KEY=VALUE parts; the PAN field holds `pan`, or the next PAN."""
        return [
            "TXN",
            f"SEQ={self.seq}",
            f"TID={self.tid}",
            f"MID={self.mid}",
            "KIND=SALE",
            f"AMT={self.amount}",
            "CUR=156",
            f"PAN={cards.pan('PAN field') if pan is None else pan}",
            f"RC={self.rc}",
            f"RRN={self.rrn}",
            f"STAN={self.stan}",
            "BATCH=000001",
            f"TS={self.ts}",
            "AUTH=A1B2C3",
            "ISS=0102",
            "ENTRY=CHIP",
        ]


def _extra_fields(cards: Cards, index: int) -> list[str]:
    """Unknown keys with PANs in their values and their names (the frame's `extra`)."""
    place = "extra key or value"
    variants: list[Callable[[], list[str]]] = [
        lambda: [f"NOTE=card {cards.pan(place)} signed"],
        lambda: [f"C{cards.pan(place, 'plain')}=1"],
        lambda: [f"{cards.pan(place, 'dots')}=x"],
        lambda: [f"REF=ord{cards.pan(place, 'plain')}closed"],
        # Keys named like the typed identifiers that scrub_tree leaves alone downstream.
        lambda: [f"mid={cards.pan(place, 'plain')}", f"rrn={cards.pan(place)}"],
        lambda: [f"settlement_id={cards.pan(place, 'plain')}", "tid=x"],
        lambda: [f"MEMO={cards.pan(place)} / {cards.pan(place)}"],
    ]
    return variants[index % len(variants)]()


def _dead_letter(cards: Cards, index: int, fields: TxnFields) -> list[str]:
    """A frame that arrives intact and cannot be an event, with PANs in it."""
    head = [f"SEQ={fields.seq}", f"TID={fields.tid}"]

    def pan(style: str | None = "plain") -> str:
        return cards.pan("dead-lettered frame", style)

    def txn() -> list[str]:
        return fields.parts(cards)

    def replaced(key: str, value: str) -> list[str]:
        if key == "PAN":
            return fields.parts(cards, pan=value)
        return [f"{key}={value}" if p.startswith(f"{key}=") else p for p in txn()]

    def twice() -> list[str]:
        number = pan()
        return [*txn(), f"{number}=1", f"{number}=2"]

    variants: list[Callable[[], list[str]]] = [
        lambda: [p for p in txn() if not p.startswith("RC=")] + [f"NOTE=re {pan(None)}"],
        lambda: replaced("AMT", f"x{pan()}"),
        lambda: replaced("PAN", f"{pan()}Z"),  # Z is no mask character (x, X, #)
        lambda: [*txn(), pan("spaces")],
        twice,
        lambda: [f"T{pan()}", *head, f"CARD={pan(None)}"],
        lambda: replaced("TID", pan()),
        lambda: replaced("SEQ", pan()),
        lambda: [*txn(), f"LONG={'x' * 250}{pan(None)}"],
        lambda: replaced("TS", pan()),
        lambda: replaced("CUR", pan("dashes")),
        lambda: ["STS", *head, f"LINK={pan(None)}", "NET=ETH", "SAF=0"],
        # Never a bare 15-digit number here: that is a valid MID, shown as it is.
        lambda: replaced("MID", pan("spaces")),
        lambda: replaced("KIND", pan("dots")),
    ]
    return variants[index % len(variants)]()


def make_traffic(cards: Cards, now: datetime) -> Traffic:
    """FRAMES frames over PORTS ports of TERMINALS_PER_PORT terminals each."""
    traffic = Traffic()
    rng = random.Random(1515)
    per_port = FRAMES // PORTS
    start = now.astimezone(TZ) - timedelta(minutes=30)
    rrn = 0
    for port in range(PORTS):
        tids = [f"{port + 1}{t:07d}" for t in range(TERMINALS_PER_PORT)]
        mids = {tid: f"8981{port + 1}{t:010d}" for t, tid in enumerate(tids)}
        traffic.mids.update(mids.values())
        seqs = dict.fromkeys(tids, 0)
        chunks = traffic.chunks[port]
        for index in range(per_port):
            tid = tids[rng.randrange(TERMINALS_PER_PORT)]
            seq = seqs[tid]
            seqs[tid] += 1
            local = start + timedelta(seconds=index // 20)
            ts = local.strftime("%Y%m%d%H%M%S")
            traffic.times.add(ts)
            rrn += 1
            rrn_text = f"{rrn:012d}"
            traffic.rrns.add(rrn_text)
            stan = f"{rrn % 1_000_000:06d}"
            amount = 100 + rng.randrange(50_000)
            rc = "00" if rng.random() < 0.97 else "05"
            fields = TxnFields(seq, tid, mids[tid], amount, rc, rrn_text, stan, ts)
            draw = rng.random()
            nak = False
            if draw < 0.80:
                parts = fields.parts(cards) + (
                    _extra_fields(cards, index) if index % 3 == 0 else []
                )
                traffic.txns += 1
                if rc == "00":
                    traffic.sales.append(
                        Sale(tid, mids[tid], rrn_text, stan, "000001", amount, f"{local:%Y-%m-%d}")
                    )
            elif draw < 0.88:
                firmware = f"OS 3.{index % 9} sn{cards.pan('firmware', 'plain')}"
                parts = [
                    "STS",
                    f"SEQ={seq}",
                    f"TID={tid}",
                    "LINK=UP",
                    "NET=4G",
                    "SAF=0",
                    "RSSI=-67",
                    f"FW={firmware}",
                    f"MID={cards.pan('MID on STS/HBT')}",
                    *(_extra_fields(cards, index) if index % 2 else []),
                ]
                traffic.statuses += 1
            elif draw < 0.93:
                parts = [
                    "HBT",
                    f"SEQ={seq}",
                    f"TID={tid}",
                    f"TS={ts}",
                    f"MID={cards.pan('MID on STS/HBT')}",
                ]
                traffic.statuses += 1
            elif draw < 0.94:
                result = "OK" if index % 4 else "UNBALANCED"
                parts = [
                    "BAT",
                    f"SEQ={seq}",
                    f"TID={tid}",
                    f"MID={mids[tid]}",
                    "BATCH=000001",
                    "COUNT=12",
                    "TOTAL=123400",
                    f"RESULT={result}",
                    f"TS={ts}",
                    f"NOTE=closed by card {cards.pan('BAT note (extra)')}",
                ]
                traffic.batches += 1
            elif draw < 0.99:
                parts = _dead_letter(cards, index, fields)
                traffic.dead += 1
            else:
                parts = [*fields.parts(cards), f"NOTE={cards.pan('NAKed frame')}"]
                nak = True
                traffic.naks += 1
            data = FS.join(parts).encode()
            frame = encode_frame(data)
            if nak:
                frame = frame[:-1] + bytes((frame[-1] ^ 0x5A,))
            if index % 97 == 0:
                chunks.append(f"noise {cards.pan('line noise')} ".encode())
            chunks.append(frame)
            traffic.answers[port] += 1
            traffic.frames += 1
    return traffic


# --- serial: pipelined writers on raw pseudo-terminals --------------------------------------

_TIOCPKT: int | None = getattr(termios, "TIOCPKT", None)


class RawPty:
    """A raw pty whose master the test writes ahead on, never dropping (packet mode tells
    when the agent opens the slave)."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        if _TIOCPKT is not None:
            fcntl.ioctl(self.master, _TIOCPKT, struct.pack("i", 1))
        self.path = os.ttyname(self.slave)
        self.attached = _TIOCPKT is None

    def read(self) -> bytes:
        try:
            packet = os.read(self.master, 4096)
        except (BlockingIOError, OSError):
            return b""
        if _TIOCPKT is None:
            return packet
        if packet and packet[0] == 0:
            return packet[1:]
        self.attached = True
        return b""

    def reader_attached(self) -> bool:
        """Whether the agent has opened the slave side (pyserial flushes it on open)."""
        if not self.attached and select.select([self.master], [], [], 0.05)[0]:
            self.read()
        return self.attached

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


def pump(
    ptys: list[RawPty], chunks: list[list[bytes]], answers: list[int], timeout: float
) -> Counter[str]:
    """Write every port's bytes back to back and read ACK/NAK until each frame is answered."""
    data = [memoryview(b"".join(port_chunks)) for port_chunks in chunks]
    got: list[Counter[str]] = [Counter() for _ in ptys]
    deadline = time.monotonic() + timeout
    while any(sum(got[i].values()) < answers[i] for i in range(len(ptys))):
        if time.monotonic() > deadline:
            raise TimeoutError(f"answers {[dict(c) for c in got]} of {answers}")
        masters = [pty.master for pty in ptys]
        writable = [pty.master for i, pty in enumerate(ptys) if data[i]]
        readable, ready, _ = select.select(masters, writable, [], 0.5)
        for i, pty in enumerate(ptys):
            if pty.master in ready:
                try:
                    written_now = os.write(pty.master, data[i][:4096])
                except BlockingIOError:
                    written_now = 0
                data[i] = data[i][written_now:]
            if pty.master in readable:
                answer = pty.read()
                got[i]["ack"] += answer.count(ACK)
                got[i]["nak"] += answer.count(NAK)
    total: Counter[str] = Counter()
    for counter in got:
        total.update(counter)
    return total


# --- the collector and the commands --------------------------------------------------------


class CollectorProcess:
    """`posmon --log-level DEBUG collector run` with its configuration and its log."""

    def __init__(
        self, workdir: Path, *, broker: Broker, prefix: str, url: str, influx: str, db: str
    ) -> None:
        self.http_port = free_port()
        self.config = workdir / "collector.toml"
        self.log = workdir / "collector.log"
        self.config.write_text(
            f'[collector]\nid = "leak-collector"\n[database]\nurl = "{url}"\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\ntopic_prefix = "{prefix}"\n'
            "reconnect_min_s = 0.1\nreconnect_max_s = 0.5\n"
            f'[http]\nenabled = true\nhost = "127.0.0.1"\nport = {self.http_port}\n'
            f'[metrics]\nurl = "{influx}"\ndatabase = "{db}"\nflush_interval_s = 0.5\n'
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(POSMON), "--log-level", "DEBUG", "collector", "run", "-c", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> int | None:
        if self.process is None:
            return None
        self.process.terminate()
        try:
            code = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(timeout=10)
        self.process = None
        return code


def posmon_command(config: Path, *args: str) -> list[str]:
    """A `posmon` command line on the collector's configuration, logging JSON at DEBUG."""
    return [str(POSMON), "--log-level", "DEBUG", "--log-json", *args, "--config", str(config)]


def command(config: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run a `posmon` command on the collector's configuration (see `posmon_command`)."""
    return subprocess.run(
        posmon_command(config, *args), capture_output=True, timeout=120, check=False
    )


class Api:
    """The REST API over one keep-alive connection; every answer kept as an artefact."""

    def __init__(self, port: int, token: str, artefacts: Artefacts) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.token = token
        self.artefacts = artefacts

    def call(
        self, method: str, path: str, body: object = None, *, label: str = ""
    ) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {self.token}"}
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            self.connection.request(method, path, body=data, headers=headers)
            answer = self.connection.getresponse()
        except (http.client.RemoteDisconnected, ConnectionError):
            # The server closes a connection left idle (uvicorn: after 5 s); it read
            # nothing of this request, so sending it again on a new one is safe.
            self.connection.close()
            self.connection.request(method, path, body=data, headers=headers)
            answer = self.connection.getresponse()
        content = answer.read()
        self.artefacts.add(f"api {method} {label or path}", content)
        return answer.status, content

    def get(self, path: str, *, label: str = "") -> Any:
        status, content = self.call("GET", path, label=label)
        assert status == 200, f"GET {path}: {status} {content[:300]!r}"
        return json.loads(content) if content[:1] in (b"{", b"[") else content

    def close(self) -> None:
        self.connection.close()


# --- the broker: everything published, for the whole run -----------------------------------


class Recorder:
    """A `#` subscriber (anonymous, clean session) that keeps every message it is sent."""

    def __init__(self, broker: Broker) -> None:
        self.client = MqttClient(broker.settings("unused"), f"leak-recorder-{uuid.uuid4().hex[:6]}")
        self.messages: list[Message] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.client.on_message = self._received
        self.client.on_connected = lambda present: self.client.subscribe(["#"])
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _received(self, message: Message) -> None:
        with self.lock:
            self.messages.append(message)

    def _loop(self) -> None:
        while not self.stop.is_set():
            if not self.client.connected:
                with contextlib.suppress(OSError):
                    self.client.connect()
            self.client.loop(0.02)

    def start(self) -> None:
        self.thread.start()
        wait_until(lambda: self.client.connected, 10, "the recorder to connect")
        time.sleep(0.2)  # the SUBACK

    def count(self, suffix: str) -> int:
        with self.lock:
            return sum(1 for m in self.messages if m.topic.endswith(suffix))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.client.disconnect()


class Publisher:
    """Publishes the test's own input (the acquirer's feed) and remembers it, so the scan
    of the broker leaves out exactly those messages and nothing else."""

    def __init__(self, broker: Broker) -> None:
        settings = broker.settings("unused", inflight=100)
        self.client = MqttClient(settings, f"leak-acquirer-{uuid.uuid4().hex[:6]}")
        self.sent: set[tuple[str, bytes]] = set()
        self.pending: set[int] = set()
        self.client.on_published = self.pending.discard

    def publish_all(self, messages: Iterable[tuple[str, bytes]], timeout: float = 120) -> None:
        """Publish at QoS 1 and return once the broker has acknowledged every one."""
        if not self.client.connected:
            self.client.connect()
            wait_until(lambda: self.client.loop(0.05) and self.client.connected, 10, "PUBACKs")
        for index, (topic, payload) in enumerate(messages):
            self.sent.add((topic, payload))
            self.pending.add(self.client.publish(topic, payload))
            if index % 100 == 0:
                self.client.loop(0)
        deadline = time.monotonic() + timeout
        while self.pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.pending)} messages not acknowledged")
            self.client.loop(0.05)

    def close(self) -> None:
        self.client.disconnect()


# --- settlements -------------------------------------------------------------------------------


SETTLEMENT_FIELDS = (
    "settlement_id",
    "mid",
    "tid",
    "rrn",
    "txn_date",
    "amount",
    "fee",
    "net_amount",
    "currency",
    "status",
    "settled_at",
    "kind",
    "stan",
    "batch",
    "reason_code",
    "reason_text",
    "bank_code",
)


def reason_text(cards: Cards, index: int) -> str:
    """A reason the way banks and acquirers write them, with PANs in it."""
    place = "reason_text"
    templates = [
        lambda: f"card{cards.pan(place, 'plain')}closed",
        lambda: f"卡号{cards.pan(place)}账户已冻结",
        lambda: f"return: acct {cards.pan(place, 'spaces')} invalid",
        lambda: f"ref {cards.pan(place, 'dashes')}; card {cards.pan(place, 'dots')}",
        lambda: f"paid to {cards.pan(place, 'mixed')} (T1)",
        lambda: f"[{cards.pan(place, 'plain')}]/{cards.pan(place)}",
    ]
    return templates[index % len(templates)]()


class Settlements:
    """Settlement results the way the acquirer sends them: JSON by hand, PANs in clear."""

    def __init__(self, cards: Cards, now: datetime) -> None:
        self.cards = cards
        self.now = now
        self.ids: set[str] = set()
        self.serial = 0
        self.failure_codes = sorted(DEFAULT_REASON_CODES)

    def new_id(self) -> str:
        self.serial += 1
        # Numeric, as many acquirers' are: a typed identifier, shown as it is.
        value = f"{self.now:%Y%m%d}{self.serial:08d}"
        self.ids.add(value)
        return value

    def record(
        self, sale: Sale, status: str, index: int, *, net_delta: int = 0, kind: str = "ORIGINAL"
    ) -> dict[str, Any]:
        fee = -net_delta
        record: dict[str, Any] = {
            "schema": "posmon.settlement/1",
            "settlement_id": self.new_id(),
            "mid": sale.mid,
            "tid": sale.tid,
            "rrn": sale.rrn,
            "txn_date": sale.txn_date,
            "amount": sale.amount,
            "fee": fee,
            "net_amount": sale.amount - fee,
            "currency": "CNY",
            "status": status,
            "settled_at": self.now.isoformat(),
            "kind": kind,
            "stan": sale.stan,
            "batch": sale.batch,
            "reason_text": reason_text(self.cards, index),
            "bank_code": ("0102", "0103", "0105", "0308")[index % 4],
        }
        if status in ("FAILED", "RETURNED"):
            record["reason_code"] = self.failure_codes[index % len(self.failure_codes)]
        return record


# --- artefacts and the scanner -------------------------------------------------------------


class Artefacts:
    """Named byte strings; several of one kind are kept apart by NUL, which no written
    form of a number crosses."""

    def __init__(self) -> None:
        self.items: dict[str, list[bytes]] = {}
        self.count = 0
        self.size = 0

    def add(self, kind: str, data: bytes) -> None:
        self.items.setdefault(kind, []).append(data)
        self.count += 1
        self.size += len(data)

    def add_file(self, kind: str, path: Path) -> None:
        self.add(f"{kind} {path.name}", path.read_bytes())

    def blobs(self) -> Iterator[tuple[str, bytes]]:
        for kind, parts in self.items.items():
            yield kind, b"\x00".join(parts)


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str  # full, card-number, over-exposed
    artefact: str
    offset: int
    shown: str  # the number with its middle hidden, and some context

    def __str__(self) -> str:
        return f"{self.kind} in {self.artefact} at {self.offset}: {self.shown}"


# Digits, each joined to the next by up to three blanks, dots or dashes; 11 digits at least.
_RUN = re.compile(rb"(?<![0-9])[0-9](?:[\s.\-]{0,3}[0-9]){10,}")
_DIGITS = re.compile(rb"[0-9]+")
_SEPARATORS = b" \t\n\r\f\v.-"
OVEREXPOSED = 11


class Scanner:
    """Independent of posmon.pan: injected numbers by value, any card-shaped number by
    Luhn or the 62 range, and over-exposure of injected numbers (see the module doc)."""

    def __init__(
        self,
        pans: Iterable[str],
        generated_ids: Iterable[str],
        system_ids: Iterable[str],
        times: tuple[datetime, datetime],
    ) -> None:
        self.times = times
        self.by_length: dict[int, set[bytes]] = {}
        self.windows: set[bytes] = set()
        for pan in pans:
            raw = pan.encode()
            self.by_length.setdefault(len(raw), set()).add(raw)
            for at in range(len(raw) - OVEREXPOSED + 1):
                self.windows.add(raw[at : at + OVEREXPOSED])
        self.generated = {value.encode() for value in generated_ids}
        # A run of digits inside a system id -> the ids holding it.
        self.inside: dict[bytes, list[bytes]] = {}
        for value in system_ids:
            raw = value.encode()
            for match in _DIGITS.finditer(raw):
                if len(match.group()) >= 13:
                    self.inside.setdefault(match.group(), []).append(raw)
        self.excluded: Counter[str] = Counter()
        self.findings: list[Finding] = []

    def scan(self, artefact: str, data: bytes) -> None:
        for match in _RUN.finditer(data):
            run = match.group()
            if run in self.generated:
                self.excluded["identifier generated by the test"] += 1
                continue
            self._run(artefact, data, match.start(), run)

    def _run(self, artefact: str, data: bytes, start: int, run: bytes) -> None:
        digits = run.translate(None, _SEPARATORS)
        full = False
        for length, numbers in self.by_length.items():
            for at in range(len(digits) - length + 1):
                if digits[at : at + length] in numbers:
                    full = True
                    self._found("full", artefact, data, (start, len(run)), digits[at : at + length])
        for part in _DIGITS.finditer(run):
            self._contiguous(artefact, data, start, run, part)
        if not full:
            for at in range(len(digits) - OVEREXPOSED + 1):
                if digits[at : at + OVEREXPOSED] in self.windows:
                    self._found("over-exposed", artefact, data, (start, len(run)), digits)
                    break

    def _contiguous(
        self, artefact: str, data: bytes, start: int, run: bytes, part: re.Match[bytes]
    ) -> None:
        number = part.group()
        if not 13 <= len(number) <= 19 or number in self.by_length.get(len(number), ()):
            return  # not card-shaped, or an injected PAN (reported as such)
        text = number.decode()
        if not (luhn_ok(text) or (len(number) >= 16 and number.startswith(b"62"))):
            return
        if (
            part.start() >= 2
            and run[part.start() - 1 : part.start()] == b"."
            and run[part.start() - 2 : part.start() - 1].isdigit()
        ):
            self.excluded["fraction of a decimal number"] += 1
            return
        if number in self.generated:
            self.excluded["identifier generated by the test"] += 1
            return
        if self._a_time_of_this_run(text):
            self.excluded["a time of this run (YYYYMMDDhhmmss)"] += 1
            return
        at = start + part.start()
        for holder in self.inside.get(number, ()):
            offset = holder.find(number)
            if data[at - offset : at - offset + len(holder)] == holder:
                self.excluded["id made by the collector"] += 1
                return
        self._found("card-number", artefact, data, (start, len(run)), number)

    def _a_time_of_this_run(self, digits: str) -> bool:
        # A PDF's creation date, a log's time stamp: 14 digits, UTC or local, this run's.
        if len(digits) != 14:
            return False
        try:
            moment = datetime.strptime(digits, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
        except ValueError:
            return False
        return self.times[0] - timedelta(hours=9) <= moment <= self.times[1] + timedelta(hours=9)

    def _found(
        self, kind: str, artefact: str, data: bytes, span: tuple[int, int], number: bytes
    ) -> None:
        start, size = span
        context = data[max(0, start - 40) : start + size + 40].decode("latin-1")
        # Shown with its middle hidden: the report itself must not carry a card number.
        hidden = number[:6].decode() + "…" + number[-4:].decode()
        context = re.sub(r"[0-9]{7,}", lambda m: m.group()[:6] + "…" + m.group()[-4:], context)
        self.findings.append(Finding(kind, artefact, start, f"{hidden} in {context!r}"))


# --- collecting --------------------------------------------------------------------------------


def database_rows(url: str, artefacts: Artefacts) -> None:
    """Every row of every table of the collector's database, as PostgreSQL prints it."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            tables = (
                conn.execute(
                    text(
                        "SELECT table_name FROM information_schema.tables "
                        "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
                    )
                )
                .scalars()
                .all()
            )
            for table in tables:
                rows = conn.exec_driver_sql(f'SELECT t::text FROM public."{table}" t').scalars()
                artefacts.add(f"database {table}", "\n".join(rows).encode())
    finally:
        engine.dispose()


def system_ids(url: str) -> list[str]:
    """The ids the collector made (alert, case, silence ids, token hashes): excluded by value."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            values: list[str] = []
            for statement in (
                "SELECT alert_id FROM alerts",
                "SELECT case_id FROM cases",
                "SELECT silence_id FROM silences",
                "SELECT token_sha256 FROM api_tokens",
            ):
                values += [str(v) for v in conn.execute(text(statement)).scalars()]
            return values
    finally:
        engine.dispose()


def sqlite_rows(path: Path) -> bytes:
    """Every row of every table of an SQLite file, read-only."""
    out = []
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        names = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for name in names:
            for row in db.execute(f'SELECT * FROM "{name}"'):
                out.append(repr(row))
    return "\n".join(out).encode()


def pdf_text(path: Path) -> bytes:
    """The PDF's text as `pdftotext` extracts it (poppler-utils)."""
    return subprocess.run(
        ["pdftotext", "-layout", str(path), "-"], capture_output=True, check=True, timeout=60
    ).stdout


def influx_everything(influxd: Influxd, database: str, artefacts: Artefacts) -> None:
    """`SELECT * FROM /.*/` on the collector's metrics database: each measurement's
    series as InfluxDB answers it, one artefact each."""
    series = influxd.query(database, "SELECT * FROM /.*/")
    assert series, "nothing in InfluxDB"
    for one in series:
        rows = len(one.get("values", []))  # type: ignore[arg-type]
        artefacts.add(f"influxdb {one['name']} ({rows:,} rows)", json.dumps(one).encode())


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Rig:
    """The processes and the test's own clients, with the database to watch progress on."""

    tmp_path: Path
    prefix: str
    engine: Any
    recorder: Recorder
    publisher: Publisher
    collector: CollectorProcess
    cards: Cards
    settlements: Settlements
    artefacts: Artefacts = field(default_factory=Artefacts)
    started: float = field(default_factory=time.monotonic)
    phases: dict[str, float] = field(default_factory=dict)

    def count(self, statement: str) -> int:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return int(conn.execute(text(statement)).scalar_one())

    def phase(self, name: str) -> None:
        self.phases[name] = time.monotonic() - self.started

    @property
    def topic(self) -> str:
        return f"{self.prefix}/settlements"


def start_collector(rig: Rig) -> tuple[str, str]:
    """Start the collector, wait for its subscription and API; an admin token and an
    acquirer's (the one role that may post settlements)."""
    rig.collector.start()
    wait_until(
        lambda: b"subscribed to" in rig.collector.log.read_bytes(), 60, "the collector to subscribe"
    )
    wait_until(lambda: _health(rig.collector.http_port), 60, "the collector's API")
    made = command(rig.collector.config, "tokens", "create", "--role", "admin", "--name", "leak")
    assert made.returncode == 0, made.stderr.decode(errors="replace")
    rig.artefacts.add("command tokens create", made.stdout + made.stderr)
    feed = command(rig.collector.config, "tokens", "create", "--role", "acquirer", "--name", "acq")
    assert feed.returncode == 0, feed.stderr.decode(errors="replace")
    rig.artefacts.add("command tokens create (acquirer)", feed.stdout + feed.stderr)
    return made.stdout.decode().strip().splitlines()[-1], feed.stdout.decode().split()[-1]


def start_agents(
    agent_factory: Callable[..., AgentProcess],
    broker: Broker,
    prefix: str,
    ptys: list[RawPty],
    monkeypatch: pytest.MonkeyPatch,
) -> list[AgentProcess]:
    """One `posmon agent run` per pty, logging at DEBUG: text lines or JSON lines."""
    agents = []
    monkeypatch.setenv("POSMON_LOG_LEVEL", "DEBUG")
    for port, pty in enumerate(ptys):
        if port % 2:
            monkeypatch.setenv("POSMON_LOG_JSON", "1")
        else:
            monkeypatch.delenv("POSMON_LOG_JSON", raising=False)
        agent = agent_factory(
            broker,
            prefix,
            {f"port-{port}": pty.path},
            agent_id=f"leak-agent-{port}",
            # Durability is not under test here: fsync=normal for the pace.
            extra='inflight = 100\n[outbox]\nfsync = "normal"\n',
        )
        agent.start()
        agents.append(agent)
    monkeypatch.delenv("POSMON_LOG_JSON", raising=False)
    for pty in ptys:
        wait_until(pty.reader_attached, 30, f"an agent to open {pty.path}")
    return agents


def send_frames(rig: Rig, traffic: Traffic, ptys: list[RawPty]) -> None:
    """Every frame written and answered, every event stored and on the broker."""
    answers = pump(ptys, traffic.chunks, traffic.answers, timeout=300)
    assert answers["nak"] == traffic.naks
    assert answers["ack"] == traffic.frames - traffic.naks
    rig.phase("frames written and answered")
    wait_until(
        lambda: (
            rig.count("SELECT count(*) FROM transactions") == traffic.txns
            and rig.count("SELECT count(*) FROM deadletters") >= traffic.dead
        ),
        240,
        f"{traffic.txns} transactions and {traffic.dead} dead letters stored",
    )
    events = traffic.txns + traffic.statuses + traffic.batches
    wait_until(
        lambda: (
            sum(rig.recorder.count(f"/{kind}") for kind in ("txn", "status", "batch")) >= events
        ),
        60,
        "every event on the broker",
    )
    rig.phase("events stored")


def settle(rig: Rig, sales: list[Sale]) -> dict[tuple[str, str], dict[str, Any]]:
    """The acquirer's feed on MQTT (failures, returns, mismatches, duplicates, orphans, and
    messages the collector dead-letters); the failed results by (tid, rrn)."""
    settlements = rig.settlements
    plan = ["FAILED"] * FAILED + ["RETURNED"] * RETURNED + ["MISMATCH"] * MISMATCHED
    plan += ["CREDITED"] * (SETTLEMENTS - len(plan) - DUPLICATED - ORPHANS)
    records = [
        settlements.record(sale, "CREDITED", index, net_delta=-1)
        if what == "MISMATCH"
        else settlements.record(sale, what, index)
        for index, (what, sale) in enumerate(zip(plan, sales, strict=False))
    ]
    credited = [r for r in records if r["status"] == "CREDITED" and r["fee"] == 0]
    records += [dict(r, settlement_id=settlements.new_id()) for r in credited[:DUPLICATED]]
    for index in range(ORPHANS):
        orphan = settlements.record(sales[index], "CREDITED", index)
        orphan["rrn"] = f"9{index:011d}"
        settlements.ids.add(orphan["rrn"])
        records.append(orphan)
    rig.publisher.publish_all(
        [(rig.topic, json.dumps(r, ensure_ascii=False).encode()) for r in records]
    )
    rig.publisher.publish_all(bad_settlements(rig, sales[len(plan) : len(plan) + 30]))
    wait_until(
        lambda: rig.count("SELECT count(*) FROM settlements") >= len(records),
        120,
        f"{len(records)} settlements stored",
    )
    wait_until(
        lambda: (
            rig.count("SELECT count(*) FROM alerts WHERE type = 'SETTLEMENT_FAILED'") >= FAILED
            and rig.count("SELECT count(*) FROM cases") >= FAILED + RETURNED
        ),
        180,
        "an alert and a case for every failure and return",
    )
    rig.phase("settlements and alerts")
    return {(r["tid"], r["rrn"]): r for r in records if r["status"] == "FAILED"}


def bad_settlements(rig: Rig, sales: list[Sale]) -> list[tuple[str, bytes]]:
    """Messages the collector dead-letters, PANs in them: invalid results, a reason too
    long, text that is not JSON, payloads longer than a dead letter keeps, PANs in a topic."""
    cards, out = rig.cards, []
    for index, sale in enumerate(sales[:20]):
        record = rig.settlements.record(sale, "FAILED", index)
        record["net_amount"] += 1  # amount - fee != net
        out.append((rig.topic, json.dumps(record, ensure_ascii=False).encode()))
    for index, sale in enumerate(sales[20:30]):
        record = rig.settlements.record(sale, "FAILED", index)
        record["reason_text"] = "r" * (29 - index) + "; ".join(
            cards.pan("reason_text, too long", "plain") for _ in range(16)
        )
        out.append((rig.topic, json.dumps(record, ensure_ascii=False).encode()))
    for _ in range(20):
        out.append((rig.topic, f"card {cards.pan('not JSON')} declined".encode()))
    # Longer than the 64 KiB a dead letter keeps, with a PAN across the cut: 11 to 17 of
    # its digits before it.
    for keep in (11, 13, 15, 17):
        pan = cards.pan("not JSON, over 64 KiB", "plain")
        kept = min(keep, len(pan) - 1)
        out.append((rig.topic, ("x" * (65536 - kept) + pan + " tail").encode()))
    for _ in range(10):
        pan = cards.pan("topic", "plain")
        out.append((f"{rig.prefix}/terminals/{pan}/txn", f"card {pan}".encode()))
    return out


def work_the_api(
    rig: Rig,
    api: Api,
    feed: Api,
    sales: list[Sale],
    failed: dict[tuple[str, str], dict[str, Any]],
) -> int:
    """People and integrations on the REST API with PANs in their free text; the bank
    rejects some re-remittances. Returns how many failures were posted."""
    cards, settlements = rig.cards, rig.settlements
    posted = [
        settlements.record(sale, "FAILED" if i % 5 == 0 else "CREDITED", i)
        for i, sale in enumerate(sales[:50])
    ]
    assert feed.call("POST", "/settlements", posted)[0] == 200
    broken = dict(posted[0], amount=1.5, reason_text=f"x {cards.pan('REST request')}")
    assert feed.call("POST", "/settlements", [broken], label="/settlements (invalid)")[0] == 422
    for alert in api.get("/alerts?status=firing&type=SETTLEMENT_FAILED&limit=5"):
        api.call(
            "POST",
            f"/alerts/{alert['alert_id']}/ack",
            {"note": f"bank says card {cards.pan('REST note')} blocked"},
            label="/alerts/{id}/ack",
        )
    silence = {"tid": "99999998", "duration_s": 600, "reason": f"card {cards.pan('REST note')}"}
    assert api.call("POST", "/silences", silence)[0] == 201
    cases = [
        case
        for case in api.get("/cases?state=OPEN&limit=10000", label="/cases (open)")
        if (case["tid"], case["rrn"]) in failed
    ][:REJECTED_CASES]
    for case in cases:
        for to in ("VERIFYING", "SUBMITTED"):
            move = {
                "to": to,
                "note": f"{to.lower()}: card {cards.pan('REST note')}",
                "account": cards.pan("REST account", "plain"),
            }
            status, content = api.call(
                "POST", f"/cases/{case['case_id']}/transitions", move, label="/cases/{id}/move"
            )
            assert status == 200, content
    remits = []
    for index, case in enumerate(cases):
        original = failed[(case["tid"], case["rrn"])]
        sale = Sale(*(original[name] for name in Sale.__slots__))
        remit = settlements.record(sale, "FAILED", index, kind="REREMITTANCE")
        remit["reason_code"] = original["reason_code"]
        remit["case_id"] = case["case_id"]
        remits.append((rig.topic, json.dumps(remit, ensure_ascii=False).encode()))
    rig.publisher.publish_all(remits)
    wait_until(
        lambda: rig.count("SELECT count(*) FROM cases WHERE state = 'REJECTED'") >= len(cases),
        60,
        "the bank's rejections of the re-remittances",
    )
    rig.phase("REST writes")
    return sum(1 for record in posted if record["status"] == "FAILED")


def import_file(rig: Rig, sales: list[Sale], failed_before: int) -> None:
    """`posmon settlement import` of a file with PANs in its reasons and bad rows."""
    path = rig.tmp_path / "settlements.csv"
    failed = settlement_file(path, rig.cards, rig.settlements, sales)
    result = command(rig.collector.config, "settlement", "import", str(path))
    rig.artefacts.add("command settlement import", result.stdout + result.stderr)
    assert result.returncode == 1, result.stdout.decode(errors="replace")  # bad rows, listed
    assert b"bad rows" in result.stdout
    wait_until(
        lambda: (
            rig.count("SELECT count(*) FROM alerts WHERE type = 'SETTLEMENT_FAILED'")
            >= failed_before + failed
        ),
        120,
        "the imported failures alerted",
    )
    rig.phase("settlement import")


def settlement_file(path: Path, cards: Cards, settlements: Settlements, sales: list[Sale]) -> int:
    """A CSV file of results with PANs in their reasons, and bad rows with PANs in the
    values refused; the number of failures in it."""
    failed = 0
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(SETTLEMENT_FIELDS)
        for index, sale in enumerate(sales):
            status = "FAILED" if index % 7 == 0 else "RETURNED" if index % 13 == 0 else "CREDITED"
            failed += status == "FAILED"
            record = settlements.record(sale, status, index)
            writer.writerow([record.get(name, "") for name in SETTLEMENT_FIELDS])
        for index, sale in enumerate(sales[:30]):
            record = settlements.record(sale, "FAILED", index)
            if index % 3 == 0:
                record["amount"] = f"{cards.pan('CSV bad row', 'plain')}.50"
            elif index % 3 == 1:
                # Too long: the report shows the value cut, 11 to 20 of a PAN's digits in.
                record["reason_text"] = "r" * (29 - index // 3) + "; ".join(
                    cards.pan("CSV bad row", "plain") for _ in range(16)
                )
            else:
                record["txn_date"] = cards.pan("CSV bad row", "dashes")
            writer.writerow([record.get(name, "") for name in SETTLEMENT_FIELDS])
    return failed


def read_everything(rig: Rig, api: Api) -> None:
    """Every REST list and detail, evidence of some cases (REST and `posmon cases
    evidence`), PDF text included."""
    time.sleep(1.0)  # the engine's last alerts and notifications
    for path in ("/health", "/metrics", "/silences?all=true", "/tokens?revoked=true"):
        api.get(path)
    for alert in api.get("/alerts?status=all&limit=10000"):
        api.get(f"/alerts/{alert['alert_id']}", label="/alerts/{id}")
    cases = api.get("/cases?state=all&limit=10000")
    for case in cases:
        api.get(f"/cases/{case['case_id']}", label="/cases/{id}")
    for terminal in api.get("/terminals"):
        api.get(f"/terminals/{terminal['tid']}?limit=1000", label="/terminals/{tid}")
    rig.phase("REST lists and details")
    rejected = [case for case in cases if case["state"] == "REJECTED"]
    # The CLI's evidence (three processes at once) while the API renders its own.
    out = rig.tmp_path / "evidence"
    commands = []
    for case in rejected[:3]:
        log = rig.tmp_path / f"evidence-{case['case_id']}.log"
        with log.open("wb") as output:
            arguments = ("cases", "evidence", case["case_id"], "--out", str(out))
            commands.append(
                (
                    log,
                    subprocess.Popen(
                        posmon_command(rig.collector.config, *arguments),
                        stdout=output,
                        stderr=subprocess.STDOUT,
                    ),
                )
            )
    folder = rig.tmp_path / "api-evidence"
    folder.mkdir()
    for case in rejected[:5] + cases[:: max(1, len(cases) // 5)]:
        api.get(f"/cases/{case['case_id']}/evidence", label="/cases/{id}/evidence")
        status, pdf = api.call(
            "GET", f"/cases/{case['case_id']}/evidence.pdf", label="/cases/{id}/evidence.pdf"
        )
        assert status == 200
        path = folder / f"{case['case_id']}.pdf"
        path.write_bytes(pdf)
        rig.artefacts.add("REST evidence.pdf, text", pdf_text(path))
    for log, process in commands:
        assert process.wait(timeout=120) == 0, log.read_text(errors="replace")
        rig.artefacts.add_file("command cases evidence", log)
    assert len(list(out.glob("*.pdf"))) == len(rejected[:3]) > 0
    for path in sorted(out.iterdir()):
        rig.artefacts.add_file("evidence file", path)
        if path.suffix == ".pdf":
            rig.artefacts.add("evidence file, PDF text", pdf_text(path))
    rig.phase("evidence")


def collect(
    rig: Rig,
    *,
    postgres_url: str,
    influxd: Influxd,
    influx_db: str,
    agents: list[AgentProcess],
    broker: Broker,
) -> None:
    """What the processes left once stopped: broker messages, database, InfluxDB, files."""
    for message in rig.recorder.messages:
        if (message.topic, message.payload) in rig.publisher.sent:
            continue  # the test's own input: the acquirer's feed, in clear by design
        kind = f"broker .../{message.topic.rsplit('/', 1)[-1]}"
        rig.artefacts.add(kind, message.topic.encode() + b" " + message.payload)
    database_rows(postgres_url, rig.artefacts)
    influx_everything(influxd, influx_db, rig.artefacts)
    for agent in agents:
        for path in sorted(agent.outbox.parent.glob("outbox*")):
            rig.artefacts.add_file("agent outbox file", path)
        rig.artefacts.add("agent outbox rows", sqlite_rows(agent.outbox))
        rig.artefacts.add_file("agent log", agent.log)
    rig.artefacts.add_file("collector log", rig.collector.log)
    rig.artefacts.add_file("broker log", broker.workdir / "mosquitto.log")
    rig.artefacts.add_file("influxd log", influxd.workdir / "influxd.log")
    rig.phase("collected")


@pytest.mark.slow
def test_no_full_pan_leaves_posmon_at_scale(
    *,
    own_broker: Broker,
    postgres_url: str,
    influxd: Influxd,
    influx_db: str,
    agent_factory: Callable[..., AgentProcess],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    if shutil.which("pdftotext") is None:
        pytest.fail(
            "pdftotext is not installed (Debian: apt-get install poppler-utils; "
            "./scripts/test installs it)",
            pytrace=False,
        )
    from sqlalchemy import create_engine

    now = datetime.now(UTC)
    cards = Cards(card_pool())
    traffic = make_traffic(cards, now)
    prefix = f"leak/{uuid.uuid4().hex[:8]}"
    rig = Rig(
        tmp_path=tmp_path,
        prefix=prefix,
        engine=create_engine(postgres_url),
        recorder=Recorder(own_broker),
        publisher=Publisher(own_broker),
        collector=CollectorProcess(
            tmp_path,
            broker=own_broker,
            prefix=prefix,
            url=postgres_url,
            influx=influxd.url,
            db=influx_db,
        ),
        cards=cards,
        settlements=Settlements(cards, now),
    )
    rig.recorder.start()
    ptys = [RawPty() for _ in range(PORTS)]
    agents: list[AgentProcess] = []
    try:
        token, feed_token = start_collector(rig)
        agents = start_agents(agent_factory, own_broker, prefix, ptys, monkeypatch)
        rig.phase("set up")
        send_frames(rig, traffic, ptys)
        sales = list(traffic.sales)
        random.Random(99).shuffle(sales)
        failed = settle(rig, sales)
        used = SETTLEMENTS + 30
        api = Api(rig.collector.http_port, token, rig.artefacts)
        feed = Api(rig.collector.http_port, feed_token, rig.artefacts)
        try:
            posted_failures = work_the_api(rig, api, feed, sales[used : used + 50], failed)
            used += 50
            import_file(rig, sales[used : used + CSV_ROWS], FAILED + posted_failures)
            read_everything(rig, api)
        finally:
            api.close()
            feed.close()
    finally:
        for agent in agents:
            if agent.process is not None:
                agent.stop()
        for pty in ptys:
            pty.close()
        rig.collector.stop()
        rig.publisher.close()
        rig.recorder.close()
        rig.engine.dispose()
    collect(
        rig,
        postgres_url=postgres_url,
        influxd=influxd,
        influx_db=influx_db,
        agents=agents,
        broker=own_broker,
    )

    identifiers = traffic.mids | traffic.rrns | traffic.times | rig.settlements.ids
    scanner = Scanner(cards.pool, identifiers, system_ids(postgres_url), (now, datetime.now(UTC)))
    for name, blob in rig.artefacts.blobs():
        scanner.scan(name, blob)
    rig.phase("scanned")
    report = scan_report(rig, traffic, scanner)
    (tmp_path / "pan-leak.txt").write_text(report + "\n")
    print("\n" + report)
    assert not scanner.findings, "\n".join(str(f) for f in scanner.findings[:20])


def scan_report(rig: Rig, traffic: Traffic, scanner: Scanner) -> str:
    """The figures line, then what was injected where, what was excluded and why, the
    artefacts by kind, the phases' times and the first findings."""
    found = Counter(finding.kind for finding in scanner.findings)
    artefacts, cards = rig.artefacts, rig.cards
    figure = (
        f"PAN leak scan: {artefacts.count:,} artefacts, {artefacts.size / 1e6:,.1f} MB scanned; "
        f"{cards.given:,} PANs injected ({len(cards.pool):,} distinct numbers, "
        f"{len(cards.forms):,} number-and-style forms); found {found['full']} full PANs, "
        f"{found['card-number']} other card numbers, {found['over-exposed']} over-exposed; "
        f"{traffic.frames:,} frames ({traffic.txns:,} TXN, {traffic.statuses:,} STS/HBT, "
        f"{traffic.batches:,} BAT, {traffic.dead:,} dead-lettered, {traffic.naks:,} NAKed), "
        f"{len(rig.publisher.sent):,} acquirer messages; {time.monotonic() - rig.started:.0f} s"
    )
    return "\n".join(
        [
            figure,
            "PANs injected by place: "
            + ", ".join(f"{place} {n:,}" for place, n in cards.places.most_common()),
            "excluded by value: "
            + (", ".join(f"{why} {n:,}" for why, n in scanner.excluded.items()) or "nothing"),
            "artefacts (how many, MB): "
            + ", ".join(
                f"{kind} {len(items):,}, {sum(map(len, items)) / 1e6:.1f}"
                for kind, items in sorted(artefacts.items.items())
            ),
            "phases (s from the start): "
            + ", ".join(f"{name} {at:.0f}" for name, at in rig.phases.items()),
            *(str(finding) for finding in scanner.findings[:50]),
        ]
    )


def _health(port: int) -> bool:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        connection.request("GET", "/health")
        ok = connection.getresponse().status == 200
        connection.close()
    except OSError:
        return False
    return ok


# --- what the scan at scale found: a value cut before it was masked -------------------------


def _cut_across(pan: str, keep: int, limit: int) -> str:
    """Text `limit` characters long up to `keep` digits into `pan`, the rest after it."""
    return "x" * (limit - keep) + pan + " and more"


@pytest.mark.parametrize("keep", [11, 13, 15])
def test_a_dead_letter_cut_to_its_limit_keeps_no_digits_of_a_card_number_across_the_cut(
    keep: int,
) -> None:
    from collector.store import new_deadletter

    pan = next(p for p in card_pool() if len(p) == 16 and luhn_ok(p))
    letter = new_deadletter("collector", "not JSON", _cut_across(pan, keep, 65536).encode(), None)
    assert len(letter.payload) == 65536
    assert pan[:OVEREXPOSED] not in letter.payload
    masked = pan[:6] + "*" * (len(pan) - 10) + pan[-4:]
    assert letter.payload.endswith(masked[:keep])


def test_the_import_report_masks_a_value_before_cutting_it_to_40_characters() -> None:
    from collector.settlement_import import _shown

    pan = next(p for p in card_pool() if len(p) == 19 and luhn_ok(p))
    shown = _shown(_cut_across(pan, 14, 40) + "; " + pan)
    assert pan[:OVEREXPOSED] not in shown
    assert shown.endswith(pan[:6] + "********...'")
