"""What the card-number scanner (`posmon.pan.scrub`) costs (issue #15).

Two figures, each against a baseline measured in the same run:

- **throughput**: `scrub()` in MB/s on texts like those it sees in production, one call
  per text as the models, the columns and the log guard make them: log lines (text and
  JSON), settlement reason texts, dead-lettered frames and payloads; each corpus without
  any card number and with card numbers in it (every separator style, inside words). The
  baselines are the cheapest passes over the same texts: `re.search(r"[0-9]{13}", text)`
  and `str.translate` of the digits. Printed: MB/s, microseconds per text, and how many
  times slower than each baseline scrub is.
- **share of the collector's CPU**, measured two ways on the same messages: a realistic
  mix from mosquitto (agents' transactions, a fifth with `extra` keys, status events with
  firmware text and a few payloads that are dead letters, then the acquirer's credited
  settlements with reason texts in one run; `--pan-share` of the free texts hold a card
  number), taken by the collector's ingest loop alone (`Collector(config).ingestor.run`,
  as `collector_ingest.py --profile` runs it) in a process of its own, draining them as a
  backlog. Its CPU is `time.process_time()` (all threads) from the start of the drain to
  the last message stored and acknowledged. Each round runs it three times:
  - *shipped*, and *identity*: `posmon.pan.scrub` replaced by an identity function in that
    process before any posmon module binds it (the models' validators, the ScrubbedText
    and ScrubbedJSON columns, the dead letters and the log guard all call the identity;
    the PAN field's own masking is not the scanner and stays). share (A/B) =
    1 - CPU(identity) / CPU(shipped). This is the cost itself, but on a shared 2-core
    machine a run's CPU moves by more than the share, so read it over rounds;
  - *timed*: scrub wrapped to add up the thread CPU time spent inside it, less what the
    timer itself costs per call (measured in the same process). share (timed) = that /
    the run's CPU. Steadier; the `< 5%` verdict reads it.
  `--measures process` adds the whole `posmon collector run` (ingest, alert engine,
  overdue watch; no HTTP, no metrics) connected while the messages are published, A/B
  only, its CPU from /proc from the first publish until idle, less its idle rate.
  Rounds alternate which of shipped and identity goes first; medians are printed with
  every round.

    .venv/bin/python benchmarks/pan_scanner.py [--messages 20000] [--rounds 3]
        [--databases postgresql sqlite] [--measures ingest process] [--pan-share 0.01]
        [--skip-ingest]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _harness import Broker, cpu_times, machine, quiet_logging, stop_process, table, workspace
from collector_ingest import POSTGRES_ADMIN_DEFAULT, Reader, database, publish, wait_subscribed

TERMINALS = 200
TARGET_SHARE = 0.05
# Replaces `posmon.pan.scrub` first when asked (`identity`; `timed` wraps it to add up the
# CPU spent in it, per thread), then checks that every module that takes the scanner by
# name took the replacement. Prefixed to both children below.
_PATCH = """
import sys, time
import posmon.pan
variant = sys.argv.pop(1)
scrub_cpu, scrub_calls = [0.0], [0]
if variant == "identity":
    posmon.pan.scrub = lambda text: text
elif variant == "timed":
    shipped_scrub = posmon.pan.scrub
    def timed_scrub(text):
        started = time.thread_time()
        try:
            return shipped_scrub(text)
        finally:
            scrub_cpu[0] += time.thread_time() - started
            scrub_calls[0] += 1
    posmon.pan.scrub = timed_scrub
import collector.schema, collector.store, collector.settlement_import, posmon.logs
import posmon.wire.codec, posmon.wire.models
for module in (collector.schema, collector.store, posmon.logs, posmon.wire.models):
    assert module.scrub is posmon.pan.scrub, module.__name__
"""
# `posmon ...` as the command line would run it.
_POSMON = _PATCH + 'sys.argv[0] = "posmon"\nfrom posmon.cli import main\nmain()\n'
# The ingest loop alone: `subscribe` until SIGTERM (to leave a session behind), or `drain`
# until `count` messages are stored and acknowledged; prints its CPU and wall seconds.
_INGEST = (
    _PATCH
    + """
import json, os, signal, threading
from posmon.logs import setup_logging
setup_logging("INFO", stream=open(os.devnull, "w"))  # as the collector logs, to nowhere
from collector.config import CollectorConfig
from collector.service import Collector
task, settings = sys.argv[1], json.loads(sys.argv[2])
count = settings.pop("count")
collector = Collector(CollectorConfig(**settings))
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
def watch():
    while not stop.is_set():
        if task == "drain" and collector.ingestor.counters["received"] >= count:
            stop.set()
        time.sleep(0.005)
threading.Thread(target=watch, daemon=True).start()
cpu, wall = time.process_time(), time.monotonic()
scrub_cpu[0], scrub_calls[0] = 0.0, 0
collector.ingestor.run(stop)
cpu, wall = time.process_time() - cpu, time.monotonic() - wall
received = collector.ingestor.counters["received"]
collector.store.close()
# What one reading of the thread's CPU clock costs: each timed call carries about one.
started = time.thread_time()
for _ in range(20000):
    time.thread_time()
timer = (time.thread_time() - started) / 20000
print(json.dumps({"cpu": cpu, "wall": wall, "received": received, "timer": timer,
                  "scrub_cpu": scrub_cpu[0], "scrub_calls": scrub_calls[0]}))
"""
)

# --- the texts ------------------------------------------------------------------------------


def luhn_pan(rng: random.Random, prefix: str, length: int) -> str:
    """A random Luhn-valid card number."""
    from posmon.pan import luhn_valid

    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    return next(body + d for d in "0123456789" if luhn_valid(body + d))


def written(pan: str, style: int) -> str:
    """The PAN plain, in groups of four by spaces, dashes, dots, or mixed separators."""
    groups = [pan[i : i + 4] for i in range(0, len(pan), 4)]
    separators = ["", " ", "-", ".", None][style % 5]
    if separators is None:
        mixed = (" ", "-", ".", " - ")
        return groups[0] + "".join(mixed[i % 4] + g for i, g in enumerate(groups[1:]))
    return separators.join(groups)


def corpora(count: int, seed: int = 15) -> dict[str, tuple[list[str], list[str]]]:
    """Per kind of text, `count` texts without card numbers and `count` with."""
    from posmon.reasons import DEFAULT_REASON_CODES

    rng = random.Random(seed)
    reasons = [reason.text for reason in DEFAULT_REASON_CODES.values()]

    def pan() -> str:
        prefix, length = rng.choice([("622202", 19), ("622588", 16), ("4", 16), ("5", 16)])
        return written(luhn_pan(rng, prefix, length), rng.randrange(5))

    def log_line(index: int, card: str | None) -> str:
        tid, rrn = f"1{index % 200:07d}", f"{index:012d}"
        at = f"2026-12-03 10:43:{index % 60:02d},{index % 1000:03d}"
        templates = [
            f"{at} DEBUG   collector.service: settlement SETTLED: tid={tid} rrn={rrn} "
            f"(was PENDING) settlement=20261203{index:08d}",
            f"{at} WARNING collector.alerts: alert SETTLEMENT_FAILED A-{index:016x} "
            f"(ACCOUNT_INFO): Settlement of {index % 9000 / 100:.2f} CNY to merchant "
            f"898100012340001 failed at bank 0102: {rng.choice(reasons)}",
            json.dumps(
                {
                    "ts": "2026-12-03T10:49:07.380283+00:00",
                    "level": "WARNING",
                    "logger": "agent.link",
                    "msg": f"port counter-1: frame rejected: lrc (SEQ {index % 65536})",
                }
            ),
            f"{at} INFO    collector.alerts: case C-{index:012x} OPEN: {rng.choice(reasons)}",
        ]
        line = templates[index % len(templates)]
        return line if card is None else f"{line} card {card}"

    def reason(index: int, card: str | None) -> str:
        text = rng.choice(reasons) + f" ref {index:010d}, {index % 28 + 1} Dec 2026"
        if card is None:
            return text
        return rng.choice([f"card{card}closed", f"{text}; acct {card}", f"卡号{card}账户已冻结"])

    def dead_letter(index: int, card: str | None) -> str:
        fields = [
            "TXN",
            f"SEQ={index % 65536}",
            f"TID=1{index % 200:07d}",
            "MID=898100012340001",
            "KIND=SALE",
            f"AMT={100 + index}",
            "CUR=156",
            "PAN=622202*********0123",
            f"RRN={index:012d}",
            f"STAN={index % 1000000:06d}",
            "BATCH=000042",
            "TS=20261203103015",
            f"NOTE={'signed' if card is None else 'card ' + card}",
        ]
        if index % 2:
            return "\x1c".join(fields)
        payload = {"schema": "posmon.settlement/1", "settlement_id": f"S{index}"}
        payload["reason_text"] = reason(index, card)
        return json.dumps(payload, ensure_ascii=False)

    makers: dict[str, Callable[[int, str | None], str]] = {
        "log lines": log_line,
        "reason texts": reason,
        "dead letters": dead_letter,
    }
    return {
        kind: ([make(i, None) for i in range(count)], [make(i, pan()) for i in range(count)])
        for kind, make in makers.items()
    }


@dataclass(frozen=True, slots=True)
class Pass:
    label: str
    texts: int
    size: int
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.size / self.seconds / 1e6

    @property
    def us_per_text(self) -> float:
        return self.seconds / self.texts * 1e6


def timed(label: str, texts: list[str], work: Callable[[str], object], least: float) -> Pass:
    """Run `work` over every text, again until `least` seconds have passed; the best pass."""
    size = sum(len(text.encode()) for text in texts)
    best = float("inf")
    spent = 0.0
    while spent < least or best == float("inf"):
        started = time.perf_counter()
        for text in texts:
            work(text)
        took = time.perf_counter() - started
        best = min(best, took)
        spent += took
    return Pass(label, len(texts), size, best)


def throughput(count: int, least: float) -> list[list[str]]:
    from posmon.pan import scrub

    thirteen = re.compile(r"[0-9]{13}")
    digits = str.maketrans("0123456789", "##########")
    rows = []
    for kind, (clean, with_cards) in corpora(count).items():
        for label, texts in (("without PANs", clean), ("with PANs", with_cards)):
            search = timed("re.search", texts, thirteen.search, least)
            translate = timed("str.translate", texts, lambda t: t.translate(digits), least)
            scrubbed = timed("scrub", texts, scrub, least)
            masked = sum(1 for text in texts if scrub(text) != text)
            rows.append(
                [
                    f"{kind}, {label}",
                    f"{scrubbed.size / len(texts):.0f}",
                    f"{masked}/{len(texts)}",
                    f"{scrubbed.mb_per_s:,.1f}",
                    f"{scrubbed.us_per_text:.2f}",
                    f"{search.mb_per_s:,.0f}",
                    f"{translate.mb_per_s:,.0f}",
                    f"{search.mb_per_s / scrubbed.mb_per_s:.1f}",
                    f"{translate.mb_per_s / scrubbed.mb_per_s:.1f}",
                ]
            )
    return rows


# --- the collector's CPU ---------------------------------------------------------------------


def ingest_mix(
    count: int, pan_share: float, seed: int = 16
) -> tuple[list[dict[str, str]], dict[str, int]]:
    """`count` messages as agents and an acquirer send them (JSON lines for the bare
    publisher, topics relative to the prefix) and how many rows each table should get.

    Agents' events first (transactions, status, a few dead letters), then the acquirer's
    results for a tenth of the sales in one run, as a feed or a file delivers them (a
    settlement closes the batch it is in, so spread among the events they would make
    batches of a few messages, which no deployment sees).
    """
    rng = random.Random(seed)
    now = datetime.now(UTC)
    lines: list[dict[str, str]] = []
    expected = {"transactions": 0, "status_events": 0, "settlements": 0, "deadletters": 0}
    sales: list[dict[str, Any]] = []

    def note() -> str:
        if rng.random() < pan_share:
            return f"card {written(luhn_pan(rng, '622202', 19), rng.randrange(5))} signed"
        return rng.choice(["signed by customer", "tip included", "ord-20261203-0042"])

    def add(topic: str, event: dict[str, Any], table_name: str) -> None:
        lines.append({"topic": topic, "payload": json.dumps(event, ensure_ascii=False)})
        expected[table_name] += 1

    events = count - count // 10
    for index in range(events):
        tid = f"1{index % TERMINALS:07d}"
        at = (now - timedelta(seconds=count - index)).isoformat()
        draw = rng.random()
        if draw < 0.75:
            txn: dict[str, Any] = {
                "schema": "posmon.txn/1",
                "event_id": str(uuid.uuid4()),
                "agent_id": "bench-agent",
                "tid": tid,
                "mid": "898100012340001",
                "kind": "SALE",
                "amount": 100 + index % 50_000,
                "currency": "CNY",
                "pan_masked": "622202*********0123",
                "rc": "00",
                "approved": True,
                "rrn": f"{index:012d}",
                "stan": f"{index % 1_000_000:06d}",
                "batch": "000001",
                "terminal_time": at,
                "observed_at": at,
                "auth_code": "A1B2C3",
                "issuer": "0102",
            }
            if index % 5 == 0:
                txn["extra"] = {"NOTE": note(), "OPERATOR": f"op{index % 7}"}
            sales.append(txn)
            add(f"terminals/{tid}/txn", txn, "transactions")
        elif draw < 0.995:
            status = {
                "schema": "posmon.status/1",
                "event_id": str(uuid.uuid4()),
                "agent_id": "bench-agent",
                "tid": tid,
                "link_up": True,
                "network": "4G",
                "saf_pending": 0,
                "serial_ok": True,
                "observed_at": at,
                "rssi_dbm": -67,
                "firmware": f"POS-OS 3.2.{index % 9} build 20261101",
            }
            add(f"terminals/{tid}/status", status, "status_events")
        else:
            lines.append({"topic": f"terminals/{tid}/txn", "payload": f"not JSON: {note()}"})
            expected["deadletters"] += 1
    settled_at = now.isoformat()
    for index, sale in enumerate(rng.sample(sales, count - events)):
        settlement = {
            "schema": "posmon.settlement/1",
            "settlement_id": f"S{index:010d}",
            "mid": sale["mid"],
            "tid": sale["tid"],
            "rrn": sale["rrn"],
            "txn_date": sale["terminal_time"][:10],
            "amount": sale["amount"],
            "fee": 0,
            "net_amount": sale["amount"],
            "currency": "CNY",
            "status": "CREDITED",
            "settled_at": settled_at,
            "kind": "ORIGINAL",
            "reason_text": f"T1 credit, {note()}",
            "bank_code": "0102",
        }
        add("settlements", settlement, "settlements")
    return lines, expected


@dataclass(frozen=True, slots=True)
class CpuRun:
    measure: str  # ingest or process
    variant: str  # shipped, identity or timed
    database: str
    messages: int
    cpu_s: float
    wall_s: float
    scrub_cpu_s: float = 0.0  # timed: CPU spent inside scrub, the timer's cost taken off
    scrub_calls: int = 0

    @property
    def us_per_message(self) -> float:
        return self.cpu_s / self.messages * 1e6


def _messages_file(workdir: Path, prefix: str, lines: list[dict[str, str]]) -> Path:
    """The JSON lines `_bare_publisher.py` reads, under `prefix`."""
    path = workdir / f"{uuid.uuid4().hex[:8]}.jsonl"
    with path.open("w") as out:
        for line in lines:
            item = {"topic": f"{prefix}/{line['topic']}", "payload": line["payload"]}
            out.write(json.dumps(item) + "\n")
    return path


def ingest_cpu(
    workdir: Path,
    broker: Broker,
    lines: list[dict[str, str]],
    *,
    variant: str,
    kind: str,
    admin_url: str,
    timeout: float,
) -> CpuRun:
    """The ingest loop alone draining `lines` as a backlog, in a process of its own."""
    prefix = f"bench/{uuid.uuid4().hex[:8]}"
    messages = _messages_file(workdir, prefix, lines)
    with database(kind, workdir, admin_url) as url:
        mqtt = broker.settings(prefix).model_dump(mode="json")
        settings = {
            "collector": {"id": f"bench-ingest-{uuid.uuid4().hex[:6]}"},
            "database": {"url": url},
            "mqtt": mqtt,
            "http": {"enabled": False},
            "count": len(lines),
        }

        def child(task: str) -> subprocess.Popen[str]:
            return subprocess.Popen(
                [sys.executable, "-c", _INGEST, variant, task, json.dumps(settings)],
                stdout=subprocess.PIPE,
                text=True,
            )

        reader = Reader(url)
        try:
            # Subscribe once (the session is kept), go away, publish, then drain.
            subscriber = child("subscribe")
            try:
                wait_subscribed(broker, prefix, reader, 60)
            finally:
                stop_process(subscriber)
            publish(broker, messages, timeout)
            drain = child("drain")
            out, _ = drain.communicate(timeout=timeout)
        finally:
            reader.close()
    if drain.returncode != 0:
        raise RuntimeError(f"ingest child failed ({drain.returncode}): {out}")
    result = json.loads(out.strip().splitlines()[-1])
    if result["received"] < len(lines):
        raise RuntimeError(f"drained {result['received']} of {len(lines)}")
    return CpuRun(
        "ingest",
        variant,
        kind,
        len(lines),
        result["cpu"],
        result["wall"],
        max(0.0, result["scrub_cpu"] - result["scrub_calls"] * result["timer"]),
        result["scrub_calls"],
    )


def collector_cpu(
    workdir: Path,
    broker: Broker,
    lines: list[dict[str, str]],
    expected: dict[str, int],
    *,
    variant: str,
    kind: str,
    admin_url: str,
    timeout: float,
) -> CpuRun:
    """Live ingest of `lines` by a collector process; its CPU from the first publish to
    idle again, less its idle rate."""
    prefix = f"bench/{uuid.uuid4().hex[:8]}"
    messages = _messages_file(workdir, prefix, lines)
    with database(kind, workdir, admin_url) as url:
        name = f"bench-{variant}-{uuid.uuid4().hex[:6]}"
        config = workdir / f"{name}.toml"
        config.write_text(
            f'[collector]\nid = "{name}"\n[database]\nurl = "{url}"\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\ntopic_prefix = "{prefix}"\n'
            "reconnect_min_s = 0.05\nreconnect_max_s = 0.2\n[http]\nenabled = false\n"
        )
        log = workdir / f"{name}.log"
        reader = Reader(url)
        with log.open("ab") as out:
            command = ["collector", "run", "--config", str(config)]
            process = subprocess.Popen(
                [sys.executable, "-c", _POSMON, variant, "--log-level", "WARNING", *command],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_subscribed(broker, prefix, reader, 60)
            idle_rate = _idle_rate(process.pid, 2.0)
            start_cpu, started = sum(cpu_times(process.pid)), time.monotonic()
            publish(broker, messages, timeout)
            deadline = time.monotonic() + timeout
            for table_name, rows in expected.items():
                extra = 1 if table_name == "status_events" else 0  # the probe
                while reader.count(table_name) < rows + extra:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"{table_name}: not all stored; log:\n{log.read_text()[-2000:]}"
                        )
                    time.sleep(0.05)
            _until_idle(process.pid, idle_rate)
            cpu = sum(cpu_times(process.pid)) - start_cpu
            wall = time.monotonic() - started
        finally:
            stop_process(process)
            reader.close()
    return CpuRun("process", variant, kind, len(lines), cpu - idle_rate * wall, wall)


def _idle_rate(pid: int, seconds: float) -> float:
    """CPU seconds per second the process spends with nothing to do."""
    before = sum(cpu_times(pid))
    time.sleep(seconds)
    return (sum(cpu_times(pid)) - before) / seconds


def _until_idle(pid: int, idle_rate: float, window: float = 0.5) -> None:
    """Wait until a window passes with no more CPU than idling takes (plus a tick)."""
    while True:
        before = sum(cpu_times(pid))
        time.sleep(window)
        if sum(cpu_times(pid)) - before <= idle_rate * window + 0.02:
            return


# --- main -------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="posmon.pan.scrub: MB/s against re.search and str.translate on the same "
        "texts, and its share of the collector's CPU while ingesting (scrub replaced by an "
        "identity function in the collector process, same run)."
    )
    parser.add_argument("--texts", type=int, default=5000, help="texts per corpus (5000)")
    parser.add_argument("--least", type=float, default=0.5, help="seconds per timing (0.5)")
    parser.add_argument("--messages", type=int, default=20_000, help="messages per run (20000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both variants (3)")
    parser.add_argument(
        "--databases",
        nargs="+",
        choices=("postgresql", "sqlite"),
        default=["postgresql", "sqlite"],
        help="collector databases (postgresql sqlite)",
    )
    parser.add_argument(
        "--pan-share",
        type=float,
        default=0.01,
        help="share of free texts in the ingest mix that hold a card number (0.01)",
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("POSMON_TEST_POSTGRES", POSTGRES_ADMIN_DEFAULT),
        help="admin URL to make scratch databases with (POSMON_TEST_POSTGRES)",
    )
    parser.add_argument(
        "--measures",
        nargs="+",
        choices=("ingest", "process"),
        default=["ingest"],
        help="the ingest loop alone (default) and/or the whole collector process",
    )
    parser.add_argument("--skip-ingest", action="store_true", help="throughput only")
    parser.add_argument("--timeout", type=float, default=300, help="per step, seconds (300)")
    args = parser.parse_args(argv)
    quiet_logging()
    print(f"machine: {machine()}", flush=True)

    print(f"\nscrub() throughput, {args.texts} texts per corpus, best pass of >= {args.least} s")
    print(
        table(
            [
                "texts",
                "bytes/text",
                "masked",
                "scrub MB/s",
                "us/text",
                "re.search MB/s",
                "translate MB/s",
                "x re.search",
                "x translate",
            ],
            throughput(args.texts, args.least),
        ),
        flush=True,
    )
    print(
        "x re.search / x translate: how many times slower scrub is than that baseline "
        "over the same texts (one call per text)."
    )
    if args.skip_ingest:
        return 0

    lines, expected = ingest_mix(args.messages, args.pan_share)
    print(
        f"\ncollector CPU taking {args.messages} messages "
        f"({', '.join(f'{name} {n}' for name, n in expected.items())}; "
        f"{args.pan_share:.0%} of free texts with a PAN), {args.rounds} round(s)",
        flush=True,
    )
    runs: list[CpuRun] = []
    with workspace() as workdir:
        broker = Broker(workdir / "broker")
        broker.start()
        try:
            for round_ in range(args.rounds):
                # Alternate which goes first, so a drift in the machine's load spreads.
                order = ["shipped", "identity"] if round_ % 2 == 0 else ["identity", "shipped"]
                for kind in args.databases:
                    for measure in args.measures:
                        for variant in order + (["timed"] if measure == "ingest" else []):
                            options: dict[str, Any] = {
                                "variant": variant,
                                "kind": kind,
                                "admin_url": args.postgres,
                                "timeout": args.timeout,
                            }
                            if measure == "ingest":
                                run = ingest_cpu(workdir, broker, lines, **options)
                            else:
                                run = collector_cpu(workdir, broker, lines, expected, **options)
                            runs.append(run)
                            inside = ""
                            if variant == "timed":
                                inside = (
                                    f"; {run.scrub_cpu_s:.2f} s in scrub, {run.scrub_calls:,} calls"
                                )
                            print(
                                f"round {round_ + 1}, {kind}, {measure}, scrub {variant}: "
                                f"{run.cpu_s:.2f} s CPU ({run.us_per_message:.1f} us/message) "
                                f"in {run.wall_s:.1f} s{inside}",
                                flush=True,
                            )
        finally:
            broker.stop()
    print()
    print(share_table(runs, args))
    print(
        "share (A/B) = 1 - CPU(identity) / CPU(shipped) per round, median of the rounds.\n"
        "share (timed) = CPU inside scrub (thread_time around each call, the timer's own "
        "cost taken off) / CPU of the same run; the verdict reads its median.\n"
        "ingest loop: draining a backlog, process CPU (all threads); whole process: posmon "
        "collector run live, first publish to idle, less its idle rate."
    )
    return 0


def share_table(runs: list[CpuRun], args: argparse.Namespace) -> str:
    rows = []
    for kind in args.databases:
        for measure in args.measures:
            mine = [r for r in runs if r.database == kind and r.measure == measure]
            shipped = [r.cpu_s for r in mine if r.variant == "shipped"]
            identity = [r.cpu_s for r in mine if r.variant == "identity"]
            shares = [1 - i / s for s, i in zip(shipped, identity, strict=True)]
            share = statistics.median(shares)
            timed = [r.scrub_cpu_s / r.cpu_s for r in mine if r.variant == "timed"]
            # The verdict reads the timed share where there is one: on a shared machine
            # the A/B difference is within the noise of a run's CPU.
            verdict = statistics.median(timed) if timed else share
            rows.append(
                [
                    kind,
                    "ingest loop" if measure == "ingest" else "whole process",
                    f"{statistics.median(shipped) / args.messages * 1e6:.1f}",
                    f"{statistics.median(identity) / args.messages * 1e6:.1f}",
                    f"{share:.1%}",
                    ", ".join(f"{value:.1%}" for value in shares),
                    ", ".join(f"{value:.1%}" for value in timed) if timed else "-",
                    "yes" if verdict < TARGET_SHARE else "NO",
                ]
            )
    return table(
        [
            "database",
            "measured",
            "us CPU/msg, shipped",
            "us CPU/msg, identity",
            "share (A/B)",
            "A/B rounds",
            "share (timed), rounds",
            f"< {TARGET_SHARE:.0%}",
        ],
        rows,
    )


if __name__ == "__main__":
    sys.exit(main())
